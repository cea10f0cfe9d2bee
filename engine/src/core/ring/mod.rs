//! The Totem single-ring ordering protocol, sans-IO.
//!
//! Daemons form a logical ring and pass a token. Only the token holder multicasts new data
//! packets, stamping each with the next sequence number from the token; each packet packs
//! several application messages, or carries one fragment of a message too large for a
//! datagram. The token also carries the all-received-up-to value (`aru`, lowered by any
//! daemon that misses something and raised back only by the daemon that lowered it,
//! `aru_id`), a retransmission-request list and flow-control counts (Amir et al., TOCS 1995).
//!
//! Delivery follows the total order: a message is handed out once every packet up to its
//! own is held (AGREED); a SAFE message additionally waits until the token has shown an
//! `aru` at or above it on two successive visits, which proves every daemon holds it, and
//! everything after it in the order waits with it. FIFO and CAUSAL are implied by the total
//! order. RELIABLE and UNRELIABLE messages skip the order: they are delivered as soon as
//! their packet is first held (still exactly once, and still retransmitted when lost;
//! those larger than a datagram are reassembled and delivered in order). Packets every
//! daemon holds and this daemon has delivered are garbage-collected.
//!
//! # Driving a ring
//!
//! The ring never reads a clock or touches a socket. Per worker cycle the daemon:
//!
//! 1. feeds every datagram from another daemon to [`Ring::handle_datagram`] (errors are
//!    typed and counted in [`RingStats`]; the datagram is simply dropped);
//! 2. calls [`Ring::handle_timeout`] when [`Ring::poll_timeout`] has passed;
//! 3. queues application messages with [`Ring::submit`] (backpressure is an error);
//! 4. drains [`Ring::poll_transmit`], sending each datagram to every other member
//!    ([`Dest::All`]) or to one ([`Dest::One`]);
//! 5. drains [`Ring::poll_delivery`], handing each [`Delivery`] to the groups layer.
//!
//! A ring of one member works the same way: it needs no token traffic, and
//! `poll_delivery` orders and hands out submitted messages directly.
//!
//! With [`RingConfig::accelerated`] the ring runs the Accelerated Ring variant (Babay and
//! Amir, ICDCS 2016): the token leaves once half of a visit's new packets are queued ahead
//! of it, and the next holder does not ask for packets that may merely still be in flight.
//! Ordering, aru, safety and collection rules are unchanged, since they never depended on
//! the token trailing the data.

pub mod config;
pub mod stats;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use conclave_control::wire::client::Service;
use thiserror::Error;

pub use self::config::{ConfigError, DaemonIdx, RingConfig, RingId};
pub use self::stats::RingStats;
pub use self::wire::PacketError;
use self::wire::{DATA_HEADER, ITEM_HEADER, Packet, Token, TokenView};
use super::time::Instant;

/// Where a datagram written by [`Ring::poll_transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Every other member of the ring (multicast).
    All,
    /// One daemon (the token's next holder).
    One(DaemonIdx),
    /// Every configured daemon but this one, members or not (membership messages).
    Everyone,
}

/// One datagram to send; its bytes are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Its destination.
    pub dest: Dest,
}

/// One application message in the total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// Sequence number of the (last) packet that carried it; several messages packed in
    /// one packet share it, and they come out in packing order.
    pub seq: u64,
    /// The daemon that submitted it.
    pub origin: DaemonIdx,
    /// The service it was submitted with.
    pub service: Service,
    /// The bytes given to [`Ring::submit`].
    pub payload: &'a [u8],
}

/// Why [`Ring::submit`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SubmitError {
    /// The send queue is full; retry after the ring has sent some (the token moves on).
    #[error("send queue full: try again later")]
    Backpressure,
    /// Larger than `max_message`.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

#[derive(Debug)]
struct Pending {
    service: Service,
    /// The message, in a buffer of its own (from `msg_pool`) so that it can be written in
    /// place by [`Ring::submit_with`] and leaves by one copy into a packet.
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Data { seq: u64, retransmit: bool },
    Token,
}

/// Packets this daemon holds, indexed by sequence number; an empty buffer is a gap.
#[derive(Debug, Default)]
struct Store {
    base: u64,
    slots: VecDeque<Vec<u8>>,
}

impl Store {
    fn get(&self, seq: u64) -> Option<&[u8]> {
        let idx = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots
            .get(idx)
            .filter(|b| !b.is_empty())
            .map(Vec::as_slice)
    }

    fn has(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    /// The (empty, pooled) slot for `seq`, growing the window as needed; `None` if `seq`
    /// is below the window (already collected).
    fn slot(&mut self, seq: u64, pool: &mut Vec<Vec<u8>>) -> Option<&mut Vec<u8>> {
        let idx = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        while self.slots.len() <= idx {
            self.slots.push_back(pool.pop().unwrap_or_default());
        }
        self.slots.get_mut(idx)
    }

    /// Frees every packet below `seq`.
    fn free_below(&mut self, seq: u64, pool: &mut Vec<Vec<u8>>) {
        while self.base < seq {
            if let Some(mut b) = self.slots.pop_front() {
                b.clear();
                pool.push(b);
            }
            self.base += 1;
        }
    }
}

/// How far a token's seq may lie beyond this daemon's aru before it is refused as bogus.
const TOKEN_HORIZON: u64 = 1 << 40;

/// Services delivered on receipt rather than in the total order.
/// Most message buffers kept for reuse by the send queue.
const MSG_POOL_MAX: usize = 256;
/// Largest message buffer kept for reuse (a rare huge message must not pin its memory).
const MSG_POOL_BUF_MAX: usize = 64 * 1024;

/// Keeps a packed (or refused) message's buffer for a later submit, within the bounds above.
fn recycle_into(pool: &mut Vec<Vec<u8>>, bytes: Vec<u8>) {
    if pool.len() < MSG_POOL_MAX && bytes.capacity() <= MSG_POOL_BUF_MAX {
        pool.push(bytes);
    }
}

fn unordered(service: Service) -> bool {
    matches!(service, Service::Reliable | Service::Unreliable)
}

/// A message queued for delivery out of order; its bytes stay in the store.
#[derive(Debug, Clone, Copy)]
struct Early {
    seq: u64,
    origin: DaemonIdx,
    service: Service,
    start: usize,
    end: usize,
}

#[derive(Debug, Default)]
struct Reassembly {
    active: bool,
    service: Option<Service>,
    total: u32,
    buf: Vec<u8>,
}

/// What `poll_delivery`'s search found; the borrow is taken after the loop.
enum Found {
    Whole { start: usize, end: usize },
    Reassembled { pos: usize },
}

/// One daemon's state in one ring.
#[derive(Debug)]
pub struct Ring {
    cfg: RingConfig,
    /// Daemon index → position in `members` plus one (0 = not a member).
    member_pos: Vec<u16>,
    succ: DaemonIdx,
    pred: DaemonIdx,
    max_rtr: usize,

    pending: VecDeque<Pending>,
    /// Bytes in `pending` not yet packed into a packet.
    pending_bytes: usize,
    /// Message buffers handed back by packed messages, for the next submits.
    msg_pool: Vec<Vec<u8>>,
    /// Bytes of the head message already sent as fragments.
    head_sent: usize,

    store: Store,
    pool: Vec<Vec<u8>>,
    /// Every packet up to here is held (or was, and has been delivered and collected).
    my_aru: u64,
    /// Highest sequence number seen.
    high_seq: u64,
    /// Every daemon holds every packet up to here.
    safe_upto: u64,

    /// Next packet to deliver from, and the offset of its next item (0 = not started).
    deliver_seq: u64,
    deliver_off: usize,
    reasm: Vec<Reassembly>,
    early: VecDeque<Early>,

    token: Token,
    last_token_seq: u64,
    /// The token's aru as this daemon last forwarded it.
    last_forwarded_aru: u64,
    /// The token's seq as this daemon last forwarded it.
    forwarded_seq: Option<u64>,
    sent_last_visit: u32,
    backlog_last_visit: u32,
    token_buf: Vec<u8>,
    token_timer: Option<Instant>,
    /// When this daemon last accepted the token (or started).
    last_token_at: Instant,
    /// The representative holds an idle token until this instant.
    held_until: Option<Instant>,

    out: VecDeque<Out>,
    stats: RingStats,
    /// Set once membership has ended this ring's regular configuration: delivery then
    /// skips holes nobody can fill (see [`Ring::enter_transitional`]).
    transitional: Option<Transitional>,
}

/// Delivery rules of a ring whose regular configuration has ended (EVS).
#[derive(Debug, Clone)]
struct Transitional {
    /// Daemons that move together to the next configuration.
    members: Vec<DaemonIdx>,
    /// A hole has been skipped: from then on only these members' messages are delivered,
    /// since a message of another daemon may depend on what is missing.
    skipped: bool,
}

/// What a ring reports of itself when its configuration ends (membership's commit token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingState {
    /// The ring.
    pub ring_id: RingId,
    /// Every packet up to here is held.
    pub my_aru: u64,
    /// Highest sequence number seen.
    pub high_seq: u64,
    /// Every member is known to hold every packet up to here.
    pub safe_through: u64,
    /// Every packet up to here has been delivered.
    pub delivered_through: u64,
}

impl Ring {
    /// Starts this daemon's part of a ring; the representative creates the first token.
    pub fn new(cfg: RingConfig, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let max_idx = cfg
            .members
            .iter()
            .map(|m| usize::from(m.0))
            .max()
            .unwrap_or(0);
        let mut member_pos = vec![0u16; max_idx + 1];
        for (i, m) in cfg.members.iter().enumerate() {
            // validate() bounds the member count by u16::MAX.
            member_pos[usize::from(m.0)] = u16::try_from(i + 1).unwrap_or(u16::MAX);
        }
        let n = cfg.members.len();
        let me_pos = cfg.members.iter().position(|m| *m == cfg.me).unwrap_or(0);
        let succ = cfg.members[(me_pos + 1) % n];
        let pred = cfg.members[(me_pos + n - 1) % n];
        let max_rtr = cfg
            .max_rtr
            .min((cfg.max_datagram - wire::TOKEN_HEADER) / 8)
            .min(usize::from(u16::MAX));
        let mut ring = Ring {
            member_pos,
            succ,
            pred,
            max_rtr,
            pending: VecDeque::new(),
            pending_bytes: 0,
            msg_pool: Vec::new(),
            head_sent: 0,
            store: Store {
                base: 1,
                slots: VecDeque::new(),
            },
            pool: Vec::new(),
            my_aru: 0,
            high_seq: 0,
            safe_upto: 0,
            deliver_seq: 1,
            deliver_off: 0,
            reasm: (0..n).map(|_| Reassembly::default()).collect(),
            early: VecDeque::new(),
            token: Token::default(),
            last_token_seq: 0,
            last_forwarded_aru: 0,
            forwarded_seq: None,
            sent_last_visit: 0,
            backlog_last_visit: 0,
            token_buf: Vec::new(),
            token_timer: None,
            last_token_at: now,
            held_until: None,
            out: VecDeque::new(),
            stats: RingStats::default(),
            transitional: None,
            cfg,
        };
        if ring.cfg.me == ring.cfg.ring_id.representative && n > 1 {
            ring.send_phase(now);
        }
        Ok(ring)
    }

    /// The configuration the ring was started with.
    pub fn config(&self) -> &RingConfig {
        &self.cfg
    }

    /// Traffic counters.
    pub fn stats(&self) -> &RingStats {
        &self.stats
    }

    /// Highest sequence number up to which this daemon holds every packet.
    pub fn received_through(&self) -> u64 {
        self.my_aru
    }

    /// Highest sequence number up to which every daemon is known to hold every packet.
    pub fn safe_through(&self) -> u64 {
        self.safe_upto
    }

    /// Messages waiting in the send queue.
    pub fn pending_messages(&self) -> usize {
        self.pending.len()
    }

    /// Highest sequence number seen (held or not).
    pub fn high_seq(&self) -> u64 {
        self.high_seq
    }

    /// What membership records of this ring when its configuration ends.
    pub fn state(&self) -> RingState {
        RingState {
            ring_id: self.cfg.ring_id,
            my_aru: self.my_aru,
            high_seq: self.high_seq,
            safe_through: self.safe_upto,
            delivered_through: self.deliver_seq - 1,
        }
    }

    /// The stored data packet `seq`, exactly as it travelled, if held.
    pub fn held_packet(&self, seq: u64) -> Option<&[u8]> {
        self.store.get(seq)
    }

    /// Whether data packet `seq` is held (or was, and has been delivered and collected).
    pub fn holds(&self, seq: u64) -> bool {
        seq < self.store.base || self.store.has(seq)
    }

    /// Stores a data packet of this ring that membership recovered from another member
    /// after the ring's configuration ended. No token rule applies: the ring no longer
    /// runs, and recovery only fills holes below the highest sequence number any member saw.
    pub fn accept_recovered(&mut self, datagram: &[u8]) -> Result<(), PacketError> {
        let Packet::Data(d) = wire::decode(datagram)? else {
            return Err(PacketError::Malformed("recovered packet is not data"));
        };
        if d.ring_id != self.cfg.ring_id {
            return Err(PacketError::WrongRing { got: d.ring_id });
        }
        if self.pos_of(d.origin).is_none() {
            return Err(PacketError::UnknownSender(d.origin));
        }
        if d.seq < self.store.base || self.store.has(d.seq) {
            self.stats.duplicate_data += 1;
            return Ok(());
        }
        self.store_packet(d.seq, datagram);
        Ok(())
    }

    /// Raises the bound below which every member holds every packet, from another member's
    /// proof of it (membership's commit token); never above what this daemon holds.
    pub fn raise_safe_through(&mut self, seq: u64) {
        self.safe_upto = self.safe_upto.max(seq.min(self.my_aru));
    }

    /// Ends the regular configuration for delivery: every held packet up to the highest
    /// sequence number seen is delivered, holes skipped; after the first hole only messages
    /// from `members` (those moving together) are delivered, and SAFE messages no longer
    /// wait. Call once every regular-configuration delivery has been taken.
    pub fn enter_transitional(&mut self, members: &[DaemonIdx]) {
        self.transitional = Some(Transitional {
            members: members.to_vec(),
            skipped: false,
        });
    }

    /// Takes every message not yet (completely) sent, in order, for a later ring to send;
    /// a message whose first fragments already left is taken whole.
    pub fn take_pending(&mut self) -> Vec<(Service, Vec<u8>)> {
        self.head_sent = 0;
        self.pending_bytes = 0;
        self.held_until = None;
        self.pending
            .drain(..)
            .map(|p| (p.service, p.bytes))
            .collect()
    }

    fn is_single(&self) -> bool {
        self.cfg.members.len() == 1
    }

    fn pos_of(&self, d: DaemonIdx) -> Option<usize> {
        match self.member_pos.get(usize::from(d.0)) {
            Some(&p) if p > 0 => Some(usize::from(p - 1)),
            _ => None,
        }
    }

    /// Queues one application message for total ordering.
    pub fn submit(&mut self, service: Service, payload: &[u8]) -> Result<(), SubmitError> {
        if payload.len() > self.cfg.max_message {
            return Err(SubmitError::TooLarge {
                len: payload.len(),
                max: self.cfg.max_message,
            });
        }
        self.submit_with(service, |buf| buf.extend_from_slice(payload))
    }

    /// Like [`Ring::submit`], but `fill` appends the message to an empty buffer of the
    /// send queue, so that it is written once, in place. A refused message (the same
    /// checks as `submit`, made after `fill`) leaves the queue as it was.
    pub fn submit_with(
        &mut self,
        service: Service,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SubmitError> {
        let mut bytes = self.msg_pool.pop().unwrap_or_default();
        bytes.clear();
        fill(&mut bytes);
        let len = bytes.len();
        let refused = if len > self.cfg.max_message {
            Some(SubmitError::TooLarge {
                len,
                max: self.cfg.max_message,
            })
        } else if self.pending.len() >= self.cfg.max_pending_messages
            || self.pending_bytes + len > self.cfg.max_pending_bytes
        {
            self.stats.messages_refused += 1;
            Some(SubmitError::Backpressure)
        } else {
            None
        };
        if let Some(e) = refused {
            recycle_into(&mut self.msg_pool, bytes);
            return Err(e);
        }
        self.pending.push_back(Pending { service, bytes });
        self.pending_bytes += len;
        self.stats.messages_submitted += 1;
        Ok(())
    }

    /// Takes one datagram from another daemon. An error means it was dropped (and counted).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        datagram: &[u8],
    ) -> Result<(), PacketError> {
        self.stats.datagrams_received += 1;
        let result = self.handle_inner(now, from, datagram);
        if let Err(e) = &result {
            let counter = match e {
                PacketError::Truncated => &mut self.stats.dropped_truncated,
                PacketError::UnknownVersion(_) => &mut self.stats.dropped_version,
                PacketError::WrongRing { .. } => &mut self.stats.dropped_wrong_ring,
                PacketError::UnknownSender(_) | PacketError::NotFromPredecessor(_) => {
                    &mut self.stats.dropped_sender
                }
                PacketError::TooFarAhead(_) => &mut self.stats.dropped_too_far,
                PacketError::UnknownKind(_)
                | PacketError::UnknownService(_)
                | PacketError::Malformed(_) => &mut self.stats.dropped_malformed,
            };
            *counter += 1;
        }
        result
    }

    fn handle_inner(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        datagram: &[u8],
    ) -> Result<(), PacketError> {
        let packet = wire::decode(datagram)?;
        let ring_id = match &packet {
            Packet::Data(d) => d.ring_id,
            Packet::Token(t) => t.ring_id,
        };
        if ring_id != self.cfg.ring_id {
            return Err(PacketError::WrongRing { got: ring_id });
        }
        if from == self.cfg.me || self.pos_of(from).is_none() {
            return Err(PacketError::UnknownSender(from));
        }
        match packet {
            Packet::Data(d) => {
                if self.pos_of(d.origin).is_none() {
                    return Err(PacketError::UnknownSender(d.origin));
                }
                self.on_data(d.seq, datagram)
            }
            Packet::Token(t) => {
                if from != self.pred {
                    return Err(PacketError::NotFromPredecessor(from));
                }
                // A real token may run far ahead of a daemon that lost much (refusing it
                // would stall the ring, since only the token brings retransmissions); this
                // bound only keeps sequence arithmetic far from overflow.
                if t.seq > self.my_aru.saturating_add(TOKEN_HORIZON) {
                    return Err(PacketError::TooFarAhead(t.seq));
                }
                self.on_token(now, &t);
                Ok(())
            }
        }
    }

    fn on_data(&mut self, seq: u64, datagram: &[u8]) -> Result<(), PacketError> {
        if self.forwarded_seq.is_some_and(|f| seq > f) {
            // Only a daemon that got the token after us can have assigned `seq`.
            self.token_timer = None;
        }
        if seq < self.store.base || self.store.has(seq) {
            self.stats.duplicate_data += 1;
            return Ok(());
        }
        if seq > self.horizon() {
            return Err(PacketError::TooFarAhead(seq));
        }
        self.store_packet(seq, datagram);
        Ok(())
    }

    fn store_packet(&mut self, seq: u64, datagram: &[u8]) {
        debug_assert!(
            seq <= self.horizon().max(
                self.high_seq
                    .saturating_add(u64::from(self.cfg.max_unstable))
            ),
            "stored packet {seq} beyond the store's bound"
        );
        if let Some(slot) = self.store.slot(seq, &mut self.pool) {
            slot.clear();
            slot.extend_from_slice(datagram);
        }
        self.stats.data_received += 1;
        self.scan_early(seq);
        self.high_seq = self.high_seq.max(seq);
        while self.store.has(self.my_aru + 1) {
            self.my_aru += 1;
        }
    }

    /// How far beyond this daemon's aru a data packet is still stored. The ring runs at
    /// most `max_unstable` past the token's aru, which can exceed this daemon's for about a
    /// rotation; past a generous margin a packet is dropped, which costs only a later
    /// retransmission (requests start at the aru), and bounds the store.
    fn horizon(&self) -> u64 {
        self.my_aru
            .saturating_add(4 * u64::from(self.cfg.max_unstable))
    }

    fn on_token(&mut self, now: Instant, view: &TokenView<'_>) {
        if view.token_seq <= self.last_token_seq {
            self.stats.duplicate_tokens += 1;
            return;
        }
        self.stats.tokens_received += 1;
        self.last_token_seq = view.token_seq;
        self.token.load(view);
        self.token.rtr.truncate(self.max_rtr);
        self.last_token_at = now;
        self.token_timer = None;
        self.held_until = None;

        // Safe: the aru this daemon forwarded last visit and the one that came back are
        // both lower bounds, across a full rotation, of what every daemon holds.
        let proven = self.token.aru.min(self.last_forwarded_aru).min(self.my_aru);
        self.safe_upto = self.safe_upto.max(proven);
        debug_assert!(
            self.safe_upto <= self.my_aru,
            "safe beyond what this daemon holds"
        );
        self.collect();

        let idle = self.cfg.me == self.cfg.ring_id.representative
            && !self.cfg.idle_token_hold.is_zero()
            && self.forwarded_seq == Some(self.token.seq)
            && self.token.rtr.is_empty()
            && self.token.aru == self.token.seq
            && self.my_aru == self.token.seq
            && self.pending.is_empty();
        if idle {
            self.stats.token_holds += 1;
            self.held_until = Some(now + self.cfg.idle_token_hold);
            return;
        }
        self.send_phase(now);
    }

    /// The token holder's turn: retransmit, ask, multicast, update aru, forward.
    fn send_phase(&mut self, now: Instant) {
        let me = self.cfg.me;
        let per_daemon = self.cfg.window_per_daemon;

        // Requests every daemon can no longer need (they all hold those packets, which may
        // be collected everywhere) would otherwise sit in the list for ever.
        let safe = self.safe_upto;
        self.token.rtr.retain(|&s| s > safe);

        let mut retransmitted = 0u32;
        let mut i = 0;
        while i < self.token.rtr.len() {
            let seq = self.token.rtr[i];
            if retransmitted < per_daemon && self.store.has(seq) {
                self.out.push_back(Out::Data {
                    seq,
                    retransmit: true,
                });
                self.token.rtr.swap_remove(i);
                retransmitted += 1;
            } else {
                i += 1;
            }
        }

        let mut scan_end = self
            .token
            .seq
            .min(self.my_aru + u64::from(self.cfg.max_unstable));
        if self.cfg.accelerated {
            // The token overtakes the multicasts that follow it, so packets above anything
            // seen and assigned since this daemon's last visit are likely still in flight.
            let settled = self.high_seq.max(self.forwarded_seq.unwrap_or(0));
            scan_end = scan_end.min(settled);
        }
        let mut s = self.my_aru + 1;
        while s <= scan_end && self.token.rtr.len() < self.max_rtr {
            if !self.store.has(s) && !self.token.rtr.contains(&s) {
                self.token.rtr.push(s);
                self.stats.retransmit_requests += 1;
            }
            s += 1;
        }

        let fcc_others = self.token.fcc.saturating_sub(self.sent_last_visit);
        let backlog_now = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        let backlog_total = self
            .token
            .backlog
            .saturating_sub(self.backlog_last_visit)
            .saturating_add(backlog_now);
        let mut allowed = per_daemon.saturating_sub(retransmitted).min(
            self.cfg
                .window_per_rotation
                .saturating_sub(fcc_others.saturating_add(retransmitted)),
        );
        if backlog_total > 0 {
            // Share the rotation's window in proportion to what each daemon has waiting.
            let share = u64::from(self.cfg.window_per_rotation) * u64::from(backlog_now)
                / u64::from(backlog_total);
            allowed = allowed.min(u32::try_from(share.max(1)).unwrap_or(u32::MAX));
        }
        let horizon = self
            .token
            .aru
            .saturating_add(u64::from(self.cfg.max_unstable));
        let room = u32::try_from(horizon.saturating_sub(self.token.seq)).unwrap_or(u32::MAX);
        allowed = allowed.min(room);

        let first_new = self.out.len();
        let mut sent = 0u32;
        while sent < allowed && !self.pending.is_empty() {
            let seq = self.token.seq + 1;
            self.build_packet(seq);
            self.scan_early(seq);
            self.token.seq = seq;
            self.high_seq = seq;
            if self.my_aru + 1 == seq {
                self.my_aru = seq;
            }
            self.out.push_back(Out::Data {
                seq,
                retransmit: false,
            });
            sent += 1;
        }

        self.sent_last_visit = retransmitted + sent;
        self.token.fcc = fcc_others.saturating_add(self.sent_last_visit);
        self.backlog_last_visit = u32::try_from(self.pending.len()).unwrap_or(u32::MAX);
        self.token.backlog = backlog_total
            .saturating_sub(backlog_now)
            .saturating_add(self.backlog_last_visit);

        if self.my_aru < self.token.aru
            || self.token.aru_id == Some(me)
            || self.token.aru_id.is_none()
        {
            self.token.aru = self.my_aru;
            self.token.aru_id = (self.token.aru != self.token.seq).then_some(me);
        }

        debug_assert!(self.token.aru <= self.token.seq, "token aru above its seq");
        debug_assert!(
            self.my_aru <= self.high_seq,
            "aru above the highest seq seen"
        );
        self.last_forwarded_aru = self.token.aru;
        self.forwarded_seq = Some(self.token.seq);
        self.token.token_seq = self.token.token_seq.saturating_add(1);
        self.last_token_seq = self.token.token_seq;
        self.token.encode(self.cfg.ring_id, &mut self.token_buf);
        if self.cfg.accelerated {
            // Accelerated Ring: pass the token once half of the new packets are out, so the
            // next holder starts while the rest are still being sent.
            let at = first_new + (sent as usize).div_ceil(2);
            self.out.insert(at.min(self.out.len()), Out::Token);
        } else {
            self.out.push_back(Out::Token);
        }
        self.token_timer = Some(now + self.cfg.token_retransmit_timeout);
    }

    /// Packs the head of the send queue into the data packet `seq`.
    fn build_packet(&mut self, seq: u64) {
        let max = self.cfg.max_datagram;
        let Some(buf) = self.store.slot(seq, &mut self.pool) else {
            return;
        };
        wire::begin_data(buf, self.cfg.ring_id, seq, self.cfg.me);
        // Below this much room a fragment is not worth its header.
        const MIN_FRAGMENT: usize = 64;
        while let Some(head) = self.pending.front() {
            let room = max - buf.len();
            if room < ITEM_HEADER + 1 {
                break;
            }
            let remaining = head.bytes.len() - self.head_sent;
            let whole = self.head_sent == 0;
            if whole && ITEM_HEADER + remaining <= room {
                // Zero-length messages take this path too.
                let len = u16::try_from(remaining).unwrap_or(u16::MAX);
                wire::push_item_header(buf, true, true, head.service, len.into(), len);
                buf.extend_from_slice(&head.bytes);
                self.pending_bytes -= remaining;
                if let Some(done) = self.pending.pop_front() {
                    recycle_into(&mut self.msg_pool, done.bytes);
                }
                continue;
            }
            let fits_fresh = ITEM_HEADER + remaining <= max - DATA_HEADER;
            let has_items = buf.len() > DATA_HEADER;
            if has_items && (whole && fits_fresh || room < MIN_FRAGMENT + ITEM_HEADER) {
                break;
            }
            let take = remaining.min(room - ITEM_HEADER).min(usize::from(u16::MAX));
            let last = take == remaining;
            let total = u32::try_from(head.bytes.len()).unwrap_or(u32::MAX);
            wire::push_item_header(
                buf,
                whole,
                last,
                head.service,
                total,
                u16::try_from(take).unwrap_or(u16::MAX),
            );
            buf.extend_from_slice(&head.bytes[self.head_sent..self.head_sent + take]);
            self.pending_bytes -= take;
            if last {
                if let Some(done) = self.pending.pop_front() {
                    recycle_into(&mut self.msg_pool, done.bytes);
                }
                self.head_sent = 0;
            } else {
                self.head_sent += take;
                // The rest of this message goes in the next packet.
                break;
            }
        }
    }

    /// Queues the RELIABLE and UNRELIABLE whole messages of newly held packet `seq` for
    /// delivery at once: they need no order, so they wait for no gap and no SAFE message.
    /// Every packet is stored once, ahead of the delivery cursor, so each is scanned once.
    fn scan_early(&mut self, seq: u64) {
        let Some(pkt) = self.store.get(seq) else {
            return;
        };
        let origin = DaemonIdx(u16::from_le_bytes([pkt[20], pkt[21]]));
        let mut off = DATA_HEADER;
        while let Ok((item, used)) = wire::parse_item(&pkt[off..]) {
            if item.first && item.last && unordered(item.service) {
                let start = off + ITEM_HEADER;
                self.early.push_back(Early {
                    seq,
                    origin,
                    service: item.service,
                    start,
                    end: start + item.bytes.len(),
                });
            }
            off += used;
        }
    }

    /// Frees packets every daemon holds and this daemon has delivered.
    fn collect(&mut self) {
        let upto = self.safe_upto.min(self.deliver_seq - 1);
        self.store.free_below(upto + 1, &mut self.pool);
    }

    /// Handles timers due at `now`: token retransmission and release of a held token.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.token_timer.is_some_and(|t| t <= now) {
            self.stats.token_retransmits += 1;
            self.out.push_back(Out::Token);
            self.token_timer = Some(now + self.cfg.token_retransmit_timeout);
        }
        if self.held_until.is_some_and(|t| t <= now) {
            self.held_until = None;
            self.send_phase(now);
        }
    }

    /// When the token counts as lost if it has not come back by then: the daemon should
    /// then start the membership protocol (which replaces this ring). `None` in a ring of
    /// one. Not part of [`Ring::poll_timeout`]: the ring itself does nothing about it.
    pub fn token_loss_deadline(&self) -> Option<Instant> {
        (!self.is_single()).then(|| self.last_token_at + self.cfg.token_loss_timeout)
    }

    /// When [`Ring::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.token_timer, self.held_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Writes the next datagram to send into `buf` (cleared first) and says where it goes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.poll_transmit_with(now, |t, bytes| {
            buf.clear();
            buf.extend_from_slice(bytes);
            t
        })
    }

    /// Like [`Ring::poll_transmit`], but lends the next datagram to `emit` where the ring
    /// keeps it, so that the caller can write it straight into its send buffer; returns
    /// what `emit` returns, or `None` when nothing is waiting to go out.
    pub fn poll_transmit_with<R>(
        &mut self,
        now: Instant,
        emit: impl FnOnce(Transmit, &[u8]) -> R,
    ) -> Option<R> {
        if self.held_until.is_some() && !self.pending.is_empty() {
            self.held_until = None;
            self.send_phase(now);
        }
        while let Some(out) = self.out.pop_front() {
            match out {
                Out::Data { seq, retransmit } => {
                    // A packet collected before it left needs no sending: everyone has it.
                    if let Some(p) = self.store.get(seq) {
                        if retransmit {
                            self.stats.retransmissions_sent += 1;
                        } else {
                            self.stats.data_sent += 1;
                        }
                        return Some(emit(Transmit { dest: Dest::All }, p));
                    }
                }
                Out::Token => {
                    self.stats.tokens_sent += 1;
                    let t = Transmit {
                        dest: Dest::One(self.succ),
                    };
                    return Some(emit(t, &self.token_buf));
                }
            }
        }
        None
    }

    /// In a ring of one, the token never leaves: order the send queue directly.
    fn single_visit(&mut self) {
        let mut sent = 0;
        while sent < self.cfg.window_per_daemon && !self.pending.is_empty() {
            let seq = self.my_aru + 1;
            self.build_packet(seq);
            self.scan_early(seq);
            self.my_aru = seq;
            self.high_seq = seq;
            sent += 1;
        }
        self.safe_upto = self.my_aru;
    }

    /// The next message in delivery order, if it may be delivered now.
    pub fn poll_delivery(&mut self) -> Option<Delivery<'_>> {
        let (seq, origin, service, found) = loop {
            // Early entries point at packets at or past the cursor, which stay stored until
            // the cursor passes them, and the cursor waits until this queue is empty.
            if let Some(e) = self.early.pop_front() {
                let (start, end) = (e.start, e.end);
                break (e.seq, e.origin, e.service, Found::Whole { start, end });
            }
            let end = match &self.transitional {
                Some(_) => self.high_seq,
                None => self.my_aru,
            };
            if self.deliver_seq > end {
                self.collect();
                if self.is_single() && !self.pending.is_empty() && self.transitional.is_none() {
                    self.single_visit();
                    continue;
                }
                return None;
            }
            let seq = self.deliver_seq;
            let Some(pkt) = self.store.get(seq) else {
                // Only a transitional configuration may skip: in a regular one every packet up
                // to my_aru is held until delivered, so a gap is a bug.
                debug_assert!(self.transitional.is_some(), "delivery gap at {seq}");
                // The hole is a packet of a daemon outside the transitional set (every
                // member holds its own packets, and recovery shared them), whose messages
                // are filtered from here on; members' fragmented messages go on intact.
                if let Some(t) = self.transitional.as_mut() {
                    t.skipped = true;
                }
                self.deliver_seq += 1;
                self.deliver_off = 0;
                continue;
            };
            if self.deliver_off == 0 {
                self.deliver_off = DATA_HEADER;
            }
            if self.deliver_off >= pkt.len() {
                self.deliver_seq += 1;
                self.deliver_off = 0;
                self.collect();
                continue;
            }
            let origin = DaemonIdx(u16::from_le_bytes([pkt[20], pkt[21]]));
            let Ok((item, used)) = wire::parse_item(&pkt[self.deliver_off..]) else {
                self.deliver_off = pkt.len();
                continue;
            };
            if item.service == Service::Safe && seq > self.safe_upto && self.transitional.is_none()
            {
                return None;
            }
            if let Some(t) = &self.transitional
                && t.skipped
                && !t.members.contains(&origin)
            {
                self.deliver_off += used;
                continue;
            }
            let start = self.deliver_off + ITEM_HEADER;
            let end = start + item.bytes.len();
            self.deliver_off += used;
            if item.first && item.last {
                if unordered(item.service) {
                    // Already handed out by `scan_early`.
                    continue;
                }
                break (seq, origin, item.service, Found::Whole { start, end });
            }
            let Some(pos) = self.pos_of(origin) else {
                continue;
            };
            let max_message = self.cfg.max_message;
            let r = &mut self.reasm[pos];
            if item.first {
                r.buf.clear();
                r.active = item.total as usize <= max_message;
                r.service = Some(item.service);
                r.total = item.total;
                if !r.active {
                    self.stats.reassembly_errors += 1;
                    continue;
                }
            } else if !r.active || r.total != item.total || r.service != Some(item.service) {
                r.active = false;
                self.stats.reassembly_errors += 1;
                continue;
            }
            r.buf.extend_from_slice(item.bytes);
            let len = r.buf.len();
            if len > r.total as usize || (item.last && len != r.total as usize) {
                r.active = false;
                self.stats.reassembly_errors += 1;
                continue;
            }
            if item.last {
                r.active = false;
                break (seq, origin, item.service, Found::Reassembled { pos });
            }
        };
        self.stats.messages_delivered += 1;
        let payload = match found {
            Found::Whole { start, end } => self.store.get(seq).map(|p| &p[start..end])?,
            Found::Reassembled { pos } => self.reasm[pos].buf.as_slice(),
        };
        Some(Delivery {
            seq,
            origin,
            service,
            payload,
        })
    }
}
