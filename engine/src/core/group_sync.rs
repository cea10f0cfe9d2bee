//! Daemon configuration changes, applied to the group table (client-visible EVS).
//!
//! [`GroupSync`] sits between [`Membership`](super::membership::Membership) and the
//! [`GroupTable`]: ordered payloads become events applied in order; a transitional
//! configuration removes the clients of daemons that did not move with this one; a
//! regular configuration installs the new view epoch, or, when daemons joined that did not
//! move with this one (a merge, a restarted daemon, the first configuration), runs the
//! state exchange: every daemon submits a `State` event listing its own clients, events
//! ordered meanwhile are held, and once every member's state is delivered each daemon
//! rebuilds the same table from them and applies the held events, so every daemon applies
//! the same events to the same table again.
//!
//! An exchange cut short by another configuration change forces an exchange in the next
//! configuration (the daemons that move together may have rebuilt nothing yet, or come
//! from different tables).

use super::event::{Event, EventError};
use super::membership::Configuration;
use super::ring::{DaemonIdx, RingId};
use super::table::{GroupTable, Outbox};

// View epochs are `ring seq << 16 | low`, the low 16 bits telling apart the views given in
// one ring's lifetime: below 0x8000 the ring's own (its representative's index), then
// those a daemon gave alone after an interrupted state exchange (0x8000 + its index), then
// those of a transitional configuration (0xC000 + its lowest daemon). Client view ids so
// grow through a change, and ring sequence numbers only grow. Daemon indices stay below
// 2^14 (the configuration's daemon limit is far lower).

/// A configuration's view epoch: unique per ring id, growing with the ring sequence
/// number (which is persisted and only grows), so group view ids never repeat across
/// partitions or restarts.
pub fn epoch_of(ring: RingId) -> u64 {
    (ring.seq << 16) | u64::from(ring.representative.0 & 0x3fff)
}

/// The view epoch of what daemon `me` applies alone when the state exchange of ring `ring`
/// is cut short (its table may differ from the other daemons', so its ids must too).
pub fn cut_short_epoch_of(ring: RingId, me: DaemonIdx) -> u64 {
    (ring.seq << 16) | 0x8000 | u64::from(me.0 & 0x3fff)
}

/// The view epoch of the transitional configuration that daemons `moving` (sorted) form
/// when they leave ring `old`: above `old`'s epoch, below that of any later ring (whose
/// sequence number is higher), and different for each set moving together, since those
/// sets are disjoint and each is named by its lowest daemon.
pub fn transitional_epoch_of(old: RingId, moving: &[DaemonIdx]) -> u64 {
    let lowest = moving.first().map_or(0, |d| d.0 & 0x3fff);
    (old.seq << 16) | 0xc000 | u64::from(lowest)
}

#[derive(Debug)]
struct Exchange {
    ring: RingId,
    epoch: u64,
    members: Vec<DaemonIdx>,
    /// Each member's State event, once delivered (by position in `members`).
    states: Vec<Option<Vec<u8>>>,
    /// Ordered events held until the exchange completes, in order.
    held: Vec<Vec<u8>>,
}

/// Counters of [`GroupSync`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSyncStats {
    /// State exchanges started.
    pub exchanges: u64,
    /// State exchanges completed.
    pub merges: u64,
    /// Exchanges cut short by another configuration change.
    pub cut_short: u64,
    /// Ordered payloads that did not decode (a faulty peer).
    pub bad_events: u64,
    /// Most events held at once during an exchange.
    pub most_held: usize,
    /// Events applied to the table (state events excluded).
    pub applied: u64,
}

/// Applies ordered events and configuration changes to the group table (module docs).
#[derive(Debug)]
pub struct GroupSync {
    /// Daemon names by index.
    names: Vec<String>,
    me: DaemonIdx,
    exchange: Option<Exchange>,
    force_exchange: bool,
    stats: GroupSyncStats,
}

impl GroupSync {
    /// `names[i]` is daemon `i`'s name; `me` is this daemon.
    pub fn new(names: Vec<String>, me: DaemonIdx) -> Self {
        GroupSync {
            names,
            me,
            exchange: None,
            force_exchange: false,
            stats: GroupSyncStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &GroupSyncStats {
        &self.stats
    }

    /// Events applied to the table so far (state events excluded).
    pub fn applied(&self) -> u64 {
        self.stats.applied
    }

    /// Whether a state exchange is running (ordered events are held meanwhile).
    pub fn exchanging(&self) -> bool {
        self.exchange.is_some()
    }

    fn name(&self, d: DaemonIdx) -> &str {
        self.names.get(usize::from(d.0)).map_or("", String::as_str)
    }

    /// One ordered payload (one or more encoded events) from the ring.
    pub fn ordered(
        &mut self,
        mut payload: &[u8],
        table: &mut GroupTable,
        out: &mut dyn Outbox,
    ) -> Result<u64, EventError> {
        let mut applied = 0;
        while !payload.is_empty() {
            let (event, used) = Event::decode(payload).inspect_err(|_| {
                self.stats.bad_events += 1;
            })?;
            let bytes = &payload[..used];
            payload = &payload[used..];
            applied += 1;
            if self.exchange.is_some() {
                self.during_exchange(&event, bytes, table, out);
            } else {
                self.stats.applied += 1;
                table.apply(&event, out);
            }
        }
        Ok(applied)
    }

    fn during_exchange(
        &mut self,
        event: &Event<'_>,
        bytes: &[u8],
        table: &mut GroupTable,
        out: &mut dyn Outbox,
    ) {
        let names = &self.names;
        let Some(x) = self.exchange.as_mut() else {
            return;
        };
        if let Event::State { daemon, .. } = event {
            let pos = x
                .members
                .iter()
                .position(|d| names.get(usize::from(d.0)).is_some_and(|n| n == daemon));
            if let Some(pos) = pos
                && x.states[pos].is_none()
            {
                x.states[pos] = Some(bytes.to_vec());
                if x.states.iter().all(Option::is_some) {
                    self.finish_exchange(table, out);
                }
                return;
            }
        }
        x.held.push(bytes.to_vec());
        self.stats.most_held = self.stats.most_held.max(x.held.len());
    }

    fn finish_exchange(&mut self, table: &mut GroupTable, out: &mut dyn Outbox) {
        let Some(x) = self.exchange.take() else {
            return;
        };
        let states: Vec<Event<'_>> = x
            .states
            .iter()
            .flatten()
            .filter_map(|b| Event::decode(b).ok().map(|(e, _)| e))
            .collect();
        table.merge(x.epoch, &states, out);
        self.stats.merges += 1;
        for bytes in &x.held {
            if let Ok((event, _)) = Event::decode(bytes) {
                self.stats.applied += 1;
                table.apply(&event, out);
            }
        }
    }

    /// The old configuration ends: clients of daemons outside `c` (those that did not move
    /// with this one) leave their groups with a transitional view.
    pub fn transitional(
        &mut self,
        c: &Configuration,
        table: &mut GroupTable,
        out: &mut dyn Outbox,
    ) {
        // Events held by an exchange were ordered before this configuration ended.
        self.cut_short(table, out);
        let keep: Vec<&str> = c.members.iter().map(|&d| self.name(d)).collect();
        // Until an exchange completes, daemons moving together may hold different tables,
        // so their views must not share ids.
        let epoch = if self.force_exchange {
            cut_short_epoch_of(c.ring_id, self.me)
        } else {
            transitional_epoch_of(c.ring_id, &c.members)
        };
        table.begin_transitional_epoch(epoch);
        table.transitional(&|daemon| keep.contains(&daemon), out);
    }

    /// Ends an exchange that a configuration change interrupted: what it held was ordered
    /// in the ended configuration, so it is applied to this table (this daemon's own
    /// clients' changes then show in its next state), and the next configuration
    /// exchanges state whatever its members.
    fn cut_short(&mut self, table: &mut GroupTable, out: &mut dyn Outbox) {
        let Some(x) = self.exchange.take() else {
            return;
        };
        self.stats.cut_short += 1;
        table.begin_transitional_epoch(cut_short_epoch_of(x.ring, self.me));
        for bytes in &x.held {
            if let Ok((event, _)) = Event::decode(bytes) {
                self.stats.applied += 1;
                table.apply(&event, out);
            }
        }
        self.force_exchange = true;
    }

    /// A new regular configuration: installs its epoch, or starts a state exchange and
    /// returns this daemon's `State` event, to be submitted to the ring first.
    pub fn regular(
        &mut self,
        c: &Configuration,
        table: &mut GroupTable,
        out: &mut dyn Outbox,
    ) -> Option<Vec<u8>> {
        let epoch = epoch_of(c.ring_id);
        self.cut_short(table, out);
        let merge = c.members != c.moved_with_me;
        if !merge && !self.force_exchange {
            table.install(epoch, out);
            return None;
        }
        self.force_exchange = false;
        self.stats.exchanges += 1;
        self.exchange = Some(Exchange {
            ring: c.ring_id,
            epoch,
            members: c.members.clone(),
            states: vec![None; c.members.len()],
            held: Vec::new(),
        });
        let mut state = Vec::new();
        let me = self.name(self.me).to_owned();
        table.state_of(&me, &mut state);
        Some(state)
    }
}
