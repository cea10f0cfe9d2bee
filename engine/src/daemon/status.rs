//! The daemon's counters and the JSON document a `StatusRequest` is answered with.

use conclave_control::wire::client::{ErrorCode, RefuseCode};
use serde_json::{Map, Value, json};

use crate::core::TableStats;

/// Every error code, for reporting counters by name.
pub(crate) const ERROR_CODES: [ErrorCode; 10] = [
    ErrorCode::MalformedFrame,
    ErrorCode::BadGroupName,
    ErrorCode::NotJoined,
    ErrorCode::AlreadyJoined,
    ErrorCode::TooLarge,
    ErrorCode::NotPermitted,
    ErrorCode::UnknownRecipient,
    ErrorCode::UnexpectedFrame,
    ErrorCode::TooManyGroups,
    ErrorCode::NoRecipients,
];

/// Every refusal code.
pub(crate) const REFUSE_CODES: [RefuseCode; 6] = [
    RefuseCode::BadHello,
    RefuseCode::UnsupportedVersion,
    RefuseCode::BadName,
    RefuseCode::DuplicateName,
    RefuseCode::TooManyClients,
    RefuseCode::NotPermitted,
];

/// What the runtime counts (the table counts deliveries and its own errors).
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub connections: u64,
    pub welcomed: u64,
    pub disconnects: u64,
    pub frames_in: u64,
    /// Frames the runtime itself wrote (welcome, refused, error, status, goodbye).
    pub own_frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reads: u64,
    pub writes: u64,
    pub malformed_frames: u64,
    pub errors: [u64; 16],
    pub refusals: [u64; 8],
    pub slow_consumer_disconnects: u64,
    /// Clients disconnected for not answering a flush request in time.
    pub flush_timeouts: u64,
    pub oversize_disconnects: u64,
    pub status_requests: u64,
    pub read_pauses: u64,
}

impl Counters {
    /// Adds another worker's counts.
    pub(crate) fn add(&mut self, o: &Counters) {
        self.connections += o.connections;
        self.welcomed += o.welcomed;
        self.disconnects += o.disconnects;
        self.frames_in += o.frames_in;
        self.own_frames_out += o.own_frames_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.reads += o.reads;
        self.writes += o.writes;
        self.malformed_frames += o.malformed_frames;
        for (a, b) in self.errors.iter_mut().zip(o.errors.iter()) {
            *a += b;
        }
        for (a, b) in self.refusals.iter_mut().zip(o.refusals.iter()) {
            *a += b;
        }
        self.slow_consumer_disconnects += o.slow_consumer_disconnects;
        self.flush_timeouts += o.flush_timeouts;
        self.oversize_disconnects += o.oversize_disconnects;
        self.status_requests += o.status_requests;
        self.read_pauses += o.read_pauses;
    }
}

/// The daemon-wide facts at the top of the status report.
pub(crate) struct Settings<'a> {
    pub name: &'a str,
    pub profile: &'a str,
    pub uptime_ms: u128,
    pub max_clients: usize,
    pub max_payload: usize,
    pub queue_limit: usize,
    pub pause_mark: usize,
    /// The profile's `workers`.
    pub workers_configured: usize,
    /// A snapshot of each running worker.
    pub workers: &'a [super::WorkerStatus],
}

/// One client's line in the status report.
pub(crate) struct ClientStatus<'a> {
    pub name: &'a str,
    pub transport: &'static str,
    pub groups: Vec<&'a str>,
    /// Output bytes waiting; `None` for a session worker's client (its queue lives on
    /// that worker), shown as `null`.
    pub queued: Option<usize>,
}

fn by_name<C: std::fmt::Debug + Copy>(
    codes: &[C],
    index: impl Fn(C) -> usize,
    a: &[u64],
    b: Option<&[u64]>,
) -> Value {
    let mut m = Map::new();
    for &c in codes {
        let i = index(c);
        let n = a[i] + b.map_or(0, |b| b[i]);
        m.insert(format!("{c:?}"), json!(n));
    }
    Value::Object(m)
}

/// Builds the status JSON.
pub(crate) fn render(
    daemon: &Settings<'_>,
    clients: &[ClientStatus<'_>],
    groups: &[crate::core::GroupInfo<'_>],
    c: &Counters,
    t: &TableStats,
    events_ordered: u64,
    ring: Option<Value>,
) -> String {
    let errors = by_name(&ERROR_CODES, |e| e as usize, &c.errors, Some(&t.errors));
    let total_errors: u64 = c.errors.iter().chain(t.errors.iter()).sum();
    let refusals = by_name(&REFUSE_CODES, |r| r as usize, &c.refusals, None);
    let mut doc = json!({
        "daemon": daemon.name,
        "profile": daemon.profile,
        "uptime_ms": daemon.uptime_ms,
        "limits": {
            "max_clients": daemon.max_clients,
            "max_payload": daemon.max_payload,
            "queue_limit": daemon.queue_limit,
            "pause_mark": daemon.pause_mark,
        },
        "clients": clients.iter().map(|cl| json!({
            "name": cl.name,
            "transport": cl.transport,
            "groups": cl.groups,
            "queued_bytes": cl.queued,
        })).collect::<Vec<_>>(),
        "groups": groups.iter().map(|g| json!({
            "name": g.name,
            "view_id": g.view.to_string(),
            "view": {"epoch": g.view.epoch, "seq": g.view.seq},
            "closed": g.closed,
            "vs": g.vs,
            "flush_pending": g.flush_pending,
            "members": g.members,
        })).collect::<Vec<_>>(),
        "counters": {
            "connections": c.connections,
            "clients_welcomed": c.welcomed,
            "disconnects": c.disconnects,
            "frames_in": c.frames_in,
            "frames_out": c.own_frames_out + t.deliveries + t.notifications
                + t.errors.iter().sum::<u64>(),
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "reads": c.reads,
            "writes": c.writes,
            "events_ordered": events_ordered,
            "messages": t.messages,
            "messages_delivered": t.deliveries,
            "messages_undeliverable": t.undeliverable,
            "payload_bytes_delivered": t.delivered_bytes,
            "membership_notifications": t.notifications,
            "errors": total_errors,
            "errors_by_code": errors,
            "refusals": c.refusals.iter().sum::<u64>(),
            "refusals_by_code": refusals,
            "malformed_frames": c.malformed_frames,
            "slow_consumer_disconnects": c.slow_consumer_disconnects,
            "flush_timeouts": c.flush_timeouts,
            "oversize_disconnects": c.oversize_disconnects,
            "status_requests": c.status_requests,
            "read_pauses": c.read_pauses,
        },
    });
    // `configured` is the profile's count; `running` what the daemon runs (one, until
    // client sessions are sharded over session workers).
    doc["workers"] = json!({
        "configured": daemon.workers_configured,
        "running": daemon.workers.len(),
        "threads": daemon.workers.iter().map(|w| json!({
            "index": w.index,
            "role": w.role,
            "core": w.core,
            "cycles": w.cycles,
            "clients": w.clients,
        })).collect::<Vec<_>>(),
    });
    // A single daemon orders locally and has no ring to report.
    doc["ring"] = ring.unwrap_or_else(|| json!({"mode": "local"}));
    doc.to_string()
}
