//! The seam between "a client asked" and "every daemon applies it in the same order".

use super::event::Event;
use super::table::{GroupTable, Outbox};

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
