//! The io_uring backend: one ring per socket, a multishot `RecvMsg` fed by a provided-buffer
//! ring (or, on kernels before 6.0 or when asked, one plain `RecvMsg` per pooled receive
//! buffer), and `SendMsg` from a pool of send buffers.
//!
//! Memory the kernel may touch lives in [`Region`]s that never move. A receive buffer is
//! the kernel's from the moment its entry is published in the provided-buffer ring until
//! its completion is reaped; a send slot is the kernel's from the moment its SQE is queued
//! until its completion is reaped. A multicast queues one `SendMsg` per destination, each
//! with a slot of its own for header and address, all reading the buffer of the first
//! slot, which stays busy until the last of those completions is reaped. Dropping the backend cancels the receive, waits for
//! every completion, and leaks the memory rather than freeing it if that wait fails.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, register::Probe, squeue, types};

use super::mem::Region;
use super::sockaddr::{self, NAME_LEN};
use super::{IoError, IoOptions, IoStats, PollOutcome};

/// user_data of the multishot receive; sends use their slot index (< 2^16).
const UD_RECV: u64 = u64::MAX;
/// user_data bit of a single-shot receive; the low 16 bits are its buffer id.
const UD_RECV_SLOT: u64 = 1 << 32;
/// user_data of the cancel issued on drop.
const UD_CANCEL: u64 = u64::MAX - 1;
/// Our provided-buffer group (one ring per socket, so one group is enough).
const BGID: u16 = 0;
/// What the kernel writes before the sender's address in a multishot receive buffer.
/// (`struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags, all u32.)
const RECV_HDR: usize = 16;
/// How long drop waits for the kernel to give back every buffer.
const QUIESCE_LIMIT: Duration = Duration::from_secs(2);
/// How often an `EBUSY` submit (completion backlog) is retried after draining.
const BUSY_RETRIES: usize = 64;

/// `struct io_uring_buf`: one provided-buffer ring entry. The `resv` field of entry 0 is
/// the ring's tail, so entries are only ever written field by field.
#[repr(C)]
struct PbufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}
const _: () = assert!(std::mem::size_of::<PbufEntry>() == 16);

/// Per-slot `sendmsg`/`recvmsg` arguments. The kernel uses them while the operation is in
/// flight (it copies the header at submission on current kernels; we do not rely on that)
/// and writes the sender's address into `name` for a receive.
#[repr(C)]
struct MsgMeta {
    msg: libc::msghdr,
    iov: libc::iovec,
    name: [u8; NAME_LEN],
}

/// Completion copied out of the CQ: (user_data, result, flags).
type Cqe = (u64, i32, u32);

enum Wait {
    No,
    Until(Instant),
    Forever,
}

/// What a completion belongs to, from its user_data.
enum Op {
    Send(u64),
    Multishot,
    Single(u16),
    Cancel,
}

fn classify(ud: u64) -> Op {
    match ud {
        UD_RECV => Op::Multishot,
        UD_CANCEL => Op::Cancel,
        _ if ud & UD_RECV_SLOT != 0 => Op::Single(ud as u16),
        _ => Op::Send(ud),
    }
}

#[derive(PartialEq, Eq)]
enum Entered {
    Done,
    /// A signal ended the wait.
    Interrupted,
}

pub(crate) struct UringIo {
    ring: IoUring,
    sock: UdpSocket,
    buf_size: usize,
    batch: usize,
    // Receive pool: `nbufs` buffers of `recv_stride` bytes, published through `pbuf`.
    pbuf: *mut PbufEntry,
    pbuf_mask: u16,
    pbuf_tail: u16,
    pbuf_dirty: bool,
    recv_base: *mut u8,
    recv_stride: usize,
    recv_len: u32,
    nbufs: u16,
    recv_msg: Box<libc::msghdr>,
    recv_armed: bool,
    /// Multishot receive with the provided-buffer ring; otherwise one `RecvMsg` per buffer.
    multishot: bool,
    /// Single-shot mode: one header per receive buffer, and how many are with the kernel.
    recv_meta: *mut MsgMeta,
    recv_outstanding: usize,
    /// Single-shot buffers handled and waiting to be queued again.
    requeue: Vec<u16>,
    /// Dropping: completed receives are not queued again.
    closing: bool,
    // Send pool: `nslots` buffers of `buf_size` bytes and their headers.
    send_base: *mut u8,
    meta: *mut MsgMeta,
    nslots: usize,
    send_free: Vec<u16>,
    /// Per slot: in-flight sends using it, its own header or (for a multicast's first
    /// slot) its buffer; it goes back on `send_free` when this reaches 0.
    send_busy: Vec<u16>,
    /// Per slot: the slot whose buffer its header points at (itself, or the first slot of
    /// its multicast).
    send_buf_of: Vec<u16>,
    /// Slots taken for the multicast being queued (kept to avoid an allocation per send).
    taking: Vec<u16>,
    send_in_flight: usize,
    unsubmitted_sends: usize,
    buf_ring_registered: bool,
    /// Completions reaped but not yet handled (receives wait here while `push_send`
    /// reaps to free a send slot, so they are delivered in order later).
    cqes: Vec<Cqe>,
    stats: IoStats,
    /// Owns the memory behind the raw pointers above; last so it drops last.
    regions: Vec<Region>,
}

// SAFETY: the raw pointers point into `regions`, owned by this value and moved with it;
// nothing else holds them, and every access happens under `&mut self`. The ring itself is
// Send; the kernel does not care which thread submits (no SINGLE_ISSUER setup flag).
unsafe impl Send for UringIo {}

fn setup_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl UringIo {
    /// Sets up the ring and its pools around `sock`; `Err` says why io_uring cannot be
    /// used, so that `Auto` can fall back.
    pub(crate) fn new(sock: UdpSocket, opts: &IoOptions) -> Result<Self, String> {
        let sq = opts.ring_entries.next_power_of_two();
        let nbufs = u16::try_from(sq).map_err(|e| setup_err("ring_entries", e))?;
        let nslots = sq as usize;
        // Every CQE holds a send slot or a receive buffer (or is one of the few
        // terminal/cancel ones), so a CQ this large cannot overflow.
        let cq = (sq * 2 + 16).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .setup_submit_all()
            .build(sq)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(sq))
            .map_err(|e| setup_err("io_uring_setup", e))?;
        let p = ring.params();
        if !p.is_feature_nodrop() || !p.is_feature_ext_arg() {
            return Err("kernel lacks IORING_FEAT_NODROP or IORING_FEAT_EXT_ARG".into());
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| setup_err("IORING_REGISTER_PROBE", e))?;
        for (code, name) in [
            (opcode::SendMsg::CODE, "SENDMSG"),
            (opcode::RecvMsg::CODE, "RECVMSG"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        ] {
            if !probe.is_supported(code) {
                return Err(format!("opcode {name} not supported"));
            }
        }
        // Multishot RecvMsg has no opcode of its own; it came in 6.0 with SEND_ZC, so
        // SEND_ZC stands in for it (and the first arm below checks for real).
        let mut multishot = opts.uring_multishot && probe.is_supported(opcode::SendZc::CODE);

        let buf_size = opts.buf_size;
        let recv_len = RECV_HDR + NAME_LEN + buf_size;
        let recv_stride = recv_len.next_multiple_of(64);
        let alloc = |len: usize, what: &str| Region::new(len).map_err(|e| setup_err(what, e));
        let pbuf_mem = alloc(usize::from(nbufs) * 16, "provided-buffer ring")?;
        let recv_mem = alloc(usize::from(nbufs) * recv_stride, "receive buffers")?;
        let send_mem = alloc(nslots * buf_size, "send buffers")?;
        let meta_mem = alloc(nslots * std::mem::size_of::<MsgMeta>(), "send headers")?;
        let recv_meta_mem = alloc(
            usize::from(nbufs) * std::mem::size_of::<MsgMeta>(),
            "receive headers",
        )?;

        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME_LEN as libc::socklen_t;

        let mut io = Self {
            ring,
            sock,
            buf_size,
            batch: opts.batch,
            pbuf: pbuf_mem.base().cast(),
            pbuf_mask: nbufs - 1,
            pbuf_tail: 0,
            pbuf_dirty: false,
            recv_base: recv_mem.base(),
            recv_stride,
            recv_len: u32::try_from(recv_len).map_err(|e| setup_err("buf_size", e))?,
            nbufs,
            recv_msg,
            recv_armed: false,
            multishot,
            recv_meta: recv_meta_mem.base().cast(),
            recv_outstanding: 0,
            requeue: Vec::with_capacity(usize::from(nbufs)),
            closing: false,
            send_base: send_mem.base(),
            meta: meta_mem.base().cast(),
            nslots,
            send_free: (0..nbufs).rev().collect(),
            send_busy: vec![0; nslots],
            send_buf_of: (0..nbufs).collect(),
            taking: Vec::with_capacity(nslots),
            send_in_flight: 0,
            unsubmitted_sends: 0,
            buf_ring_registered: false,
            cqes: Vec::with_capacity(cq as usize),
            stats: IoStats::default(),
            regions: vec![pbuf_mem, recv_mem, send_mem, meta_mem, recv_meta_mem],
        };
        io.init_send_meta();

        if multishot {
            // SAFETY: `pbuf` points at nbufs zeroed, page-aligned entries in a region this
            // value owns for as long as the ring exists; drop unregisters it (or leaks it).
            let reg = unsafe {
                io.ring
                    .submitter()
                    .register_buf_ring_with_flags(io.pbuf as u64, nbufs, BGID, 0)
            };
            match reg {
                Ok(()) => io.buf_ring_registered = true,
                Err(e) => {
                    tracing::info!(err = %e, "no provided-buffer ring; one RecvMsg per buffer");
                    multishot = false;
                    io.multishot = false;
                }
            }
        }
        if multishot {
            for bid in 0..nbufs {
                io.recycle(bid);
            }
            io.publish();
            io.arm_recv()
                .map_err(|e| setup_err("arming RecvMsgMulti", e))?;
        } else {
            io.init_recv_meta();
            for bid in 0..nbufs {
                io.queue_single(bid)
                    .map_err(|e| setup_err("queuing RecvMsg", e))?;
            }
        }
        io.enter(Wait::No)
            .map_err(|e| setup_err("io_uring_enter", e))?;
        io.harvest();
        // A kernel without multishot RecvMsg fails the arm at once, with EINVAL.
        let refused = io.cqes.iter().find(|c| {
            c.1 < 0
                && c.1 != -libc::ECANCELED
                && matches!(classify(c.0), Op::Multishot | Op::Single(_))
        });
        if let Some(&(_, res, _)) = refused {
            return Err(setup_err(
                "RecvMsg refused",
                io::Error::from_raw_os_error(-res),
            ));
        }
        io.hand_off()
            .map_err(|e| setup_err("withdrawing the probe receive", e))?;
        Ok(io)
    }

    /// Withdraws the receive armed by `new` to prove the kernel takes it. The kernel runs a
    /// receive's work on the thread that submitted it (and cancels it if that thread
    /// exits), so the real one is armed by the first `submit_and_poll`, on the worker's
    /// thread. Completions met here stay queued for that first call.
    fn hand_off(&mut self) -> Result<(), IoError> {
        let queued = if self.multishot {
            usize::from(self.recv_armed)
        } else {
            self.recv_outstanding
        };
        if self.multishot {
            if self.recv_armed {
                let e = opcode::AsyncCancel::new(UD_RECV)
                    .build()
                    .user_data(UD_CANCEL);
                // SAFETY: a cancel SQE carries no pointers.
                unsafe { self.push_sqe(&e)? };
            }
        } else {
            for bid in 0..self.nbufs {
                let e = opcode::AsyncCancel::new(UD_RECV_SLOT | u64::from(bid))
                    .build()
                    .user_data(UD_CANCEL);
                // SAFETY: a cancel SQE carries no pointers.
                unsafe { self.push_sqe(&e)? };
            }
        }
        // Every receive ends with exactly one final completion: count them.
        let finals = |cqes: &[Cqe]| {
            cqes.iter()
                .filter(|c| match classify(c.0) {
                    Op::Multishot => !cqueue::more(c.2),
                    Op::Single(_) => true,
                    _ => false,
                })
                .count()
        };
        let deadline = Instant::now() + QUIESCE_LIMIT;
        while finals(&self.cqes) < queued {
            if Instant::now() >= deadline {
                return Err(IoError::Os(io::Error::other("receive cancel not answered")));
            }
            let step = (Instant::now() + Duration::from_millis(20)).min(deadline);
            self.enter(Wait::Until(step))?;
            self.harvest();
        }
        Ok(())
    }

    fn init_send_meta(&mut self) {
        for i in 0..self.nslots {
            // SAFETY: slot i < nslots is inside the zeroed meta region and the send
            // region; no send is in flight yet, so we are the only user of the slot.
            // The pointers stored stay valid because the regions never move.
            unsafe {
                let m = self.meta.add(i);
                (*m).iov.iov_base = self.send_base.add(i * self.buf_size).cast();
                (*m).msg.msg_name = std::ptr::addr_of_mut!((*m).name).cast();
                (*m).msg.msg_iov = std::ptr::addr_of_mut!((*m).iov);
                (*m).msg.msg_iovlen = 1;
            }
        }
    }

    fn init_recv_meta(&mut self) {
        for bid in 0..usize::from(self.nbufs) {
            // SAFETY: bid < nbufs is inside the zeroed receive-header region and the
            // receive region; no receive is queued yet. One byte past buf_size is offered
            // so that a longer datagram shows as `res > buf_size` (the slot has room: its
            // stride covers RECV_HDR + NAME_LEN extra bytes).
            unsafe {
                let m = self.recv_meta.add(bid);
                (*m).iov.iov_base = self.recv_base.add(bid * self.recv_stride).cast();
                (*m).iov.iov_len = self.buf_size + 1;
                (*m).msg.msg_name = std::ptr::addr_of_mut!((*m).name).cast();
                (*m).msg.msg_iov = std::ptr::addr_of_mut!((*m).iov);
                (*m).msg.msg_iovlen = 1;
            }
        }
    }

    /// Single-shot mode: hands buffer `bid` to the kernel with its own `RecvMsg`.
    fn queue_single(&mut self, bid: u16) -> Result<(), IoError> {
        // SAFETY: buffer `bid` < nbufs is not with the kernel (it was never queued, or its
        // completion was reaped), so its header is ours to reset.
        let msg = unsafe {
            let m = self.recv_meta.add(usize::from(bid));
            (*m).msg.msg_namelen = NAME_LEN as libc::socklen_t;
            (*m).msg.msg_flags = 0;
            std::ptr::addr_of_mut!((*m).msg)
        };
        let e = opcode::RecvMsg::new(types::Fd(self.sock.as_raw_fd()), msg)
            .build()
            .user_data(UD_RECV_SLOT | u64::from(bid));
        // SAFETY: header, name and buffer of `bid` stay untouched until the completion with
        // this user_data is reaped; drop cancels and waits for it.
        unsafe { self.push_sqe(&e)? };
        self.recv_outstanding += 1;
        Ok(())
    }

    /// Single-shot mode: handles the completion of buffer `bid`'s receive.
    fn complete_single(
        &mut self,
        bid: u16,
        res: i32,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> bool {
        if usize::from(bid) >= usize::from(self.nbufs) {
            return false;
        }
        self.recv_outstanding -= 1;
        let mut delivered = false;
        if res >= 0 {
            let len = res as usize;
            // SAFETY: the completion gives buffer `bid` and its header back to us; the
            // name is a plain array copied out here.
            let (name, namelen) = unsafe {
                let m = self.recv_meta.add(usize::from(bid));
                ((*m).name, (*m).msg.msg_namelen as usize)
            };
            if len > self.buf_size {
                self.stats.truncated += 1;
            } else if let Some(from) = sockaddr::decode(&name[..namelen.min(NAME_LEN)]) {
                // SAFETY: the kernel wrote `len` <= buf_size bytes at the start of buffer
                // `bid`, which is ours until it is queued again below.
                let payload = unsafe {
                    std::slice::from_raw_parts(
                        self.recv_base.add(usize::from(bid) * self.recv_stride),
                        len,
                    )
                };
                on_recv(from, payload);
                self.stats.received += 1;
                delivered = true;
            } else {
                self.stats.recv_errors += 1;
            }
        } else if res != -libc::ECANCELED {
            self.stats.recv_errors += 1;
            tracing::debug!(err = %io::Error::from_raw_os_error(-res), "io_uring receive failed");
        }
        if !self.closing {
            self.requeue.push(bid);
        }
        delivered
    }

    /// Gives the receive side back to the kernel: re-arms the multishot receive if it
    /// ended, or queues again the single-shot buffers handled since the last call.
    fn rearm(&mut self) -> Result<(), IoError> {
        if self.multishot {
            if !self.recv_armed {
                self.arm_recv()?;
            }
            self.publish();
        } else {
            while let Some(bid) = self.requeue.pop() {
                if let Err(e) = self.queue_single(bid) {
                    self.requeue.push(bid);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether this ring uses the multishot receive.
    pub(crate) fn multishot(&self) -> bool {
        self.multishot
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub(crate) fn buf_size(&self) -> usize {
        self.buf_size
    }

    pub(crate) fn wait_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    pub(crate) fn stats(&self) -> IoStats {
        self.stats
    }

    pub(crate) fn queued_sends(&self) -> usize {
        self.unsubmitted_sends
    }

    /// Puts receive buffer `bid` back at the ring's tail (published by [`Self::publish`]).
    fn recycle(&mut self, bid: u16) {
        let idx = usize::from(self.pbuf_tail & self.pbuf_mask);
        // SAFETY: idx < nbufs, inside the ring. At most nbufs buffers exist and `bid` is
        // not in the ring (the kernel handed it to us, or it is being added for the first
        // time), so the kernel owns fewer than nbufs entries and the one at our tail is
        // not among them. Fields are written one by one so the tail in entry 0's `resv`
        // is never written here. Buffer `bid` < nbufs lies inside the receive region.
        unsafe {
            let e = self.pbuf.add(idx);
            std::ptr::addr_of_mut!((*e).addr)
                .write(self.recv_base.add(usize::from(bid) * self.recv_stride) as u64);
            std::ptr::addr_of_mut!((*e).len).write(self.recv_len);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.pbuf_tail = self.pbuf_tail.wrapping_add(1);
        self.pbuf_dirty = true;
    }

    /// Makes recycled buffers visible to the kernel.
    fn publish(&mut self) {
        if !self.pbuf_dirty {
            return;
        }
        // SAFETY: the tail is the u16 `resv` of entry 0, aligned and inside the ring
        // region, and the kernel only reads it (with acquire). The release store orders
        // our entry writes before the kernel can see the new tail.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.pbuf).resv);
            AtomicU16::from_ptr(tail).store(self.pbuf_tail, Ordering::Release);
        }
        self.pbuf_dirty = false;
    }

    /// Queues an SQE, submitting what is queued first if the SQ is full.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its completion is reaped.
    unsafe fn push_sqe(&mut self, entry: &squeue::Entry) -> Result<(), IoError> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.enter(Wait::No)?;
        }
    }

    fn arm_recv(&mut self) -> Result<(), IoError> {
        let e = opcode::RecvMsgMulti::new(
            types::Fd(self.sock.as_raw_fd()),
            &*self.recv_msg as *const libc::msghdr,
            BGID,
        )
        .build()
        .user_data(UD_RECV);
        // SAFETY: the SQE points at `recv_msg`, boxed and alive as long as self (drop
        // waits for the receive to end), and selects buffers from group BGID, which stays
        // registered until drop has seen the receive end.
        unsafe { self.push_sqe(&e)? };
        self.recv_armed = true;
        Ok(())
    }

    /// Largest `dests` that [`UringIo::push_send`] takes: every slot at once.
    pub(crate) fn max_fanout(&self) -> usize {
        self.nslots
    }

    /// Queues one `SendMsg` per address in `dests` (1..=nslots of them), each with a slot
    /// of its own for header and address, all reading the buffer of the first slot, which
    /// `fill` writes once.
    pub(crate) fn push_send(
        &mut self,
        dests: &[SocketAddr],
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), IoError> {
        debug_assert!(!dests.is_empty() && dests.len() <= self.nslots);
        let mut taking = std::mem::take(&mut self.taking);
        taking.clear();
        let r = self.take_slots(dests.len(), &mut taking);
        let r = r.and_then(|()| self.queue_sends(dests, len, fill, &taking));
        self.taking = taking;
        r?;
        if self.unsubmitted_sends >= self.batch {
            self.enter(Wait::No)?;
        }
        Ok(())
    }

    /// Moves `n` free slots into `taking`, reclaiming from the kernel as needed; on error
    /// they go back on the free list.
    fn take_slots(&mut self, n: usize, taking: &mut Vec<u16>) -> Result<(), IoError> {
        while taking.len() < n {
            if self.send_free.is_empty() {
                // Slots neither free nor taken here are in flight (n <= nslots), so a
                // completion will come.
                if let Err(e) = self.reclaim_send_slot() {
                    self.send_free.append(taking);
                    return Err(e);
                }
            }
            if let Some(s) = self.send_free.pop() {
                taking.push(s);
            }
        }
        Ok(())
    }

    fn queue_sends(
        &mut self,
        dests: &[SocketAddr],
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        taking: &[u16],
    ) -> Result<(), IoError> {
        let owner = taking[0];
        let o = usize::from(owner);
        // SAFETY: slot o was taken off the free list, so no send in flight reads its
        // buffer; o < nslots and len <= buf_size keep the slice inside slot o.
        let buf_ptr = unsafe { self.send_base.add(o * self.buf_size) };
        // SAFETY: as above; the slice is dropped before any SQE referring to it is queued.
        fill(unsafe { std::slice::from_raw_parts_mut(buf_ptr, len) });
        for (k, (&slot, dest)) in taking.iter().zip(dests).enumerate() {
            let i = usize::from(slot);
            // SAFETY: slot i was taken off the free list, so its header is ours to rewrite;
            // the name and iov pointers inside were set up by init_send_meta and still hold;
            // the iov now points at the owner's buffer, inside the send region.
            let msg = unsafe {
                let m = self.meta.add(i);
                (*m).msg.msg_namelen = sockaddr::encode(*dest, &mut (*m).name);
                (*m).iov.iov_base = buf_ptr.cast();
                (*m).iov.iov_len = len;
                std::ptr::addr_of!((*m).msg)
            };
            let e = opcode::SendMsg::new(types::Fd(self.sock.as_raw_fd()), msg)
                .build()
                .user_data(slot as u64);
            // SAFETY: slot i's header and address, and the owner's buffer, stay untouched
            // until this SQE's completion (user_data i) is reaped: slot i is busy until
            // then, and the owner stays busy until every send reading its buffer has
            // completed (complete_send releases both).
            if let Err(err) = unsafe { self.push_sqe(&e) } {
                // Slots k.. were never queued, so the kernel never saw them: free again.
                // The ones before are in flight and come back through their completions.
                self.send_free.extend_from_slice(&taking[k..]);
                return Err(err);
            }
            self.send_buf_of[i] = owner;
            self.send_busy[i] += 1;
            if slot != owner {
                self.send_busy[o] += 1;
            }
            self.send_in_flight += 1;
            self.unsubmitted_sends += 1;
        }
        Ok(())
    }

    /// Every send slot is with the kernel: submit and reap (waiting if needed) until one
    /// comes back. Receive completions met on the way stay queued for the next poll.
    fn reclaim_send_slot(&mut self) -> Result<u16, IoError> {
        let mut wait = Wait::No;
        loop {
            self.enter(wait)?;
            self.harvest();
            let mut list = std::mem::take(&mut self.cqes);
            list.retain(|&(ud, res, _)| match classify(ud) {
                Op::Send(slot) => {
                    self.complete_send(slot, res);
                    false
                }
                _ => true,
            });
            // Anything reaped meanwhile (on a busy retry) goes after, in order.
            list.append(&mut self.cqes);
            self.cqes = list;
            if let Some(&s) = self.send_free.last() {
                return Ok(s);
            }
            wait = Wait::Forever;
        }
    }

    fn complete_send(&mut self, ud: u64, res: i32) {
        let Ok(slot) = u16::try_from(ud) else {
            return;
        };
        if usize::from(slot) >= self.nslots {
            return;
        }
        self.send_in_flight -= 1;
        self.release_slot(slot);
        let owner = self.send_buf_of[usize::from(slot)];
        if owner != slot {
            self.release_slot(owner);
        }
        if res < 0 {
            self.stats.send_errors += 1;
            tracing::debug!(err = %io::Error::from_raw_os_error(-res), "io_uring send failed");
        } else {
            self.stats.sent += 1;
        }
    }

    /// One send using `slot` (its header or its buffer) has completed.
    fn release_slot(&mut self, slot: u16) {
        let b = &mut self.send_busy[usize::from(slot)];
        *b -= 1;
        if *b == 0 {
            self.send_free.push(slot);
        }
    }

    /// Handles one receive completion; true if a datagram went to `on_recv`.
    fn complete_recv(
        &mut self,
        res: i32,
        flags: u32,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> bool {
        let mut delivered = false;
        if let Some(bid) = cqueue::buffer_select(flags).filter(|&b| b < self.nbufs) {
            if res >= 0 {
                let len = (res as usize).min(self.recv_len as usize);
                // SAFETY: the kernel handed buffer `bid` to us with this completion and
                // will not touch it until we recycle it below; it lies inside the
                // receive region and `len` is clamped to the buffer's length.
                let buf = unsafe {
                    std::slice::from_raw_parts(
                        self.recv_base.add(usize::from(bid) * self.recv_stride),
                        len,
                    )
                };
                match RecvMsgOut::parse(buf, &self.recv_msg) {
                    Ok(out) if out.is_payload_truncated() => self.stats.truncated += 1,
                    Ok(out) => match sockaddr::decode(out.name_data()) {
                        Some(from) => {
                            on_recv(from, out.payload_data());
                            self.stats.received += 1;
                            delivered = true;
                        }
                        None => self.stats.recv_errors += 1,
                    },
                    Err(()) => self.stats.recv_errors += 1,
                }
            }
            self.recycle(bid);
        } else if res == -libc::ENOBUFS {
            self.stats.recv_no_buffers += 1;
        } else if res < 0 && res != -libc::ECANCELED {
            self.stats.recv_errors += 1;
            tracing::debug!(err = %io::Error::from_raw_os_error(-res), "io_uring receive failed");
        }
        delivered
    }

    /// Copies every posted completion into `cqes`. A receive completion without MORE
    /// means the multishot ended, so it is marked disarmed here, where it is seen first.
    fn harvest(&mut self) {
        let mut cq = self.ring.completion();
        self.stats.cq_overflow = u64::from(cq.overflow());
        for e in &mut cq {
            if e.user_data() == UD_RECV && !cqueue::more(e.flags()) {
                self.recv_armed = false;
            }
            self.cqes.push((e.user_data(), e.result(), e.flags()));
        }
    }

    /// Reaps and handles every completion; returns datagrams delivered.
    fn drain(&mut self, on_recv: &mut dyn FnMut(SocketAddr, &[u8])) -> usize {
        self.harvest();
        self.drain_pending(on_recv)
    }

    /// One io_uring_enter: submits everything queued and, when asked, waits for at least
    /// one completion. A timeout or a signal ends the wait without error.
    fn enter(&mut self, wait: Wait) -> Result<Entered, IoError> {
        for _ in 0..BUSY_RETRIES {
            let r = match wait {
                Wait::No => self.ring.submit(),
                Wait::Forever => self.ring.submit_and_wait(1),
                Wait::Until(deadline) => {
                    let ts = Timespec::from(deadline.saturating_duration_since(Instant::now()));
                    let args = SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            self.stats.syscalls += 1;
            match r {
                Ok(_) => {
                    self.unsubmitted_sends = 0;
                    return Ok(Entered::Done);
                }
                Err(e) => match e.raw_os_error() {
                    Some(code @ (libc::ETIME | libc::EINTR)) => {
                        if self.ring.submission().is_empty() {
                            self.unsubmitted_sends = 0;
                        }
                        return Ok(if code == libc::EINTR {
                            Entered::Interrupted
                        } else {
                            Entered::Done
                        });
                    }
                    // Completions backed up (overflow list) or a transient kernel
                    // allocation failure: make room and try again.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) => self.harvest(),
                    _ => return Err(e.into()),
                },
            }
        }
        Err(IoError::Os(io::Error::other("io_uring_enter stayed busy")))
    }

    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        if !self.ring.submission().is_empty() {
            self.enter(Wait::No)?;
        }
        Ok(())
    }

    pub(crate) fn submit_and_poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<PollOutcome, IoError> {
        // Receives reaped earlier by push_send come first, in arrival order.
        let mut received = self.drain_pending(on_recv);
        self.rearm()?;
        let deadline = match timeout {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(Instant::now() + t),
            None => None,
        };
        let may_wait = timeout != Some(Duration::ZERO);
        loop {
            let wait = match (received == 0 && may_wait, deadline) {
                (false, _) => Wait::No,
                (true, Some(d)) => Wait::Until(d),
                (true, None) => Wait::Forever,
            };
            let waited = !matches!(wait, Wait::No);
            let interrupted = self.enter(wait)? == Entered::Interrupted;
            received += self.drain(on_recv);
            self.rearm()?;
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if !waited || received > 0 || expired || interrupted {
                break;
            }
        }
        // A re-arm queued above must reach the kernel before the caller sleeps elsewhere,
        // or no datagram could ever wake it.
        if !self.ring.submission().is_empty() {
            self.enter(Wait::No)?;
        }
        Ok(PollOutcome {
            received,
            more: false,
        })
    }

    /// Handles the completions already reaped; returns datagrams delivered.
    fn drain_pending(&mut self, on_recv: &mut dyn FnMut(SocketAddr, &[u8])) -> usize {
        if self.cqes.is_empty() {
            return 0;
        }
        let mut list = std::mem::take(&mut self.cqes);
        let mut n = 0;
        for &(ud, res, flags) in &list {
            match classify(ud) {
                Op::Multishot => n += usize::from(self.complete_recv(res, flags, on_recv)),
                Op::Single(bid) => n += usize::from(self.complete_single(bid, res, on_recv)),
                Op::Cancel => {}
                Op::Send(slot) => self.complete_send(slot, res),
            }
        }
        list.clear();
        list.append(&mut self.cqes);
        self.cqes = list;
        n
    }

    /// Cancels the receive and waits for every operation to finish; false if the kernel
    /// may still hold our memory.
    fn quiesce(&mut self) -> bool {
        let deadline = Instant::now() + QUIESCE_LIMIT;
        let mut discard = |_: SocketAddr, _: &[u8]| {};
        self.closing = true;
        self.drain_pending(&mut discard);
        if !self.multishot && self.recv_outstanding > 0 {
            for bid in 0..self.nbufs {
                // Buffers not with the kernel answer ENOENT, which is harmless.
                let e = opcode::AsyncCancel::new(UD_RECV_SLOT | u64::from(bid))
                    .build()
                    .user_data(UD_CANCEL);
                // SAFETY: a cancel SQE carries no pointers.
                if unsafe { self.push_sqe(&e) }.is_err() {
                    return false;
                }
            }
        }
        if self.recv_armed {
            let e = opcode::AsyncCancel::new(UD_RECV)
                .build()
                .user_data(UD_CANCEL);
            // SAFETY: a cancel SQE carries no pointers.
            if unsafe { self.push_sqe(&e) }.is_err() {
                return false;
            }
        }
        while self.recv_armed || self.recv_outstanding > 0 || self.send_in_flight > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
            if self.enter(Wait::Until(step)).is_err() {
                return false;
            }
            self.drain(&mut discard);
        }
        true
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        let quiet = self.quiesce();
        let unregistered =
            !self.buf_ring_registered || self.ring.submitter().unregister_buf_ring(BGID).is_ok();
        if !(quiet && unregistered) {
            tracing::error!(
                quiet,
                unregistered,
                "io_uring did not give back its buffers; leaking them"
            );
            for r in self.regions.drain(..) {
                r.leak();
            }
        }
    }
}
