//! The group table: every daemon applies the same ordered events to it and so holds the
//! same groups, members and view ids; each daemon then delivers to its own local clients.
//!
//! Pure and deterministic: no I/O, clocks or randomness. Frames for local clients are
//! encoded straight into their output buffers through an [`Outbox`]. Members are listed
//! sorted by private name (byte order), so every daemon lists a view identically. A view
//! id is `(epoch, seq)`: `epoch` is the daemon configuration and `seq` the table's count of
//! membership changes within it, so view ids increase strictly within a group even when the
//! group empties and is created again. Daemon configuration changes (transitional views,
//! installs, merges) live in the `evs` submodule.
//!
//! Groups that ask for Virtual Synchrony (closed groups named by a `[groups] vs` rule) do
//! not change their view at once: the change is queued on the group and its local members
//! get a FlushRequest; each staying member answers with a FlushOk, which is ordered like
//! any event, so every daemon counts the answers at the same point and delivers the new
//! view right after the last one. Messages ordered before that point are delivered in the
//! old view. Changes queued on one group are flushed one at a time, in order (each its own
//! flush round and its own view), so views keep meaning one change each. Members that
//! leave or disconnect are not waited for; a member that never answers is the runtime's
//! to disconnect (the table has no clock), which ends the wait for it like any disconnect.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use conclave_control::wire::client::{
    ErrorCode, GroupList, MembershipReason, Service, ViewId, ViewKind, encode,
};
use conclave_control::wire::names;

use super::event::Event;
use crate::config::{GroupsConfig, Openness};

mod evs;

/// A client of this daemon, as the runtime numbers them.
pub type LocalId = u32;

/// Where the table writes frames for local clients.
pub trait Outbox {
    /// The output buffer of local client `id`, or `None` when it is gone.
    fn out(&mut self, id: LocalId) -> Option<&mut Vec<u8>>;

    /// The id the client chose for its oldest request not yet applied (0 if unknown):
    /// an Error that the table writes answers that request. Request ids never leave the
    /// client's daemon; the per-sender order of events lets the runtime keep them in a
    /// queue beside the session.
    fn request(&mut self, id: LocalId) -> u32 {
        let _ = id;
        0
    }

    /// The oldest request of local client `id` has been applied (answered or not).
    fn done(&mut self, id: LocalId) {
        let _ = id;
    }

    /// The Connect of local client `id` has been applied: it is in the order, so every
    /// daemon knows its private name before anything ordered later. The runtime sends
    /// the client's Welcome now, so that a name a client hands out can be addressed at
    /// once (protocol rule 2).
    fn connected(&mut self, id: LocalId) {
        let _ = id;
    }

    /// Local client `id` was sent a FlushRequest for `group` (`waiting` true) and must
    /// answer in time, or no longer owes an answer for it (`waiting` false: it answered,
    /// or the flush ended without it). The runtime times the wait: the table has no clock.
    fn flush_wait(&mut self, id: LocalId, group: &str, waiting: bool) {
        let _ = (id, group, waiting);
    }
}

/// Limits and policy the table enforces; the same at every daemon (from the shared config).
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Group openness rules.
    pub groups: GroupsConfig,
    /// Most groups one client may be in.
    pub max_groups_per_client: usize,
    /// Epoch of view ids until the first configuration change installs another (fixed in
    /// single-daemon mode).
    pub epoch: u64,
}

/// Counters of what the table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Events applied.
    pub events: u64,
    /// Data events applied (delivered or refused).
    pub messages: u64,
    /// Data frames written to local clients.
    pub deliveries: u64,
    /// Payload bytes written to local clients.
    pub delivered_bytes: u64,
    /// Membership notifications written to local clients.
    pub notifications: u64,
    /// Error frames written, indexed by `ErrorCode as usize`.
    pub errors: [u64; 16],
    /// Data events that reached nobody (every target group empty), each one counted;
    /// the sender hears of the first of a run ([`ErrorCode::NoRecipients`]).
    pub undeliverable: u64,
    /// `State` events given to `apply` (outside a merge), ignored.
    pub stray_states: u64,
    /// `Connect` events of clients of a daemon that left, applied between a transitional
    /// configuration and the next install or merge, ignored (the daemon is gone).
    pub departed_connects: u64,
    /// Flush rounds started on Virtual Synchrony groups.
    pub flushes: u64,
    /// FlushOk events that answered no pending flush (stale, repeated, or not a member),
    /// ignored.
    pub stray_flush_oks: u64,
}

type ClientIdx = u32;
type GroupIdx = u32;

#[derive(Debug)]
struct Client {
    name: Box<str>,
    local: Option<LocalId>,
    /// Groups in join order (the order a disconnect leaves them in).
    groups: Vec<GroupIdx>,
    /// The client's last multicast reached nobody and it was told so: the next ones
    /// that reach nobody are only counted, so a sender that never reads (publishing in
    /// case someone listens) is not cut off as a slow consumer by its own errors.
    told_undeliverable: bool,
    /// Disconnected, but still listed in a Virtual Synchrony group's current view (its
    /// removal waits for the group's flush) or named by a queued change: the entry stays
    /// so its index stays valid, out of `by_name`, until nothing refers to it.
    gone: bool,
    /// Changes naming this client queued on Virtual Synchrony groups (joins count toward
    /// the group limit while queued).
    queued: u32,
}

/// A membership change of a Virtual Synchrony group waiting for its flush.
#[derive(Debug, Clone, Copy)]
struct Change {
    /// Join, Leave, Disconnect or Network.
    reason: MembershipReason,
    /// Who joins or goes (`None` for a network change).
    client: Option<ClientIdx>,
}

/// The flush state of a Virtual Synchrony group with changes queued.
#[derive(Debug, Default)]
struct Flush {
    /// Changes in order; the front one is being flushed.
    queue: VecDeque<Change>,
    /// Members of the current view whose FlushOk the front change still waits for.
    waiting: Vec<ClientIdx>,
}

#[derive(Debug)]
struct Group {
    name: Box<str>,
    view: ViewId,
    closed: bool,
    /// Sorted by client name.
    members: Vec<ClientIdx>,
    /// Local members' ids, in no particular order.
    local: Vec<LocalId>,
    /// Virtual Synchrony: view changes wait for a flush round.
    vs: bool,
    /// Changes waiting for their flush (`None` when there are none).
    flush: Option<Box<Flush>>,
}

/// The group table (see the module docs).
#[derive(Debug)]
pub struct GroupTable {
    config: TableConfig,
    by_name: HashMap<Box<str>, ClientIdx>,
    clients: Vec<Option<Client>>,
    free_clients: Vec<ClientIdx>,
    groups_by_name: HashMap<Box<str>, GroupIdx>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<GroupIdx>,
    /// Local clients known to the runtime, bound when their `Connect` is applied.
    local_ids: HashMap<Box<str>, LocalId>,
    /// The daemon configuration new view ids belong to.
    epoch: u64,
    /// Membership changes applied in this epoch: the `seq` of the latest view id.
    changes: u64,
    /// Groups that got a transitional view since the last install or merge (sorted, so
    /// every daemon gives them their regular views, and view ids, in the same order).
    pending_regular: BTreeSet<Box<str>>,
    /// Daemons whose clients a transitional configuration removed, until the next install
    /// or merge: their clients' late `Connect` events must not bring them back.
    departed: HashSet<Box<str>>,
    /// Reused by multi-group deliveries and notifications.
    scratch_ids: Vec<LocalId>,
    scratch_frame: Vec<u8>,
    stats: TableStats,
    /// True when some rule or the default can close a group (skips policy work otherwise).
    any_closed: bool,
    /// True when some rule asks for Virtual Synchrony.
    any_vs: bool,
}

/// A read-only view of one group, for status reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo<'t> {
    /// The group's name.
    pub name: &'t str,
    /// Its current view id.
    pub view: ViewId,
    /// Whether non-members may not send to it.
    pub closed: bool,
    /// Whether it asks for Virtual Synchrony.
    pub vs: bool,
    /// Membership changes waiting for the group's flush round (0 when none).
    pub flush_pending: usize,
    /// Its members, in view order.
    pub members: Vec<&'t str>,
}

impl GroupTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        let any_closed =
            config.groups.default == Openness::Closed || !config.groups.closed.is_empty();
        let any_vs = any_closed && !config.groups.vs.is_empty();
        Self {
            any_vs,
            epoch: config.epoch,
            config,
            by_name: HashMap::new(),
            clients: Vec::new(),
            free_clients: Vec::new(),
            groups_by_name: HashMap::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            local_ids: HashMap::new(),
            changes: 0,
            pending_regular: BTreeSet::new(),
            departed: HashSet::new(),
            scratch_ids: Vec::new(),
            scratch_frame: Vec::new(),
            stats: TableStats::default(),
            any_closed,
        }
    }

    /// Tells the table that the client named `name` is local to this daemon under `id`;
    /// takes effect when its `Connect` event is applied.
    pub fn bind_local(&mut self, name: &str, id: LocalId) {
        self.local_ids.insert(name.into(), id);
    }

    /// Forgets that local client `name` is `id`, at once, before its `Disconnect` is
    /// ordered: across daemons that event comes back later, and meanwhile `id` may be given
    /// to a new session, which must not receive the departed client's deliveries.
    pub fn unbind_local(&mut self, name: &str, id: LocalId) {
        if self.local_ids.get(name) == Some(&id) {
            self.local_ids.remove(name);
        }
        let Some(&c) = self.by_name.get(name) else {
            return;
        };
        let Some(entry) = self.clients[c as usize].as_mut() else {
            return;
        };
        if entry.local != Some(id) {
            return;
        }
        entry.local = None;
        for &g in &entry.groups {
            if let Some(gr) = self.groups[g as usize].as_mut() {
                gr.local.retain(|&l| l != id);
            }
        }
    }

    /// The daemon configuration epoch of new view ids.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counters so far.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// Whether a client of that private name is connected anywhere.
    pub fn has_client(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The groups a client is in, in join order.
    pub fn groups_of(&self, name: &str) -> Vec<&str> {
        self.by_name
            .get(name)
            .and_then(|&c| self.client(c))
            .map(|c| c.groups.iter().map(|&g| self.group_name(g)).collect())
            .unwrap_or_default()
    }

    /// Every group, sorted by name.
    pub fn groups(&self) -> Vec<GroupInfo<'_>> {
        let mut all: Vec<_> = self
            .groups
            .iter()
            .flatten()
            .map(|g| GroupInfo {
                name: &g.name,
                view: g.view,
                closed: g.closed,
                vs: g.vs,
                flush_pending: g.flush.as_ref().map_or(0, |f| f.queue.len()),
                members: g.members.iter().map(|&c| self.client_name(c)).collect(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(b.name));
        all
    }

    /// Applies one ordered event, writing frames for local clients into `out`. A `State`
    /// event is ignored and counted: state only means something as the whole exchange,
    /// which [`GroupTable::merge`] takes.
    pub fn apply(&mut self, event: &Event<'_>, out: &mut dyn Outbox) {
        self.stats.events += 1;
        // A client's request: its queue of request ids moves on once it is applied.
        let requester = match *event {
            Event::Join { client, .. }
            | Event::Leave { client, .. }
            | Event::Reject { client, .. }
            | Event::Data { sender: client, .. } => self.local_of(client),
            Event::Connect { .. }
            | Event::Disconnect { .. }
            | Event::State { .. }
            | Event::FlushOk { .. } => None,
        };
        match *event {
            Event::Connect { client } => {
                self.connect(client);
                // Even when the Connect changed nothing here: the client waits for it.
                if let Some(&id) = self.local_ids.get(client) {
                    out.connected(id);
                }
            }
            Event::Join { client, group } => self.join(client, group, out),
            Event::Leave { client, group } => self.leave(client, group, out),
            Event::Disconnect { client } => self.disconnect(client, out),
            Event::Data {
                sender,
                service,
                msg_type,
                groups,
                payload,
            } => self.data(sender, service, msg_type, groups, payload, out),
            Event::State { .. } => self.stats.stray_states += 1,
            Event::FlushOk {
                client,
                group,
                view,
            } => self.flush_ok(client, group, view, out),
            Event::Reject {
                client,
                code,
                reason,
            } => {
                let code = ErrorCode::from_u16(code).unwrap_or(ErrorCode::MalformedFrame);
                self.error(client, code, reason, out);
            }
        }
        if let Some(id) = requester {
            out.done(id);
        }
    }

    fn client(&self, idx: ClientIdx) -> Option<&Client> {
        self.clients.get(idx as usize).and_then(Option::as_ref)
    }

    fn client_name(&self, idx: ClientIdx) -> &str {
        self.client(idx).map_or("", |c| &c.name)
    }

    fn group_name(&self, idx: GroupIdx) -> &str {
        self.groups
            .get(idx as usize)
            .and_then(Option::as_ref)
            .map_or("", |g| &g.name)
    }

    fn local_of(&self, client: &str) -> Option<LocalId> {
        let idx = *self.by_name.get(client)?;
        self.client(idx)?.local
    }

    fn error(&mut self, client: &str, code: ErrorCode, reason: &str, out: &mut dyn Outbox) {
        let Some(id) = self.local_of(client) else {
            return;
        };
        let request = out.request(id);
        if let Some(buf) = out.out(id) {
            encode::error(buf, request, code, reason);
            self.stats.errors[code as usize] += 1;
        }
    }

    fn connect(&mut self, name: &str) {
        if self.by_name.contains_key(name) {
            // The runtime never lets two clients share a name; a replayed Connect is a no-op.
            return;
        }
        if !self.departed.is_empty()
            && names::daemon_of(name).is_some_and(|d| self.departed.contains(d))
        {
            // Sent before its daemon left and delivered in the transitional configuration:
            // the client is not in the configuration being installed.
            self.stats.departed_connects += 1;
            return;
        }
        let entry = Client {
            name: name.into(),
            local: self.local_ids.get(name).copied(),
            groups: Vec::new(),
            told_undeliverable: false,
            gone: false,
            queued: 0,
        };
        let idx = insert_slot(&mut self.clients, &mut self.free_clients, entry);
        self.by_name.insert(name.into(), idx);
    }

    fn next_view(&mut self) -> ViewId {
        self.changes += 1;
        ViewId {
            epoch: self.epoch,
            seq: self.changes,
        }
    }

    fn join(&mut self, client: &str, group: &str, out: &mut dyn Outbox) {
        let Some(&c) = self.by_name.get(client) else {
            return;
        };
        if let Err(e) = names::check_group(group) {
            let reason = format!("cannot join {group:?}: {e}");
            return self.error(client, ErrorCode::BadGroupName, &reason, out);
        }
        let existing = self.groups_by_name.get(group).copied();
        let joined = self.groups_after_queue(c);
        if let Some(g) = existing
            && self.will_be_member(c, g)
        {
            let reason = format!("already a member of group {group:?}");
            return self.error(client, ErrorCode::AlreadyJoined, &reason, out);
        }
        if joined >= self.config.max_groups_per_client {
            let reason = format!(
                "cannot join {group:?}: already in {joined} groups, the limit is {}",
                self.config.max_groups_per_client
            );
            return self.error(client, ErrorCode::TooManyGroups, &reason, out);
        }
        let g = existing.unwrap_or_else(|| self.create_group(group));
        if self.defers(g) {
            return self.enqueue(g, MembershipReason::Join, Some(c), out);
        }
        self.add_member(c, g, out);
    }

    /// Puts client `c` in group `g` with a new view, told to the group's local members.
    fn add_member(&mut self, c: ClientIdx, g: GroupIdx, out: &mut dyn Outbox) {
        let Some(client) = self.client(c).map(|e| e.name.clone()) else {
            return;
        };
        let client = &*client;
        let view = self.next_view();
        let name_of =
            |i: ClientIdx| -> &str { self.clients[i as usize].as_ref().map_or("", |c| &c.name) };
        let gr = self.groups[g as usize].as_ref().expect("live group");
        let pos = gr
            .members
            .binary_search_by(|&m| name_of(m).cmp(client))
            .unwrap_or_else(|p| p);
        let local = self.clients[c as usize].as_ref().and_then(|e| e.local);
        let gr = self.groups[g as usize].as_mut().expect("live group");
        gr.members.insert(pos, c);
        gr.view = view;
        if let Some(id) = local {
            gr.local.push(id);
        }
        if let Some(e) = self.clients[c as usize].as_mut() {
            e.groups.push(g);
        }
        self.notify(
            g,
            ViewKind::Regular,
            MembershipReason::Join,
            Some(client),
            None,
            out,
        );
    }

    fn create_group(&mut self, name: &str) -> GroupIdx {
        let closed = self.any_closed && self.config.groups.openness(name) == Openness::Closed;
        let vs = self.any_vs && self.config.groups.virtual_synchrony(name);
        let entry = Group {
            name: name.into(),
            view: ViewId::default(),
            closed,
            members: Vec::new(),
            local: Vec::new(),
            vs,
            flush: None,
        };
        let idx = insert_slot(&mut self.groups, &mut self.free_groups, entry);
        self.groups_by_name.insert(name.into(), idx);
        idx
    }

    fn leave(&mut self, client: &str, group: &str, out: &mut dyn Outbox) {
        let Some(&c) = self.by_name.get(client) else {
            return;
        };
        let g = self.groups_by_name.get(group).copied();
        match g {
            Some(g) if self.will_be_member(c, g) => {
                if self.defers(g) {
                    self.enqueue(g, MembershipReason::Leave, Some(c), out);
                } else {
                    self.remove_member(c, g, MembershipReason::Leave, out);
                }
            }
            _ => {
                let reason = format!("not a member of group {group:?}");
                self.error(client, ErrorCode::NotJoined, &reason, out);
            }
        }
    }

    fn disconnect(&mut self, client: &str, out: &mut dyn Outbox) {
        let Some(c) = self.by_name.remove(client) else {
            return;
        };
        let groups = self.clients[c as usize]
            .as_ref()
            .map(|e| e.groups.clone())
            .unwrap_or_default();
        // A client unbound early (see `unbind_local`) may have a successor of the same
        // name already bound: only this client's own binding goes.
        let local = self.clients[c as usize].as_ref().and_then(|e| e.local);
        if local.is_some() && self.local_ids.get(client).copied() == local {
            self.local_ids.remove(client);
        }
        if let Some(e) = self.clients[c as usize].as_mut() {
            e.gone = true;
        }
        if let Some(id) = local {
            // Gone: it gets nothing more, even in views whose change waits for a flush.
            for &g in &groups {
                if let Some(gr) = self.groups[g as usize].as_mut() {
                    gr.local.retain(|&l| l != id);
                }
            }
            if let Some(e) = self.clients[c as usize].as_mut() {
                e.local = None;
            }
        }
        // Flushes waiting for it stop waiting (a vanished member is not waited for).
        self.stop_waiting_for(c, out);
        for g in groups {
            if self.defers(g) {
                // A queued leave removes it already.
                if self.will_be_member(c, g) {
                    self.enqueue(g, MembershipReason::Disconnect, Some(c), out);
                }
            } else {
                self.remove_member(c, g, MembershipReason::Disconnect, out);
            }
        }
        self.release_if_unused(c);
    }

    /// Frees the entry of a disconnected client once no view lists it and no queued
    /// change names it.
    fn release_if_unused(&mut self, c: ClientIdx) {
        let unused = self
            .client(c)
            .is_some_and(|e| e.gone && e.queued == 0 && e.groups.is_empty());
        if unused {
            self.clients[c as usize] = None;
            self.free_clients.push(c);
        }
    }

    fn remove_member(
        &mut self,
        c: ClientIdx,
        g: GroupIdx,
        reason: MembershipReason,
        out: &mut dyn Outbox,
    ) {
        let view = self.next_view();
        let (name, local) = match self.clients[c as usize].as_mut() {
            Some(e) => {
                e.groups.retain(|&x| x != g);
                (e.name.clone(), e.local)
            }
            None => return,
        };
        let Some(gr) = self.groups[g as usize].as_mut() else {
            return;
        };
        gr.members.retain(|&m| m != c);
        if let Some(id) = local {
            gr.local.retain(|&l| l != id);
        }
        gr.view = view;
        // The leaver learns its own leave (empty member list); a disconnected client is gone.
        let leaver = (reason == MembershipReason::Leave)
            .then_some(local)
            .flatten();
        self.notify(g, ViewKind::Regular, reason, Some(&name), leaver, out);
        // A group with queued changes (a join waiting behind this leave) lives on.
        if self.groups[g as usize]
            .as_ref()
            .is_some_and(|gr| gr.members.is_empty() && gr.flush.is_none())
        {
            self.drop_group(g);
        }
    }

    /// How many groups client `c` will be in once the changes queued on Virtual
    /// Synchrony groups are applied (what the group limit counts).
    fn groups_after_queue(&self, c: ClientIdx) -> usize {
        let Some(e) = self.client(c) else {
            return 0;
        };
        if e.queued == 0 {
            return e.groups.len();
        }
        // Rare: only while the client has changes queued.
        let staying = e
            .groups
            .iter()
            .filter(|&&g| self.will_be_member(c, g))
            .count();
        let joining = (0..self.groups.len() as GroupIdx)
            .filter(|g| !e.groups.contains(g))
            .filter(|&g| self.will_be_member(c, g))
            .count();
        staying + joining
    }

    /// Whether client `c` is, or will be once the queued changes are applied, a member
    /// of group `g`: the last queued change naming it decides, else the current view.
    fn will_be_member(&self, c: ClientIdx, g: GroupIdx) -> bool {
        let queued = self.groups[g as usize]
            .as_ref()
            .and_then(|gr| gr.flush.as_ref())
            .and_then(|f| f.queue.iter().rev().find(|ch| ch.client == Some(c)));
        match queued {
            Some(ch) => ch.reason == MembershipReason::Join,
            None => self.client(c).is_some_and(|e| e.groups.contains(&g)),
        }
    }

    /// Whether a membership change of group `g` must wait for a flush round: it asks for
    /// Virtual Synchrony and has members to flush or changes queued already (which go
    /// first). A new group's first join has no one to flush.
    fn defers(&self, g: GroupIdx) -> bool {
        self.groups[g as usize]
            .as_ref()
            .is_some_and(|gr| gr.vs && (gr.flush.is_some() || !gr.members.is_empty()))
    }

    /// Queues a change on Virtual Synchrony group `g`; starts its flush when nothing else
    /// is being flushed.
    fn enqueue(
        &mut self,
        g: GroupIdx,
        reason: MembershipReason,
        client: Option<ClientIdx>,
        out: &mut dyn Outbox,
    ) {
        let Some(gr) = self.groups[g as usize].as_mut() else {
            return;
        };
        let flush = gr.flush.get_or_insert_with(Box::default);
        flush.queue.push_back(Change { reason, client });
        let first = flush.queue.len() == 1;
        if let Some(e) = client.and_then(|c| self.clients[c as usize].as_mut()) {
            e.queued += 1;
        }
        if first {
            self.start_flush(g, out);
            self.advance(g, out);
        }
    }

    /// Starts the flush of the front change of group `g`: every member of the current
    /// view that stays (not the one leaving, not the disconnected) must answer, and its
    /// daemon sends it a FlushRequest naming the change.
    fn start_flush(&mut self, g: GroupIdx, out: &mut dyn Outbox) {
        let Some(gr) = self.groups[g as usize].as_ref() else {
            return;
        };
        let Some(change) = gr.flush.as_ref().and_then(|f| f.queue.front().copied()) else {
            return;
        };
        let goes = |m: ClientIdx| {
            change.client == Some(m) && change.reason != MembershipReason::Join
                || self.client(m).is_none_or(|e| e.gone)
        };
        let waiting: Vec<ClientIdx> = gr.members.iter().copied().filter(|&m| !goes(m)).collect();
        let changed = change.client.map(|c| self.client_name(c));
        // Rare (once per change of a VS group): a frame of its own, not the scratch one.
        let mut frame = Vec::new();
        encode::flush_request(&mut frame, &gr.name, gr.view, change.reason, changed);
        for &m in &waiting {
            let Some(id) = self.client(m).and_then(|e| e.local) else {
                continue;
            };
            if let Some(buf) = out.out(id) {
                buf.extend_from_slice(&frame);
                out.flush_wait(id, &gr.name, true);
            }
        }
        self.stats.flushes += 1;
        if let Some(f) = self.groups[g as usize]
            .as_mut()
            .and_then(|gr| gr.flush.as_mut())
        {
            f.waiting = waiting;
        }
    }

    /// Applies the front change of group `g` once its flush waits for nobody, and starts
    /// the next one's; drops the group if that leaves it empty with nothing queued.
    fn advance(&mut self, g: GroupIdx, out: &mut dyn Outbox) {
        loop {
            let Some(gr) = self.groups[g as usize].as_mut() else {
                return;
            };
            let Some(flush) = gr.flush.as_mut() else {
                break;
            };
            if !flush.waiting.is_empty() {
                return;
            }
            let Some(change) = flush.queue.pop_front() else {
                gr.flush = None;
                break;
            };
            if flush.queue.is_empty() {
                gr.flush = None;
            }
            self.apply_change(g, change, out);
            if self.groups[g as usize]
                .as_ref()
                .is_some_and(|gr| gr.flush.is_some())
            {
                self.start_flush(g, out);
            }
        }
        if self.groups[g as usize]
            .as_ref()
            .is_some_and(|gr| gr.members.is_empty())
        {
            self.drop_group(g);
        }
    }

    /// Applies a change whose flush is over: the view it makes is delivered now.
    fn apply_change(&mut self, g: GroupIdx, change: Change, out: &mut dyn Outbox) {
        let Some(c) = change.client else {
            // A network change: the departed went in the transitional view; this is the
            // group's regular view of the new configuration.
            let view = self.next_view();
            if let Some(gr) = self.groups[g as usize].as_mut() {
                gr.view = view;
            }
            self.notify(
                g,
                ViewKind::Regular,
                MembershipReason::Network,
                None,
                None,
                out,
            );
            return;
        };
        let (gone, member) = match self.client(c) {
            Some(e) => (e.gone, e.groups.contains(&g)),
            None => return,
        };
        if let Some(e) = self.clients[c as usize].as_mut() {
            e.queued = e.queued.saturating_sub(1);
        }
        match change.reason {
            MembershipReason::Join if !gone && !member => self.add_member(c, g, out),
            MembershipReason::Leave | MembershipReason::Disconnect if member => {
                self.remove_member(c, g, change.reason, out);
            }
            _ => {
                // Nothing to change (a joiner that vanished while its join waited never
                // joins), but the members flushed: a view with the same members, naming
                // the client and why, ends their round (their sends wait for a view).
                let view = self.next_view();
                let name = self.client(c).map(|e| e.name.clone()).unwrap_or_default();
                let reason = if gone {
                    MembershipReason::Disconnect
                } else {
                    change.reason
                };
                if let Some(gr) = self.groups[g as usize].as_mut() {
                    gr.view = view;
                }
                self.notify(g, ViewKind::Regular, reason, Some(&name), None, out);
            }
        }
        self.release_if_unused(c);
    }

    /// Client `c` is gone: no flush waits for its answer any more.
    fn stop_waiting_for(&mut self, c: ClientIdx, out: &mut dyn Outbox) {
        if !self.any_vs {
            return;
        }
        let mut touched = Vec::new();
        for (g, gr) in self.groups.iter_mut().enumerate() {
            let Some(f) = gr.as_mut().and_then(|gr| gr.flush.as_mut()) else {
                continue;
            };
            let before = f.waiting.len();
            f.waiting.retain(|&m| m != c);
            if f.waiting.len() != before {
                touched.push(g as GroupIdx);
            }
        }
        for g in touched {
            self.advance(g, out);
        }
    }

    /// A member answered a flush: counted when it answers the flush of the group's
    /// current view that waits for it; anything else is stale and ignored.
    fn flush_ok(&mut self, client: &str, group: &str, view: ViewId, out: &mut dyn Outbox) {
        let c = self.by_name.get(client).copied();
        let g = self.groups_by_name.get(group).copied();
        let (Some(c), Some(g)) = (c, g) else {
            self.stats.stray_flush_oks += 1;
            return;
        };
        let local = self.client(c).and_then(|e| e.local);
        let counted = self.groups[g as usize].as_mut().is_some_and(|gr| {
            let current = gr.view == view;
            gr.flush.as_mut().is_some_and(|f| {
                let before = f.waiting.len();
                if current {
                    f.waiting.retain(|&m| m != c);
                }
                f.waiting.len() != before
            })
        });
        if !counted {
            self.stats.stray_flush_oks += 1;
            return;
        }
        if let Some(id) = local {
            out.flush_wait(id, group, false);
        }
        self.advance(g, out);
    }

    /// Forgets group `g` (it has no members left: a group exists while it has members).
    fn drop_group(&mut self, g: GroupIdx) {
        if let Some(gr) = self.groups[g as usize].take() {
            self.groups_by_name.remove(&gr.name);
            self.free_groups.push(g);
        }
    }

    /// Sends the group's current view to its local members, and (with an empty member list)
    /// to `leaver`. `changed` is the client whose request caused the change; network
    /// changes name nobody.
    fn notify(
        &mut self,
        g: GroupIdx,
        kind: ViewKind,
        reason: MembershipReason,
        changed: Option<&str>,
        leaver: Option<LocalId>,
        out: &mut dyn Outbox,
    ) {
        let Some(gr) = self.groups[g as usize].as_ref() else {
            return;
        };
        let mut frame = std::mem::take(&mut self.scratch_frame);
        frame.clear();
        let clients = &self.clients;
        let members = gr
            .members
            .iter()
            .map(|&m| clients[m as usize].as_ref().map_or("", |c| &*c.name));
        encode::membership(
            &mut frame, &gr.name, gr.view, kind, reason, changed, members,
        );
        for &id in &gr.local {
            if let Some(buf) = out.out(id) {
                buf.extend_from_slice(&frame);
                self.stats.notifications += 1;
            }
        }
        if let Some(id) = leaver {
            frame.clear();
            encode::membership(
                &mut frame,
                &gr.name,
                gr.view,
                kind,
                reason,
                changed,
                std::iter::empty(),
            );
            if let Some(buf) = out.out(id) {
                buf.extend_from_slice(&frame);
                self.stats.notifications += 1;
            }
        }
        self.scratch_frame = frame;
    }

    fn is_member(&self, sender: &str, g: &Group) -> bool {
        self.by_name.get(sender).is_some_and(|c| {
            g.members
                .binary_search_by(|&m| self.client_name(m).cmp(sender))
                .is_ok_and(|i| g.members[i] == *c)
        })
    }

    /// Checks every target before anything is delivered: a message goes to all its
    /// targets or to none.
    fn check_targets(
        &self,
        sender: &str,
        groups: GroupList<'_>,
    ) -> Result<(), (ErrorCode, String)> {
        for target in groups {
            if names::is_private_name(target) {
                if !self.by_name.contains_key(target) {
                    return Err((
                        ErrorCode::UnknownRecipient,
                        format!("no client is named {target:?}; message not delivered"),
                    ));
                }
                continue;
            }
            if let Err(e) = names::check_group(target) {
                return Err((
                    ErrorCode::BadGroupName,
                    format!("cannot send to {target:?}: {e}"),
                ));
            }
            if !self.any_closed {
                continue;
            }
            let closed = match self.groups_by_name.get(target) {
                Some(&g) => {
                    let gr = self.groups[g as usize].as_ref().expect("live group");
                    gr.closed && !self.is_member(sender, gr)
                }
                None => self.config.groups.openness(target) == Openness::Closed,
            };
            if closed {
                return Err((
                    ErrorCode::NotPermitted,
                    format!("group {target:?} is closed and the sender is not a member"),
                ));
            }
        }
        Ok(())
    }

    fn data(
        &mut self,
        sender: &str,
        service: Service,
        msg_type: u16,
        groups: GroupList<'_>,
        payload: &[u8],
        out: &mut dyn Outbox,
    ) {
        self.stats.messages += 1;
        if let Err((code, reason)) = self.check_targets(sender, groups) {
            return self.error(sender, code, &reason, out);
        }
        // Nobody anywhere to deliver to: say so, so a sender cannot mistake silence for
        // delivery (every daemon holds the same table, so all agree; only the sender's
        // daemon writes the error).
        let reaches_someone = groups.iter().any(|t| {
            names::is_private_name(t)
                || self
                    .groups_by_name
                    .get(t)
                    .and_then(|&g| self.groups[g as usize].as_ref())
                    .is_some_and(|gr| !gr.members.is_empty())
        });
        let told = self
            .by_name
            .get(sender)
            .and_then(|&c| self.clients.get_mut(c as usize))
            .and_then(Option::as_mut)
            .map(|c| std::mem::replace(&mut c.told_undeliverable, !reaches_someone));
        if !reaches_someone {
            self.stats.undeliverable += 1;
            if told == Some(true) {
                return;
            }
            let targets: Vec<&str> = groups.iter().collect();
            let reason = format!(
                "no member in {}; message not delivered (later ones that reach nobody \
                 are only counted, until one reaches someone)",
                targets.join(", ")
            );
            return self.error(sender, ErrorCode::NoRecipients, &reason, out);
        }
        let mut write = |stats: &mut TableStats, id: LocalId| {
            if let Some(buf) = out.out(id) {
                encode::data(buf, sender, groups, service, msg_type, payload);
                stats.deliveries += 1;
                stats.delivered_bytes += payload.len() as u64;
            }
        };
        if groups.len() == 1 {
            // The common case: one target, whose recipients are distinct already.
            let target = groups.iter().next().unwrap_or("");
            if names::is_private_name(target) {
                if let Some(id) = self.local_of(target) {
                    write(&mut self.stats, id);
                }
            } else if let Some(&g) = self.groups_by_name.get(target)
                && let Some(gr) = self.groups[g as usize].as_ref()
            {
                for &id in &gr.local {
                    write(&mut self.stats, id);
                }
            }
            return;
        }
        // Several targets: a client in more than one of them gets the message once.
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        for target in groups {
            if names::is_private_name(target) {
                ids.extend(self.local_of(target));
            } else if let Some(&g) = self.groups_by_name.get(target)
                && let Some(gr) = self.groups[g as usize].as_ref()
            {
                ids.extend_from_slice(&gr.local);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            write(&mut self.stats, id);
        }
        self.scratch_ids = ids;
    }
}

/// Puts `entry` in a free slot of `slots` (one listed in `free`), or in a new one at the end,
/// and returns its index; freed slots are reused so the tables stay as large as their peak.
fn insert_slot<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, entry: T) -> u32 {
    match free.pop() {
        Some(i) => {
            slots[i as usize] = Some(entry);
            i
        }
        None => {
            slots.push(Some(entry));
            u32::try_from(slots.len() - 1).expect("fewer than 2^32 slots")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::{group_list_bytes, group_list_of};
    use conclave_control::wire::client::{
        DEFAULT_MAX_PAYLOAD, DaemonFrame, decode_daemon, max_frame_len, split_frame,
    };

    /// A daemon's local clients, collecting what the table writes for each.
    /// Also the flushes each client owes an answer to, as the runtime would time them.
    #[derive(Default)]
    pub(super) struct Boxes(
        pub(super) HashMap<LocalId, Vec<u8>>,
        pub(super) BTreeSet<(LocalId, String)>,
    );

    impl Outbox for Boxes {
        fn out(&mut self, id: LocalId) -> Option<&mut Vec<u8>> {
            self.0.get_mut(&id)
        }

        fn flush_wait(&mut self, id: LocalId, group: &str, waiting: bool) {
            if waiting {
                self.1.insert((id, group.into()));
            } else {
                self.1.remove(&(id, group.into()));
            }
        }
    }

    /// What a client saw, in a comparable form.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Seen {
        Data(String, Vec<String>, Vec<u8>),
        /// Group, kind, id, reason, `changed` joined by commas, members.
        View(
            String,
            ViewKind,
            ViewId,
            MembershipReason,
            String,
            Vec<String>,
        ),
        Error(ErrorCode),
        /// Group, view id, reason, `changed` joined by commas.
        Flush(String, ViewId, MembershipReason, String),
    }

    impl Boxes {
        pub(super) fn take(&mut self, id: LocalId) -> Vec<Seen> {
            let buf = std::mem::take(self.0.get_mut(&id).unwrap());
            let mut rest = &buf[..];
            let mut seen = Vec::new();
            while let Some((body, used)) =
                split_frame(rest, max_frame_len(DEFAULT_MAX_PAYLOAD)).unwrap()
            {
                seen.push(match decode_daemon(body).unwrap() {
                    DaemonFrame::Data {
                        sender,
                        groups,
                        payload,
                        ..
                    } => Seen::Data(
                        sender.into(),
                        groups.iter().map(String::from).collect(),
                        payload.to_vec(),
                    ),
                    DaemonFrame::Membership {
                        group,
                        view_id,
                        kind,
                        reason,
                        changed,
                        members,
                    } => Seen::View(
                        group.into(),
                        kind,
                        view_id,
                        reason,
                        changed.iter().collect::<Vec<_>>().join(","),
                        members.iter().map(String::from).collect(),
                    ),
                    DaemonFrame::Error { code, .. } => Seen::Error(code),
                    DaemonFrame::FlushRequest {
                        group,
                        view_id,
                        reason,
                        changed,
                    } => Seen::Flush(
                        group.into(),
                        view_id,
                        reason,
                        changed.iter().collect::<Vec<_>>().join(","),
                    ),
                    other => panic!("unexpected {other:?}"),
                });
                rest = &rest[used..];
            }
            assert!(rest.is_empty());
            seen
        }
    }

    pub(super) struct World {
        pub(super) table: GroupTable,
        pub(super) boxes: Boxes,
    }

    pub(super) fn world(closed: &[&str]) -> World {
        world_vs(closed, &[])
    }

    /// A world where the groups `vs` names (closed ones) ask for Virtual Synchrony.
    pub(super) fn world_vs(closed: &[&str], vs: &[&str]) -> World {
        World {
            table: GroupTable::new(TableConfig {
                groups: GroupsConfig {
                    default: Openness::Open,
                    closed: closed.iter().map(|s| s.to_string()).collect(),
                    vs: vs.iter().map(|s| s.to_string()).collect(),
                    ..GroupsConfig::default()
                },
                max_groups_per_client: 3,
                epoch: 1,
            }),
            boxes: Boxes::default(),
        }
    }

    impl World {
        pub(super) fn connect(&mut self, name: &str, id: LocalId) {
            self.table.bind_local(name, id);
            self.boxes.0.insert(id, Vec::new());
            self.apply(Event::Connect { client: name });
        }
        pub(super) fn apply(&mut self, e: Event<'_>) {
            self.table.apply(&e, &mut self.boxes);
        }
        pub(super) fn join(&mut self, client: &str, group: &str) {
            self.apply(Event::Join { client, group });
        }
        pub(super) fn send(&mut self, sender: &str, targets: &[&str], payload: &[u8]) {
            let list = group_list_bytes(targets.iter().copied());
            self.apply(Event::Data {
                sender,
                service: Service::Agreed,
                msg_type: 0,
                groups: group_list_of(&list).unwrap(),
                payload,
            });
        }
    }

    fn view(
        group: &str,
        seq: u64,
        reason: MembershipReason,
        changed: &str,
        members: &[&str],
    ) -> Seen {
        Seen::View(
            group.into(),
            ViewKind::Regular,
            ViewId { epoch: 1, seq },
            reason,
            changed.into(),
            members.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn flush(group: &str, seq: u64, reason: MembershipReason, changed: &str) -> Seen {
        Seen::Flush(
            group.into(),
            ViewId { epoch: 1, seq },
            reason,
            changed.into(),
        )
    }

    /// A VS group `vs.g` with `#a#d` (local 1) and `#b#d` (local 2) at view 2, and `#c#d`
    /// (local 3) connected outside it.
    fn vs_pair() -> World {
        let mut w = world_vs(&["vs.*"], &["vs.*"]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        w.connect("#c#d", 3);
        w.join("#a#d", "vs.g");
        w.join("#b#d", "vs.g");
        // b's join is the group's first flush: a alone answers it.
        w.apply(Event::FlushOk {
            client: "#a#d",
            group: "vs.g",
            view: ViewId { epoch: 1, seq: 1 },
        });
        for id in 1..=3 {
            w.boxes.take(id);
        }
        w
    }

    fn flush_ok(w: &mut World, client: &str, seq: u64) {
        w.apply(Event::FlushOk {
            client,
            group: "vs.g",
            view: ViewId { epoch: 1, seq },
        });
    }

    #[test]
    fn vs_join_waits_for_every_members_flush_ok_then_gives_the_view() {
        let mut w = vs_pair();
        w.join("#c#d", "vs.g");
        use MembershipReason::*;
        let request = flush("vs.g", 2, Join, "#c#d");
        assert_eq!(w.boxes.take(1), std::slice::from_ref(&request));
        assert_eq!(w.boxes.take(2), std::slice::from_ref(&request));
        assert!(w.boxes.take(3).is_empty(), "the joiner is not flushed");
        assert_eq!(w.table.groups()[0].members, ["#a#d", "#b#d"], "not yet");
        let owed: Vec<_> = w.boxes.1.iter().cloned().collect();
        assert_eq!(owed, [(1, "vs.g".into()), (2, "vs.g".into())]);
        flush_ok(&mut w, "#a#d", 2);
        assert!(w.boxes.take(1).is_empty() && w.boxes.take(2).is_empty());
        // A repeated or stale answer changes nothing.
        flush_ok(&mut w, "#a#d", 2);
        flush_ok(&mut w, "#b#d", 1);
        assert!(w.boxes.take(2).is_empty());
        assert_eq!(w.table.stats().stray_flush_oks, 2);
        flush_ok(&mut w, "#b#d", 2);
        let v = view("vs.g", 3, Join, "#c#d", &["#a#d", "#b#d", "#c#d"]);
        for id in 1..=3 {
            assert_eq!(w.boxes.take(id), std::slice::from_ref(&v), "client {id}");
        }
        assert!(w.boxes.1.is_empty(), "nobody owes an answer");
        assert_eq!(w.table.stats().flushes, 2, "b's join, then c's");
        assert_eq!(w.table.groups()[0].flush_pending, 0);
    }

    #[test]
    fn vs_a_message_sent_before_flush_ok_is_delivered_in_the_old_view() {
        let mut w = vs_pair();
        w.join("#c#d", "vs.g");
        for id in 1..=2 {
            w.boxes.take(id);
        }
        w.send("#a#d", &["vs.g"], b"old");
        flush_ok(&mut w, "#a#d", 2);
        w.send("#b#d", &["vs.g"], b"old too");
        flush_ok(&mut w, "#b#d", 2);
        use MembershipReason::*;
        let v = view("vs.g", 3, Join, "#c#d", &["#a#d", "#b#d", "#c#d"]);
        let m1 = Seen::Data("#a#d".into(), vec!["vs.g".into()], b"old".to_vec());
        let m2 = Seen::Data("#b#d".into(), vec!["vs.g".into()], b"old too".to_vec());
        for id in 1..=2 {
            assert_eq!(w.boxes.take(id), [m1.clone(), m2.clone(), v.clone()]);
        }
        assert_eq!(w.boxes.take(3), [v], "the joiner gets only the new view");
        w.send("#c#d", &["vs.g"], b"new");
        assert_eq!(w.boxes.take(1).len(), 1);
    }

    #[test]
    fn vs_a_joiner_that_vanishes_during_its_round_ends_it_with_a_view() {
        let mut w = vs_pair();
        w.join("#c#d", "vs.g");
        w.table.unbind_local("#c#d", 3);
        w.apply(Event::Disconnect { client: "#c#d" });
        for id in 1..=2 {
            w.boxes.take(id);
        }
        flush_ok(&mut w, "#a#d", 2);
        flush_ok(&mut w, "#b#d", 2);
        // The members flushed, so a view (same members) ends their round.
        let v = view(
            "vs.g",
            3,
            MembershipReason::Disconnect,
            "#c#d",
            &["#a#d", "#b#d"],
        );
        assert_eq!(w.boxes.take(1), std::slice::from_ref(&v));
        assert_eq!(w.boxes.take(2), [v]);
        assert!(w.table.clients.iter().flatten().all(|c| &*c.name != "#c#d"));
        assert_eq!(w.table.groups()[0].flush_pending, 0);
    }

    #[test]
    fn vs_a_silent_member_disconnected_for_timeout_is_not_waited_for() {
        let mut w = vs_pair();
        w.join("#c#d", "vs.g");
        for id in 1..=2 {
            w.boxes.take(id);
        }
        flush_ok(&mut w, "#a#d", 2);
        assert!(w.boxes.1.contains(&(2, "vs.g".into())), "b owes an answer");
        // The runtime's timer ran out for b: it closes b's session and orders the
        // Disconnect, which ends the wait. The join's view comes (b is still in it: its
        // removal is the next change), then b's removal is flushed by the survivors.
        w.table.unbind_local("#b#d", 2);
        w.apply(Event::Disconnect { client: "#b#d" });
        use MembershipReason::*;
        let joined = view("vs.g", 3, Join, "#c#d", &["#a#d", "#b#d", "#c#d"]);
        let request = flush("vs.g", 3, Disconnect, "#b#d");
        assert_eq!(w.boxes.take(1), [joined.clone(), request.clone()]);
        assert_eq!(w.boxes.take(3), [joined, request]);
        assert!(w.boxes.take(2).is_empty(), "b is gone");
        assert!(!w.table.has_client("#b#d"));
        flush_ok(&mut w, "#c#d", 3);
        flush_ok(&mut w, "#a#d", 3);
        let gone = view("vs.g", 4, Disconnect, "#b#d", &["#a#d", "#c#d"]);
        assert_eq!(w.boxes.take(1), std::slice::from_ref(&gone));
        assert_eq!(w.boxes.take(3), [gone]);
        // The departed client's entry is released once no view lists it.
        w.connect("#b#d", 4);
        w.join("#b#d", "vs.g");
        assert_eq!(w.boxes.take(1), [flush("vs.g", 4, Join, "#b#d")]);
    }

    #[test]
    fn vs_changes_queue_in_order_and_leavers_are_not_waited_for() {
        let mut w = vs_pair();
        w.join("#c#d", "vs.g");
        w.apply(Event::Leave {
            client: "#b#d",
            group: "vs.g",
        });
        // c is queued to join: joining again is refused, leaving is queued.
        w.join("#c#d", "vs.g");
        assert_eq!(w.boxes.take(3), [Seen::Error(ErrorCode::AlreadyJoined)]);
        assert_eq!(w.table.groups()[0].flush_pending, 2);
        for id in 1..=2 {
            w.boxes.take(id);
        }
        flush_ok(&mut w, "#a#d", 2);
        flush_ok(&mut w, "#b#d", 2);
        use MembershipReason::*;
        let joined = view("vs.g", 3, Join, "#c#d", &["#a#d", "#b#d", "#c#d"]);
        // b's leave is flushed by a and c only.
        let request = flush("vs.g", 3, Leave, "#b#d");
        assert_eq!(w.boxes.take(1), [joined.clone(), request.clone()]);
        assert_eq!(w.boxes.take(2), std::slice::from_ref(&joined));
        assert_eq!(w.boxes.take(3), [joined, request]);
        flush_ok(&mut w, "#a#d", 3);
        flush_ok(&mut w, "#c#d", 3);
        let left = view("vs.g", 4, Leave, "#b#d", &["#a#d", "#c#d"]);
        assert_eq!(w.boxes.take(1), std::slice::from_ref(&left));
        assert_eq!(w.boxes.take(2), [view("vs.g", 4, Leave, "#b#d", &[])]);
        w.apply(Event::Leave {
            client: "#a#d",
            group: "vs.g",
        });
        assert_eq!(
            w.boxes.take(3).len(),
            2,
            "b's leave view, then the flush of a's leave"
        );
        flush_ok(&mut w, "#c#d", 4);
        // The last member leaves at once: nobody stays to flush.
        w.apply(Event::Leave {
            client: "#c#d",
            group: "vs.g",
        });
        assert!(w.table.groups().is_empty());
    }

    #[test]
    fn groups_without_vs_change_at_once() {
        let mut w = world_vs(&["vs.*", "plain"], &["vs.*"]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        w.join("#a#d", "plain");
        w.join("#b#d", "plain");
        use MembershipReason::*;
        assert_eq!(
            w.boxes.take(1),
            [
                view("plain", 1, Join, "#a#d", &["#a#d"]),
                view("plain", 2, Join, "#b#d", &["#a#d", "#b#d"])
            ]
        );
        assert_eq!(w.table.stats().flushes, 0);
    }

    #[test]
    fn an_unbound_id_reused_before_the_disconnect_gets_nothing_of_the_old_client() {
        let mut w = world(&[]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        w.join("#a#d", "g");
        w.join("#b#d", "g");
        w.boxes.take(1);
        w.boxes.take(2);
        // `#a#d` closes; its Disconnect is still travelling the ring when id 1 is given to
        // a new client, and a reconnecting `#a#d` takes id 3.
        w.table.unbind_local("#a#d", 1);
        w.table.bind_local("#n#d", 1);
        w.send("#b#d", &["g"], b"m1");
        assert!(
            w.boxes.take(1).is_empty(),
            "the new session got an old delivery"
        );
        w.table.bind_local("#a#d", 3);
        w.boxes.0.insert(3, Vec::new());
        use MembershipReason::*;
        w.apply(Event::Disconnect { client: "#a#d" });
        w.apply(Event::Connect { client: "#a#d" });
        w.join("#a#d", "g");
        assert_eq!(
            w.boxes.take(3),
            vec![view("g", 4, Join, "#a#d", &["#a#d", "#b#d"])]
        );
        assert!(w.boxes.take(1).is_empty());
        assert_eq!(
            w.boxes.take(2),
            vec![
                Seen::Data("#b#d".into(), vec!["g".into()], b"m1".to_vec()),
                view("g", 3, Disconnect, "#a#d", &["#b#d"]),
                view("g", 4, Join, "#a#d", &["#a#d", "#b#d"]),
            ]
        );
    }

    #[test]
    fn joins_and_leaves_give_sorted_views_with_increasing_ids() {
        let mut w = world(&[]);
        w.connect("#b#d", 1);
        w.connect("#a#d", 2);
        w.join("#b#d", "g");
        w.join("#a#d", "g");
        use MembershipReason::*;
        assert_eq!(
            w.boxes.take(1),
            [
                view("g", 1, Join, "#b#d", &["#b#d"]),
                view("g", 2, Join, "#a#d", &["#a#d", "#b#d"])
            ]
        );
        assert_eq!(
            w.boxes.take(2),
            [view("g", 2, Join, "#a#d", &["#a#d", "#b#d"])]
        );
        w.apply(Event::Leave {
            client: "#a#d",
            group: "g",
        });
        assert_eq!(w.boxes.take(1), [view("g", 3, Leave, "#a#d", &["#b#d"])]);
        assert_eq!(w.boxes.take(2), [view("g", 3, Leave, "#a#d", &[])]);
        w.apply(Event::Disconnect { client: "#b#d" });
        assert!(w.table.groups().is_empty(), "an empty group is dropped");
        // The group comes back with a later view id than any it had.
        w.join("#a#d", "g");
        assert_eq!(w.boxes.take(2), [view("g", 5, Join, "#a#d", &["#a#d"])]);
    }

    #[test]
    fn disconnect_notifies_every_group_of_the_client() {
        let mut w = world(&[]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        for g in ["x", "y"] {
            w.join("#a#d", g);
            w.join("#b#d", g);
        }
        w.boxes.take(1);
        w.boxes.take(2);
        w.apply(Event::Disconnect { client: "#b#d" });
        use MembershipReason::Disconnect;
        assert_eq!(
            w.boxes.take(1),
            [
                view("x", 5, Disconnect, "#b#d", &["#a#d"]),
                view("y", 6, Disconnect, "#b#d", &["#a#d"])
            ]
        );
        assert!(!w.table.has_client("#b#d"));
        assert_eq!(w.table.groups_of("#a#d"), ["x", "y"]);
    }

    #[test]
    fn delivery_self_multi_group_once_and_open_groups() {
        let mut w = world(&[]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        w.connect("#c#d", 3);
        w.join("#a#d", "x");
        w.join("#b#d", "x");
        w.join("#b#d", "y");
        for id in 1..=3 {
            w.boxes.take(id);
        }
        w.send("#a#d", &["x", "y"], b"m1");
        let m1 = Seen::Data("#a#d".into(), vec!["x".into(), "y".into()], b"m1".to_vec());
        assert_eq!(w.boxes.take(1), std::slice::from_ref(&m1), "self-delivery");
        assert_eq!(w.boxes.take(2), [m1], "once though in both groups");
        assert!(w.boxes.take(3).is_empty(), "not a member");
        // A non-member may send to an open group; it does not receive its own message.
        w.send("#c#d", &["y"], b"m2");
        assert_eq!(
            w.boxes.take(2),
            [Seen::Data("#c#d".into(), vec!["y".into()], b"m2".to_vec())]
        );
        assert!(w.boxes.take(3).is_empty());
        assert!(w.boxes.take(1).is_empty());
        // A group nobody joined: the sender hears of the first undeliverable multicast
        // of a run, and every one is counted.
        w.send("#c#d", &["empty"], b"m3");
        assert_eq!(w.boxes.take(3), [Seen::Error(ErrorCode::NoRecipients)]);
        w.send("#c#d", &["empty"], b"m4");
        assert!(w.boxes.take(3).is_empty(), "told once per run");
        w.send("#c#d", &["y"], b"m5");
        w.boxes.take(2);
        w.send("#c#d", &["empty"], b"m6");
        assert_eq!(w.boxes.take(3), [Seen::Error(ErrorCode::NoRecipients)]);
        assert_eq!(w.table.stats().undeliverable, 3);
        assert_eq!(w.table.stats().deliveries, 4);
    }

    #[test]
    fn private_names_address_one_client() {
        let mut w = world(&[]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        w.send("#a#d", &["#b#d"], b"hi");
        assert_eq!(
            w.boxes.take(2),
            [Seen::Data(
                "#a#d".into(),
                vec!["#b#d".into()],
                b"hi".to_vec()
            )]
        );
        assert!(w.boxes.take(1).is_empty());
        w.send("#a#d", &["#nobody#d"], b"hi");
        assert_eq!(w.boxes.take(1), [Seen::Error(ErrorCode::UnknownRecipient)]);
        // All or nothing: one unknown target stops delivery to the others.
        w.send("#a#d", &["#b#d", "#nobody#d"], b"hi");
        assert!(w.boxes.take(2).is_empty());
        assert_eq!(w.boxes.take(1), [Seen::Error(ErrorCode::UnknownRecipient)]);
        // A private name and a group holding the same client: delivered once.
        w.join("#b#d", "g");
        w.boxes.take(2);
        w.send("#a#d", &["#b#d", "g"], b"x");
        assert_eq!(w.boxes.take(2).len(), 1);
    }

    #[test]
    fn closed_groups_refuse_non_members() {
        let mut w = world(&["secret*"]);
        w.connect("#a#d", 1);
        w.connect("#b#d", 2);
        w.join("#a#d", "secret1");
        w.boxes.take(1);
        w.send("#b#d", &["secret1"], b"no");
        assert_eq!(w.boxes.take(2), [Seen::Error(ErrorCode::NotPermitted)]);
        assert!(w.boxes.take(1).is_empty());
        w.send("#b#d", &["secret-nobody-joined"], b"no");
        assert_eq!(w.boxes.take(2), [Seen::Error(ErrorCode::NotPermitted)]);
        w.send("#a#d", &["secret1"], b"yes");
        assert_eq!(w.boxes.take(1).len(), 1);
        assert_eq!(w.table.stats().errors[ErrorCode::NotPermitted as usize], 2);
    }

    #[test]
    fn request_errors() {
        let mut w = world(&[]);
        w.connect("#a#d", 1);
        w.join("#a#d", "g");
        w.boxes.take(1);
        w.join("#a#d", "g");
        w.apply(Event::Leave {
            client: "#a#d",
            group: "other",
        });
        w.join("#a#d", "bad name");
        w.join("#a#d", "#a#d");
        w.join("#a#d", "g2");
        w.join("#a#d", "g3");
        w.boxes.take(1);
        w.join("#a#d", "g4");
        w.send("#a#d", &["x".repeat(33).as_str()], b"");
        use ErrorCode::*;
        let mut seen = w.boxes.take(1);
        seen.retain(|s| matches!(s, Seen::Error(_)));
        assert_eq!(
            seen,
            [Seen::Error(TooManyGroups), Seen::Error(BadGroupName)]
        );
        let e = &w.table.stats().errors;
        assert_eq!(
            (
                e[AlreadyJoined as usize],
                e[NotJoined as usize],
                e[BadGroupName as usize]
            ),
            (1, 1, 3)
        );
    }

    #[test]
    fn daemons_applying_the_same_events_agree() {
        // Two daemons, each with one local client, fed the same event sequence.
        let events_src: Vec<(u8, &str, &str)> = vec![
            (0, "#a#d1", ""),
            (0, "#b#d2", ""),
            (1, "#b#d2", "g"),
            (1, "#a#d1", "g"),
            (2, "#a#d1", "g"),
            (1, "#a#d1", "h"),
            (3, "#b#d2", ""),
        ];
        let mut d1 = world(&[]);
        let mut d2 = world(&[]);
        d1.table.bind_local("#a#d1", 1);
        d1.boxes.0.insert(1, Vec::new());
        d2.table.bind_local("#b#d2", 1);
        d2.boxes.0.insert(1, Vec::new());
        for w in [&mut d1, &mut d2] {
            for &(kind, client, group) in &events_src {
                w.apply(match kind {
                    0 => Event::Connect { client },
                    1 => Event::Join { client, group },
                    2 => Event::Leave { client, group },
                    _ => Event::Disconnect { client },
                });
            }
        }
        assert_eq!(d1.table.groups(), d2.table.groups());
        assert_eq!(d1.table.groups()[0].view, ViewId { epoch: 1, seq: 4 });
        // b's daemon saw b join (view 1), a join (2), a leave (3); a's saw its own three.
        assert_eq!(d2.boxes.take(1).len(), 3);
        assert_eq!(d1.boxes.take(1).len(), 3);
    }

    mod vs_model {
        //! Virtual Synchrony groups over random operations, members answering flush
        //! requests at random times: no round stalls once everyone answers, and the
        //! table ends with the membership the operations asked for.
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        const CLIENTS: [&str; 4] = ["#a#d", "#b#d", "#c#d", "#d#d"];
        const GROUPS: [&str; 2] = ["vs.x", "vs.y"];

        #[derive(Debug, Clone)]
        enum Op {
            Join(usize, usize),
            Leave(usize, usize),
            Drop(usize),
            Send(usize, usize),
            Answer(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..4usize, 0..2usize).prop_map(|(c, g)| Op::Join(c, g)),
                (0..4usize, 0..2usize).prop_map(|(c, g)| Op::Leave(c, g)),
                (0..4usize).prop_map(Op::Drop),
                (0..4usize, 0..2usize).prop_map(|(c, g)| Op::Send(c, g)),
                (0..4usize).prop_map(Op::Answer),
                (0..4usize).prop_map(Op::Answer),
            ]
        }

        /// Reads what client `i` got: views (checked to increase) and flush requests
        /// (kept to answer; a view of the group ends the wait).
        fn read(
            w: &mut World,
            i: usize,
            pending: &mut BTreeMap<(usize, String), ViewId>,
            last: &mut BTreeMap<(usize, String), ViewId>,
        ) -> Result<(), TestCaseError> {
            for seen in w.boxes.take(i as LocalId) {
                match seen {
                    Seen::Flush(g, v, _, _) => {
                        pending.insert((i, g), v);
                    }
                    Seen::View(g, _, v, _, _, _) => {
                        if let Some(prev) = last.insert((i, g.clone()), v) {
                            prop_assert!(v > prev, "views increase");
                        }
                        pending.remove(&(i, g));
                    }
                    _ => {}
                }
            }
            Ok(())
        }

        fn answer(w: &mut World, i: usize, pending: &mut BTreeMap<(usize, String), ViewId>) {
            let mine: Vec<_> = pending
                .iter()
                .filter(|((c, _), _)| *c == i)
                .map(|((_, g), v)| (g.clone(), *v))
                .collect();
            for (g, v) in mine {
                pending.remove(&(i, g.clone()));
                w.apply(Event::FlushOk {
                    client: CLIENTS[i],
                    group: &g,
                    view: v,
                });
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
            #[test]
            fn vs_rounds_never_stall_and_end_in_the_asked_membership(
                ops in proptest::collection::vec(op(), 1..60),
            ) {
                let mut w = world_vs(&["vs.*"], &["vs.*"]);
                let mut connected = [true; 4];
                for (i, c) in CLIENTS.iter().enumerate() {
                    w.connect(c, i as LocalId);
                }
                let mut members: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
                let mut pending = BTreeMap::new();
                let mut last = BTreeMap::new();
                for op in &ops {
                    match *op {
                        Op::Join(c, g) if connected[c] => {
                            w.join(CLIENTS[c], GROUPS[g]);
                            members.entry(g).or_default().insert(c);
                        }
                        Op::Leave(c, g) if connected[c] => {
                            w.apply(Event::Leave { client: CLIENTS[c], group: GROUPS[g] });
                            members.entry(g).or_default().remove(&c);
                        }
                        Op::Drop(c) if connected[c] => {
                            w.table.unbind_local(CLIENTS[c], c as LocalId);
                            w.apply(Event::Disconnect { client: CLIENTS[c] });
                            connected[c] = false;
                            for m in members.values_mut() {
                                m.remove(&c);
                            }
                            pending.retain(|(i, _), _| *i != c);
                        }
                        Op::Send(c, g) if connected[c] => w.send(CLIENTS[c], &[GROUPS[g]], b"m"),
                        Op::Answer(c) if connected[c] => answer(&mut w, c, &mut pending),
                        _ => continue,
                    }
                    for i in 0..CLIENTS.len() {
                        read(&mut w, i, &mut pending, &mut last)?;
                    }
                }
                // Everyone still connected answers until nothing is asked any more.
                for _ in 0..100 {
                    if pending.is_empty() {
                        break;
                    }
                    for i in 0..CLIENTS.len() {
                        answer(&mut w, i, &mut pending);
                    }
                    for i in 0..CLIENTS.len() {
                        read(&mut w, i, &mut pending, &mut last)?;
                    }
                }
                prop_assert!(pending.is_empty(), "a flush request was never followed by a view");
                prop_assert!(w.boxes.1.iter().all(|(id, _)| !connected[*id as usize]),
                    "nobody connected owes an answer: {:?}", w.boxes.1);
                let groups = w.table.groups();
                for g in &groups {
                    prop_assert_eq!(g.flush_pending, 0, "round left in {}", g.name);
                    let gi = GROUPS.iter().position(|x| *x == g.name).unwrap();
                    let want: Vec<&str> = members[&gi].iter().map(|&m| CLIENTS[m]).collect();
                    prop_assert_eq!(&g.members, &want);
                }
                let live = members.values().filter(|m| !m.is_empty()).count();
                prop_assert_eq!(groups.len(), live, "empty groups are dropped");
                // Departed clients' entries are all released.
                let entries = w.table.clients.iter().flatten().count();
                prop_assert_eq!(entries, connected.iter().filter(|c| **c).count());
            }
        }
    }

    mod model {
        //! The table against a plain model, over random operation sequences.
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, BTreeSet};

        const CLIENTS: [&str; 4] = ["#a#d", "#b#d", "#c#d", "#d#d"];
        const GROUPS: [&str; 3] = ["x", "y", "z"];

        #[derive(Debug, Clone)]
        enum Op {
            Join(usize, usize),
            Leave(usize, usize),
            Drop(usize),
            Send(usize, Vec<usize>),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..4usize, 0..3usize).prop_map(|(c, g)| Op::Join(c, g)),
                (0..4usize, 0..3usize).prop_map(|(c, g)| Op::Leave(c, g)),
                (0..4usize).prop_map(Op::Drop),
                (0..4usize, proptest::collection::vec(0..3usize, 1..4))
                    .prop_map(|(c, gs)| Op::Send(c, gs)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            #[test]
            fn table_matches_a_plain_model(ops in proptest::collection::vec(op(), 1..60)) {
                let mut w = world(&[]);
                let mut connected = [true; 4];
                for (i, c) in CLIENTS.iter().enumerate() {
                    w.connect(c, i as LocalId);
                }
                let mut members: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
                let mut last_view: BTreeMap<(usize, String), ViewId> = BTreeMap::new();
                for (n, op) in ops.iter().enumerate() {
                    let payload = (n as u32).to_le_bytes();
                    let mut expect_data = BTreeSet::new();
                    match op {
                        Op::Join(c, g) if connected[*c] => {
                            w.join(CLIENTS[*c], GROUPS[*g]);
                            members.entry(*g).or_default().insert(*c);
                        }
                        Op::Leave(c, g) if connected[*c] => {
                            w.apply(Event::Leave { client: CLIENTS[*c], group: GROUPS[*g] });
                            members.entry(*g).or_default().remove(c);
                        }
                        Op::Drop(c) if connected[*c] => {
                            w.apply(Event::Disconnect { client: CLIENTS[*c] });
                            connected[*c] = false;
                            for m in members.values_mut() {
                                m.remove(c);
                            }
                        }
                        Op::Send(c, gs) if connected[*c] => {
                            let names: Vec<&str> = gs.iter().map(|&g| GROUPS[g]).collect();
                            w.send(CLIENTS[*c], &names, &payload);
                            for g in gs {
                                expect_data.extend(members.get(g).into_iter().flatten().copied());
                            }
                        }
                        _ => continue,
                    }
                    for i in 0..CLIENTS.len() {
                        let seen = w.boxes.take(i as LocalId);
                        let mut data = 0;
                        for s in seen {
                            match s {
                                Seen::Data(_, _, p) => {
                                    prop_assert_eq!(&p[..], &payload[..]);
                                    data += 1;
                                }
                                Seen::View(g, _, v, _, _, ms) => {
                                    if let Some(prev) = last_view.insert((i, g.clone()), v) {
                                        prop_assert!(v > prev, "views increase");
                                    }
                                    let mut sorted = ms.clone();
                                    sorted.sort();
                                    prop_assert_eq!(&sorted, &ms, "members are sorted");
                                    let gi = GROUPS.iter().position(|x| *x == g).unwrap();
                                    let want: Vec<String> = members.get(&gi).into_iter().flatten()
                                        .map(|&m| CLIENTS[m].to_string()).collect();
                                    if !ms.is_empty() {
                                        prop_assert_eq!(ms, want, "the view is the membership");
                                    }
                                }
                                Seen::Error(_) | Seen::Flush(..) => {}
                            }
                        }
                        prop_assert_eq!(data, usize::from(expect_data.contains(&i)),
                            "client {} gets a message once iff it is in a target", i);
                    }
                }
                let groups = w.table.groups();
                for g in &groups {
                    let gi = GROUPS.iter().position(|x| *x == g.name).unwrap();
                    let want: Vec<&str> = members[&gi].iter().map(|&m| CLIENTS[m]).collect();
                    prop_assert_eq!(&g.members, &want);
                }
                let live = members.values().filter(|m| !m.is_empty()).count();
                prop_assert_eq!(groups.len(), live, "empty groups are dropped");
            }
        }
    }
}
