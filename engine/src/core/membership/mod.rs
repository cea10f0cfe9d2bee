//! Daemon membership with Extended Virtual Synchrony (Totem's membership protocol), sans-IO.
//!
//! [`Membership`] owns the daemon's ring: the [`Ring`] of the last installed (regular)
//! configuration, and while one forms, the next. It is driven exactly like a ring
//! (`handle_datagram`, `handle_timeout`, `poll_timeout`, `submit`, `poll_transmit_with`)
//! and hands out [`MemberEvent`]s: ordered messages, each tagged by the configuration it
//! is delivered in, and the configuration changes between them.
//!
//! # The protocol
//!
//! - **Operational**: the ring runs. Token loss (no token for `token_loss_timeout`), a
//!   join message, or traffic of a foreign ring (merge detection; representatives also
//!   announce their ring to daemons outside it every `merge_interval`) starts a run.
//! - **Gather**: every daemon multicasts join messages naming the daemons it believes alive
//!   (`proc`) and those it gave up on (`fail`), merging what others say, until every daemon
//!   of `proc − fail` has sent exactly the same sets (consensus). Daemons silent for
//!   `consensus_timeout` go to `fail` (those that speak but do not yet agree get three
//!   such rounds); a daemon that lists this one as failed is failed in return, so that
//!   partitions split cleanly, and its joins do not pull this daemon out of a ring it
//!   already runs (merge detection reunites the two once the sender's ring has formed).
//! - **Commit**: the representative (lowest index of the new set) sends a commit token
//!   naming the new ring (its index and a ring sequence number above any seen). On the
//!   first rotation every member writes its old ring's state (ring id, my_aru, highest
//!   sequence number seen, safe and delivered bounds) and stops taking that ring's traffic;
//!   on the second every member learns all of them.
//! - **Recovery**: the new ring starts. Members that come from the same old ring (they
//!   "move together") re-send, through the new ring's reliable order, the old-ring packets
//!   some of them may lack (each packet by one member that surely holds it), then a marker.
//!   Once every member's marker is delivered, each holds the same old-ring packets as every
//!   daemon moving with it. It then delivers the rest of the old configuration: in the
//!   regular configuration what the old rules allow (up to the first hole, SAFE only where
//!   some member proved every old member held it), then a transitional configuration (the
//!   members moving together) and in it everything else, skipping holes (after the first
//!   hole only messages of daemons moving together, which cannot depend on what is
//!   missing), then the new regular configuration.
//!
//! A running ring (operational, or the new one during recovery) that has work waiting but
//! makes no progress for `stall_timeout` also starts a run: a forged or corrupt token must
//! not wedge it for ever.
//!
//! A new failure, a join (including a restarted daemon's: a higher incarnation), or
//! token loss during gather, commit or recovery starts the run again; the last installed
//! ring stays the old configuration until a new one is installed. Messages submitted
//! while no ring runs, and those the old ring had not sent, wait in a bounded queue and
//! go out in the next ring.

mod commit;
mod gather;
mod recovery;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use conclave_control::wire::client::Service;
use thiserror::Error;

use self::wire::{
    CommitToken, DIGESTS, Join, MemberEntry, MembershipError, PacketKind, Presence, kind_of,
};
use super::ring::wire::KIND_TOKEN;
use super::ring::{
    DaemonIdx, Delivery, Dest, PacketError, Ring, RingConfig, RingId, RingStats, SubmitError,
};
use super::time::Instant;

/// Tag of a recovery message carrying one old-ring packet.
const TAG_PACKET: u8 = 1;
/// Tag of a recovery message saying its sender has re-sent all it had to.
const TAG_MARKER: u8 = 2;

/// Consensus deadlines a gather waits for daemons that answer but do not yet agree.
const CONSENSUS_ROUNDS: u32 = 3;

/// Most notes kept for the log.
const MAX_NOTES: usize = 64;

/// Names of the configuration digests a join carries, in order (for the refusal log).
pub const DIGEST_NAMES: [&str; DIGESTS] = ["daemons", "limits", "groups", "ring"];

/// Everything [`Membership`] needs, fixed for the daemon's run.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This daemon.
    pub me: DaemonIdx,
    /// Every configured daemon (sorted, distinct, containing `me`).
    pub daemons: Vec<DaemonIdx>,
    /// Settings of every ring this daemon forms (members, `me` and ring id are replaced).
    pub ring: RingConfig,
    /// This run of the daemon; must grow from run to run (persisted by the caller).
    pub incarnation: u64,
    /// Highest ring sequence number used before (persisted by the caller), so ring ids
    /// never repeat.
    pub max_ring_seq: u64,
    /// Digests of the configuration keys that must agree between daemons.
    pub digests: [u64; DIGESTS],
    /// Join messages are re-sent this often during gather.
    pub join_timeout: Duration,
    /// Daemons that have not agreed within this time of a gather round are failed.
    pub consensus_timeout: Duration,
    /// How often a representative announces its ring to daemons outside it.
    pub merge_interval: Duration,
    /// A ring with work waiting that holds nothing new for this long re-forms: a token that
    /// circulates without progress (a forged or corrupt one) must not wedge it for ever.
    pub stall_timeout: Duration,
}

impl MembershipConfig {
    /// Defaults derived from the ring's timeouts.
    pub fn new(me: DaemonIdx, daemons: Vec<DaemonIdx>, ring: RingConfig) -> Self {
        let loss = ring.token_loss_timeout;
        MembershipConfig {
            me,
            daemons,
            incarnation: 1,
            max_ring_seq: 0,
            digests: [0; DIGESTS],
            join_timeout: (loss / 20).max(Duration::from_millis(1)),
            consensus_timeout: (loss / 4).max(Duration::from_millis(4)),
            merge_interval: loss,
            stall_timeout: loss * 2,
            ring,
        }
    }
}

/// A configuration as delivered to the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// Its ring (for a transitional configuration: the old ring).
    pub ring_id: RingId,
    /// Its members.
    pub members: Vec<DaemonIdx>,
    /// Members that came from this daemon's previous configuration (for a transitional
    /// configuration these are all its members); a regular configuration with others is a
    /// merge (or includes a restarted daemon).
    pub moved_with_me: Vec<DaemonIdx>,
}

/// What [`Membership::poll_event`] hands out, in order.
#[derive(Debug)]
pub enum MemberEvent<'a> {
    /// A message, delivered in the configuration announced last.
    Deliver {
        /// The ring that ordered it.
        ring_id: RingId,
        /// The message.
        delivery: Delivery<'a>,
    },
    /// The old configuration ends: the members moving together.
    Transitional(Configuration),
    /// A new regular configuration is installed.
    Regular(Configuration),
}

/// Something an operator should hear of (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A membership run started, and why.
    RunStarted(&'static str),
    /// These daemons did not answer in time and were left out.
    Failed(Vec<DaemonIdx>),
    /// A daemon's configuration differs in the named key; its joins are refused.
    ConfigMismatch {
        /// The daemon.
        daemon: DaemonIdx,
        /// The key that differs.
        key: &'static str,
    },
}

/// Why [`Membership::handle_datagram`] dropped a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Dropped {
    /// The ring refused it.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// A malformed membership packet.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// From an old configuration or an old run of its sender.
    #[error("stale packet")]
    Stale,
    /// Not usable in the current membership state (counted, harmless).
    #[error("packet not for this membership state")]
    NotNow,
    /// Its sender is not a configured daemon or names another sender.
    #[error("packet from an unexpected sender")]
    Sender,
    /// Its sender's configuration differs.
    #[error("configuration mismatch")]
    ConfigMismatch,
}

/// Counters of the membership protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Membership runs started (gathers).
    pub runs: u64,
    /// Regular configurations installed.
    pub installs: u64,
    /// Times the token was lost.
    pub token_losses: u64,
    /// Packets of a foreign ring that started a run (merge detection).
    pub foreign_packets: u64,
    /// Packets of old rings or old runs, dropped.
    pub stale_packets: u64,
    /// Packets dropped as not usable in the current state.
    pub not_now: u64,
    /// Malformed or unauthenticated membership packets.
    pub bad_packets: u64,
    /// Joins refused for a configuration mismatch.
    pub config_mismatches: u64,
    /// Join messages sent.
    pub joins_sent: u64,
    /// Commit tokens sent (first sends and resends).
    pub commits_sent: u64,
    /// Old-ring packets re-sent for recovery.
    pub recovery_sent: u64,
    /// Old-ring packets recovered from other members.
    pub recovered: u64,
    /// Submissions refused because the wait queue was full.
    pub refused: u64,
    /// Runs started because the ring made no progress with work waiting.
    pub stalls: u64,
}

/// The membership state, as reported to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The ring runs.
    Operational,
    /// Join messages are exchanged.
    Gather,
    /// The commit token circulates.
    Commit,
    /// Old-ring messages are recovered.
    Recovery,
}

#[derive(Debug)]
struct Gather {
    proc: BTreeSet<DaemonIdx>,
    fail: BTreeSet<DaemonIdx>,
    consensus: BTreeSet<DaemonIdx>,
    /// Daemons whose joins arrived since the last consensus deadline: alive, if not yet
    /// agreeing, so they get another round before being failed.
    heard: BTreeSet<DaemonIdx>,
    /// Consensus deadlines passed in this gather.
    rounds: u32,
    next_join: Instant,
    consensus_deadline: Instant,
    /// Consensus reached, waiting for the representative's commit token until then.
    commit_deadline: Option<Instant>,
}

#[derive(Debug)]
struct Commit {
    /// The token as this daemon last forwarded it.
    token: CommitToken,
    /// The gather sets it was formed from.
    basis: BTreeSet<DaemonIdx>,
    resend_at: Instant,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Recovery messages still arrive.
    Recovering,
    /// Delivering the old configuration's regular part.
    Regular,
    /// Delivering in the transitional configuration.
    Transitional,
    /// Everything of the old configuration is out; the new one installs next.
    Install,
}

#[derive(Debug)]
struct Recovery {
    /// The complete token (rotation 2).
    token: CommitToken,
    basis: BTreeSet<DaemonIdx>,
    /// The new ring; the representative starts it once the token's second rotation is back.
    new: Option<Ring>,
    /// Members moving together with this daemon (same old ring), sorted.
    trans: Vec<DaemonIdx>,
    /// Entries of those members.
    group: Vec<MemberEntry>,
    safe: u64,
    /// Next old-ring sequence number to consider re-sending, and the last.
    cursor: u64,
    last: u64,
    marker_sent: bool,
    markers: BTreeSet<DaemonIdx>,
    finish: Finish,
    /// Resend the commit token until the new ring shows life.
    resend_at: Option<Instant>,
    deadline: Instant,
}

#[derive(Debug)]
enum Phase {
    Operational,
    Gather(Gather),
    Commit(Commit),
    Recovery(Box<Recovery>),
}

/// Ring-level switches `poll_event` makes at its next call (see there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    EnterTransitional,
    Install,
}

/// One daemon's membership and ordering (see the module docs).
#[derive(Debug)]
pub struct Membership {
    cfg: MembershipConfig,
    phase: Phase,
    /// The ring of the last installed configuration (before the first install, a
    /// placeholder ring of this daemon alone that never runs).
    current: Ring,
    /// Whether `current` was installed by a membership run (and is not the placeholder).
    installed: bool,
    incarnations: Vec<u64>,
    last_heard: Vec<Option<Instant>>,
    max_ring_seq: u64,
    /// The last commit token taken: its ring and hop counter (older copies are stale).
    last_commit: Option<(RingId, u64)>,
    switch: Option<Switch>,
    /// Messages waiting for a ring (submitted while none runs, or unsent by the old one).
    carry: VecDeque<(Service, Vec<u8>)>,
    carry_bytes: usize,
    out: VecDeque<(Dest, Vec<u8>)>,
    /// Unordered messages of the new ring that arrived during recovery: they are handed
    /// out right after the new configuration is installed.
    deferred: VecDeque<(u64, DaemonIdx, Service, Vec<u8>)>,
    /// The deferred message being handed out (its bytes are lent from here).
    lent: Option<(u64, DaemonIdx, Service, Vec<u8>)>,
    next_presence: Instant,
    /// The running ring, its received-through point, and since when that has not moved.
    progress: (RingId, u64, Instant),
    notes: VecDeque<Note>,
    stats: MembershipStats,
    /// Counters of rings this daemon no longer runs.
    retired: RingStats,
    buf_pool: Vec<Vec<u8>>,
}

fn ring_config(
    template: &RingConfig,
    me: DaemonIdx,
    members: Vec<DaemonIdx>,
    id: RingId,
) -> RingConfig {
    let mut rc = template.clone();
    rc.me = me;
    rc.members = members;
    rc.ring_id = id;
    rc
}

impl Membership {
    /// Starts a daemon: it gathers with every configured daemon at once.
    pub fn new(cfg: MembershipConfig, now: Instant) -> Result<Self, super::ring::ConfigError> {
        let me = cfg.me;
        let placeholder = RingId {
            representative: me,
            seq: 0,
        };
        let current = Ring::new(ring_config(&cfg.ring, me, vec![me], placeholder), now)?;
        let slots = cfg
            .daemons
            .iter()
            .map(|d| usize::from(d.0) + 1)
            .max()
            .unwrap_or(1);
        let mut incarnations = vec![0; slots];
        if let Some(i) = incarnations.get_mut(usize::from(me.0)) {
            *i = cfg.incarnation;
        }
        let mut m = Membership {
            max_ring_seq: cfg.max_ring_seq,
            phase: Phase::Operational,
            current,
            installed: false,
            incarnations,
            last_heard: vec![None; slots],
            last_commit: None,
            switch: None,
            carry: VecDeque::new(),
            carry_bytes: 0,
            out: VecDeque::new(),
            deferred: VecDeque::new(),
            lent: None,
            next_presence: now,
            progress: (RingId::default(), 0, now),
            notes: VecDeque::new(),
            stats: MembershipStats::default(),
            retired: RingStats::default(),
            buf_pool: Vec::new(),
            cfg,
        };
        let all: Vec<DaemonIdx> = m.cfg.daemons.clone();
        m.start_gather(now, &all, "start");
        Ok(m)
    }

    /// This daemon.
    pub fn me(&self) -> DaemonIdx {
        self.cfg.me
    }

    /// The last installed configuration's ring id, or `None` before the first.
    pub fn ring_id(&self) -> Option<RingId> {
        self.installed.then(|| self.current.config().ring_id)
    }

    /// Members of the last installed configuration (only this daemon before the first).
    pub fn members(&self) -> &[DaemonIdx] {
        &self.current.config().members
    }

    /// The other members of the ring now sending data ([`Dest::All`] goes to them).
    pub fn ring_peers(&self) -> impl Iterator<Item = DaemonIdx> + '_ {
        let me = self.cfg.me;
        self.running_ring()
            .config()
            .members
            .iter()
            .copied()
            .filter(move |&d| d != me)
    }

    /// The id of the ring now sending data (the new one during recovery): the set of
    /// [`Membership::ring_peers`] changes only with it.
    pub fn sending_ring_id(&self) -> RingId {
        self.running_ring().config().ring_id
    }

    /// Where the protocol stands.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Operational => State::Operational,
            Phase::Gather(_) => State::Gather,
            Phase::Commit(_) => State::Commit,
            Phase::Recovery(_) => State::Recovery,
        }
    }

    /// The ring of the last installed configuration (its counters and settings).
    pub fn ring(&self) -> &Ring {
        &self.current
    }

    /// Ring counters summed over every ring this daemon has run.
    pub fn ring_stats(&self) -> RingStats {
        let mut total = self.retired.clone();
        total.absorb(self.current.stats());
        if let Phase::Recovery(r) = &self.phase
            && let Some(n) = &r.new
        {
            total.absorb(n.stats());
        }
        total
    }

    /// Membership counters.
    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }

    /// Highest ring sequence number used or seen: persist it, and pass it back at the
    /// next start, so that ring ids never repeat.
    pub fn max_ring_seq(&self) -> u64 {
        self.max_ring_seq
    }

    /// Last known run of each daemon (0 = never heard), by index.
    pub fn incarnations(&self) -> &[u64] {
        &self.incarnations
    }

    /// When each daemon was last heard from, by index.
    pub fn last_heard(&self) -> &[Option<Instant>] {
        &self.last_heard
    }

    /// Messages waiting for a ring to run.
    pub fn waiting(&self) -> usize {
        self.carry.len()
    }

    fn note(&mut self, note: Note) {
        // Notes are for the log; if nobody reads them, the oldest go.
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back(note);
    }

    /// The next note for the log.
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    /// Whether this daemon, in configuration `ring_id`, holds data packet `seq` of it.
    pub fn holds(&self, ring_id: RingId, seq: u64) -> bool {
        if self.current.config().ring_id == ring_id {
            return self.current.holds(seq);
        }
        match &self.phase {
            Phase::Recovery(r) => r
                .new
                .as_ref()
                .is_some_and(|n| n.config().ring_id == ring_id && n.holds(seq)),
            _ => false,
        }
    }

    /// Queues one message for the total order. While no ring runs it waits (bounded by
    /// the ring's send-queue limits); beyond that it is refused with backpressure.
    pub fn submit(&mut self, service: Service, payload: &[u8]) -> Result<(), SubmitError> {
        self.submit_with(service, |b| b.extend_from_slice(payload))
    }

    /// Like [`Membership::submit`], writing the message in place with `fill`.
    pub fn submit_with(
        &mut self,
        service: Service,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SubmitError> {
        if matches!(self.phase, Phase::Operational) && self.carry.is_empty() && self.installed {
            return self.current.submit_with(service, fill);
        }
        let mut bytes = Vec::new();
        fill(&mut bytes);
        let max = self.cfg.ring.max_message;
        if bytes.len() > max {
            return Err(SubmitError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        if self.carry.len() >= self.cfg.ring.max_pending_messages
            || self.carry_bytes + bytes.len() > self.cfg.ring.max_pending_bytes
        {
            self.stats.refused += 1;
            return Err(SubmitError::Backpressure);
        }
        self.carry_bytes += bytes.len();
        self.carry.push_back((service, bytes));
        Ok(())
    }

    fn flush_carry(&mut self) {
        if !matches!(self.phase, Phase::Operational) || !self.installed {
            return;
        }
        while let Some((service, bytes)) = self.carry.pop_front() {
            match self.current.submit(service, &bytes) {
                Ok(()) | Err(SubmitError::TooLarge { .. }) => self.carry_bytes -= bytes.len(),
                Err(SubmitError::Backpressure) => {
                    self.carry.push_front((service, bytes));
                    return;
                }
            }
        }
    }

    /// Takes one datagram from daemon `from`. An error says why it was dropped (counted).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        datagram: &[u8],
    ) -> Result<(), Dropped> {
        if from == self.cfg.me || self.cfg.daemons.binary_search(&from).is_err() {
            return Err(Dropped::Sender);
        }
        let Some(kind) = kind_of(datagram) else {
            // Let the ring classify (and count) what is wrong with it.
            return Err(self
                .current
                .handle_datagram(now, from, datagram)
                .err()
                .unwrap_or(PacketError::Truncated)
                .into());
        };
        let result = match kind {
            PacketKind::Ring(id) => self.on_ring_packet(now, from, id, datagram),
            PacketKind::Join => match Join::decode(datagram) {
                Ok(j) => self.on_join(now, from, j),
                Err(e) => Err(e.into()),
            },
            PacketKind::Commit => match CommitToken::decode(datagram) {
                Ok(t) => self.on_commit(now, from, t),
                Err(e) => Err(e.into()),
            },
            PacketKind::Presence => match Presence::decode(datagram) {
                Ok(p) => self.on_presence(now, from, p),
                Err(e) => Err(e.into()),
            },
        };
        self.note_progress(now);
        match &result {
            Err(Dropped::Membership(_)) => self.stats.bad_packets += 1,
            Err(Dropped::Stale) => self.stats.stale_packets += 1,
            Err(Dropped::NotNow) => self.stats.not_now += 1,
            _ => {}
        }
        if !matches!(result, Err(Dropped::Membership(_) | Dropped::Sender))
            && let Some(t) = self.last_heard.get_mut(usize::from(from.0))
        {
            *t = Some(now);
        }
        result
    }

    fn on_ring_packet(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        id: RingId,
        datagram: &[u8],
    ) -> Result<(), Dropped> {
        let current_id = self.current.config().ring_id;
        let is_token = datagram.get(1) == Some(&KIND_TOKEN);
        match &mut self.phase {
            Phase::Operational if id == current_id && self.installed => {
                Ok(self.current.handle_datagram(now, from, datagram)?)
            }
            Phase::Gather(_) if id == current_id && self.installed => {
                if is_token {
                    return Err(Dropped::NotNow);
                }
                Ok(self.current.handle_datagram(now, from, datagram)?)
            }
            Phase::Recovery(r) if r.new.as_ref().is_some_and(|n| n.config().ring_id == id) => {
                r.resend_at = None;
                let result = match r.new.as_mut() {
                    Some(n) => n.handle_datagram(now, from, datagram),
                    None => Ok(()),
                };
                self.drain_recovery();
                Ok(result?)
            }
            _ => self.foreign(now, from, id),
        }
    }

    /// Handles every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let retransmit = self.cfg.ring.token_retransmit_timeout;
        match &mut self.phase {
            Phase::Operational => {
                if self.current.poll_timeout().is_some_and(|t| t <= now) {
                    self.current.handle_timeout(now);
                }
                if self.current.token_loss_deadline().is_some_and(|t| t <= now) {
                    self.stats.token_losses += 1;
                    self.start_gather(now, &[], "token loss");
                    return;
                }
                self.note_progress(now);
                if self.stall_deadline().is_some_and(|t| t <= now) {
                    self.stats.stalls += 1;
                    self.start_gather(now, &[], "no progress with messages waiting");
                    return;
                }
                if self.next_presence <= now {
                    self.next_presence = now + self.cfg.merge_interval;
                    self.send_presence();
                }
            }
            Phase::Gather(g) => {
                if g.commit_deadline.is_some_and(|t| t <= now) {
                    // The representative went silent after consensus.
                    let rep = g.proc.difference(&g.fail).next().copied();
                    if let Some(rep) = rep {
                        g.fail.insert(rep);
                    }
                    g.commit_deadline = None;
                    g.consensus.clear();
                    g.consensus.insert(self.cfg.me);
                    g.consensus_deadline = now + self.cfg.consensus_timeout;
                    if let Some(rep) = rep {
                        self.note(Note::Failed(vec![rep]));
                    }
                    self.send_join(now);
                    self.check_consensus(now);
                    return;
                }
                if g.consensus_deadline <= now {
                    // Daemons that spoke this round are alive and converging; only after
                    // a few rounds without agreement are they failed too, which bounds the
                    // run when links are one-way or flapping.
                    let patient = g.rounds < CONSENSUS_ROUNDS;
                    let silent: Vec<DaemonIdx> = g
                        .proc
                        .difference(&g.fail)
                        .filter(|d| !(g.consensus.contains(d) || patient && g.heard.contains(d)))
                        .copied()
                        .collect();
                    g.rounds += 1;
                    g.heard.clear();
                    g.consensus_deadline = now + self.cfg.consensus_timeout;
                    if !silent.is_empty() {
                        // New sets: every agreement so far was on the old ones.
                        g.fail.extend(silent.iter().copied());
                        g.consensus.clear();
                        g.consensus.insert(self.cfg.me);
                        self.note(Note::Failed(silent));
                    }
                    self.send_join(now);
                    self.check_consensus(now);
                    return;
                }
                if g.next_join <= now {
                    self.send_join(now);
                }
            }
            Phase::Commit(c) => {
                if c.deadline <= now {
                    self.start_gather(now, &[], "commit token lost");
                    return;
                }
                if c.resend_at <= now {
                    c.resend_at = now + retransmit;
                    let token = c.token.clone();
                    self.send_commit(&token);
                }
            }
            Phase::Recovery(r) => {
                let lost = match &r.new {
                    Some(n) => n.token_loss_deadline().is_some_and(|t| t <= now),
                    None => r.deadline <= now,
                };
                if lost && r.finish == Finish::Recovering {
                    self.start_gather(now, &[], "token loss in recovery");
                    return;
                }
                self.note_progress(now);
                if self.stall_deadline().is_some_and(|t| t <= now) {
                    self.stats.stalls += 1;
                    self.start_gather(now, &[], "no progress in recovery");
                    return;
                }
                let Phase::Recovery(r) = &mut self.phase else {
                    return;
                };
                if let Some(n) = r.new.as_mut()
                    && n.poll_timeout().is_some_and(|t| t <= now)
                {
                    n.handle_timeout(now);
                }
                if r.resend_at.is_some_and(|t| t <= now) {
                    r.resend_at = Some(now + retransmit);
                    let token = r.token.clone();
                    self.send_commit(&token);
                }
                self.drain_recovery();
            }
        }
    }

    fn send_presence(&mut self) {
        let me = self.cfg.me;
        let id = self.current.config().ring_id;
        let outside = self.cfg.daemons.len() > self.current.config().members.len();
        if id.representative != me || !outside || !self.installed {
            return;
        }
        let mut b = self.buf_pool.pop().unwrap_or_default();
        Presence {
            ring_id: id,
            sender: me,
            incarnation: self.cfg.incarnation,
        }
        .encode(&mut b);
        self.out.push_back((Dest::Everyone, b));
    }

    /// The ring now carrying traffic: the new one during recovery, once it exists.
    fn running_ring(&self) -> &Ring {
        match &self.phase {
            Phase::Recovery(r) => r.new.as_ref().unwrap_or(&self.current),
            _ => &self.current,
        }
    }

    /// Restarts the stall clock whenever the running ring holds or delivers more (or is a
    /// new ring).
    fn note_progress(&mut self, now: Instant) {
        let ring = self.running_ring();
        let id = ring.config().ring_id;
        let s = ring.state();
        let mark = s.my_aru.wrapping_add(s.delivered_through);
        if (id, mark) != (self.progress.0, self.progress.1) {
            self.progress = (id, mark, now);
        }
    }

    /// When a running ring with work waiting that makes no progress must re-form; `None`
    /// while it is idle, or while no ring runs (gather and commit have their own timers).
    fn stall_deadline(&self) -> Option<Instant> {
        let running = match &self.phase {
            Phase::Operational => self.installed,
            Phase::Recovery(r) => r.new.is_some() && r.finish == Finish::Recovering,
            _ => false,
        };
        let ring = self.running_ring();
        let same_ring = self.progress.0 == ring.config().ring_id;
        (running && same_ring && ring.work_waiting())
            .then(|| self.progress.2 + self.cfg.stall_timeout)
    }

    /// When [`Membership::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let min = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match &self.phase {
            Phase::Operational => {
                let presence = self.installed.then_some(self.next_presence);
                min(
                    min(
                        self.current.poll_timeout(),
                        self.current.token_loss_deadline(),
                    ),
                    min(presence, self.stall_deadline()),
                )
            }
            Phase::Gather(g) => min(
                Some(g.next_join.min(g.consensus_deadline)),
                g.commit_deadline,
            ),
            Phase::Commit(c) => Some(c.resend_at.min(c.deadline)),
            Phase::Recovery(r) => {
                let ring = match &r.new {
                    Some(n) => min(n.poll_timeout(), n.token_loss_deadline()),
                    None => Some(r.deadline),
                };
                min(min(ring, r.resend_at), self.stall_deadline())
            }
        }
    }

    /// Lends the next datagram to `emit` (see [`Ring::poll_transmit_with`]).
    pub fn poll_transmit_with<R>(
        &mut self,
        now: Instant,
        emit: impl FnOnce(Dest, &[u8]) -> R,
    ) -> Option<R> {
        if let Some((dest, b)) = self.out.pop_front() {
            let r = emit(dest, &b);
            self.buf_pool.push(b);
            return Some(r);
        }
        match &mut self.phase {
            Phase::Operational => {
                self.flush_carry();
                self.current.poll_transmit_with(now, |t, b| emit(t.dest, b))
            }
            Phase::Recovery(_) => {
                self.pump_recovery();
                let Phase::Recovery(r) = &mut self.phase else {
                    return None;
                };
                r.new
                    .as_mut()?
                    .poll_transmit_with(now, |t, b| emit(t.dest, b))
            }
            _ => None,
        }
    }

    /// Like [`Membership::poll_transmit_with`], copying into `buf`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Dest> {
        self.poll_transmit_with(now, |d, b| {
            buf.clear();
            buf.extend_from_slice(b);
            d
        })
    }

    /// The next event: a message, or a configuration change (see [`MemberEvent`]).
    pub fn poll_event(&mut self) -> Option<MemberEvent<'_>> {
        self.apply_switch();
        let finish = match &self.phase {
            Phase::Recovery(r) => Some(r.finish),
            _ => None,
        };
        if finish == Some(Finish::Install) {
            return None;
        }
        let ring_id = self.current.config().ring_id;
        if matches!(self.phase, Phase::Operational) && !self.deferred.is_empty() {
            self.lent = self.deferred.pop_front();
            let (seq, origin, service, bytes) = self.lent.as_ref()?;
            return Some(MemberEvent::Deliver {
                ring_id,
                delivery: Delivery {
                    seq: *seq,
                    origin: *origin,
                    service: *service,
                    payload: bytes,
                },
            });
        }
        if let Some(delivery) = self.current.poll_delivery() {
            return Some(MemberEvent::Deliver { ring_id, delivery });
        }
        // `current` stays borrowed from here on; its switches wait for the next call.
        let Phase::Recovery(r) = &mut self.phase else {
            return None;
        };
        match r.finish {
            Finish::Regular => {
                r.finish = Finish::Transitional;
                self.switch = Some(Switch::EnterTransitional);
                Some(MemberEvent::Transitional(Configuration {
                    ring_id: recovery::old_ring_of(&r.group),
                    members: r.trans.clone(),
                    moved_with_me: r.trans.clone(),
                }))
            }
            Finish::Transitional => {
                r.finish = Finish::Install;
                self.switch = Some(Switch::Install);
                Some(MemberEvent::Regular(Configuration {
                    ring_id: r.token.ring_id,
                    members: r.token.members.iter().map(|m| m.daemon).collect(),
                    moved_with_me: r.trans.clone(),
                }))
            }
            _ => None,
        }
    }

    fn apply_switch(&mut self) {
        match self.switch.take() {
            Some(Switch::EnterTransitional) => {
                if let Phase::Recovery(r) = &self.phase {
                    self.current.enter_transitional(&r.trans);
                }
            }
            Some(Switch::Install) => self.install(),
            None => {}
        }
    }

    fn install(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Operational);
        let Phase::Recovery(r) = phase else {
            self.phase = phase;
            return;
        };
        let Some(new) = r.new else {
            debug_assert!(false, "install without a new ring");
            return;
        };
        self.retired.absorb(self.current.stats());
        self.current = new;
        self.installed = true;
        self.stats.installs += 1;
        self.flush_carry();
    }
}
