//! A data-plane worker: one mio (epoll, edge-triggered) loop over its client sessions —
//! on worker 0 also the listeners, the table and the sequencer; on a session worker the
//! queues to and from worker 0 instead (see `shard`).
//!
//! A turn (one cycle): poll; read the clock once (every deadline of the cycle uses that
//! reading); take the control plane's commands; accept (bounded); take what other workers
//! queued (bounded); read every readable client (a bounded number of big reads each, for
//! fairness) and handle every whole frame in what was read, encoding deliveries straight
//! into the recipients' output queues (or worker batches); end the sessions that must
//! end; send each worker batch (one queue item per destination); then write each client's
//! queue with as few writes as the socket allows. While some client of any worker has a
//! queue above the profile's pause mark, reading from clients pauses (the senders wait in
//! their socket buffers); a client that stays there longer than the profile's stall time,
//! or passes the limit, is disconnected as a slow consumer. Memory stays bounded either
//! way.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use conclave_control::wire::client::{
    ClientFrame, ErrorCode, HELLO_FRAME_MAX, PROTOCOL_VERSION, RefuseCode, WireError,
    decode_client, encode, request_id_of, split_frame,
};
use conclave_control::wire::names;
use mio::net::{TcpListener, UnixListener};
use mio::{Events, Interest, Poll, Token};

use super::control::{WorkerCommand, WorkerLink, WorkerReport, WorkerStatus};
use super::session::{CloseReason, Session, Stream};
use super::shard::{self, Down, OrderLink, Peer, Registry, Route, Up};
use super::status::{self, ClientStatus, Counters};
use crate::core::time::Instant as RingInstant;
use crate::core::{Event, GroupTable, LocalId, Outbox, Sequencer};
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;

pub(crate) const UNIX_LISTENER: Token = Token(0);
pub(crate) const TCP_LISTENER: Token = Token(1);
pub(crate) const WAKER: Token = Token(2);
/// The sequencer's fd (the daemon ring's UDP side); checked before client tokens.
pub(crate) const RING: Token = Token(usize::MAX);
const FIRST_CLIENT: usize = 3;

/// The knobs the loop needs, resolved from config and profile.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub daemon: String,
    pub profile: String,
    pub started: Instant,
    pub max_clients: usize,
    pub max_payload: usize,
    pub max_frame: usize,
    pub queue_limit: usize,
    pub pause_mark: usize,
    pub stall: Duration,
    pub hello_timeout: Duration,
    /// How long a member of a Virtual Synchrony group may take to answer a flush request.
    pub flush_timeout: Duration,
    pub read_chunk: usize,
    pub reads_per_turn: usize,
    pub write_chunk: usize,
    pub poll_events: usize,
    /// The profile's `workers` (what status reports as configured).
    pub workers: usize,
    pub sndbuf: usize,
    pub rcvbuf: usize,
}

/// The client sessions, indexed by [`LocalId`]; the table writes into them as an [`Outbox`].
#[derive(Default)]
struct Sessions {
    slots: Vec<Option<Session>>,
    free: Vec<LocalId>,
    dirty: Vec<LocalId>,
    live: usize,
    /// Some session may be waiting for a flush answer (set when one is asked; cleared by
    /// the housekeeping pass that finds none), so idle loops wake to time it out.
    flush_waits: bool,
}

impl Sessions {
    fn get(&mut self, id: LocalId) -> Option<&mut Session> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    fn mark_dirty(&mut self, id: LocalId) {
        if let Some(s) = self.slots.get_mut(id as usize).and_then(Option::as_mut)
            && !s.dirty
        {
            s.dirty = true;
            self.dirty.push(id);
        }
    }
}

impl Sessions {
    /// Sends the Welcome held for `id`, once its Connect has been ordered.
    fn welcome(&mut self, id: LocalId) {
        let Some(frame) = self.get(id).and_then(|s| s.welcome.take()) else {
            return;
        };
        if let Some(buf) = self.out(id) {
            buf.extend_from_slice(&frame);
        }
    }
}

impl Outbox for Sessions {
    fn connected(&mut self, id: LocalId) {
        self.welcome(id);
    }

    fn flush_wait(&mut self, id: LocalId, group: &str, waiting: bool) {
        let Some(s) = self.get(id) else {
            return;
        };
        s.flush_waits.retain(|(g, _)| &**g != group);
        if waiting {
            // Rare (once per change of a VS group): its own clock reading is cheap enough.
            s.flush_waits.push((group.into(), Instant::now()));
            self.flush_waits = true;
        }
    }

    fn request(&mut self, id: LocalId) -> u32 {
        self.get(id)
            .and_then(|s| s.pending.front().copied())
            .unwrap_or(0)
    }

    fn done(&mut self, id: LocalId) {
        if let Some(s) = self.get(id) {
            s.pending.pop_front();
        }
    }

    fn out(&mut self, id: LocalId) -> Option<&mut Vec<u8>> {
        let s = self.slots.get_mut(id as usize)?.as_mut()?;
        if s.closing.is_some() {
            return None;
        }
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(id);
        }
        Some(&mut s.wbuf)
    }
}

/// What a worker does besides serving its clients.
// One per worker thread, built once and never moved on the hot path: the size difference
// costs nothing, while boxing the table would add an indirection to every event.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Role {
    /// Worker 0: the table, the sequencer (and ring I/O), and the session workers' ends.
    Order {
        table: GroupTable,
        sequencer: Box<dyn Sequencer>,
        peers: Vec<Peer>,
        /// Round-robin position for handing out accepted sockets (0 keeps one here).
        next_worker: usize,
    },
    /// A session worker: everything for the table goes to worker 0.
    Session(OrderLink),
}

/// Submits a client's request as an event, noting its request id where the table's
/// output is written (worker 0), so an Error that answers it can name it.
fn submit_request(
    role: &mut Role,
    sessions: &mut Sessions,
    id: LocalId,
    request: u32,
    event: &Event<'_>,
) {
    match role {
        Role::Order { .. } => {
            // Before submitting: a single daemon applies the event at once.
            if let Some(s) = sessions.get(id) {
                s.pending.push_back(request);
            }
        }
        Role::Session(link) => link.out.up(&Up::Request { slot: id, request }),
    }
    submit(role, sessions, event);
}

/// Submits an event: ordered on the spot (or by the ring) on worker 0, batched for worker
/// 0 on a session worker.
fn submit(role: &mut Role, sessions: &mut Sessions, event: &Event<'_>) {
    match role {
        Role::Order {
            table,
            sequencer,
            peers,
            ..
        } => {
            let mut out = Route {
                own: sessions,
                peers,
            };
            sequencer.submit(event, table, &mut out);
        }
        Role::Session(link) => link.out.up(&Up::Event(event.clone())),
    }
}

pub(crate) struct Worker {
    poll: Poll,
    unix: Option<(UnixListener, PathBuf)>,
    tcp: Option<TcpListener>,
    sessions: Sessions,
    /// Private names of welcomed local clients, by id (kept outside the sessions so an
    /// event can borrow a name while the table writes into the sessions).
    names: Vec<Option<Box<str>>>,
    by_name: HashMap<Box<str>, LocalId>,
    role: Role,
    /// Shared by all workers: private names, the client count, congestion.
    registry: Arc<Registry>,
    /// This worker has a congested client (its bit in the registry is set).
    congested_here: bool,
    /// Per slot: unbound here, waiting for worker 0's confirmation before reuse (session
    /// workers only).
    awaiting_unbind: Vec<bool>,
    /// Status requests of session workers' clients, answered after their batch.
    status_for: Vec<LocalId>,
    counters: Counters,
    limits: Limits,
    read_queue: Vec<LocalId>,
    to_close: Vec<LocalId>,
    /// Ended sessions still writing their last frames (a Goodbye to a slow consumer), with
    /// the time they are dropped regardless.
    lingering: Vec<(LocalId, Instant)>,
    /// The queues to and from the control plane.
    link: WorkerLink,
    /// The control plane said stop (or is gone).
    stopping: bool,
    /// Loop cycles run.
    cycles: u64,
    /// The core this worker pinned itself to.
    core: Option<usize>,
    /// A listener stopped at the per-cycle accept bound with connections left
    /// (edge-triggered: no new event would report them).
    accept_more: bool,
    paused: bool,
    /// Some queued session may be read at once (it has budget left and is not held back).
    can_read: bool,
    next_housekeeping: Instant,
}

/// Longest a closing session lingers to get its last frames out.
const LINGER: Duration = Duration::from_secs(2);

/// Most connections accepted per listener per cycle, so a connection storm cannot starve
/// the sessions already served.
const ACCEPTS_PER_CYCLE: usize = 64;

/// Most control-plane commands taken per cycle.
const COMMANDS_PER_CYCLE: usize = super::control::COMMAND_QUEUE;

/// How often idle buffers are given back.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        poll: Poll,
        unix: Option<(UnixListener, PathBuf)>,
        tcp: Option<TcpListener>,
        role: Role,
        registry: Arc<Registry>,
        limits: Limits,
        link: WorkerLink,
    ) -> Self {
        Self {
            poll,
            unix,
            tcp,
            sessions: Sessions::default(),
            names: Vec::new(),
            by_name: HashMap::new(),
            role,
            registry,
            congested_here: false,
            awaiting_unbind: Vec::new(),
            status_for: Vec::new(),
            counters: Counters::default(),
            limits,
            read_queue: Vec::new(),
            to_close: Vec::new(),
            lingering: Vec::new(),
            link,
            stopping: false,
            cycles: 0,
            core: None,
            accept_more: false,
            paused: false,
            can_read: false,
            next_housekeeping: Instant::now() + HOUSEKEEPING,
        }
    }

    /// The worker's index (0: the order worker).
    pub(crate) fn index(&self) -> usize {
        self.link.index
    }

    /// Records the core the worker's thread was pinned to.
    pub(crate) fn set_core(&mut self, core: Option<usize>) {
        self.core = core;
    }

    /// A sender for reports to the control plane that outlives the worker.
    pub(crate) fn reports(&self) -> crossbeam_channel::Sender<WorkerReport> {
        self.link.reports.clone()
    }

    fn snapshot(&self) -> WorkerStatus {
        WorkerStatus {
            index: self.link.index,
            role: match self.role {
                Role::Order { .. } => "order",
                Role::Session(_) => "session",
            },
            core: self.core,
            cycles: self.cycles,
            clients: self.sessions.live,
        }
    }

    /// Takes the control plane's commands (bounded per cycle; the rest wait for the next).
    fn serve_commands(&mut self) {
        for _ in 0..COMMANDS_PER_CYCLE {
            match self.link.commands.try_recv() {
                Ok(WorkerCommand::Stop) => self.stopping = true,
                Ok(WorkerCommand::Snapshot) => {
                    self.link.report(WorkerReport::Snapshot(self.snapshot()));
                }
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                // The control plane is gone: nobody is left to ask for a stop later.
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.stopping = true;
                    return;
                }
            }
        }
    }

    /// Runs until the control plane says stop, then says goodbye to every client.
    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(self.limits.poll_events);
        let mut ready: Vec<Token> = Vec::with_capacity(self.limits.poll_events);
        let mut clock = Instant::now();
        let mut now = self.ring_now(clock);
        while !self.stopping {
            let held = self.held();
            let busy = (self.can_read && !held)
                || self.accept_more
                || (!self.paused && !held && !self.read_queue.is_empty())
                || !self.sessions.dirty.is_empty()
                || !self.to_close.is_empty()
                || self.inputs_waiting()
                || matches!(&self.role, Role::Order { sequencer, .. } if sequencer.busy());
            // The ring's timers (token retransmission, idle-token release).
            let ring_wait = match &self.role {
                Role::Order { sequencer, .. } => sequencer
                    .next_deadline()
                    .map(|t| t.saturating_duration_since(now)),
                Role::Session(_) => None,
            };
            let timeout = if busy {
                Some(Duration::ZERO)
            } else if self.queue_full() {
                // A batch waits for room in a worker queue: retry soon.
                Some(Duration::from_millis(1))
            } else if self.paused || !self.lingering.is_empty() {
                // Paused on a congested client: look again soon for its stall deadline.
                Some(Duration::from_millis(10))
            } else if self.sessions.live > self.by_name.len() || self.sessions.flush_waits {
                // Someone has not said hello yet: wake for the housekeeping that times
                // it out.
                Some(HOUSEKEEPING)
            } else {
                None
            };
            let timeout = match (timeout, ring_wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // The cycle's one clock reading.
            clock = Instant::now();
            now = self.ring_now(clock);
            self.cycles += 1;
            self.serve_commands();
            ready.clear();
            for ev in events.iter() {
                let token = ev.token();
                if token == RING {
                    // Drained by `drive` below, every turn.
                } else if token.0 >= FIRST_CLIENT {
                    let id = (token.0 - FIRST_CLIENT) as LocalId;
                    if ev.is_writable() {
                        self.sessions.mark_dirty(id);
                    }
                    if (ev.is_read_closed() || ev.is_error())
                        && let Some(s) = self.sessions.get(id)
                    {
                        s.hup_seen = true;
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.queue_read(id);
                    }
                } else {
                    ready.push(token);
                }
            }
            if std::mem::take(&mut self.accept_more) {
                ready.extend([UNIX_LISTENER, TCP_LISTENER]);
            }
            for &token in &ready {
                match token {
                    UNIX_LISTENER => self.accept_more |= self.accept_unix(),
                    TCP_LISTENER => self.accept_more |= self.accept_tcp(),
                    _ => {} // the waker: its commands were taken above
                }
            }
            self.take_inputs();
            self.read_all();
            self.close_pending(clock);
            if let Role::Order {
                table,
                sequencer,
                peers,
                ..
            } = &mut self.role
            {
                let mut out = Route {
                    own: &mut self.sessions,
                    peers,
                };
                sequencer.drive(now, table, &mut out);
            }
            // Before the batch and the writes: whatever worker 0 or a client learns of
            // this cycle, the counters worker 0 reports next already include it.
            self.publish();
            self.send_outputs();
            self.flush_all();
            self.check_congestion(clock);
            self.expire_lingering(clock);
            self.housekeeping(clock);
        }
        self.shutdown();
        Ok(())
    }

    /// Reading clients is held back: the sequencer's send queue or a worker queue is full.
    fn held(&self) -> bool {
        match &self.role {
            Role::Order {
                sequencer, peers, ..
            } => sequencer.backpressured() || peers.iter().any(|p| p.out.held),
            Role::Session(link) => link.out.held,
        }
    }

    /// A batch waits for room in a worker queue.
    fn queue_full(&self) -> bool {
        match &self.role {
            Role::Order { peers, .. } => peers.iter().any(|p| p.out.held),
            Role::Session(link) => link.out.held,
        }
    }

    /// Another worker queued something for this one that this cycle may take.
    fn inputs_waiting(&self) -> bool {
        match &self.role {
            Role::Order {
                sequencer, peers, ..
            } => {
                !sequencer.backpressured()
                    && !peers.iter().any(|p| p.out.held)
                    && peers.iter().any(|p| !p.input.rx.is_empty())
            }
            Role::Session(link) => !link.input.rx.is_empty() || !link.sockets.is_empty(),
        }
    }

    /// Takes what other workers queued, bounded per cycle: on worker 0 the session
    /// workers' batches (held back, like client input, while the sequencer or an output
    /// queue is full); on a session worker, accepted sockets and the table's output.
    fn take_inputs(&mut self) {
        match &mut self.role {
            Role::Order {
                table,
                sequencer,
                peers,
                ..
            } => {
                if sequencer.backpressured() || peers.iter().any(|p| p.out.held) {
                    return;
                }
                for i in 0..peers.len() {
                    let worker = i + 1;
                    for _ in 0..shard::BATCHES_PER_CYCLE {
                        let Ok(batch) = peers[i].input.rx.try_recv() else {
                            break;
                        };
                        let mut rest = &batch[..];
                        while let Some(record) = shard::next_up(&mut rest) {
                            match record {
                                Ok(Up::Bind {
                                    slot,
                                    transport,
                                    name,
                                }) => {
                                    table.bind_local(name, shard::global(worker, slot));
                                    peers[i].clients.insert(slot, (name.into(), transport));
                                }
                                Ok(Up::Unbind { slot, name }) => {
                                    table.unbind_local(name, shard::global(worker, slot));
                                    peers[i].clients.remove(&slot);
                                    peers[i].pending.remove(&slot);
                                    peers[i].out.freed(slot);
                                }
                                Ok(Up::Event(event)) => {
                                    let mut out = Route {
                                        own: &mut self.sessions,
                                        peers,
                                    };
                                    sequencer.submit(&event, table, &mut out);
                                }
                                Ok(Up::Request { slot, request }) => {
                                    peers[i].pending.entry(slot).or_default().push_back(request);
                                }
                                Ok(Up::Status { slot }) => {
                                    self.status_for.push(shard::global(worker, slot));
                                }
                                Err(()) => {
                                    tracing::error!(worker, "corrupt batch from a session worker");
                                    break;
                                }
                            }
                        }
                        peers[i].input.recycle(batch);
                    }
                }
                for id in std::mem::take(&mut self.status_for) {
                    self.status(id);
                }
            }
            Role::Session(_) => {
                for _ in 0..shard::SOCKET_QUEUE {
                    let Role::Session(link) = &self.role else {
                        return;
                    };
                    let Ok(stream) = link.sockets.try_recv() else {
                        break;
                    };
                    self.add_session(stream);
                }
                let Role::Session(link) = &mut self.role else {
                    return;
                };
                for _ in 0..shard::BATCHES_PER_CYCLE {
                    let Ok(batch) = link.input.rx.try_recv() else {
                        break;
                    };
                    let mut rest = &batch[..];
                    while let Some(record) = shard::next_down(&mut rest) {
                        match record {
                            Ok(Down::Output { slot, frames }) => {
                                if let Some(buf) = self.sessions.out(slot) {
                                    buf.extend_from_slice(frames);
                                }
                            }
                            Ok(Down::Welcome { slot }) => self.sessions.welcome(slot),
                            Ok(Down::FlushWait {
                                slot,
                                group,
                                waiting,
                            }) => self.sessions.flush_wait(slot, group, waiting),
                            Ok(Down::Freed { slot }) => {
                                let i = slot as usize;
                                if let Some(w) = self.awaiting_unbind.get_mut(i) {
                                    *w = false;
                                }
                                if self.sessions.slots.get(i).is_some_and(Option::is_none) {
                                    self.sessions.free.push(slot);
                                }
                            }
                            Err(()) => {
                                tracing::error!("corrupt batch from the order worker");
                                break;
                            }
                        }
                    }
                    link.input.recycle(batch);
                }
            }
        }
    }

    /// Sends this cycle's batches: one queue item per destination.
    fn send_outputs(&mut self) {
        match &mut self.role {
            Role::Order { peers, .. } => {
                for p in peers {
                    p.out.send();
                }
            }
            Role::Session(link) => link.out.send(),
        }
    }

    /// A session worker publishes its counters and snapshot for worker 0's status report.
    fn publish(&mut self) {
        if let Role::Session(link) = &self.role {
            let status = self.snapshot();
            let mut p = link.published.lock().unwrap_or_else(|e| e.into_inner());
            p.status = status;
            p.counters.clone_from(&self.counters);
        }
    }

    /// The clock as the ring reads it: time since the daemon started.
    fn ring_now(&self, clock: Instant) -> RingInstant {
        let nanos = clock
            .saturating_duration_since(self.limits.started)
            .as_nanos();
        RingInstant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn queue_read(&mut self, id: LocalId) {
        if let Some(s) = self.sessions.get(id)
            && !s.queued_read
        {
            s.queued_read = true;
            self.read_queue.push(id);
            self.can_read = true;
        }
    }

    /// Accepts up to the cycle's bound; true when connections may be left.
    fn accept_unix(&mut self) -> bool {
        for _ in 0..ACCEPTS_PER_CYCLE {
            let Some((listener, _)) = &self.unix else {
                return false;
            };
            match listener.accept() {
                Ok((stream, _)) => self.accepted(Stream::Unix(stream)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: keep serving those connected.
                    tracing::warn!("accept on the Unix socket failed: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Accepts up to the cycle's bound; true when connections may be left.
    fn accept_tcp(&mut self) -> bool {
        for _ in 0..ACCEPTS_PER_CYCLE {
            let Some(listener) = &self.tcp else {
                return false;
            };
            match listener.accept() {
                Ok((stream, _)) => self.accepted(Stream::Tcp(stream)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accept on TCP failed: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// A new connection on worker 0: refused over the daemon's limit, else served here or
    /// handed to the next session worker in turn (served here if its queue is full).
    fn accepted(&mut self, mut stream: Stream) {
        self.counters.connections += 1;
        let live = &self.registry.live;
        if live.load(AtomicOrdering::Relaxed) >= self.limits.max_clients {
            self.counters.refusals[RefuseCode::TooManyClients as usize] += 1;
            let mut buf = Vec::new();
            let reason = format!(
                "the daemon serves at most {} clients",
                self.limits.max_clients
            );
            encode::refused(&mut buf, RefuseCode::TooManyClients, &reason);
            // Best effort on a fresh socket whose buffer is empty; then it is dropped.
            let _ = io::Write::write(&mut stream, &buf);
            return;
        }
        live.fetch_add(1, AtomicOrdering::Relaxed);
        stream.tune(self.limits.sndbuf, self.limits.rcvbuf);
        if let Role::Order {
            peers, next_worker, ..
        } = &mut self.role
            && !peers.is_empty()
        {
            let w = *next_worker % (peers.len() + 1);
            *next_worker = next_worker.wrapping_add(1);
            if w > 0 {
                let peer = &peers[w - 1];
                match peer.sockets.try_send(stream) {
                    Ok(()) => {
                        if let Err(e) = peer.out.waker.wake() {
                            tracing::error!("cannot wake a session worker: {e}");
                        }
                        return;
                    }
                    Err(e) => stream = e.into_inner(),
                }
            }
        }
        self.add_session(stream);
    }

    /// Serves a connection on this worker (counted in the registry already).
    fn add_session(&mut self, mut stream: Stream) {
        let id = match self.sessions.free.pop() {
            Some(id) => id,
            None if self.sessions.slots.len() >= shard::MAX_SLOTS => {
                tracing::warn!("no session slot left on this worker; connection dropped");
                self.registry.live.fetch_sub(1, AtomicOrdering::Relaxed);
                return;
            }
            None => {
                self.sessions.slots.push(None);
                self.names.push(None);
                self.awaiting_unbind.push(false);
                (self.sessions.slots.len() - 1) as LocalId
            }
        };
        let token = Token(id as usize + FIRST_CLIENT);
        if let Err(e) = self.poll.registry().register(
            stream.source(),
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!("cannot register a client socket: {e}");
            self.sessions.free.push(id);
            self.registry.live.fetch_sub(1, AtomicOrdering::Relaxed);
            return;
        }
        let session = Session::new(stream);
        tracing::debug!(
            id,
            transport = session.stream.transport(),
            peer = %session.peer,
            "connection accepted"
        );
        self.sessions.slots[id as usize] = Some(session);
        self.sessions.live += 1;
        // The client may have written its hello already; the edge was before registration
        // on some kernels, so look now.
        self.queue_read(id);
    }

    /// Reads from every queued session. While paused, only congested sessions are read:
    /// a client whose own queue is long may be blocked writing to us and unable to read
    /// until its write completes, so holding it back would deadlock it; its queue is
    /// still bounded by the hard limit.
    fn read_all(&mut self) {
        let mut queue = std::mem::take(&mut self.read_queue);
        let mut keep = 0;
        self.can_read = false;
        // The ring's send queue is full: read nobody (what they send waits in their
        // sockets) until it drains; the events already taken are held, never dropped.
        let held = self.held();
        for i in 0..queue.len() {
            let id = queue[i];
            let eligible = !held
                && (!self.paused
                    || self
                        .sessions
                        .get(id)
                        .is_some_and(|s| s.congested_since.is_some() || s.closing.is_some()));
            let more = !eligible || self.read_session(id);
            match self.sessions.get(id) {
                Some(s) if more && s.closing.is_none() => {
                    queue[keep] = id;
                    keep += 1;
                    self.can_read |= eligible;
                }
                Some(s) => s.queued_read = false,
                None => {}
            }
        }
        queue.truncate(keep);
        // Sessions queued while reading (newly accepted ones) go after the leftovers.
        self.can_read |= !self.read_queue.is_empty() && !self.paused && !held;
        queue.append(&mut self.read_queue);
        self.read_queue = queue;
    }

    /// Reads up to the turn's budget; true when the socket may hold more.
    fn read_session(&mut self, id: LocalId) -> bool {
        for _ in 0..self.limits.reads_per_turn {
            let Some(s) = self.sessions.get(id) else {
                return false;
            };
            if s.closing.is_some() {
                // A lingering close: the input no longer matters, only noticing the
                // peer's close does.
                let (rbuf, closed) = (&mut s.rbuf, &mut s.peer_closed);
                let mut scratch = std::mem::take(rbuf);
                *closed |= s.stream.discard_input(&mut scratch);
                s.rbuf = scratch;
                return false;
            }
            s.reserve_read(self.limits.read_chunk, self.limits.max_frame);
            let end = s.rbuf.len().min(s.rlen + self.limits.read_chunk);
            let asked = end - s.rlen;
            let rlen = s.rlen;
            match s.stream.read(&mut s.rbuf[rlen..end]) {
                Ok(0) => {
                    self.close(id, CloseReason::Client);
                    return false;
                }
                Ok(n) => {
                    s.rlen += n;
                    self.counters.reads += 1;
                    self.counters.bytes_in += n as u64;
                    self.handle_input(id);
                    if n < asked && !self.sessions.get(id).is_some_and(|s| s.hup_seen) {
                        // A short read drained the socket; epoll reports the next arrival
                        // (but not a close that came with the edge already taken).
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(id, CloseReason::Io(e.to_string()));
                    return false;
                }
            }
        }
        true
    }

    /// Handles every whole frame in the session's read buffer.
    fn handle_input(&mut self, id: LocalId) {
        let Some(s) = self.sessions.get(id) else {
            return;
        };
        let mut rbuf = std::mem::take(&mut s.rbuf);
        let rlen = s.rlen;
        let mut start = 0;
        while start < rlen {
            let welcomed = self.sessions.get(id).is_some_and(|s| s.welcomed);
            let max_frame = if welcomed {
                self.limits.max_frame
            } else {
                HELLO_FRAME_MAX.min(self.limits.max_frame)
            };
            match split_frame(&rbuf[start..rlen], max_frame) {
                Ok(Some((body, used))) => {
                    start += used;
                    self.handle_frame(id, body);
                    if self.sessions.get(id).is_none_or(|s| s.closing.is_some()) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(WireError::FrameTooLong { len, .. }) if !welcomed => {
                    self.counters.malformed_frames += 1;
                    let reason = format!(
                        "bad hello: the first frame claims {len} bytes (a hello has at most \
                         {HELLO_FRAME_MAX}); is this a Conclave client?"
                    );
                    self.refuse(id, RefuseCode::BadHello, &reason);
                    break;
                }
                Err(WireError::FrameTooLong { len, max }) => {
                    let reason = format!(
                        "frame of {len} bytes exceeds the maximum of {max} (payload limit {}); \
                         closing since the stream cannot be resynchronised",
                        self.limits.max_payload
                    );
                    self.counters.malformed_frames += 1;
                    self.counters.oversize_disconnects += 1;
                    self.send_error(id, ErrorCode::TooLarge, &reason);
                    self.close(id, CloseReason::TooLarge);
                    break;
                }
                Err(e) => {
                    // A zero-length frame: skip its prefix and go on.
                    start += conclave_control::wire::client::LEN_PREFIX;
                    self.malformed(id, &e, 0);
                }
            }
        }
        if let Some(s) = self.sessions.get(id) {
            rbuf.copy_within(start..rlen, 0);
            s.rlen = rlen - start;
            s.rbuf = rbuf;
        }
    }

    fn malformed(&mut self, id: LocalId, e: &WireError, request: u32) {
        self.counters.malformed_frames += 1;
        let welcomed = self.sessions.get(id).is_some_and(|s| s.welcomed);
        if !welcomed {
            return self.refuse(id, RefuseCode::BadHello, &format!("bad hello: {e}"));
        }
        let code = match e {
            WireError::UnknownKind(_) => ErrorCode::UnexpectedFrame,
            WireError::Name(_) => ErrorCode::BadGroupName,
            _ => ErrorCode::MalformedFrame,
        };
        self.reject(id, request, code, &format!("frame ignored: {e}"));
    }

    /// Answers a request with an Error after the effects of the client's earlier
    /// requests: the refusal is ordered like any request (it changes nothing).
    fn reject(&mut self, id: LocalId, request: u32, code: ErrorCode, reason: &str) {
        let Some(me) = self.names.get(id as usize).and_then(Option::as_deref) else {
            return;
        };
        let event = Event::Reject {
            client: me,
            code: code as u16,
            reason,
        };
        submit_request(&mut self.role, &mut self.sessions, id, request, &event);
    }

    /// An Error written at once, for a session that is closing (an oversize length
    /// prefix): it answers no request and nothing may follow it.
    fn send_error(&mut self, id: LocalId, code: ErrorCode, reason: &str) {
        self.counters.errors[code as usize] += 1;
        if let Some(buf) = self.sessions.out(id) {
            encode::error(buf, 0, code, reason);
            self.counters.own_frames_out += 1;
        }
    }

    fn refuse(&mut self, id: LocalId, code: RefuseCode, reason: &str) {
        self.counters.refusals[code as usize] += 1;
        let peer = self
            .sessions
            .get(id)
            .map(|s| s.peer.clone())
            .unwrap_or_default();
        tracing::debug!(id, ?code, reason, %peer, "hello refused");
        if let Some(buf) = self.sessions.out(id) {
            encode::refused(buf, code, reason);
            self.counters.own_frames_out += 1;
        }
        self.close(id, CloseReason::Refused);
    }

    fn handle_frame(&mut self, id: LocalId, body: &[u8]) {
        self.counters.frames_in += 1;
        if let Some(s) = self.sessions.get(id) {
            s.frames_in += 1;
        }
        let frame = match decode_client(body) {
            Ok(f) => f,
            Err(e) => return self.malformed(id, &e, request_id_of(body)),
        };
        let welcomed = self.sessions.get(id).is_some_and(|s| s.welcomed);
        if !welcomed {
            return match frame {
                ClientFrame::Hello { version, name } => self.hello(id, version, name),
                _ => self.refuse(id, RefuseCode::BadHello, "the first frame must be a hello"),
            };
        }
        let Some(me) = self.names.get(id as usize).and_then(Option::as_deref) else {
            return;
        };
        match frame {
            ClientFrame::Hello { .. } => self.reject(
                id,
                0,
                ErrorCode::UnexpectedFrame,
                "hello was already accepted",
            ),
            ClientFrame::Join { request, group } | ClientFrame::Leave { request, group }
                if names::check_group(group).is_err() =>
            {
                let e = names::check_group(group)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                let reason = format!("bad group name {group:?}: {e}");
                self.reject(id, request, ErrorCode::BadGroupName, &reason);
            }
            ClientFrame::Join { request, group } => {
                let event = Event::Join { client: me, group };
                submit_request(&mut self.role, &mut self.sessions, id, request, &event);
            }
            ClientFrame::Leave { request, group } => {
                let event = Event::Leave { client: me, group };
                submit_request(&mut self.role, &mut self.sessions, id, request, &event);
            }
            ClientFrame::Multicast {
                request,
                service,
                msg_type,
                groups,
                payload,
            } => {
                if payload.len() > self.limits.max_payload {
                    let reason = format!(
                        "payload of {} bytes exceeds the maximum of {}; message not delivered",
                        payload.len(),
                        self.limits.max_payload
                    );
                    return self.reject(id, request, ErrorCode::TooLarge, &reason);
                }
                let event = Event::Data {
                    sender: me,
                    service,
                    msg_type,
                    groups,
                    payload,
                };
                submit_request(&mut self.role, &mut self.sessions, id, request, &event);
            }
            ClientFrame::FlushOk { group, .. } if names::check_group(group).is_err() => {
                let reason = format!("flush ok for {group:?}: not a group name");
                self.reject(id, 0, ErrorCode::BadGroupName, &reason);
            }
            ClientFrame::FlushOk { group, view_id } => {
                // Not a request (nothing answers it); the table ignores a stale one. The
                // wait ends when the table counts it, at every daemon alike.
                let event = Event::FlushOk {
                    client: me,
                    group,
                    view: view_id,
                };
                submit(&mut self.role, &mut self.sessions, &event);
            }
            ClientFrame::Disconnect => self.close(id, CloseReason::Client),
            // Answered at once: a snapshot of this daemon, not a change to order.
            ClientFrame::StatusRequest { .. } => self.status(id),
        }
    }

    fn hello(&mut self, id: LocalId, version: u16, name: &str) {
        if version != PROTOCOL_VERSION {
            let reason = format!(
                "protocol version {version} is not supported; this daemon speaks \
                 {PROTOCOL_VERSION} (version 2 numbers requests so that errors name them; \
                 version 3 adds the flush round of Virtual Synchrony groups): \
                 upgrade the client"
            );
            return self.refuse(id, RefuseCode::UnsupportedVersion, &reason);
        }
        let private = if name.is_empty() {
            // Pick a name nobody holds; a client may have asked for `c<n>` itself.
            loop {
                let user = format!("c{}", self.registry.anonymous());
                let private = names::private_name(&user, &self.limits.daemon);
                if self.registry.claim(&private) {
                    break private;
                }
            }
        } else {
            if let Err(e) = names::check_user(name) {
                return self.refuse(id, RefuseCode::BadName, &format!("bad private name: {e}"));
            }
            let private = names::private_name(name, &self.limits.daemon);
            if !self.registry.claim(&private) {
                let reason = format!("another client of this daemon is named {private:?}");
                return self.refuse(id, RefuseCode::DuplicateName, &reason);
            }
            private
        };
        let private: Box<str> = private.into();
        self.by_name.insert(private.clone(), id);
        match &mut self.role {
            Role::Order { table, .. } => table.bind_local(&private, id),
            Role::Session(link) => {
                let transport = self
                    .sessions
                    .slots
                    .get(id as usize)
                    .and_then(Option::as_ref)
                    .map_or("unix", |s| s.stream.transport());
                link.out.up(&Up::Bind {
                    slot: id,
                    transport,
                    name: &private,
                });
            }
        }
        let (daemon, max_payload) = (&self.limits.daemon, self.limits.max_payload);
        if let Some(s) = self.sessions.get(id) {
            s.welcomed = true;
        }
        if let Some(s) = self.sessions.get(id) {
            // Held until the Connect below is ordered (at once on a single daemon).
            let mut frame = Vec::new();
            encode::welcome(
                &mut frame,
                &private,
                daemon,
                u32::try_from(max_payload).unwrap_or(u32::MAX),
            );
            s.welcome = Some(frame);
            self.counters.own_frames_out += 1;
        }
        self.counters.welcomed += 1;
        if let Some(s) = self.sessions.get(id) {
            tracing::info!(
                client = %private,
                transport = s.stream.transport(),
                peer = %s.peer,
                "client connected"
            );
        }
        let event = Event::Connect { client: &private };
        submit(&mut self.role, &mut self.sessions, &event);
        self.names[id as usize] = Some(private);
    }

    /// Answers a status request: worker 0 renders the report (for its own client or, by
    /// table id, for a session worker's); a session worker passes the request on.
    fn status(&mut self, id: LocalId) {
        let (table, sequencer, peers) = match &mut self.role {
            Role::Session(link) => {
                self.counters.status_requests += 1;
                link.out.up(&Up::Status { slot: id });
                return;
            }
            Role::Order {
                table,
                sequencer,
                peers,
                ..
            } => (table, sequencer, peers),
        };
        if shard::split(id).0 == 0 {
            self.counters.status_requests += 1;
        }
        let mut clients = Vec::new();
        for (i, slot) in self.sessions.slots.iter().enumerate() {
            let (Some(s), Some(Some(name))) = (slot, self.names.get(i)) else {
                continue;
            };
            clients.push(ClientStatus {
                name,
                transport: s.stream.transport(),
                groups: table.groups_of(name),
                queued: Some(s.queued()),
            });
        }
        let mut counters = self.counters.clone();
        let mut workers = vec![WorkerStatus {
            index: self.link.index,
            role: "order",
            core: self.core,
            cycles: self.cycles,
            clients: self.sessions.live,
        }];
        for p in peers.iter() {
            // A session worker's queue lengths stay with it.
            for (name, transport) in p.clients.values() {
                clients.push(ClientStatus {
                    name,
                    transport,
                    groups: table.groups_of(name),
                    queued: None,
                });
            }
            let published = p.published.lock().unwrap_or_else(|e| e.into_inner());
            counters.add(&published.counters);
            workers.push(published.status.clone());
        }
        let groups = table.groups();
        let l = &self.limits;
        let settings = status::Settings {
            name: &l.daemon,
            profile: &l.profile,
            uptime_ms: l.started.elapsed().as_millis(),
            max_clients: l.max_clients,
            max_payload: l.max_payload,
            queue_limit: l.queue_limit,
            pause_mark: l.pause_mark,
            workers_configured: l.workers,
            workers: &workers,
        };
        let json = status::render(
            &settings,
            &clients,
            &groups,
            &counters,
            table.stats(),
            sequencer.ordered(),
            sequencer.status(),
        );
        let mut out = Route {
            own: &mut self.sessions,
            peers,
        };
        if let Some(buf) = out.out(id) {
            encode::status(buf, &json);
            self.counters.own_frames_out += 1;
        }
    }

    /// Marks a session to end at the end of this turn; a welcomed client's groups learn
    /// of its departure at once.
    fn close(&mut self, id: LocalId, reason: CloseReason) {
        let Some(s) = self.sessions.get(id) else {
            return;
        };
        if s.closing.is_some() {
            return;
        }
        tracing::debug!(id, ?reason, peer = %s.peer, "closing session");
        let (transport, peer) = (s.stream.transport(), s.peer.clone());
        s.closing = Some(reason.clone());
        self.to_close.push(id);
        if let Some(name) = self.names.get_mut(id as usize).and_then(Option::take) {
            tracing::info!(client = %name, transport, %peer, ?reason, "client disconnected");
            self.by_name.remove(&name);
            self.registry.release(&name);
            // The id may be reused before a ring orders the Disconnect.
            match &mut self.role {
                Role::Order { table, .. } => table.unbind_local(&name, id),
                Role::Session(link) => {
                    link.out.up(&Up::Unbind {
                        slot: id,
                        name: &name,
                    });
                    if let Some(w) = self.awaiting_unbind.get_mut(id as usize) {
                        *w = true;
                    }
                }
            }
            let event = Event::Disconnect { client: &name };
            submit(&mut self.role, &mut self.sessions, &event);
        }
    }

    /// Ends the sessions marked this turn. A client that left, or whose socket failed,
    /// is dropped at once. Otherwise (a Refused, an Error before closing, a Goodbye) the
    /// session lingers, taking no deliveries: its last frames are written, then our side
    /// is shut (FIN) and its input discarded until it closes or a short grace expires —
    /// closing with unread input would reset a TCP connection and could destroy the
    /// frames that say why.
    fn close_pending(&mut self, clock: Instant) {
        for id in std::mem::take(&mut self.to_close) {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            let graceful = !matches!(
                s.closing,
                Some(CloseReason::Io(_)) | Some(CloseReason::Client)
            );
            match s.flush(self.limits.write_chunk) {
                Ok(n) => self.counters.bytes_out += n as u64,
                Err(_) => s.wbuf.clear(),
            }
            if graceful {
                self.lingering.push((id, clock + LINGER));
            } else {
                self.finalize(id);
            }
        }
    }

    /// Drops a session for good.
    fn finalize(&mut self, id: LocalId) {
        let Some(mut s) = self
            .sessions
            .slots
            .get_mut(id as usize)
            .and_then(Option::take)
        else {
            return;
        };
        if let Err(e) = self.poll.registry().deregister(s.stream.source()) {
            tracing::debug!("deregister failed: {e}");
        }
        self.counters.disconnects += 1;
        self.sessions.live -= 1;
        self.registry.live.fetch_sub(1, AtomicOrdering::Relaxed);
        // A session worker's slot waits for worker 0 to confirm the unbinding.
        if !self
            .awaiting_unbind
            .get(id as usize)
            .copied()
            .unwrap_or(false)
        {
            self.sessions.free.push(id);
        }
        self.lingering.retain(|&(l, _)| l != id);
    }

    /// Once a second: read buffers grown for a large frame and now empty are given back
    /// (not on the hot path, where a stream of large frames would regrow them each time).
    fn housekeeping(&mut self, now: Instant) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        let mut silent = Vec::new();
        let mut unflushed = Vec::new();
        let check_flush = std::mem::take(&mut self.sessions.flush_waits);
        for (id, slot) in self.sessions.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            s.shrink_read(self.limits.read_chunk);
            if check_flush && s.closing.is_none() && !s.flush_waits.is_empty() {
                self.sessions.flush_waits = true;
                let late = s.flush_waits.iter().find(|(_, since)| {
                    now.saturating_duration_since(*since) >= self.limits.flush_timeout
                });
                if let Some((group, _)) = late {
                    unflushed.push((id as LocalId, group.clone()));
                }
            }
            if !s.welcomed
                && s.closing.is_none()
                && now.duration_since(s.accepted) >= self.limits.hello_timeout
            {
                silent.push(id as LocalId);
            }
        }
        for id in silent {
            let reason = format!("no hello within {:?}", self.limits.hello_timeout);
            self.refuse(id, RefuseCode::BadHello, &reason);
        }
        for (id, group) in unflushed {
            self.counters.flush_timeouts += 1;
            let reason = format!(
                "flush timeout: no FlushOk for group {group:?} within {} ms",
                self.limits.flush_timeout.as_millis()
            );
            tracing::info!(id, %reason, "disconnecting");
            if let Some(s) = self.sessions.get(id) {
                encode::goodbye(&mut s.wbuf, &reason);
                self.counters.own_frames_out += 1;
            }
            // Its Disconnect, once ordered, ends the flush's wait for it at every daemon.
            self.close(id, CloseReason::FlushTimeout);
        }
    }

    /// Moves lingering closes along: FIN once the last frames are out, drop once the peer
    /// closed too or the grace expired.
    fn expire_lingering(&mut self, now: Instant) {
        if self.lingering.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for &(id, deadline) in &self.lingering {
            let Some(s) = self.sessions.slots[id as usize].as_mut() else {
                done.push(id);
                continue;
            };
            if !s.fin_sent && s.queued() == 0 {
                s.stream.shutdown_write();
                s.fin_sent = true;
            }
            if now >= deadline || (s.fin_sent && s.peer_closed) {
                done.push(id);
            }
        }
        for id in done {
            self.finalize(id);
        }
    }

    fn flush_all(&mut self) {
        let dirty = std::mem::take(&mut self.sessions.dirty);
        for &id in &dirty {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            s.dirty = false;
            let lingering = s.closing.is_some();
            match s.flush(self.limits.write_chunk) {
                Ok(n) => {
                    self.counters.writes += 1;
                    self.counters.bytes_out += n as u64;
                }
                Err(_) if lingering => s.wbuf.clear(),
                Err(e) => self.close(id, CloseReason::Io(e.to_string())),
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        // Closes above may have queued notifications for others: keep both lists.
        dirty.append(&mut self.sessions.dirty);
        self.sessions.dirty = dirty;
    }

    /// Pauses reading while a client is congested and ends clients that stay congested.
    fn check_congestion(&mut self, now: Instant) {
        let mark = self.limits.pause_mark;
        let mut congested = false;
        let mut slow = Vec::new();
        for (i, slot) in self.sessions.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            if s.closing.is_some() {
                continue;
            }
            let queued = s.queued();
            if queued <= mark {
                s.congested_since = None;
                continue;
            }
            let since = *s.congested_since.get_or_insert(now);
            if queued > self.limits.queue_limit || now.duration_since(since) >= self.limits.stall {
                slow.push((i as LocalId, queued));
            } else {
                congested = true;
            }
        }
        for (id, queued) in slow {
            self.counters.slow_consumer_disconnects += 1;
            let reason = format!(
                "slow consumer: {queued} bytes queued, limit {}",
                self.limits.queue_limit
            );
            tracing::info!(id, %reason, "disconnecting");
            if let Some(s) = self.sessions.get(id) {
                s.drop_unsent_frames();
                encode::goodbye(&mut s.wbuf, &reason);
                self.counters.own_frames_out += 1;
            }
            self.close(id, CloseReason::SlowConsumer);
        }
        // The pause is daemon-wide: every worker holds its readers while any worker has
        // a congested client.
        let bit = self.congestion_bit();
        if congested != self.congested_here {
            if congested {
                self.registry
                    .congested
                    .fetch_or(bit, AtomicOrdering::Relaxed);
            } else {
                self.registry
                    .congested
                    .fetch_and(!bit, AtomicOrdering::Relaxed);
            }
            self.congested_here = congested;
        }
        let elsewhere = self.registry.congested.load(AtomicOrdering::Relaxed) & !bit != 0;
        let paused = congested || elsewhere;
        if paused && !self.paused {
            self.counters.read_pauses += 1;
        }
        self.paused = paused;
    }

    fn congestion_bit(&self) -> u64 {
        1 << (self.link.index % 64)
    }

    /// Says goodbye to every client, writes what it can within a short bound, closes all
    /// sockets and removes the Unix socket file.
    fn shutdown(&mut self) {
        // Nothing read here any more can congest: release the other workers.
        let bit = self.congestion_bit();
        self.registry
            .congested
            .fetch_and(!bit, AtomicOrdering::Relaxed);
        tracing::info!(
            "shutting down: saying goodbye to {} clients",
            self.sessions.live
        );
        for slot in self.sessions.slots.iter_mut().flatten() {
            if slot.closing.is_none() {
                encode::goodbye(&mut slot.wbuf, "daemon shutting down");
                self.counters.own_frames_out += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut events = Events::with_capacity(64);
        loop {
            let mut pending = false;
            for slot in self.sessions.slots.iter_mut().flatten() {
                if slot.flush(self.limits.write_chunk).is_err() {
                    slot.wbuf.clear();
                    slot.wpos = 0;
                }
                pending |= slot.queued() > 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                break;
            }
            if self
                .poll
                .poll(&mut events, Some(left.min(Duration::from_millis(50))))
                .is_err()
            {
                break;
            }
        }
        // FIN first, and drop what clients still sent, so closing does not reset a TCP
        // connection whose Goodbye is in flight.
        let mut scratch = vec![0u8; 64 * 1024];
        for slot in &mut self.sessions.slots {
            if let Some(s) = slot.as_mut() {
                s.stream.shutdown_write();
                s.stream.discard_input(&mut scratch);
                let _ = self.poll.registry().deregister(s.stream.source());
            }
            *slot = None;
        }
        self.tcp = None;
        if let Some((listener, path)) = self.unix.take() {
            drop(listener);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}
