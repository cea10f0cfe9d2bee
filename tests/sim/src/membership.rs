//! Membership simulation: daemons' [`Membership`] cores under crashes, restarts,
//! partitions, heals and loss bursts, checked for Extended Virtual Synchrony.
//!
//! Each seed draws which faults it uses (swarm testing) and when. After the active phase
//! every fault is undone (partitions healed, crashed daemons restarted as new runs with
//! empty memory but their persisted ring counter), the network turns loss-free, and every
//! daemon must install one common configuration of all daemons and deliver what the
//! checker expects within `quiet_time` of simulated time.
//!
//! Checked after every delivery and every configuration change:
//! - daemons that install a configuration install the same member list under the same id;
//! - within a ring, ordered messages come in one order everywhere (same position in the
//!   ring's order at every daemon, strictly increasing at each); nothing twice per run;
//! - daemons that move together from one configuration to the next deliver the same set
//!   of messages in between, and a transitional configuration lists exactly daemons that
//!   came from the same configuration and install the same next one;
//! - SAFE in a regular configuration only once every live member of it holds the packet;
//! - at the end: one configuration of everyone, self-delivery of every message a live run
//!   submitted, and every message delivered in that configuration delivered everywhere.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use conclave_control::wire::client::{
    DaemonFrame, Service, ViewId, ViewKind, decode_daemon, split_frame,
};
use conclave_engine::config::GroupsConfig;
use conclave_engine::core::event::{Event, group_list_bytes, group_list_of};
use conclave_engine::core::group_sync::GroupSync;
use conclave_engine::core::membership::{
    Configuration, MemberEvent, Membership, MembershipConfig, State,
};
use conclave_engine::core::ring::{DaemonIdx, Dest, RingConfig, RingId, SubmitError};
use conclave_engine::core::time::Instant;
use conclave_engine::core::{GroupTable, LocalId, Outbox, TableConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::{MsgId, payload};

/// What to simulate; the seed draws the rest.
#[derive(Debug, Clone)]
pub struct MemberSimConfig {
    /// Daemons configured.
    pub daemons: usize,
    /// Submissions attempted during the active phase.
    pub messages: usize,
    /// Faults injected during the active phase (each of a kind the seed enabled).
    pub faults: usize,
    /// Upper bound of a link's loss probability (outside loss bursts).
    pub loss: f64,
    /// Largest one-way delay.
    pub max_delay: Duration,
    /// Length of the active phase.
    pub active_time: Duration,
    /// Simulated time allowed, after the last fault, to converge and deliver everything.
    pub quiet_time: Duration,
    /// Bound on simulation steps.
    pub max_steps: u64,
    /// Drive each daemon's group table too (clients join, leave and send events, and
    /// their views are checked); otherwise raw messages of all six services.
    pub groups: bool,
}

impl Default for MemberSimConfig {
    fn default() -> Self {
        MemberSimConfig {
            daemons: 4,
            messages: 80,
            faults: 6,
            loss: 0.02,
            max_delay: Duration::from_micros(500),
            active_time: Duration::from_millis(1500),
            quiet_time: Duration::from_secs(20),
            max_steps: 5_000_000,
            groups: false,
        }
    }
}

/// An EVS property the run broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberViolation {
    /// Simulated time, in nanoseconds.
    pub at_ns: u64,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for MemberViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {} us: {}", self.at_ns / 1000, self.what)
    }
}

/// What a successful run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberReport {
    /// Regular configurations installed, summed over daemons.
    pub installs: u64,
    /// Distinct configurations formed.
    pub configurations: usize,
    /// Membership runs started, summed over daemons.
    pub runs: u64,
    /// Crashes, restarts, partitions, heals and loss bursts injected.
    pub faults: usize,
    /// Messages accepted.
    pub submitted: usize,
    /// Deliveries checked.
    pub deliveries: u64,
    /// Old-ring packets recovered.
    pub recovered: u64,
    /// Group views received by simulated clients (group mode).
    pub views: u64,
    /// Simulated time at the end, in nanoseconds.
    pub sim_time_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Crash,
    Restart,
    Partition,
    Heal,
    LossBurst,
    OneWay,
}

/// One daemon run's view, as the checker follows it.
#[derive(Default)]
struct RunTrack {
    /// Last regular configuration installed (None before the first).
    regular: Option<RingId>,
    in_transitional: bool,
    /// Messages delivered since that install.
    since_install: BTreeSet<MsgId>,
    delivered: HashSet<MsgId>,
    /// Last ordered position delivered, per ring.
    last_pos: HashMap<RingId, (u64, u32)>,
    /// Ordered deliveries counted per (ring, seq), for positions inside a packet.
    sub: HashMap<(RingId, u64), u32>,
    submitted: Vec<MsgId>,
    /// The ring of the last delivery (the configuration messages are ordered in).
    delivering_ring: Option<RingId>,
}

/// Local client ids' output buffers.
struct SimOutbox(Vec<Vec<u8>>);

impl Outbox for SimOutbox {
    fn out(&mut self, id: LocalId) -> Option<&mut Vec<u8>> {
        self.0.get_mut(id as usize)
    }
}

/// One daemon's group table and its clients (group mode).
struct GroupLayer {
    table: GroupTable,
    sync: GroupSync,
    out: SimOutbox,
    /// Events refused by backpressure, in order (everything waits behind them).
    held: std::collections::VecDeque<(Service, Vec<u8>)>,
    /// Last regular view id per (client, group).
    last_view: HashMap<(usize, String), ViewId>,
}

/// Simulated clients per daemon, and the groups they use.
const CLIENTS: usize = 2;
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

struct Node {
    core: Option<Membership>,
    layer: Option<GroupLayer>,
    incarnation: u64,
    max_ring_seq: u64,
    counter: u32,
    track: RunTrack,
}

struct Packet {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

struct Sim {
    cfg: MemberSimConfig,
    rng: ChaCha8Rng,
    now: Instant,
    ring_template: RingConfig,
    nodes: Vec<Node>,
    /// Partition component of each daemon; links between components drop everything.
    component: Vec<u8>,
    link_loss: Vec<f64>,
    link_base: Vec<u64>,
    burst_until: Instant,
    /// Links cut in one direction only (from, to), until healed.
    one_way: HashSet<(usize, usize)>,
    quiet: bool,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: HashMap<u64, Packet>,
    next_id: u64,
    // Checker state.
    configs: HashMap<RingId, Vec<DaemonIdx>>,
    positions: HashMap<(RingId, MsgId), (u64, u32)>,
    moved_sets: HashMap<(RingId, RingId), BTreeSet<MsgId>>,
    previous_of: HashMap<(RingId, usize), RingId>,
    /// Members of every regular group view, by (group, view id).
    views: HashMap<(String, ViewId), Vec<String>>,
    report: MemberReport,
    buf: Vec<u8>,
}

/// Runs one membership simulation.
pub fn run_membership(seed: u64, cfg: MemberSimConfig) -> Result<MemberReport, MemberViolation> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = cfg.daemons.max(1);
    let all: Vec<DaemonIdx> = (0..n as u16).map(DaemonIdx).collect();
    let mut ring_template = RingConfig::new(DaemonIdx(0), all);
    ring_template.max_datagram = 600;
    ring_template.max_message = 4000;
    ring_template.window_per_rotation = rng.gen_range(8..=64);
    ring_template.window_per_daemon = rng.gen_range(1..=ring_template.window_per_rotation);
    ring_template.max_unstable = ring_template.window_per_rotation * 4;
    ring_template.max_pending_messages = rng.gen_range(8..=64);
    ring_template.token_retransmit_timeout = Duration::from_millis(rng.gen_range(2..=6));
    ring_template.token_loss_timeout = Duration::from_millis(rng.gen_range(30..=80));
    ring_template.idle_token_hold = Duration::from_micros(rng.gen_range(0..=800));
    ring_template.accelerated = rng.gen_bool(0.5);
    let max_delay = u64::try_from(cfg.max_delay.as_nanos()).unwrap_or(1).max(2);
    let link_loss = (0..n * n)
        .map(|_| rng.gen_range(0.0..=cfg.loss.max(0.0)))
        .collect();
    let link_base = (0..n * n)
        .map(|_| rng.gen_range(1..=max_delay / 2))
        .collect();
    let mut sim = Sim {
        cfg,
        rng,
        now: Instant::ZERO,
        ring_template,
        nodes: Vec::new(),
        component: vec![0; n],
        link_loss,
        link_base,
        burst_until: Instant::ZERO,
        one_way: HashSet::new(),
        quiet: false,
        queue: BinaryHeap::new(),
        in_flight: HashMap::new(),
        next_id: 0,
        configs: HashMap::new(),
        positions: HashMap::new(),
        moved_sets: HashMap::new(),
        previous_of: HashMap::new(),
        views: HashMap::new(),
        report: MemberReport::default(),
        buf: Vec::new(),
    };
    for i in 0..n {
        sim.nodes.push(Node {
            core: None,
            layer: None,
            incarnation: 0,
            max_ring_seq: 0,
            counter: 0,
            track: RunTrack::default(),
        });
        sim.start(i)?;
    }
    sim.main_loop()?;
    sim.report.configurations = sim.configs.len();
    sim.report.sim_time_ns = sim.now.as_nanos();
    for node in &sim.nodes {
        if let Some(c) = &node.core {
            sim.report.runs += c.stats().runs;
            sim.report.recovered += c.stats().recovered;
        }
    }
    Ok(sim.report)
}

impl Sim {
    fn fail(&self, what: String) -> MemberViolation {
        MemberViolation {
            at_ns: self.now.as_nanos(),
            what,
        }
    }

    fn start(&mut self, i: usize) -> Result<(), MemberViolation> {
        let n = self.nodes.len().max(i + 1);
        let me = DaemonIdx(i as u16);
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        let all: Vec<DaemonIdx> = (0..self.cfg.daemons.max(n) as u16).map(DaemonIdx).collect();
        let mut mc = MembershipConfig::new(me, all, self.ring_template.clone());
        mc.incarnation = node.incarnation;
        mc.max_ring_seq = node.max_ring_seq;
        let core = Membership::new(mc, self.now).map_err(|e| MemberViolation {
            at_ns: 0,
            what: format!("daemon {i} refused its config: {e}"),
        })?;
        node.core = Some(core);
        node.track = RunTrack::default();
        node.layer = None;
        if self.cfg.groups {
            let names: Vec<String> = (0..self.cfg.daemons.max(n))
                .map(|d| format!("d{d}"))
                .collect();
            let mut table = GroupTable::new(TableConfig {
                groups: GroupsConfig::default(),
                max_groups_per_client: GROUPS.len(),
                epoch: 0,
            });
            let clients: Vec<String> = (0..CLIENTS).map(|k| format!("#c{k}#d{i}")).collect();
            for (k, c) in clients.iter().enumerate() {
                table.bind_local(c, k as LocalId);
            }
            node.layer = Some(GroupLayer {
                table,
                sync: GroupSync::new(names, me),
                out: SimOutbox(vec![Vec::new(); CLIENTS]),
                held: Default::default(),
                last_view: HashMap::new(),
            });
            for c in &clients {
                let mut b = Vec::new();
                Event::Connect { client: c }.encode(&mut b);
                self.submit_event(i, Service::Agreed, b);
            }
        }
        self.drain(i)
    }

    /// Submits an encoded event of daemon `i`, keeping submission order under
    /// backpressure as the daemon does.
    fn submit_event(&mut self, i: usize, service: Service, bytes: Vec<u8>) -> bool {
        let node = &mut self.nodes[i];
        let Some(layer) = node.layer.as_mut() else {
            return false;
        };
        layer.held.push_back((service, bytes));
        flush_held(node);
        true
    }

    fn main_loop(&mut self) -> Result<(), MemberViolation> {
        let n = self.nodes.len();
        let active_end = Instant::ZERO + self.cfg.active_time;
        let kinds: Vec<Fault> = [
            Fault::Crash,
            Fault::Restart,
            Fault::Partition,
            Fault::Heal,
            Fault::LossBurst,
            Fault::OneWay,
        ]
        .into_iter()
        .filter(|_| self.rng.gen_bool(0.6))
        .collect();
        let mut faults: Vec<u64> = (0..if kinds.is_empty() { 0 } else { self.cfg.faults })
            .map(|_| self.rng.gen_range(0..active_end.as_nanos()))
            .collect();
        faults.sort_unstable();
        let mut faults = faults.into_iter().peekable();
        let gap = (active_end.as_nanos() / self.cfg.messages.max(1) as u64).max(1);
        let mut next_submit = Some(self.rng.gen_range(0..=gap));
        let mut attempts = 0;
        let mut quiet_deadline: Option<Instant> = None;
        let mut steps = 0u64;
        while steps < self.cfg.max_steps {
            steps += 1;
            if self.quiet && self.converged() {
                return self.check_end();
            }
            let next_packet = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|nd| nd.core.as_ref()?.poll_timeout())
                .map(Instant::as_nanos)
                .min();
            let next_fault = faults.peek().copied();
            let quiet_at = (!self.quiet).then_some(active_end.as_nanos());
            let Some(t) = [next_packet, next_timer, next_submit, next_fault, quiet_at]
                .into_iter()
                .flatten()
                .min()
            else {
                return self.check_end();
            };
            if quiet_deadline.is_some_and(|d| t > d.as_nanos()) {
                return self.check_end();
            }
            self.now = Instant::from_nanos(t.max(self.now.as_nanos()));
            if quiet_at == Some(t) {
                self.quiet = true;
                next_submit = None;
                for _ in faults.by_ref() {}
                self.component.iter_mut().for_each(|c| *c = 0);
                self.one_way.clear();
                for i in 0..n {
                    if self.nodes[i].core.is_none() {
                        self.start(i)?;
                    }
                }
                quiet_deadline = Some(self.now + self.cfg.quiet_time);
                continue;
            }
            if next_fault == Some(t) {
                faults.next();
                let kind = kinds[self.rng.gen_range(0..kinds.len())];
                self.inject(kind)?;
                continue;
            }
            if next_submit == Some(t) {
                self.submit_one()?;
                attempts += 1;
                next_submit =
                    (attempts < self.cfg.messages).then(|| t + self.rng.gen_range(0..=2 * gap));
                continue;
            }
            if next_packet == Some(t) {
                let Some(Reverse((_, id))) = self.queue.pop() else {
                    continue;
                };
                let Some(p) = self.in_flight.remove(&id) else {
                    continue;
                };
                if self.component[p.from] != self.component[p.to] {
                    continue;
                }
                if let Some(core) = self.nodes[p.to].core.as_mut() {
                    let r = core.handle_datagram(self.now, DaemonIdx(p.from as u16), &p.bytes);
                    if std::env::var_os("CONCLAVE_SIM_TRACE").is_some() {
                        trace_packet(self.now, p.from, p.to, &p.bytes, &r);
                    }
                    self.drain(p.to)?;
                }
                continue;
            }
            for i in 0..n {
                let due = self.nodes[i]
                    .core
                    .as_ref()
                    .and_then(Membership::poll_timeout)
                    .is_some_and(|d| d <= self.now);
                if due {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.handle_timeout(self.now);
                    }
                    self.drain(i)?;
                }
            }
        }
        Err(self.fail(format!("stuck after {steps} steps: {}", self.describe())))
    }

    fn describe(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| match &nd.core {
                None => format!("{i}:down"),
                Some(c) => format!(
                    "{i}:{:?} ring {:?} members {:?}",
                    c.state(),
                    c.ring_id(),
                    c.members()
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn inject(&mut self, kind: Fault) -> Result<(), MemberViolation> {
        let n = self.nodes.len();
        self.report.faults += 1;
        if std::env::var_os("CONCLAVE_SIM_TRACE").is_some() {
            println!(
                "{} fault {kind:?} components {:?}",
                self.now.as_nanos() / 1000,
                self.component
            );
        }
        match kind {
            Fault::Crash => {
                let i = self.rng.gen_range(0..n);
                if let Some(core) = self.nodes[i].core.take() {
                    // Its disk keeps the ring counter; the rest of its memory is gone.
                    self.nodes[i].max_ring_seq = core.max_ring_seq();
                }
            }
            Fault::Restart => {
                let i = self.rng.gen_range(0..n);
                if let Some(core) = self.nodes[i].core.take() {
                    self.nodes[i].max_ring_seq = core.max_ring_seq();
                }
                self.start(i)?;
            }
            Fault::Partition => {
                let parts = self.rng.gen_range(2..=n.clamp(2, 4)) as u8;
                for c in &mut self.component {
                    *c = self.rng.gen_range(0..parts);
                }
            }
            Fault::Heal => {
                self.component.iter_mut().for_each(|c| *c = 0);
                self.one_way.clear();
            }
            Fault::OneWay => {
                let from = self.rng.gen_range(0..n);
                let to = self.rng.gen_range(0..n);
                if from != to {
                    self.one_way.insert((from, to));
                }
            }
            Fault::LossBurst => {
                self.burst_until = self.now + Duration::from_millis(self.rng.gen_range(5..=60));
            }
        }
        if std::env::var_os("CONCLAVE_SIM_TRACE").is_some() {
            println!("  -> components {:?} {}", self.component, self.describe());
        }
        Ok(())
    }

    fn submit_one(&mut self) -> Result<(), MemberViolation> {
        let n = self.nodes.len();
        let i = self.rng.gen_range(0..n);
        let service = Service::ALL[self.rng.gen_range(0..6)];
        let len = match self.rng.gen_range(0..10) {
            0..=7 => self.rng.gen_range(7..=200),
            _ => self.rng.gen_range(7..=3000),
        };
        if self.cfg.groups {
            return self.submit_group_action(i, service, len);
        }
        let node = &mut self.nodes[i];
        let Some(core) = node.core.as_mut() else {
            return Ok(());
        };
        let id = MsgId {
            origin: i as u16,
            counter: node.counter,
        };
        let bytes = payload(id, service, len);
        match core.submit(service, &bytes) {
            Ok(()) => {
                if std::env::var_os("CONCLAVE_SIM_TRACE").is_some() {
                    println!(
                        "{} d{i} submit {id} {service:?} {len} in {:?} {:?}",
                        self.now.as_nanos() / 1000,
                        core.state(),
                        core.ring_id()
                    );
                }
                node.counter += 1;
                node.track.submitted.push(id);
                self.report.submitted += 1;
            }
            Err(SubmitError::Backpressure) => {}
            Err(e) => return Err(self.fail(format!("submit refused: {e}"))),
        }
        self.drain(i)
    }

    /// Group mode: a random client of daemon `i` sends to, joins or leaves a random group.
    fn submit_group_action(
        &mut self,
        i: usize,
        service: Service,
        len: usize,
    ) -> Result<(), MemberViolation> {
        if self.nodes[i].core.is_none() {
            return Ok(());
        }
        let k = self.rng.gen_range(0..CLIENTS);
        let group = GROUPS[self.rng.gen_range(0..GROUPS.len())];
        let client = format!("#c{k}#d{i}");
        let mut b = Vec::new();
        let action = self.rng.gen_range(0..10);
        let ring_service = if action < 7 {
            let id = MsgId {
                origin: i as u16,
                counter: self.nodes[i].counter,
            };
            let body = payload(id, service, len);
            let list = group_list_bytes([group]);
            let Ok(groups) = group_list_of(&list) else {
                return Err(self.fail("group list".into()));
            };
            Event::Data {
                sender: &client,
                service,
                msg_type: 0,
                groups,
                payload: &body,
            }
            .encode(&mut b);
            let node = &mut self.nodes[i];
            node.counter += 1;
            node.track.submitted.push(id);
            self.report.submitted += 1;
            // As the daemon does: everything in the total order, SAFE kept.
            if service == Service::Safe {
                Service::Safe
            } else {
                Service::Agreed
            }
        } else {
            if action < 9 {
                Event::Join {
                    client: &client,
                    group,
                }
            } else {
                Event::Leave {
                    client: &client,
                    group,
                }
            }
            .encode(&mut b);
            Service::Agreed
        };
        self.submit_event(i, ring_service, b);
        self.drain(i)
    }

    fn send(&mut self, from: usize, to: usize) {
        if self.component[from] != self.component[to]
            || self.nodes[to].core.is_none()
            || self.one_way.contains(&(from, to))
        {
            return;
        }
        let n = self.nodes.len();
        let burst = self.now < self.burst_until;
        let loss = if self.quiet {
            0.0
        } else if burst {
            0.5
        } else {
            self.link_loss[from * n + to]
        };
        if self.rng.gen_bool(loss) {
            return;
        }
        let base = self.link_base[from * n + to];
        let max_delay = u64::try_from(self.cfg.max_delay.as_nanos()).unwrap_or(1);
        let delay = base + self.rng.gen_range(0..=max_delay.saturating_sub(base));
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push(Reverse((self.now.as_nanos() + delay, id)));
        self.in_flight.insert(
            id,
            Packet {
                from,
                to,
                bytes: self.buf.clone(),
            },
        );
    }

    /// Sends what daemon `i` wants sent and checks every event it hands out.
    fn drain(&mut self, i: usize) -> Result<(), MemberViolation> {
        let n = self.nodes.len();
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return Ok(());
            };
            let Some(dest) = core.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            let targets: Vec<usize> = match dest {
                Dest::All => core.ring_peers().map(|d| usize::from(d.0)).collect(),
                Dest::Everyone => (0..n).filter(|&j| j != i).collect(),
                Dest::One(d) => vec![usize::from(d.0)],
            };
            for j in targets {
                self.send(i, j);
            }
        }
        enum Ev {
            Msg(RingId, u64, Service, Vec<u8>),
            Trans(Configuration),
            Reg(Configuration),
        }
        let mut events = Vec::new();
        if let Some(core) = self.nodes[i].core.as_mut() {
            loop {
                match core.poll_event() {
                    Some(MemberEvent::Deliver {
                        ring_id,
                        delivery: d,
                    }) => {
                        events.push(Ev::Msg(ring_id, d.seq, d.service, d.payload.to_vec()));
                    }
                    Some(MemberEvent::Transitional(c)) => events.push(Ev::Trans(c)),
                    Some(MemberEvent::Regular(c)) => events.push(Ev::Reg(c)),
                    None => break,
                }
            }
        }
        let trace = std::env::var_os("CONCLAVE_SIM_TRACE").is_some();
        if let Some(core) = self.nodes[i].core.as_mut() {
            while let Some(note) = core.poll_note() {
                if trace {
                    println!("{} d{i} note {note:?}", self.now.as_nanos() / 1000);
                }
            }
        }
        for ev in events {
            if trace {
                let t = self.now.as_nanos() / 1000;
                match &ev {
                    Ev::Msg(r, seq, svc, b) if b.len() >= 6 => println!(
                        "{t} d{i} deliver {}#{} {svc:?} ring {}.{} seq {seq}",
                        u16::from_le_bytes([b[0], b[1]]),
                        u32::from_le_bytes([b[2], b[3], b[4], b[5]]),
                        r.representative.0,
                        r.seq
                    ),
                    Ev::Msg(..) => {}
                    Ev::Trans(c) => println!("{t} d{i} transitional {c:?}"),
                    Ev::Reg(c) => println!("{t} d{i} regular {c:?}"),
                }
            }
            match ev {
                Ev::Msg(ring, seq, service, bytes) => {
                    if self.cfg.groups {
                        self.on_event(i, ring, seq, service, &bytes)?;
                    } else {
                        self.on_deliver(i, ring, seq, service, service, &bytes)?;
                    }
                }
                Ev::Trans(c) => {
                    self.on_transitional(i, &c)?;
                    if let Some(l) = self.nodes[i].layer.as_mut() {
                        l.sync.transitional(&c, &mut l.table, &mut l.out);
                    }
                }
                Ev::Reg(c) => {
                    self.on_regular(i, &c)?;
                    let state = match self.nodes[i].layer.as_mut() {
                        Some(l) => l.sync.regular(&c, &mut l.table, &mut l.out),
                        None => None,
                    };
                    if let Some(state) = state {
                        // The state goes first into the new ring, ahead of what waits.
                        if let Some(l) = self.nodes[i].layer.as_mut() {
                            l.held.push_front((Service::Agreed, state));
                        }
                        flush_held(&mut self.nodes[i]);
                    }
                }
            }
            self.check_views(i)?;
        }
        flush_held(&mut self.nodes[i]);
        Ok(())
    }

    /// Group mode: one ordered event; its data payload goes through the message checks.
    fn on_event(
        &mut self,
        i: usize,
        ring: RingId,
        seq: u64,
        service: Service,
        bytes: &[u8],
    ) -> Result<(), MemberViolation> {
        if std::env::var_os("CONCLAVE_SIM_TRACE").is_some()
            && let Ok((e, _)) = Event::decode(bytes)
            && !matches!(e, Event::Data { .. })
        {
            println!("{} d{i} event {e:?}", self.now.as_nanos() / 1000);
        }
        let inner = match Event::decode(bytes) {
            Ok((
                Event::Data {
                    service: s,
                    payload,
                    ..
                },
                _,
            )) => Some((s, payload.to_vec())),
            Ok(_) => None,
            Err(e) => return Err(self.fail(format!("daemon {i}: bad event: {e}"))),
        };
        if let Some((inner_service, payload)) = inner {
            self.on_deliver(i, ring, seq, service, inner_service, &payload)?;
        }
        if let Some(l) = self.nodes[i].layer.as_mut()
            && let Err(e) = l.sync.ordered(bytes, &mut l.table, &mut l.out)
        {
            return Err(self.fail(format!("daemon {i}: event refused: {e}")));
        }
        Ok(())
    }

    /// Reads what daemon `i` wrote to its clients and checks every view in it.
    fn check_views(&mut self, i: usize) -> Result<(), MemberViolation> {
        let Some(layer) = self.nodes[i].layer.as_mut() else {
            return Ok(());
        };
        let mut found = Vec::new();
        for (k, buf) in layer.out.0.iter_mut().enumerate() {
            let mut rest: &[u8] = buf;
            while let Ok(Some((body, used))) = split_frame(rest, 1 << 24) {
                if let Ok(DaemonFrame::Membership {
                    group,
                    view_id,
                    kind,
                    members,
                    ..
                }) = decode_daemon(body)
                {
                    let members: Vec<String> = members.iter().map(str::to_owned).collect();
                    found.push((k, group.to_owned(), view_id, kind, members));
                }
                rest = &rest[used..];
            }
            buf.clear();
        }
        let trace = std::env::var_os("CONCLAVE_SIM_TRACE").is_some();
        for (k, group, view_id, kind, members) in found {
            self.report.views += 1;
            if trace {
                println!(
                    "{} d{i} c{k} view {group} {view_id} {kind:?} {members:?}",
                    self.now.as_nanos() / 1000
                );
            }
            let client = format!("#c{k}#d{i}");
            if kind != ViewKind::Regular {
                if !members.contains(&client) {
                    return Err(self.fail(format!(
                        "{client}: transitional view {view_id} of {group} without itself"
                    )));
                }
                continue;
            }
            let Some(layer) = self.nodes[i].layer.as_mut() else {
                return Ok(());
            };
            let key = (k, group.clone());
            if members.is_empty() {
                // Its own leave.
                layer.last_view.remove(&key);
                continue;
            }
            if !members.contains(&client) {
                return Err(self.fail(format!(
                    "{client}: view {view_id} of {group} without itself: {members:?}"
                )));
            }
            if let Some(last) = layer.last_view.insert(key, view_id)
                && last >= view_id
            {
                return Err(self.fail(format!("{client}: view {view_id} of {group} after {last}")));
            }
            match self.views.get(&(group.clone(), view_id)) {
                Some(m) if *m != members => {
                    return Err(self.fail(format!(
                        "{client}: view {view_id} of {group} is {members:?}, elsewhere {m:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    self.views.insert((group, view_id), members);
                }
            }
        }
        Ok(())
    }

    fn on_deliver(
        &mut self,
        i: usize,
        ring: RingId,
        seq: u64,
        service: Service,
        payload_service: Service,
        bytes: &[u8],
    ) -> Result<(), MemberViolation> {
        self.report.deliveries += 1;
        if bytes.len() < 7 {
            return Err(self.fail(format!("daemon {i}: short payload")));
        }
        let id = MsgId {
            origin: u16::from_le_bytes([bytes[0], bytes[1]]),
            counter: u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
        };
        if bytes != payload(id, payload_service, bytes.len()).as_slice() {
            return Err(self.fail(format!("daemon {i}: corrupt message {id}")));
        }
        let t = &mut self.nodes[i].track;
        if !t.delivered.insert(id) {
            return Err(self.fail(format!("daemon {i}: {id} delivered twice")));
        }
        t.since_install.insert(id);
        t.delivering_ring = Some(ring);
        let ordered = !matches!(service, Service::Reliable | Service::Unreliable);
        if ordered {
            let sub = t.sub.entry((ring, seq)).or_insert(0);
            let pos = (seq, *sub);
            *sub += 1;
            if let Some(last) = t.last_pos.insert(ring, pos)
                && last >= pos
            {
                return Err(self.fail(format!("daemon {i}: {id} out of order in {ring:?}")));
            }
            match self.positions.get(&(ring, id)) {
                Some(&p) if p != pos => {
                    return Err(self.fail(format!(
                        "daemon {i}: {id} at {pos:?} in {ring:?}, elsewhere at {p:?}"
                    )));
                }
                Some(_) => {}
                None => {
                    self.positions.insert((ring, id), pos);
                }
            }
        }
        let transitional = self.nodes[i].track.in_transitional;
        if service == Service::Safe && !transitional {
            let members = self.configs.get(&ring).cloned().unwrap_or_default();
            for m in members {
                let j = usize::from(m.0);
                let Some(core) = self.nodes[j].core.as_ref() else {
                    continue;
                };
                let in_it = core.ring().config().ring_id == ring;
                if in_it && !core.holds(ring, seq) {
                    return Err(self.fail(format!(
                        "daemon {i}: SAFE {id} (seq {seq}) delivered while daemon {j} lacks it"
                    )));
                }
            }
        }
        Ok(())
    }

    fn on_transitional(&mut self, i: usize, c: &Configuration) -> Result<(), MemberViolation> {
        let t = &mut self.nodes[i].track;
        if t.in_transitional {
            return Err(self.fail(format!("daemon {i}: two transitional configurations")));
        }
        t.in_transitional = true;
        if !c.members.contains(&DaemonIdx(i as u16)) {
            return Err(self.fail(format!("daemon {i}: not in its own transitional set")));
        }
        Ok(())
    }

    fn on_regular(&mut self, i: usize, c: &Configuration) -> Result<(), MemberViolation> {
        self.report.installs += 1;
        let me = DaemonIdx(i as u16);
        if !c.members.contains(&me) || !c.moved_with_me.contains(&me) {
            return Err(self.fail(format!("daemon {i}: installed {c:?} without itself")));
        }
        if !self.nodes[i].track.in_transitional {
            return Err(self.fail(format!(
                "daemon {i}: regular configuration without a transitional one"
            )));
        }
        if let Some(m) = self.configs.get(&c.ring_id) {
            if *m != c.members {
                return Err(self.fail(format!(
                    "daemon {i}: {:?} installed with {:?}, elsewhere {m:?}",
                    c.ring_id, c.members
                )));
            }
        } else {
            self.configs.insert(c.ring_id, c.members.clone());
        }
        let t = &mut self.nodes[i].track;
        let previous = t.regular.unwrap_or(RingId {
            representative: me,
            seq: 0,
        });
        let set = std::mem::take(&mut t.since_install);
        t.regular = Some(c.ring_id);
        t.in_transitional = false;
        // Every daemon that moved with this one came from the same configuration.
        for &q in &c.moved_with_me {
            let key = (c.ring_id, usize::from(q.0));
            match self.previous_of.get(&key) {
                Some(p) if *p != previous => {
                    return Err(self.fail(format!(
                        "daemon {i}: moved with {q:?} into {:?} from {previous:?}, but {q:?} came from {p:?}",
                        c.ring_id
                    )));
                }
                Some(_) => {}
                None => {
                    self.previous_of.insert(key, previous);
                }
            }
        }
        let key = (previous, c.ring_id);
        match self.moved_sets.get(&key) {
            Some(s) if *s != set => {
                let diff: Vec<_> = s.symmetric_difference(&set).take(4).collect();
                return Err(self.fail(format!(
                    "daemon {i}: delivered a different set from {previous:?} to {:?} than a daemon moving with it (e.g. {diff:?})",
                    c.ring_id
                )));
            }
            Some(_) => {}
            None => {
                if previous.seq != 0 {
                    self.moved_sets.insert(key, set);
                }
            }
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let mut ring = None;
        for nd in &self.nodes {
            let Some(c) = &nd.core else {
                return false;
            };
            if c.state() != State::Operational || c.members().len() != self.nodes.len() {
                return false;
            }
            match (ring, c.ring_id()) {
                (_, None) => return false,
                (None, r) => ring = r,
                (Some(a), Some(b)) if a != b => return false,
                _ => {}
            }
            if c.waiting() > 0 || c.ring().pending_messages() > 0 {
                return false;
            }
        }
        if self.cfg.groups && !self.tables_agree() {
            return false;
        }
        // Everything submitted by a live run has come back to it.
        self.nodes.iter().all(|nd| {
            nd.track
                .submitted
                .iter()
                .all(|id| nd.track.delivered.contains(id))
        }) && self.final_config_complete()
    }

    /// Group mode: every daemon holds the same table, with no exchange or event pending.
    fn tables_agree(&self) -> bool {
        let mut first = None;
        for nd in &self.nodes {
            let Some(l) = &nd.layer else {
                return false;
            };
            if l.sync.exchanging() || !l.held.is_empty() {
                return false;
            }
            let groups = l.table.groups();
            match &first {
                None => first = Some(groups),
                Some(f) if *f != groups => return false,
                Some(_) => {}
            }
        }
        true
    }

    /// Every message delivered in the final configuration reached every daemon.
    fn final_config_complete(&self) -> bool {
        let final_ring = self
            .nodes
            .first()
            .and_then(|nd| nd.core.as_ref()?.ring_id());
        let mut union: BTreeSet<MsgId> = BTreeSet::new();
        for nd in &self.nodes {
            if nd.track.regular == final_ring {
                union.extend(nd.track.since_install.iter().copied());
            }
        }
        self.nodes
            .iter()
            .all(|nd| union.iter().all(|id| nd.track.since_install.contains(id)))
    }

    fn check_end(&self) -> Result<(), MemberViolation> {
        if self.converged() {
            return Ok(());
        }
        let lacking: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, nd)| {
                let missing: Vec<_> = nd
                    .track
                    .submitted
                    .iter()
                    .filter(|id| !nd.track.delivered.contains(id))
                    .take(3)
                    .collect();
                (!missing.is_empty()).then(|| format!("{i} lacks its own {missing:?}"))
            })
            .collect();
        let waiting: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, nd)| {
                let c = nd.core.as_ref()?;
                Some(format!(
                    "{i}: waiting {} pending {} delivered {}",
                    c.waiting(),
                    c.ring().pending_messages(),
                    nd.track.delivered.len()
                ))
            })
            .collect();
        let tables = if self.cfg.groups && !self.tables_agree() {
            "; group tables differ"
        } else {
            ""
        };
        Err(self.fail(format!(
            "did not converge within the quiet time: {}; {}; {}{tables}",
            self.describe(),
            lacking.join(", "),
            waiting.join(", ")
        )))
    }
}

/// Submits a daemon's waiting events in order, as far as its ring takes them.
fn flush_held(node: &mut Node) {
    let (Some(core), Some(l)) = (node.core.as_mut(), node.layer.as_mut()) else {
        return;
    };
    while let Some((service, bytes)) = l.held.pop_front() {
        if core.submit(service, &bytes).is_err() {
            l.held.push_front((service, bytes));
            break;
        }
    }
}

/// Prints a membership packet and what became of it (CONCLAVE_SIM_TRACE).
fn trace_packet<E: std::fmt::Debug>(
    now: Instant,
    from: usize,
    to: usize,
    bytes: &[u8],
    result: &Result<(), E>,
) {
    use conclave_engine::core::membership::wire::{CommitToken, Join, PacketKind, kind_of};
    let t = now.as_nanos() / 1000;
    let what = match kind_of(bytes) {
        Some(PacketKind::Join) => Join::decode(bytes).map(|j| {
            format!(
                "join ring {}.{} proc {:?} fail {:?} max {}",
                j.ring_id.representative.0,
                j.ring_id.seq,
                j.proc.iter().map(|d| d.0).collect::<Vec<_>>(),
                j.fail.iter().map(|d| d.0).collect::<Vec<_>>(),
                j.max_ring_seq
            )
        }),
        Some(PacketKind::Commit) => CommitToken::decode(bytes).map(|c| {
            format!(
                "commit ring {}.{} hop {} rot {} members {:?}",
                c.ring_id.representative.0,
                c.ring_id.seq,
                c.token_seq,
                c.rotation,
                c.members.iter().map(|m| m.daemon.0).collect::<Vec<_>>()
            )
        }),
        _ => return,
    };
    println!("{t} d{to} <- d{from} {what:?} => {result:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(range: std::ops::Range<u64>, f: impl Fn(u64) -> MemberSimConfig) -> MemberReport {
        let mut sum = MemberReport::default();
        for seed in range {
            let cfg = f(seed);
            match run_membership(seed, cfg.clone()) {
                Ok(r) => {
                    sum.installs += r.installs;
                    sum.runs += r.runs;
                    sum.faults += r.faults;
                    sum.submitted += r.submitted;
                    sum.deliveries += r.deliveries;
                    sum.recovered += r.recovered;
                    sum.views += r.views;
                }
                Err(v) => panic!(
                    "seed {seed} failed: {v}\nreplay: cargo run --release -p conclave-sim -- membership --seed {seed} --daemons {} --faults {}",
                    cfg.daemons, cfg.faults
                ),
            }
        }
        sum
    }

    fn sample(range: std::ops::Range<u64>) -> MemberReport {
        let sum = seeds(range, |seed| MemberSimConfig {
            daemons: 2 + (seed % 5) as usize,
            ..MemberSimConfig::default()
        });
        assert!(
            sum.faults > 0 && sum.deliveries > 0 && sum.recovered > 0,
            "{sum:?}"
        );
        sum
    }

    // CI's share of the soak (`conclave-sim membership --seeds N`): four tests, so that
    // they run in parallel, each asserting its part of 10,000 configuration installs.
    #[test]
    fn membership_seeds_a() {
        assert!(sample(0..150).installs >= 2_500);
    }

    #[test]
    fn membership_seeds_b() {
        assert!(sample(150..300).installs >= 2_500);
    }

    #[test]
    fn membership_seeds_c() {
        assert!(sample(300..450).installs >= 2_500);
    }

    #[test]
    fn membership_seeds_d() {
        assert!(sample(450..600).installs >= 2_500);
    }

    #[test]
    fn membership_same_seed_same_run() {
        let cfg = MemberSimConfig::default();
        let a = run_membership(11, cfg.clone()).expect("seed 11");
        let b = run_membership(11, cfg).expect("seed 11");
        assert_eq!(a, b);
    }

    /// The group tables through every configuration change: client views agree, grow
    /// and include their receiver, and every daemon ends with the same table.
    #[test]
    fn membership_with_group_tables() {
        let sum = seeds(2000..2150, |seed| MemberSimConfig {
            daemons: 2 + (seed % 4) as usize,
            groups: true,
            ..MemberSimConfig::default()
        });
        assert!(sum.views > 1000 && sum.installs > 1000, "{sum:?}");
    }

    /// Seven daemons and many faults: larger rings re-form too.
    #[test]
    fn membership_larger_rings() {
        let sum = seeds(1000..1010, |_| MemberSimConfig {
            daemons: 7,
            faults: 12,
            ..MemberSimConfig::default()
        });
        assert!(sum.installs > 0, "{sum:?}");
    }
}
