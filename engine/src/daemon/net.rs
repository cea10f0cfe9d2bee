//! The multi-daemon sequencer: events travel the Totem token ring over batched UDP.
//!
//! [`RingSequencer`] is the [`Sequencer`] a daemon uses when its configuration lists more
//! than one daemon. `submit` only encodes the event into the ring's send queue; nothing is
//! applied until the token has put it in the total order, and then every daemon applies it
//! at the same point of that order, so every daemon holds the same group table and every
//! client sees the same views in the same order relative to messages.
//!
//! One worker cycle ([`Sequencer::drive`]): move events held back by backpressure into the
//! ring, fire the ring's timers, queue every datagram the ring wants sent (a multicast is
//! one send per other daemon), hand all queued sends to the kernel and take every datagram
//! that arrived in one system call, feed those to the ring (datagrams from an address not
//! in the configuration, and those removed by the `debug-loss` profile, are dropped and
//! counted first), and apply every delivery to the table. This repeats, a bounded number of
//! times, while datagrams keep arriving.
//!
//! Daemon indices are positions in the configuration's daemon list sorted by name, so every
//! daemon numbers the ring alike.
//!
//! Membership is dynamic ([`Membership`]): a daemon starts by gathering with every
//! configured daemon it hears, forms a ring of those that answer, and re-forms it whenever
//! the token is lost, a daemon joins or restarts, or rings meet after a partition. Events
//! submitted while no ring runs wait (bounded); the group table follows every configuration
//! change through [`GroupSync`] (transitional views, state exchange after merges).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use conclave_control::wire::client::{Service, max_frame_len};
use serde_json::{Value, json};

use crate::config::{Config, Profile};
use crate::core::group_sync::{GroupSync, epoch_of};
use crate::core::membership::wire::DIGESTS;
use crate::core::membership::{MemberEvent, Membership, MembershipConfig, Note, State};
use crate::core::ring::{DaemonIdx, Dest, RingConfig, RingId, RingStats, SubmitError};
use crate::core::time::Instant;
use crate::core::{Event, GroupTable, Outbox, Sequencer};
use crate::daemon::persist::RunState;
use crate::io::{Backend, IoError, IoOptions, IoStats, UdpIo};

/// Rounds of send/receive one `drive` call does at most before letting clients in.
const MAX_ROUNDS: usize = 8;

/// Why the ring sequencer could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The ring settings derived from config and profile are inconsistent.
    #[error("ring settings: {0}")]
    Ring(#[from] crate::core::ring::ConfigError),
    /// The UDP socket or its backend could not be set up.
    #[error("ring socket: {0}")]
    Io(#[from] IoError),
    /// Two daemons share one ring address, so their datagrams cannot be told apart.
    #[error("daemons {0:?} and {1:?} have the same ring address {2}")]
    SharedAddress(String, String, SocketAddr),
}

/// Drops received datagrams on purpose, reproducibly (testing profiles only).
#[derive(Debug)]
struct Loss {
    /// Drop when the next draw modulo 1,000,000 is below this.
    threshold: u64,
    state: u64,
}

impl Loss {
    fn new(percent: f64, seed: u64, me: DaemonIdx) -> Option<Self> {
        if percent <= 0.0 {
            return None;
        }
        // Validation bounds the percentage to 0..=100, so this is 0..=1e6.
        let threshold = (percent * 10_000.0).round() as u64;
        // Each daemon draws its own sequence from the shared seed.
        let state = seed ^ (u64::from(me.0) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some(Self { threshold, state })
    }

    /// SplitMix64: tiny, seedable, and good enough to pick datagrams to drop.
    fn drop_next(&mut self) -> bool {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 1_000_000 < self.threshold
    }
}

/// Drops and faults counted outside the ring itself.
#[derive(Debug, Default, Clone)]
struct NetStats {
    /// Datagrams from an address that is no daemon of the configuration.
    dropped_unknown_address: u64,
    /// Datagrams dropped by the loss profile.
    dropped_loss_injected: u64,
    /// Sends the UDP layer refused.
    send_errors: u64,
    /// Events refused by the ring for backpressure and held until it drained.
    held_back: u64,
    /// Events larger than the ring accepts (cannot happen with consistent limits).
    too_large: u64,
    /// Datagrams refused by membership or the ring, by reason.
    dropped_membership: u64,
    dropped_stale: u64,
    dropped_not_now: u64,
    dropped_sender: u64,
    dropped_config_mismatch: u64,
}

/// The ring-backed [`Sequencer`] (see the module docs).
pub struct RingSequencer {
    membership: Membership,
    sync: GroupSync,
    run: RunState,
    udp: UdpIo,
    /// Ring address of every daemon, by index.
    peers: Vec<SocketAddr>,
    names: Vec<String>,
    by_addr: HashMap<SocketAddr, DaemonIdx>,
    me: DaemonIdx,
    /// Ring address of every daemon but this one: where membership messages go.
    everyone: Vec<SocketAddr>,
    /// Ring addresses of the other members of the ring now sending, and that ring's id
    /// (rebuilt only when it changes).
    ring_peers: Vec<SocketAddr>,
    ring_peers_of: Option<RingId>,
    /// Events refused for backpressure, in order; while any wait here every new event
    /// queues behind them, so the order of submission is kept.
    held: VecDeque<(Service, Vec<u8>)>,
    more: bool,
    loss: Option<Loss>,
    loss_percent: f64,
    stats: NetStats,
    /// When the daemon started (the base of the sequencer's clock), for status ages.
    last_now: Instant,
}

impl std::fmt::Debug for RingSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingSequencer")
            .field("me", &self.me)
            .field("peers", &self.peers)
            .field("udp", &self.udp)
            .finish_non_exhaustive()
    }
}

/// The daemons of `config` sorted by name: a daemon's index is its position here.
pub fn daemon_order(config: &Config) -> Vec<(String, SocketAddr)> {
    let mut all: Vec<_> = config
        .daemons
        .iter()
        .map(|d| (d.name.clone(), SocketAddr::new(d.address, d.ring_port)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// FNV-1a: a stable 64-bit digest (to notice differing settings, not to resist forgery).
fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Digests of the settings that must agree across daemons, in the order of
/// [`DIGEST_NAMES`](crate::core::membership::DIGEST_NAMES): the daemon list, the message
/// limits, the group policy, and the ring's wire settings.
fn config_digests(config: &Config, profile: &Profile) -> [u64; DIGESTS] {
    let daemons: Vec<String> = daemon_order(config)
        .iter()
        .map(|(n, a)| format!("{n}@{a}"))
        .collect();
    [
        digest(&daemons.join(",")),
        digest(&format!("{}", config.clients.max_payload)),
        digest(&format!("{:?}", config.groups)),
        digest(&format!("{}", profile.ring.max_datagram_bytes)),
    ]
}

/// Where a daemon keeps its run state by default.
pub fn default_state_dir(config: &Config) -> std::path::PathBuf {
    let port = config
        .daemons
        .iter()
        .find(|d| d.name == config.me)
        .map_or(0, |d| d.ring_port);
    std::env::temp_dir().join(format!("conclave-{}-{port}", config.me))
}

impl RingSequencer {
    /// Binds this daemon's ring port and starts its membership at `now`.
    pub fn new(config: &Config, profile: &Profile, now: Instant) -> Result<Self, NetError> {
        let order = daemon_order(config);
        for (i, (name, addr)) in order.iter().enumerate() {
            if let Some((other, _)) = order[..i].iter().find(|(_, a)| a == addr) {
                return Err(NetError::SharedAddress(other.clone(), name.clone(), *addr));
            }
        }
        let pos = order
            .iter()
            .position(|(n, _)| *n == config.me)
            .unwrap_or_default();
        // Validation bounds nothing here; a configuration of 65535+ daemons fails below.
        let me = DaemonIdx(u16::try_from(pos).unwrap_or(u16::MAX));
        let n = u16::try_from(order.len()).unwrap_or(u16::MAX);
        let daemons: Vec<DaemonIdx> = (0..n).map(DaemonIdx).collect();
        let t = &profile.ring;
        let mut rc = RingConfig::new(me, daemons.clone());
        let opts = IoOptions {
            backend: t.io_backend,
            batch: 64,
            ..IoOptions::default()
        };
        // One rotation's packets must fit a receiver's socket buffer, or a burst overflows
        // it and every overflow costs a retransmission (and often a token timeout).
        let fit = u32::try_from(opts.sock_buf_bytes / t.max_datagram_bytes.max(1))
            .unwrap_or(u32::MAX)
            .max(1);
        rc.window_per_rotation = t.window_per_rotation.min(fit);
        rc.window_per_daemon = t.window_per_daemon.min(rc.window_per_rotation);
        if rc.window_per_rotation < t.window_per_rotation {
            tracing::info!(
                asked = t.window_per_rotation,
                used = rc.window_per_rotation,
                "ring window capped so one rotation fits the UDP receive buffer"
            );
        }
        rc.max_unstable = rc
            .max_unstable
            .max(rc.window_per_rotation.saturating_mul(4));
        rc.max_datagram = t.max_datagram_bytes;
        // An event is the client's frame plus the sender's name and a few header bytes.
        rc.max_message = max_frame_len(config.clients.max_payload) + 1024;
        rc.max_pending_bytes = rc.max_pending_bytes.max(2 * rc.max_message);
        rc.token_retransmit_timeout = Duration::from_millis(t.retransmit_timeout_ms);
        rc.token_loss_timeout = Duration::from_millis(t.token_timeout_ms);
        rc.accelerated = t.accelerated;
        rc.idle_token_hold = Duration::from_micros(t.idle_token_hold_us);
        rc.validate()?;
        // Daemons on one host may share a configuration file: each takes its own folder.
        let state_dir = config
            .state_dir
            .as_ref()
            .map(|d| d.join(&config.me))
            .unwrap_or_else(|| default_state_dir(config));
        let run = RunState::load(&state_dir);
        let mut mc = MembershipConfig::new(me, daemons, rc);
        mc.incarnation = run.incarnation;
        mc.max_ring_seq = run.max_ring_seq;
        mc.digests = config_digests(config, profile);
        if t.consensus_timeout_ms > 0 {
            mc.consensus_timeout = Duration::from_millis(t.consensus_timeout_ms);
        }
        if t.merge_interval_ms > 0 {
            mc.merge_interval = Duration::from_millis(t.merge_interval_ms);
        }
        let udp = UdpIo::bind(order[pos].1, opts)?;
        let membership = Membership::new(mc, now)?;
        let by_addr = order
            .iter()
            .enumerate()
            .map(|(i, (_, a))| (*a, DaemonIdx(u16::try_from(i).unwrap_or(u16::MAX))))
            .collect();
        let everyone = order
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != pos)
            .map(|(_, (_, a))| *a)
            .collect();
        let names: Vec<String> = order.iter().map(|(n, _)| n.clone()).collect();
        tracing::info!(
            me = me.0,
            daemons = order.len(),
            incarnation = run.incarnation,
            backend = ?udp.backend(),
            addr = %udp.local_addr(),
            state_dir = %state_dir.display(),
            "ring started: gathering with the configured daemons"
        );
        Ok(Self {
            membership,
            sync: GroupSync::new(names.clone(), me),
            run,
            udp,
            peers: order.iter().map(|(_, a)| *a).collect(),
            names,
            by_addr,
            me,
            everyone,
            ring_peers: Vec::new(),
            ring_peers_of: None,
            held: VecDeque::new(),
            more: false,
            loss: Loss::new(t.loss_percent, t.loss_seed, me),
            loss_percent: t.loss_percent,
            stats: NetStats::default(),
            last_now: now,
        })
    }

    /// The ring counters, summed over every ring this daemon has run.
    pub fn ring_stats(&self) -> RingStats {
        self.membership.ring_stats()
    }

    /// The UDP layer's counters.
    pub fn io_stats(&self) -> IoStats {
        self.udp.stats()
    }

    /// Whether the ring took the event (or dropped it for good); false for backpressure.
    fn accepted(&mut self, r: Result<(), SubmitError>) -> bool {
        match r {
            Ok(()) => true,
            Err(SubmitError::Backpressure) => false,
            Err(SubmitError::TooLarge { len, max }) => {
                // max_message covers the largest frame a client may send.
                self.stats.too_large += 1;
                tracing::error!(len, max, "event larger than the ring accepts; dropped");
                true
            }
        }
    }

    fn release_held(&mut self) {
        while let Some((service, bytes)) = self.held.pop_front() {
            let r = self.membership.submit(service, &bytes);
            if !self.accepted(r) {
                self.held.push_front((service, bytes));
                return;
            }
        }
    }

    fn name(&self, d: DaemonIdx) -> &str {
        self.names.get(usize::from(d.0)).map_or("?", String::as_str)
    }

    fn names_of(&self, set: &[DaemonIdx]) -> Vec<&str> {
        set.iter().map(|&d| self.name(d)).collect()
    }

    /// The addresses `Dest::All` goes to: the other members of the ring now sending.
    fn refresh_ring_peers(&mut self) {
        let id = self.membership.sending_ring_id();
        if self.ring_peers_of == Some(id) {
            return;
        }
        self.ring_peers_of = Some(id);
        self.ring_peers.clear();
        let peers = &self.peers;
        self.ring_peers.extend(
            self.membership
                .ring_peers()
                .filter_map(|d| peers.get(usize::from(d.0)).copied()),
        );
    }

    fn queue_transmits(&mut self, now: Instant) {
        self.refresh_ring_peers();
        let Self {
            membership,
            udp,
            peers,
            everyone,
            ring_peers,
            stats,
            ..
        } = self;
        // Each datagram goes from the ring's store straight into one pooled send buffer,
        // which every peer's send then reads.
        while let Some(result) = membership.poll_transmit_with(now, |dest, bytes| match dest {
            Dest::All => udp.push_multicast(ring_peers, bytes),
            Dest::Everyone => udp.push_multicast(everyone, bytes),
            Dest::One(d) => match peers.get(usize::from(d.0)) {
                Some(addr) => udp.push_send(*addr, bytes),
                None => Ok(()),
            },
        }) {
            if let Err(e) = result {
                stats.send_errors += 1;
                tracing::debug!("ring send failed: {e}");
            }
        }
    }

    fn log_notes(&mut self) {
        while let Some(note) = self.membership.poll_note() {
            match note {
                Note::RunStarted(why) => {
                    tracing::info!(state = ?self.membership.state(), "membership run started: {why}")
                }
                Note::Failed(ds) => tracing::warn!(
                    daemons = ?self.names_of(&ds),
                    "daemons silent during the membership run: left out of the next configuration"
                ),
                Note::ConfigMismatch { daemon, key } => tracing::error!(
                    daemon = self.name(daemon),
                    key,
                    "daemon refused: its configuration differs in {key} (fix the configuration files)"
                ),
            }
        }
    }

    fn deliver(&mut self, table: &mut GroupTable, out: &mut dyn Outbox) {
        loop {
            let state = match self.membership.poll_event() {
                None => break,
                Some(MemberEvent::Deliver { delivery, .. }) => {
                    if let Err(e) = self.sync.ordered(delivery.payload, table, out) {
                        tracing::warn!(
                            origin = delivery.origin.0,
                            "undecodable ordered event: {e}"
                        );
                    }
                    continue;
                }
                Some(MemberEvent::Transitional(c)) => {
                    let gone: Vec<DaemonIdx> = self
                        .membership
                        .members()
                        .iter()
                        .filter(|d| !c.members.contains(d))
                        .copied()
                        .collect();
                    if !gone.is_empty() {
                        tracing::warn!(
                            gone = ?self.names_of(&gone),
                            moving = ?self.names_of(&c.members),
                            "daemons left the configuration: their clients leave their groups"
                        );
                    }
                    self.sync.transitional(&c, table, out);
                    continue;
                }
                Some(MemberEvent::Regular(c)) => {
                    let joined: Vec<DaemonIdx> = c
                        .members
                        .iter()
                        .filter(|d| !c.moved_with_me.contains(d))
                        .copied()
                        .collect();
                    tracing::info!(
                        ring = %format!("{}.{}", c.ring_id.representative.0, c.ring_id.seq),
                        members = ?self.names_of(&c.members),
                        joined = ?self.names_of(&joined),
                        "new daemon configuration installed"
                    );
                    self.run
                        .save_ring_seq(c.ring_id.seq.max(self.membership.max_ring_seq()));
                    self.sync.regular(&c, table, out)
                }
            };
            if let Some(state) = state {
                // The state exchange's message goes first into the new ring.
                let r = self.membership.submit(Service::Agreed, &state);
                if !self.accepted(r) {
                    self.held.push_front((Service::Agreed, state));
                }
            }
        }
        self.run.save_ring_seq(self.membership.max_ring_seq());
    }
}

impl Sequencer for RingSequencer {
    fn submit(&mut self, event: &Event<'_>, _table: &mut GroupTable, _out: &mut dyn Outbox) {
        // Everything travels in the total order: membership events must, and a message
        // delivered outside it (RELIABLE) could overtake its sender's Connect or Join at
        // another daemon and meet a different group table there.
        let service = match event {
            Event::Data {
                service: Service::Safe,
                ..
            } => Service::Safe,
            _ => Service::Agreed,
        };
        // Encoded straight into the ring's send queue: one copy of the client's payload.
        if self.held.is_empty() {
            let r = self
                .membership
                .submit_with(service, |buf| event.encode(buf));
            if self.accepted(r) {
                return;
            }
        }
        self.stats.held_back += 1;
        let mut bytes = Vec::new();
        event.encode(&mut bytes);
        self.held.push_back((service, bytes));
    }

    fn ordered(&self) -> u64 {
        self.sync.applied()
    }

    fn drive(&mut self, now: Instant, table: &mut GroupTable, out: &mut dyn Outbox) {
        self.more = false;
        self.last_now = now;
        for round in 0..MAX_ROUNDS {
            self.release_held();
            if self.membership.poll_timeout().is_some_and(|t| t <= now) {
                self.membership.handle_timeout(now);
            }
            self.queue_transmits(now);
            let Self {
                membership,
                udp,
                by_addr,
                loss,
                stats,
                ..
            } = self;
            let outcome = udp.submit_and_poll(Some(Duration::ZERO), |from, bytes| {
                let Some(&idx) = by_addr.get(&from) else {
                    stats.dropped_unknown_address += 1;
                    return;
                };
                if loss.as_mut().is_some_and(Loss::drop_next) {
                    stats.dropped_loss_injected += 1;
                    return;
                }
                // Errors are counted (here or by the ring); the datagram is simply dropped.
                use crate::core::membership::Dropped;
                match membership.handle_datagram(now, idx, bytes) {
                    Ok(()) | Err(Dropped::Packet(_)) => {}
                    Err(Dropped::Membership(_)) => stats.dropped_membership += 1,
                    Err(Dropped::Stale) => stats.dropped_stale += 1,
                    Err(Dropped::NotNow) => stats.dropped_not_now += 1,
                    Err(Dropped::Sender) => stats.dropped_sender += 1,
                    Err(Dropped::ConfigMismatch) => stats.dropped_config_mismatch += 1,
                }
            });
            self.log_notes();
            match outcome {
                Ok(o) => {
                    self.deliver(table, out);
                    if o.received == 0 && !o.more {
                        // Deliveries may have queued sends (the state exchange).
                        self.queue_transmits(now);
                        return;
                    }
                    self.more = round + 1 == MAX_ROUNDS;
                }
                Err(e) => {
                    tracing::warn!("ring I/O failed: {e}");
                    self.stats.send_errors += 1;
                    self.deliver(table, out);
                    return;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.membership.poll_timeout()
    }

    fn busy(&self) -> bool {
        self.more
    }

    fn backpressured(&self) -> bool {
        !self.held.is_empty()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.udp.wait_fd())
    }

    fn status(&self) -> Option<Value> {
        let ring = self.membership.ring();
        let r = &self.membership.ring_stats();
        let m = self.membership.stats();
        let io = self.udp.stats();
        let n = &self.stats;
        let sync = self.sync.stats();
        let counters = json!({
            "datagrams_in": io.received,
            "datagrams_out": io.sent,
            "datagrams_to_ring": r.datagrams_received,
            "dropped_truncated": r.dropped_truncated,
            "dropped_unknown_version": r.dropped_version,
            "dropped_wrong_ring": r.dropped_wrong_ring,
            "dropped_unknown_sender": r.dropped_sender + n.dropped_sender,
            "dropped_unknown_address": n.dropped_unknown_address,
            "dropped_malformed": r.dropped_malformed + n.dropped_membership,
            "dropped_too_far": r.dropped_too_far,
            "dropped_loss_injected": n.dropped_loss_injected,
            "dropped_oversize": io.truncated,
            "dropped_stale": n.dropped_stale,
            "dropped_not_now": n.dropped_not_now,
            "dropped_config_mismatch": n.dropped_config_mismatch,
            "data_sent": r.data_sent,
            "data_received": r.data_received,
            "duplicate_data": r.duplicate_data,
            "retransmissions": r.retransmissions_sent,
            "retransmit_requests": r.retransmit_requests,
            "tokens_sent": r.tokens_sent,
            "tokens_received": r.tokens_received,
            "token_retransmits": r.token_retransmits,
            "duplicate_tokens": r.duplicate_tokens,
        });
        let more = json!({
            "messages_submitted": r.messages_submitted,
            "messages_delivered": r.messages_delivered,
            "backpressure_refusals": r.messages_refused + m.refused,
            "events_held_back": n.held_back,
            "bad_events": sync.bad_events,
            "events_too_large": n.too_large,
            "token_losses": m.token_losses,
            "membership_runs": m.runs,
            "configurations_installed": m.installs,
            "foreign_ring_packets": m.foreign_packets,
            "joins_sent": m.joins_sent,
            "commit_tokens_sent": m.commits_sent,
            "recovery_packets_sent": m.recovery_sent,
            "recovered_packets": m.recovered,
            "state_exchanges": sync.exchanges,
            "stalled_rings_reformed": m.stalls,
            "send_errors": n.send_errors + io.send_errors,
            "send_dropped": io.send_dropped,
            "syscalls": io.syscalls,
        });
        let mut counters = counters;
        if let (Some(c), Value::Object(m)) = (counters.as_object_mut(), more) {
            c.extend(m);
        }
        let incarnations = self.membership.incarnations();
        let heard = self.membership.last_heard();
        let daemons: Vec<Value> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let idx = DaemonIdx(u16::try_from(i).unwrap_or(u16::MAX));
                let ago_ms = heard
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|t| self.last_now.saturating_duration_since(t).as_millis() as u64);
                json!({
                    "name": name,
                    "index": i,
                    "address": self.peers.get(i).map(ToString::to_string),
                    "member": self.membership.members().contains(&idx),
                    "incarnation": incarnations.get(i).copied().unwrap_or(0),
                    "last_heard_ms_ago": if idx == self.me { Some(0) } else { ago_ms },
                })
            })
            .collect();
        let state = match self.membership.state() {
            State::Operational => "operational",
            State::Gather => "gather",
            State::Commit => "commit",
            State::Recovery => "recovery",
        };
        Some(json!({
            "mode": "ring",
            "membership": state,
            "ring_id": self.membership.ring_id().map(|id| json!({
                "representative": self.name(id.representative),
                "seq": id.seq,
                "epoch": epoch_of(id),
            })),
            "members": self.names_of(self.membership.members()),
            "daemons": daemons,
            "my_index": self.me.0,
            "incarnation": self.run.incarnation,
            "address": self.udp.local_addr().to_string(),
            "backend": match self.udp.backend() {
                Backend::Uring => "uring",
                Backend::Mmsg => "fallback",
            },
            "fallback_reason": self.udp.fallback_reason(),
            "loss_percent": self.loss_percent,
            "received_through": ring.received_through(),
            "safe_through": ring.safe_through(),
            "pending_messages": ring.pending_messages(),
            "waiting_for_ring": self.membership.waiting(),
            "held_back_now": self.held.len(),
            "exchanging_state": self.sync.exchanging(),
            "stalled": self.membership.state() != State::Operational,
            "counters": counters,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupsConfig;
    use crate::core::{LocalId, TableConfig};
    use conclave_control::wire::client::{DaemonFrame, decode_daemon, split_frame};

    /// Every local client's output, by id.
    #[derive(Default)]
    struct Boxes(HashMap<LocalId, Vec<u8>>);

    impl Outbox for Boxes {
        fn out(&mut self, id: LocalId) -> Option<&mut Vec<u8>> {
            self.0.get_mut(&id)
        }
    }

    /// The data payloads in a client's output, in order.
    fn payloads(buf: &[u8]) -> Vec<Vec<u8>> {
        let mut rest = buf;
        let mut out = Vec::new();
        while let Ok(Some((body, used))) = split_frame(rest, 1 << 24) {
            if let Ok(DaemonFrame::Data { payload, .. }) = decode_daemon(body) {
                out.push(payload.to_vec());
            }
            rest = &rest[used..];
        }
        out
    }

    struct Node {
        seq: RingSequencer,
        table: GroupTable,
        boxes: Boxes,
    }

    fn node(me: &str, ports: [u16; 2], backend: &str, state: &std::path::Path) -> Node {
        let text = format!(
            "me = \"{me}\"\nstate_dir = \"{}\"\n[[daemons]]\nname = \"a\"\naddress = \"127.0.0.1\"\nring_port = {}\nclient_port = 1\n\
             [[daemons]]\nname = \"b\"\naddress = \"127.0.0.1\"\nring_port = {}\nclient_port = 2\n",
            state.display(),
            ports[0],
            ports[1]
        );
        let config = Config::parse(&text, "test").unwrap();
        let mut profile = Profile::by_name("debug-loss").unwrap();
        profile.ring.io_backend = match backend {
            "fallback" => crate::io::BackendChoice::Fallback,
            _ => crate::io::BackendChoice::Auto,
        };
        profile.ring.retransmit_timeout_ms = 2;
        profile.ring.loss_percent = 20.0;
        let mut table = GroupTable::new(TableConfig {
            groups: GroupsConfig::default(),
            max_groups_per_client: 8,
            epoch: 1,
        });
        let client = format!("#c#{me}");
        table.bind_local(&client, 0);
        let mut boxes = Boxes::default();
        boxes.0.insert(0, Vec::new());
        Node {
            seq: RingSequencer::new(&config, &profile, Instant::ZERO).unwrap(),
            table,
            boxes,
        }
    }

    /// Two daemons in one process over real UDP, with 20 % injected loss: each client joins
    /// and sends; both receive every message in the same order.
    fn two_daemons_agree(backend: &str) {
        let held: Vec<_> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = [
            held[0].local_addr().unwrap().port(),
            held[1].local_addr().unwrap().port(),
        ];
        drop(held);
        let state = tempfile::tempdir().unwrap();
        let mut nodes = [
            node("a", ports, backend, state.path()),
            node("b", ports, backend, state.path()),
        ];
        let list = crate::core::event::group_list_bytes(["g"]);
        let groups = crate::core::event::group_list_of(&list).unwrap();
        for (i, n) in nodes.iter_mut().enumerate() {
            let me = format!("#c#{}", ["a", "b"][i]);
            let Node { seq, table, boxes } = n;
            seq.submit(&Event::Connect { client: &me }, table, boxes);
            seq.submit(
                &Event::Join {
                    client: &me,
                    group: "g",
                },
                table,
                boxes,
            );
            for k in 0..200u32 {
                let payload = format!("{i}:{k}");
                let event = Event::Data {
                    sender: &me,
                    service: if k % 2 == 0 {
                        Service::Safe
                    } else {
                        Service::Agreed
                    },
                    msg_type: 0,
                    groups,
                    payload: payload.as_bytes(),
                };
                seq.submit(&event, table, boxes);
            }
        }
        assert_eq!(
            nodes[0].table.stats().events,
            0,
            "nothing applies before ordering"
        );
        let start = std::time::Instant::now();
        let want = 2 * (2 + 200);
        while nodes.iter().any(|n| n.seq.ordered() < want) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "ordered {} and {} of {want}",
                nodes[0].seq.ordered(),
                nodes[1].seq.ordered()
            );
            let now = Instant::from_nanos(start.elapsed().as_nanos() as u64);
            for n in &mut nodes {
                n.seq.drive(now, &mut n.table, &mut n.boxes);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let seen: Vec<_> = nodes.iter().map(|n| payloads(&n.boxes.0[&0])).collect();
        // Each client joined before its own messages, so it gets at least its own 200.
        let common = seen[0].len().min(seen[1].len());
        assert!(common >= 200, "{} and {}", seen[0].len(), seen[1].len());
        let tail = |v: &Vec<Vec<u8>>| v[v.len() - common..].to_vec();
        assert_eq!(tail(&seen[0]), tail(&seen[1]), "the shared suffix differs");
        assert_eq!(nodes[0].table.groups(), nodes[1].table.groups());
        assert_eq!(nodes[0].table.stats().events, want);
        assert_eq!(nodes[1].table.stats().events, want);
        let injected: u64 = nodes
            .iter()
            .map(|n| n.seq.stats.dropped_loss_injected)
            .sum();
        assert!(injected > 0, "the loss profile dropped nothing");
    }

    #[test]
    fn daemons_sharing_a_ring_address_are_refused() {
        let text = "me = \"a\"\n[[daemons]]\nname = \"a\"\naddress = \"127.0.0.1\"\nring_port = 7\nclient_port = 1\n\
                    [[daemons]]\nname = \"b\"\naddress = \"127.0.0.1\"\nring_port = 7\nclient_port = 2\n";
        let config = Config::parse(text, "test").unwrap();
        let profile = Profile::by_name("default").unwrap();
        let err = RingSequencer::new(&config, &profile, Instant::ZERO).unwrap_err();
        assert!(matches!(err, NetError::SharedAddress(..)), "{err}");
    }

    #[test]
    fn two_daemons_agree_on_fallback() {
        two_daemons_agree("fallback");
    }

    #[test]
    fn two_daemons_agree_on_auto() {
        two_daemons_agree("auto");
    }

    #[test]
    fn loss_drops_about_the_asked_share_and_replays() {
        let draws = |seed| {
            let mut l = Loss::new(5.0, seed, DaemonIdx(1)).unwrap();
            (0..20_000).map(|_| l.drop_next()).collect::<Vec<_>>()
        };
        let a = draws(42);
        assert_eq!(a, draws(42));
        assert_ne!(a, draws(43));
        let dropped = a.iter().filter(|&&d| d).count();
        assert!((700..1300).contains(&dropped), "dropped {dropped} of 20000");
        assert!(Loss::new(0.0, 1, DaemonIdx(0)).is_none());
    }
}
