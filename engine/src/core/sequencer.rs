//! The seam between "a client asked" and "every daemon applies it in the same order".

use std::os::fd::RawFd;

use super::event::Event;
use super::table::{GroupTable, Outbox};
use super::time::Instant;

/// Puts events into the one total order and applies them to the table once ordered.
///
/// On one daemon all six services are satisfied by applying each event at once, in
/// submission order: that order is total, per-sender FIFO and causal, and "every daemon
/// holds it" (SAFE) is trivially true. A ring sequencer instead encodes the event
/// ([`Event::encode`]) into its send queue and applies events as the token orders them.
pub trait Sequencer: Send {
    /// Submits one event; an immediate sequencer applies it before returning.
    fn submit(&mut self, event: &Event<'_>, table: &mut GroupTable, out: &mut dyn Outbox);

    /// Events ordered so far.
    fn ordered(&self) -> u64;

    /// Moves ordering along at `now` (one worker cycle): exchanges datagrams with the other
    /// daemons and applies every event that became ordered. An immediate sequencer has
    /// nothing to do.
    fn drive(&mut self, now: Instant, table: &mut GroupTable, out: &mut dyn Outbox) {
        let _ = (now, table, out);
    }

    /// When [`Sequencer::drive`] must run even if nothing arrives (a timer), if ever.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// True while `drive` has work left that it stopped on for fairness: call it again
    /// before sleeping.
    fn busy(&self) -> bool {
        false
    }

    /// True while submissions are being held back (the ring's send queue is full): the
    /// runtime stops reading clients until this clears. Nothing submitted is ever dropped.
    fn backpressured(&self) -> bool {
        false
    }

    /// A file descriptor that turns readable when `drive` has input to take, to be
    /// registered with the runtime's poller.
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }

    /// A JSON description for the status report (`None` for a single daemon).
    fn status(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The single-daemon sequencer: submission order is the total order.
#[derive(Debug, Default)]
pub struct LocalSequencer {
    ordered: u64,
}

impl Sequencer for LocalSequencer {
    fn submit(&mut self, event: &Event<'_>, table: &mut GroupTable, out: &mut dyn Outbox) {
        self.ordered += 1;
        table.apply(event, out);
    }

    fn ordered(&self) -> u64 {
        self.ordered
    }
}
