//! Client sessions sharded over several data-plane workers.
//!
//! Worker 0, the order worker, owns the listeners, the group table, the sequencer and the
//! ring I/O, and serves a share of the clients itself. Workers 1..N-1, session workers,
//! serve the other clients: they read and parse, answer hellos and malformed input
//! themselves, and once per cycle send everything that needs the table to worker 0 as
//! one batch ([`Up`] records). Worker 0 applies each batch in order and writes the
//! table's output for a session worker's clients into that worker's batch ([`Down`]
//! records), sent once per cycle. Batches travel over bounded crossbeam queues and come
//! back empty over return queues, so steady state allocates nothing per message. A full
//! queue is never waited on: the batch stays with its producer, which stops reading its
//! clients until the queue takes it.
//!
//! The table addresses a client by one [`LocalId`]: the worker's index in the top bits,
//! the session's slot on that worker below ([`global`]); worker 0's ids are its slots, as
//! with one worker. A session worker reuses a slot only after worker 0 confirmed the
//! unbinding ([`Down::Freed`]): output for the old client that was already batched is
//! ahead of that confirmation, so it can never reach the slot's next client.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

use super::control::WorkerStatus;
use super::session::Stream;
use super::status::Counters;
use crate::core::{Event, LocalId, Outbox};

/// Bits of a [`LocalId`] below the worker index.
const SLOT_BITS: u32 = 24;
/// Most slots one worker addresses.
pub(crate) const MAX_SLOTS: usize = 1 << SLOT_BITS;
/// Batches in flight per direction and worker.
pub(crate) const BATCH_QUEUE: usize = 64;
/// Accepted sockets waiting for a session worker.
pub(crate) const SOCKET_QUEUE: usize = 64;
/// Batches taken from one queue per cycle (bounded work per cycle).
pub(crate) const BATCHES_PER_CYCLE: usize = 8;
/// Capacity of a fresh batch buffer.
const BATCH_CAPACITY: usize = 64 * 1024;

/// The table's id of slot `slot` on worker `worker`.
pub(crate) fn global(worker: usize, slot: LocalId) -> LocalId {
    ((worker as LocalId) << SLOT_BITS) | slot
}

/// The worker and slot of a table id.
pub(crate) fn split(id: LocalId) -> (usize, LocalId) {
    ((id >> SLOT_BITS) as usize, id & ((1 << SLOT_BITS) - 1))
}

/// What the workers share: private-name uniqueness, the client count, who is congested.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    names: Mutex<HashSet<Box<str>>>,
    next_anonymous: AtomicU64,
    /// Sessions over all workers (the `max_clients` limit).
    pub live: AtomicUsize,
    /// Bit `w` set while worker `w` has a client above the pause mark.
    pub congested: AtomicU64,
}

impl Registry {
    /// Claims a private name; false when another client of this daemon holds it.
    pub(crate) fn claim(&self, name: &str) -> bool {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.contains(name) {
            return false;
        }
        names.insert(name.into());
        true
    }

    /// Gives a private name back.
    pub(crate) fn release(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.remove(name);
    }

    /// The next number for an anonymous client's name.
    pub(crate) fn anonymous(&self) -> u64 {
        self.next_anonymous.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What a session worker last published for worker 0's status report.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub status: WorkerStatus,
    pub counters: Counters,
}

/// Record tags of a session worker's batch.
mod up {
    pub const BIND: u8 = 1;
    pub const UNBIND: u8 = 2;
    pub const EVENT: u8 = 3;
    pub const STATUS: u8 = 4;
    pub const REQUEST: u8 = 5;
}

/// Record tags of worker 0's batch to a session worker.
mod down {
    pub const OUTPUT: u8 = 1;
    pub const FREED: u8 = 2;
    pub const WELCOME: u8 = 3;
    pub const FLUSH_WAIT: u8 = 4;
}

/// One record of a session worker's batch (slots are the sender's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Up<'a> {
    /// A client was welcomed under `name`.
    Bind {
        slot: LocalId,
        transport: &'static str,
        name: &'a str,
    },
    /// The client in `slot` is gone; worker 0 answers [`Down::Freed`].
    Unbind { slot: LocalId, name: &'a str },
    /// An event to order.
    Event(Event<'a>),
    /// The client in `slot` asked for the status report.
    Status { slot: LocalId },
    /// The next [`Up::Event`] is the request of the client in `slot` that it numbered
    /// `request` (echoed in an Error that answers it).
    Request { slot: LocalId, request: u32 },
}

/// One record of worker 0's batch to a session worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Down<'a> {
    /// Whole frames for the client in `slot`.
    Output { slot: LocalId, frames: &'a [u8] },
    /// The slot is unbound in the table and may be reused.
    Freed { slot: LocalId },
    /// The client's Connect has been ordered: send it the Welcome held for it.
    Welcome { slot: LocalId },
    /// The client was asked to flush `group` (`waiting`), or no longer owes the answer:
    /// the session worker times the wait.
    FlushWait {
        slot: LocalId,
        group: &'a str,
        waiting: bool,
    },
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Takes `n` bytes off the front. Batches are built by this process, so a short one is a
/// bug, reported as `None` and logged by the reader rather than trusted.
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    take(buf, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    let n = take_u32(buf)? as usize;
    std::str::from_utf8(take(buf, n)?).ok()
}

/// Appends an [`Up`] record.
pub(crate) fn put_up(out: &mut Vec<u8>, record: &Up<'_>) {
    match record {
        Up::Bind {
            slot,
            transport,
            name,
        } => {
            out.push(up::BIND);
            put_u32(out, *slot);
            put_str(out, transport);
            put_str(out, name);
        }
        Up::Unbind { slot, name } => {
            out.push(up::UNBIND);
            put_u32(out, *slot);
            put_str(out, name);
        }
        Up::Event(e) => {
            out.push(up::EVENT);
            e.encode(out);
        }
        Up::Status { slot } => {
            out.push(up::STATUS);
            put_u32(out, *slot);
        }
        Up::Request { slot, request } => {
            out.push(up::REQUEST);
            put_u32(out, *slot);
            put_u32(out, *request);
        }
    }
}

/// Reads the next [`Up`] record; `None` at the end, `Some(Err)` for a corrupt batch.
pub(crate) fn next_up<'a>(buf: &mut &'a [u8]) -> Option<Result<Up<'a>, ()>> {
    let (&tag, mut rest) = buf.split_first()?;
    let record = match tag {
        up::BIND => (|| {
            let slot = take_u32(&mut rest)?;
            let transport = match take_str(&mut rest)? {
                "unix" => "unix",
                _ => "tcp",
            };
            let name = take_str(&mut rest)?;
            Some(Up::Bind {
                slot,
                transport,
                name,
            })
        })(),
        up::UNBIND => (|| {
            let slot = take_u32(&mut rest)?;
            let name = take_str(&mut rest)?;
            Some(Up::Unbind { slot, name })
        })(),
        up::EVENT => match Event::decode(rest) {
            Ok((event, used)) => {
                rest = &rest[used..];
                Some(Up::Event(event))
            }
            Err(_) => None,
        },
        up::STATUS => take_u32(&mut rest).map(|slot| Up::Status { slot }),
        up::REQUEST => (|| {
            let slot = take_u32(&mut rest)?;
            let request = take_u32(&mut rest)?;
            Some(Up::Request { slot, request })
        })(),
        _ => None,
    };
    *buf = rest;
    Some(record.ok_or(()))
}

/// Reads the next [`Down`] record; `None` at the end, `Some(Err)` for a corrupt batch.
pub(crate) fn next_down<'a>(buf: &mut &'a [u8]) -> Option<Result<Down<'a>, ()>> {
    let (&tag, mut rest) = buf.split_first()?;
    let record = match tag {
        down::OUTPUT => (|| {
            let slot = take_u32(&mut rest)?;
            let len = take_u32(&mut rest)? as usize;
            let frames = take(&mut rest, len)?;
            Some(Down::Output { slot, frames })
        })(),
        down::FREED => take_u32(&mut rest).map(|slot| Down::Freed { slot }),
        down::WELCOME => take_u32(&mut rest).map(|slot| Down::Welcome { slot }),
        down::FLUSH_WAIT => (|| {
            let slot = take_u32(&mut rest)?;
            let waiting = take(&mut rest, 1)?[0] != 0;
            let group = take_str(&mut rest)?;
            Some(Down::FlushWait {
                slot,
                group,
                waiting,
            })
        })(),
        _ => None,
    };
    *buf = rest;
    Some(record.ok_or(()))
}

/// One direction of batches between two workers, with its return queue.
pub(crate) struct Pipe {
    /// Batches out.
    pub tx: Sender<Vec<u8>>,
    /// Emptied batches coming back to this side.
    pub free_rx: Receiver<Vec<u8>>,
}

/// The receiving end of a [`Pipe`].
pub(crate) struct PipeEnd {
    /// Batches in.
    pub rx: Receiver<Vec<u8>>,
    /// Emptied batches going back.
    pub free_tx: Sender<Vec<u8>>,
}

/// A bounded batch queue and its return queue.
pub(crate) fn pipe() -> (Pipe, PipeEnd) {
    let (tx, rx) = crossbeam_channel::bounded(BATCH_QUEUE);
    // Room for every batch in flight, so giving one back never fails in practice.
    let (free_tx, free_rx) = crossbeam_channel::bounded(BATCH_QUEUE + 2);
    (Pipe { tx, free_rx }, PipeEnd { rx, free_tx })
}

impl PipeEnd {
    /// Gives an applied batch back for reuse.
    pub(crate) fn recycle(&self, mut batch: Vec<u8>) {
        batch.clear();
        // Full only if the producer stopped taking buffers back: then let this one go.
        let _ = self.free_tx.try_send(batch);
    }
}

/// A batch being filled for one queue, sent once per cycle.
pub(crate) struct Outgoing {
    pub pipe: Pipe,
    pub batch: Vec<u8>,
    /// Where the length of the open [`Down::Output`] record is, and its slot.
    open: Option<(usize, LocalId)>,
    /// The queue was full at the last send: the batch waits here (and keeps growing with
    /// what cannot be held back) until the next cycle.
    pub held: bool,
    /// The worker to wake once a batch is sent.
    pub waker: Arc<Waker>,
}

impl Outgoing {
    pub(crate) fn new(pipe: Pipe, waker: Arc<Waker>) -> Self {
        Self {
            pipe,
            batch: Vec::with_capacity(BATCH_CAPACITY),
            open: None,
            held: false,
            waker,
        }
    }

    fn close_open(&mut self) {
        if let Some((at, _)) = self.open.take() {
            let len = (self.batch.len() - at - 4) as u32;
            self.batch[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }

    /// The batch, to append frames for `slot` to (one record while the slot repeats).
    pub(crate) fn output(&mut self, slot: LocalId) -> &mut Vec<u8> {
        if self.open.is_some_and(|(_, s)| s != slot) {
            self.close_open();
        }
        if self.open.is_none() {
            self.batch.push(down::OUTPUT);
            put_u32(&mut self.batch, slot);
            self.open = Some((self.batch.len(), slot));
            put_u32(&mut self.batch, 0);
        }
        &mut self.batch
    }

    /// Appends a [`Down::Freed`].
    pub(crate) fn freed(&mut self, slot: LocalId) {
        self.close_open();
        self.batch.push(down::FREED);
        put_u32(&mut self.batch, slot);
    }

    /// Appends a [`Down::Welcome`] (after the frames already batched for the slot, so
    /// the order of the client's stream is the order of the table's output).
    pub(crate) fn welcome(&mut self, slot: LocalId) {
        self.close_open();
        self.batch.push(down::WELCOME);
        put_u32(&mut self.batch, slot);
    }

    /// Appends a [`Down::FlushWait`] (after the frames already batched for the slot, so
    /// the FlushRequest is queued before its timer starts).
    pub(crate) fn flush_wait(&mut self, slot: LocalId, group: &str, waiting: bool) {
        self.close_open();
        self.batch.push(down::FLUSH_WAIT);
        put_u32(&mut self.batch, slot);
        self.batch.push(u8::from(waiting));
        put_str(&mut self.batch, group);
    }

    /// Appends an [`Up`] record.
    pub(crate) fn up(&mut self, record: &Up<'_>) {
        self.close_open();
        put_up(&mut self.batch, record);
    }

    /// Sends the batch if it holds anything: one queue item per cycle. A full queue keeps
    /// it here (`held`); nothing is dropped and nothing blocks.
    pub(crate) fn send(&mut self) {
        self.close_open();
        if self.batch.is_empty() {
            self.held = false;
            return;
        }
        // The only producer: a queue full now stays full until the consumer takes from
        // it, so a retry can skip swapping in a fresh buffer only to swap it back.
        if self.pipe.tx.is_full() {
            self.held = true;
            return;
        }
        let next = self
            .pipe
            .free_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH_CAPACITY));
        let batch = std::mem::replace(&mut self.batch, next);
        match self.pipe.tx.try_send(batch) {
            Ok(()) => {
                self.held = false;
                if let Err(e) = self.waker.wake() {
                    tracing::error!("cannot wake a worker: {e}");
                }
            }
            Err(TrySendError::Full(batch)) => {
                self.batch = batch;
                self.held = true;
            }
            // The other worker has stopped (daemon shutdown): nobody will read this.
            Err(TrySendError::Disconnected(_)) => self.held = false,
        }
    }
}

/// Worker 0's end of one session worker.
pub(crate) struct Peer {
    /// Table output for the peer's clients.
    pub out: Outgoing,
    /// The peer's batches.
    pub input: PipeEnd,
    /// Accepted sockets handed to the peer.
    pub sockets: Sender<Stream>,
    /// What the peer last published.
    pub published: Arc<Mutex<Published>>,
    /// Clients of the peer bound in the table: by slot, name and transport (for status).
    pub clients: std::collections::HashMap<LocalId, (Box<str>, &'static str)>,
    /// Per slot, the ids of requests submitted and not yet applied, oldest first.
    pub pending: std::collections::HashMap<LocalId, std::collections::VecDeque<u32>>,
}

/// A session worker's end of worker 0.
pub(crate) struct OrderLink {
    /// Records for worker 0.
    pub out: Outgoing,
    /// Worker 0's batches for this worker's clients.
    pub input: PipeEnd,
    /// Sockets worker 0 accepted for this worker.
    pub sockets: Receiver<Stream>,
    /// Where this worker publishes its counters for worker 0's status report.
    pub published: Arc<Mutex<Published>>,
}

/// The table's [`Outbox`] on worker 0: its own sessions, or a session worker's batch.
pub(crate) struct Route<'a, O: Outbox> {
    pub own: &'a mut O,
    pub peers: &'a mut [Peer],
}

impl<O: Outbox> Outbox for Route<'_, O> {
    fn connected(&mut self, id: LocalId) {
        let (worker, slot) = split(id);
        if worker == 0 {
            return self.own.connected(slot);
        }
        if let Some(peer) = self.peers.get_mut(worker - 1)
            && peer.clients.contains_key(&slot)
        {
            peer.out.welcome(slot);
        }
    }

    fn flush_wait(&mut self, id: LocalId, group: &str, waiting: bool) {
        let (worker, slot) = split(id);
        if worker == 0 {
            return self.own.flush_wait(slot, group, waiting);
        }
        if let Some(peer) = self.peers.get_mut(worker - 1)
            && peer.clients.contains_key(&slot)
        {
            peer.out.flush_wait(slot, group, waiting);
        }
    }

    fn request(&mut self, id: LocalId) -> u32 {
        let (worker, slot) = split(id);
        if worker == 0 {
            return self.own.request(slot);
        }
        self.peers
            .get(worker - 1)
            .and_then(|p| p.pending.get(&slot))
            .and_then(|q| q.front().copied())
            .unwrap_or(0)
    }

    fn done(&mut self, id: LocalId) {
        let (worker, slot) = split(id);
        if worker == 0 {
            return self.own.done(slot);
        }
        if let Some(q) = self
            .peers
            .get_mut(worker - 1)
            .and_then(|p| p.pending.get_mut(&slot))
        {
            q.pop_front();
        }
    }

    fn out(&mut self, id: LocalId) -> Option<&mut Vec<u8>> {
        let (worker, slot) = split(id);
        if worker == 0 {
            return self.own.out(slot);
        }
        let peer = self.peers.get_mut(worker - 1)?;
        // A client the peer has unbound (or never bound) gets nothing.
        if !peer.clients.contains_key(&slot) {
            return None;
        }
        Some(peer.out.output(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_control::wire::client::Service;

    #[test]
    fn ids_keep_worker_and_slot_apart() {
        assert_eq!(global(0, 7), 7);
        assert_eq!(split(global(3, 7)), (3, 7));
        assert_eq!(
            split(global(1, (MAX_SLOTS - 1) as LocalId)),
            (1, (MAX_SLOTS - 1) as u32)
        );
    }

    #[test]
    fn up_records_round_trip_in_order_and_junk_is_an_error() {
        let mut frame = Vec::new();
        conclave_control::wire::client::encode::multicast(
            &mut frame,
            0,
            Service::Safe,
            3,
            ["g"],
            b"hi",
        );
        let (body, _) = conclave_control::wire::client::split_frame(&frame, 1 << 20)
            .ok()
            .flatten()
            .expect("a whole frame");
        let conclave_control::wire::client::ClientFrame::Multicast { groups, .. } =
            conclave_control::wire::client::decode_client(body).expect("a multicast")
        else {
            panic!("not a multicast");
        };
        let records = [
            Up::Bind {
                slot: 4,
                transport: "tcp",
                name: "#a#d",
            },
            Up::Event(Event::Join {
                client: "#a#d",
                group: "g",
            }),
            Up::Event(Event::Data {
                sender: "#a#d",
                service: Service::Safe,
                msg_type: 3,
                groups,
                payload: b"hi",
            }),
            Up::Status { slot: 4 },
            Up::Request {
                slot: 4,
                request: 77,
            },
            Up::Unbind {
                slot: 4,
                name: "#a#d",
            },
        ];
        let mut buf = Vec::new();
        for r in &records {
            put_up(&mut buf, r);
        }
        let mut rest = &buf[..];
        for r in &records {
            assert_eq!(next_up(&mut rest), Some(Ok(r.clone())));
        }
        assert_eq!(next_up(&mut rest), None);
        let mut junk: &[u8] = &[up::BIND, 1, 0];
        assert_eq!(next_up(&mut junk), Some(Err(())));
    }

    #[test]
    fn output_records_group_frames_per_slot_and_freed_follows_them() {
        let (pipe, end) = pipe();
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let mut out = Outgoing::new(pipe, waker);
        out.output(1).extend_from_slice(b"aa");
        out.output(1).extend_from_slice(b"b");
        out.output(2).extend_from_slice(b"c");
        out.freed(1);
        out.output(1).extend_from_slice(b"d");
        out.send();
        assert!(!out.held);
        let batch = end.rx.try_recv().expect("one batch");
        let mut rest = &batch[..];
        let mut got = Vec::new();
        while let Some(r) = next_down(&mut rest) {
            got.push(r.expect("well formed"));
        }
        assert_eq!(
            got,
            [
                Down::Output {
                    slot: 1,
                    frames: b"aab"
                },
                Down::Output {
                    slot: 2,
                    frames: b"c"
                },
                Down::Freed { slot: 1 },
                Down::Output {
                    slot: 1,
                    frames: b"d"
                },
            ]
        );
        // Nothing new: nothing is sent.
        out.send();
        assert!(end.rx.try_recv().is_err());
        // A full queue holds the batch with the producer, whole, and never blocks.
        for i in 0..BATCH_QUEUE {
            out.output(9).push(i as u8);
            out.send();
            assert!(!out.held);
        }
        out.output(9).push(0xff);
        out.send();
        assert!(out.held);
        end.recycle(end.rx.try_recv().expect("a batch"));
        out.send();
        assert!(!out.held);
    }
}
