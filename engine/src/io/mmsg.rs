//! The fallback backend: `sendmmsg`/`recvmmsg` on a non-blocking socket, or plain
//! `sendto`/`recvfrom` where the kernel (or a seccomp filter) refuses those.
//!
//! Everything here is synchronous: the kernel touches our buffers only during a system
//! call made under `&mut self`, so the message headers are rebuilt before each call.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::sockaddr::{self, NAME_LEN};
use super::{IoError, IoOptions, IoStats, PollOutcome};

/// How long a flush waits for room in a full send buffer before dropping what is left.
const SEND_STALL_LIMIT: Duration = Duration::from_millis(100);

pub(crate) struct MmsgIo {
    sock: UdpSocket,
    buf_size: usize,
    batch: usize,
    /// Datagrams one `submit_and_poll` reads before it returns with `more`.
    budget: usize,
    /// `sendmmsg`/`recvmmsg` were refused; use one datagram per call.
    plain: bool,
    send_buf: Vec<u8>,
    send_names: Vec<[u8; NAME_LEN]>,
    send_namelens: Vec<libc::socklen_t>,
    send_lens: Vec<usize>,
    /// Which entry's buffer each queued send reads (a multicast shares its first entry's).
    send_src: Vec<usize>,
    queued: usize,
    recv_buf: Vec<u8>,
    recv_names: Vec<[u8; NAME_LEN]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    stats: IoStats,
}

// SAFETY: the raw pointers in `iovs`/`hdrs` point into this value's own vectors, are
// rewritten before every system call and are never dereferenced by us.
unsafe impl Send for MmsgIo {}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn is_refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM))
}

impl MmsgIo {
    pub(crate) fn new(sock: UdpSocket, opts: &IoOptions) -> Result<Self, IoError> {
        sock.set_nonblocking(true)?;
        let b = opts.batch;
        // SAFETY: all-zero iovec and mmsghdr values are valid (null pointers, zero lengths).
        let (iov0, hdr0): (libc::iovec, libc::mmsghdr) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Ok(Self {
            sock,
            buf_size: opts.buf_size,
            batch: b,
            budget: (opts.ring_entries as usize).max(b),
            plain: false,
            send_buf: vec![0; b * opts.buf_size],
            send_names: vec![[0; NAME_LEN]; b],
            send_namelens: vec![0; b],
            send_lens: vec![0; b],
            send_src: vec![0; b],
            queued: 0,
            recv_buf: vec![0; b * opts.buf_size],
            recv_names: vec![[0; NAME_LEN]; b],
            iovs: vec![iov0; b],
            hdrs: vec![hdr0; b],
            stats: IoStats::default(),
        })
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
        self.sock.as_raw_fd()
    }

    pub(crate) fn stats(&self) -> IoStats {
        self.stats
    }

    pub(crate) fn queued_sends(&self) -> usize {
        self.queued
    }

    /// Largest `dests` that [`MmsgIo::push_send`] takes: one batch.
    pub(crate) fn max_fanout(&self) -> usize {
        self.batch
    }

    /// Queues one datagram for every address in `dests` (1..=batch of them), written once
    /// into the first entry's buffer; `sendmmsg` copies it out once per entry.
    pub(crate) fn push_send(
        &mut self,
        dests: &[SocketAddr],
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), IoError> {
        debug_assert!(!dests.is_empty() && dests.len() <= self.batch);
        if self.queued + dests.len() > self.batch {
            self.flush()?;
        }
        let first = self.queued;
        let off = first * self.buf_size;
        fill(&mut self.send_buf[off..off + len]);
        for (k, dest) in dests.iter().enumerate() {
            let i = first + k;
            self.send_namelens[i] = sockaddr::encode(*dest, &mut self.send_names[i]);
            self.send_lens[i] = len;
            self.send_src[i] = first;
        }
        self.queued += dests.len();
        if self.queued == self.batch {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), IoError> {
        let mut start = 0;
        let mut stalled_since: Option<Instant> = None;
        while start < self.queued {
            let r = if self.plain {
                self.send_one(start)
            } else {
                self.send_many(start)
            };
            self.stats.syscalls += 1;
            match r {
                Ok(n) => {
                    self.stats.sent += n as u64;
                    start += n;
                    stalled_since = None;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        let left = SEND_STALL_LIMIT.saturating_sub(since.elapsed());
                        if left.is_zero() {
                            self.stats.send_dropped += (self.queued - start) as u64;
                            break;
                        }
                        self.wait_fd_ready(libc::POLLOUT, Some(left))?;
                    }
                    _ if !self.plain && is_refused(&e) => {
                        tracing::warn!(err = %e, "sendmmsg refused, using sendto");
                        self.plain = true;
                    }
                    _ => {
                        // The first datagram of the batch was refused (bad address,
                        // too large for the route, ...); the rest may still go.
                        tracing::debug!(err = %e, "UDP send failed");
                        self.stats.send_errors += 1;
                        start += 1;
                    }
                },
            }
        }
        self.queued = 0;
        Ok(())
    }

    fn send_many(&mut self, start: usize) -> io::Result<usize> {
        let n = self.queued - start;
        for k in 0..n {
            let i = start + k;
            self.iovs[k] = libc::iovec {
                iov_base: self.send_buf[self.send_src[i] * self.buf_size..]
                    .as_mut_ptr()
                    .cast(),
                iov_len: self.send_lens[i],
            };
            let h = &mut self.hdrs[k];
            h.msg_hdr.msg_name = self.send_names[i].as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = self.send_namelens[i];
            h.msg_hdr.msg_iov = &mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs[..n] were filled just above with pointers into our own vectors,
        // which stay borrowed (unchanged) for the duration of the call; n <= hdrs.len().
        // The entries of one multicast point at the same buffer, which the kernel only
        // reads, so sharing it is fine.
        let rc = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            Err(last_err())
        } else {
            Ok(rc as usize)
        }
    }

    fn send_one(&mut self, i: usize) -> io::Result<usize> {
        let off = self.send_src[i] * self.buf_size;
        let buf = &self.send_buf[off..off + self.send_lens[i]];
        // SAFETY: buf and the address are live slices of our own, with their true
        // lengths; the kernel only reads them during the call.
        let rc = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                self.send_names[i].as_ptr().cast(),
                self.send_namelens[i],
            )
        };
        if rc < 0 { Err(last_err()) } else { Ok(1) }
    }

    pub(crate) fn submit_and_poll(
        &mut self,
        timeout: Option<Duration>,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<PollOutcome, IoError> {
        self.flush()?;
        let deadline = match timeout {
            Some(t) if !t.is_zero() => Some(Instant::now() + t),
            _ => None,
        };
        let may_wait = timeout != Some(Duration::ZERO);
        let mut out = PollOutcome::default();
        let mut read = 0;
        loop {
            let n = self.recv_batch(on_recv, &mut out)?;
            read += n;
            if read >= self.budget {
                out.more = true;
                break;
            }
            if n > 0 {
                continue;
            }
            if out.received > 0 || !may_wait {
                break;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break;
            }
            if !self.wait_fd_ready(libc::POLLIN, left)? {
                break;
            }
        }
        Ok(out)
    }

    /// One receive system call; returns datagrams read (delivered or dropped), 0 when
    /// nothing is waiting.
    fn recv_batch(
        &mut self,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
        out: &mut PollOutcome,
    ) -> Result<usize, IoError> {
        let r = if self.plain {
            self.recv_one(on_recv, out)
        } else {
            self.recv_many(on_recv, out)
        };
        self.stats.syscalls += 1;
        match r {
            Ok(n) => Ok(n),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ if !self.plain && is_refused(&e) => {
                    tracing::warn!(err = %e, "recvmmsg refused, using recvfrom");
                    self.plain = true;
                    Ok(0)
                }
                // ICMP errors queued on the socket (e.g. a peer's port was closed) are
                // reported once and do not stop the socket.
                Some(libc::ECONNREFUSED) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => {
                    self.stats.recv_errors += 1;
                    Ok(0)
                }
                _ => Err(e.into()),
            },
        }
    }

    fn deliver(
        &mut self,
        i: usize,
        len: usize,
        truncated: bool,
        namelen: usize,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
        out: &mut PollOutcome,
    ) {
        if truncated || len > self.buf_size {
            self.stats.truncated += 1;
            return;
        }
        let name = &self.recv_names[i][..namelen.min(NAME_LEN)];
        match sockaddr::decode(name) {
            Some(from) => {
                let off = i * self.buf_size;
                on_recv(from, &self.recv_buf[off..off + len]);
                self.stats.received += 1;
                out.received += 1;
            }
            None => self.stats.recv_errors += 1,
        }
    }

    fn recv_many(
        &mut self,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
        out: &mut PollOutcome,
    ) -> io::Result<usize> {
        for k in 0..self.batch {
            self.iovs[k] = libc::iovec {
                iov_base: self.recv_buf[k * self.buf_size..].as_mut_ptr().cast(),
                iov_len: self.buf_size,
            };
            let h = &mut self.hdrs[k];
            h.msg_hdr.msg_name = self.recv_names[k].as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs[..batch] point into recv_buf/recv_names/iovs, each sized for
        // `batch` entries of the lengths given; nothing else touches them during the call.
        let rc = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.batch as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(last_err());
        }
        let n = rc as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            let (len, trunc, namelen) = (
                h.msg_len as usize,
                h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                h.msg_hdr.msg_namelen as usize,
            );
            self.deliver(i, len, trunc, namelen, on_recv, out);
        }
        Ok(n)
    }

    fn recv_one(
        &mut self,
        on_recv: &mut dyn FnMut(SocketAddr, &[u8]),
        out: &mut PollOutcome,
    ) -> io::Result<usize> {
        let mut namelen = NAME_LEN as libc::socklen_t;
        // SAFETY: the buffer and name are our own slices with the lengths passed; with
        // MSG_TRUNC the kernel still writes at most buf_size bytes but returns the real
        // datagram length, which is how truncation is detected.
        let rc = unsafe {
            libc::recvfrom(
                self.sock.as_raw_fd(),
                self.recv_buf.as_mut_ptr().cast(),
                self.buf_size,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                self.recv_names[0].as_mut_ptr().cast(),
                &mut namelen,
            )
        };
        if rc < 0 {
            return Err(last_err());
        }
        self.deliver(0, rc as usize, false, namelen as usize, on_recv, out);
        Ok(1)
    }

    /// Sleeps until the socket is ready for `events` or `timeout` passes; false on timeout
    /// or signal.
    fn wait_fd_ready(
        &mut self,
        events: libc::c_short,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let ms = match timeout {
            None => -1,
            // Round up so that a sub-millisecond wait does not become a busy loop.
            Some(t) => {
                libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one pollfd on our stack, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        self.stats.syscalls += 1;
        if rc < 0 {
            let e = last_err();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(rc > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(batch: usize, buf_size: usize) -> IoOptions {
        IoOptions {
            backend: super::super::BackendChoice::Fallback,
            batch,
            buf_size,
            ring_entries: 64,
            sock_buf_bytes: 1 << 20,
            uring_multishot: true,
        }
    }

    fn open(batch: usize, buf_size: usize, plain: bool) -> MmsgIo {
        let sock = super::super::socket::open("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let mut io = MmsgIo::new(sock, &opts(batch, buf_size)).unwrap();
        io.plain = plain;
        io
    }

    /// Sends `count` numbered datagrams a -> b and collects them at b, bounded in time.
    fn exchange(a: &mut MmsgIo, b: &mut MmsgIo, count: usize, size: usize) -> Vec<Vec<u8>> {
        let to = b.local_addr();
        for n in 0..count {
            let mut d = vec![(n % 251) as u8; size];
            d[0] = n as u8;
            a.push_send(&[to], size, |buf| buf.copy_from_slice(&d))
                .unwrap();
        }
        a.flush().unwrap();
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(5);
        while got.len() < count && Instant::now() < end {
            let mut cb = |from: SocketAddr, p: &[u8]| {
                assert_eq!(from, a.local_addr());
                got.push(p.to_vec());
            };
            b.submit_and_poll(Some(Duration::from_millis(50)), &mut cb)
                .unwrap();
        }
        got
    }

    #[test]
    fn plain_syscalls_carry_datagrams_and_flag_truncation() {
        let mut a = open(4, 2000, true);
        let mut b = open(4, 1000, true);
        let got = exchange(&mut a, &mut b, 10, 900);
        assert_eq!(got.len(), 10);
        for (n, d) in got.iter().enumerate() {
            assert_eq!(d.len(), 900);
            assert_eq!(d[0], n as u8);
            assert!(d[1..].iter().all(|&x| x == (n % 251) as u8));
        }
        assert_eq!(a.stats().sent, 10);
        // 1500 > b's 1000-byte buffers: counted, not delivered; the next one still is.
        let to = b.local_addr();
        a.push_send(&[to], 1500, |buf| buf.fill(1)).unwrap();
        let got = exchange(&mut a, &mut b, 1, 7);
        assert_eq!(got, vec![vec![0u8; 7]]);
        assert_eq!(b.stats().truncated, 1);
        assert!(b.plain && a.plain);
    }
}
