//! Batched UDP between daemons: an io_uring backend and a `sendmmsg`/`recvmmsg` fallback.
//!
//! This is the one module of the project allowed to use `unsafe`: the kernel shares memory
//! with us (submission and completion rings, a provided-buffer ring, datagram buffers) and
//! every place where that sharing has to be reasoned about carries a `SAFETY:` comment.
//!
//! # Shape
//!
//! [`UdpIo::bind`] opens one UDP socket and, for the io_uring backend, one ring with a pool
//! of receive buffers registered with the kernel at start (a provided-buffer ring fed to
//! one multishot `RecvMsg`; on kernels before 6.0, or with
//! [`IoOptions::uring_multishot`] off, one plain `RecvMsg` per pooled buffer) and a pool of
//! send buffers. The completion queue is sized so that it cannot overflow (every
//! completion holds a pooled buffer), and drop cancels the receive and waits for every
//! completion before the memory goes (or leaks it if the kernel does not answer). [`IoOptions::backend`] picks the
//! backend: [`BackendChoice::Auto`] tries io_uring and falls back to `sendmmsg`/`recvmmsg`
//! (logging why with `tracing`) when the ring cannot be set up or lacks what we need;
//! [`UdpIo::backend`] says which one runs.
//!
//! # Intended worker loop
//!
//! A data-plane worker reads the clock once per cycle and does all of its UDP I/O in one
//! batch. Sends are queued with [`UdpIo::push_send`] (copies into a pooled buffer) or
//! [`UdpIo::push_send_with`] (the caller writes straight into the pooled buffer), and one
//! datagram for several peers with [`UdpIo::push_multicast_with`] (written once, every
//! send reading the same pooled buffer); queuing
//! never makes a system call unless `batch` sends are already waiting (so a `batch` at
//! least as large as a cycle's sends gives exactly one system call per cycle). Then
//! [`UdpIo::submit_and_poll`] hands every queued send (and, for io_uring, a receive re-arm
//! when one is needed) to the kernel in one system call and calls `on_recv` for every
//! datagram that has arrived; each receive buffer goes back to the pool as soon as the
//! callback returns.
//!
//! The worker also polls client sockets with mio. To sleep in one place it registers
//! [`UdpIo::wait_fd`] (the ring's fd for io_uring, which turns readable when completions
//! are posted; the socket for the fallback) with its `mio::Poll` as
//! `mio::unix::SourceFd`, `Interest::READABLE`, and drives the UDP side non-blocking:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use conclave_engine::io::{IoOptions, UdpIo};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut udp = UdpIo::bind("127.0.0.1:0".parse()?, IoOptions::default())?;
//! let mut poll = mio::Poll::new()?;
//! let fd = udp.wait_fd();
//! poll.registry().register(&mut mio::unix::SourceFd(&fd), mio::Token(0), mio::Interest::READABLE)?;
//! let mut events = mio::Events::with_capacity(64);
//! let peer = "127.0.0.1:7000".parse()?;
//! loop {
//!     // let now = Instant::now(); ... protocol work decides what to send ...
//!     udp.push_send(peer, b"token")?;
//!     // One system call: queued sends out, every arrived datagram in.
//!     let out = udp.submit_and_poll(Some(Duration::ZERO), |from, bytes| {
//!         let _ = (from, bytes); // feed the ordering core
//!     })?;
//!     if out.more {
//!         continue; // the budget of one call ran out with datagrams still waiting
//!     }
//!     // Sleep until a client socket, the UDP side or the next timer needs us. mio is
//!     // edge-triggered, which is fine: `submit_and_poll` has drained everything that was
//!     // ready unless it said `more`.
//!     poll.poll(&mut events, Some(Duration::from_millis(1)))?;
//! #   break;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A worker without mio can instead pass a timeout to `submit_and_poll`, which then sleeps
//! in the kernel (inside the same `io_uring_enter` for io_uring) until a datagram arrives.
//!
//! Create a `UdpIo` anywhere and move it to its worker (it is `Send`), but drive it from
//! that one thread: the kernel runs an io_uring receive's work on the thread that armed
//! it, so `bind` only proves the receive can be armed and withdraws it again, and the
//! first `submit_and_poll` arms it on the calling thread. Datagrams that arrive before
//! then wait in the socket buffer (`sock_buf_bytes`).

// Every unsafe block here must say why it holds; let the linter hold us to it.
#![deny(clippy::undocumented_unsafe_blocks)]

mod mem;
mod mmsg;
mod sockaddr;
mod socket;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Which backend the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring when the kernel accepts it and has what we need, else the fallback.
    /// Setting the environment variable `CONCLAVE_IO_URING=off` makes `Auto` treat
    /// io_uring as refused (an operator's switch that needs no config change).
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// The `sendmmsg`/`recvmmsg` backend, even where io_uring works.
    Fallback,
}

/// Which backend a [`UdpIo`] actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One io_uring with a provided-buffer ring and a multishot `RecvMsg`.
    Uring,
    /// `sendmmsg`/`recvmmsg` on a non-blocking socket (plain `sendto`/`recvfrom` if the
    /// kernel refuses those).
    Mmsg,
}

/// How to open a [`UdpIo`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct IoOptions {
    /// Backend to use.
    pub backend: BackendChoice,
    /// Most sends handed to the kernel per system call, and most datagrams received per
    /// `recvmmsg` call by the fallback. Reaching it while queuing flushes early.
    pub batch: usize,
    /// Largest datagram sent or received, in bytes. Larger incoming datagrams are dropped
    /// and counted in [`IoStats::truncated`].
    pub buf_size: usize,
    /// Submission-queue entries of the ring; also the number of pooled receive buffers
    /// (rounded up to a power of two) and of pooled send buffers.
    pub ring_entries: u32,
    /// `SO_RCVBUF`/`SO_SNDBUF` to ask for, in bytes; 0 keeps the system default.
    pub sock_buf_bytes: usize,
    /// io_uring only: receive with one multishot `RecvMsg` over a provided-buffer ring
    /// where the kernel has them (6.0+). `false`, or a kernel without them, queues one
    /// plain `RecvMsg` per pooled receive buffer instead.
    pub uring_multishot: bool,
}

impl Default for IoOptions {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            batch: 32,
            buf_size: 65536,
            ring_entries: 256,
            sock_buf_bytes: 4 << 20,
            uring_multishot: true,
        }
    }
}

/// Environment variable that, set to `off`, keeps [`BackendChoice::Auto`] off io_uring.
pub const DISABLE_ENV: &str = "CONCLAVE_IO_URING";

/// Largest UDP payload over IPv4/IPv6 without jumbograms.
pub const MAX_DATAGRAM: usize = 65507;

/// Counters kept by a [`UdpIo`]; they only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// Sends the kernel refused (the error is logged at debug level).
    pub send_errors: u64,
    /// Sends dropped by the fallback because the socket stayed full.
    pub send_dropped: u64,
    /// Datagrams handed to `on_recv`.
    pub received: u64,
    /// Incoming datagrams longer than `buf_size`, dropped.
    pub truncated: u64,
    /// Receive errors reported by the kernel.
    pub recv_errors: u64,
    /// Times the io_uring multishot receive ran out of pooled buffers and was re-armed.
    pub recv_no_buffers: u64,
    /// Completions the kernel had to drop because the completion queue overflowed.
    pub cq_overflow: u64,
    /// System calls that submitted, waited for or performed I/O.
    pub syscalls: u64,
}

/// What one [`UdpIo::submit_and_poll`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Datagrams handed to `on_recv`.
    pub received: usize,
    /// Datagrams may still be waiting because the call stopped at its budget; call again
    /// before sleeping on [`UdpIo::wait_fd`].
    pub more: bool,
}

/// Errors of the UDP I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The socket could not be created or bound.
    #[error("cannot bind UDP socket to {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// io_uring was asked for explicitly and cannot be used here.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(String),
    /// The options cannot work.
    #[error("invalid I/O options: {0}")]
    InvalidOptions(&'static str),
    /// A datagram to send is longer than `buf_size`.
    #[error("datagram of {len} bytes exceeds the buffer size of {max}")]
    TooLarge {
        /// Bytes asked for.
        len: usize,
        /// `buf_size`.
        max: usize,
    },
    /// A system call failed in a way the layer cannot absorb.
    #[error("UDP I/O: {0}")]
    Os(#[from] io::Error),
}

enum Inner {
    Uring(Box<uring::UringIo>),
    Mmsg(Box<mmsg::MmsgIo>),
}

/// A UDP socket with batched sends and receives over io_uring or `sendmmsg`/`recvmmsg`.
pub struct UdpIo {
    inner: Inner,
    fallback_reason: Option<String>,
}

impl std::fmt::Debug for UdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpIo")
            .field("backend", &self.backend())
            .field("local_addr", &self.local_addr())
            .field("fallback_reason", &self.fallback_reason)
            .finish()
    }
}

impl UdpIo {
    /// Binds a UDP socket to `addr` and sets up the backend `opts.backend` asks for.
    pub fn bind(addr: SocketAddr, opts: IoOptions) -> Result<Self, IoError> {
        validate(&opts)?;
        let sock = socket::open(addr, opts.sock_buf_bytes)?;
        match opts.backend {
            BackendChoice::Fallback => Ok(Self::mmsg(sock, &opts, None)?),
            BackendChoice::Uring => {
                let ring = uring::UringIo::new(sock, &opts).map_err(IoError::UringUnavailable)?;
                Ok(Self {
                    inner: Inner::Uring(Box::new(ring)),
                    fallback_reason: None,
                })
            }
            BackendChoice::Auto => {
                if std::env::var_os(DISABLE_ENV).is_some_and(|v| v == "off") {
                    let why = format!("disabled by {DISABLE_ENV}=off");
                    tracing::warn!(reason = %why, "io_uring refused, using sendmmsg/recvmmsg");
                    return Self::mmsg(sock, &opts, Some(why));
                }
                // A second handle on the socket, kept for the fallback: a half-built ring
                // closes its own handle when dropped.
                let spare = sock.try_clone()?;
                match uring::UringIo::new(sock, &opts) {
                    Ok(ring) => Ok(Self {
                        inner: Inner::Uring(Box::new(ring)),
                        fallback_reason: None,
                    }),
                    Err(why) => {
                        tracing::warn!(reason = %why, "io_uring refused, using sendmmsg/recvmmsg");
                        Self::mmsg(spare, &opts, Some(why))
                    }
                }
            }
        }
    }

    fn mmsg(
        sock: std::net::UdpSocket,
        opts: &IoOptions,
        reason: Option<String>,
    ) -> Result<Self, IoError> {
        Ok(Self {
            inner: Inner::Mmsg(Box::new(mmsg::MmsgIo::new(sock, opts)?)),
            fallback_reason: reason,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Uring(_) => Backend::Uring,
            Inner::Mmsg(_) => Backend::Mmsg,
        }
    }

    /// For io_uring, whether receives use the multishot `RecvMsg` (else one `RecvMsg` per
    /// buffer); `None` for the fallback.
    pub fn uring_multishot(&self) -> Option<bool> {
        match &self.inner {
            Inner::Uring(u) => Some(u.multishot()),
            Inner::Mmsg(_) => None,
        }
    }

    /// Why `Auto` did not get io_uring, if it did not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Uring(u) => u.local_addr(),
            Inner::Mmsg(m) => m.local_addr(),
        }
    }

    /// Largest datagram this socket sends or accepts.
    pub fn buf_size(&self) -> usize {
        match &self.inner {
            Inner::Uring(u) => u.buf_size(),
            Inner::Mmsg(m) => m.buf_size(),
        }
    }

    /// Queues a copy of `bytes` for `dest`. No system call unless `batch` sends are queued
    /// already (then they go out first) or, for io_uring, every pooled send buffer is still
    /// with the kernel (then it waits for one).
    pub fn push_send(&mut self, dest: SocketAddr, bytes: &[u8]) -> Result<(), IoError> {
        self.push_send_with(dest, bytes.len(), |buf| buf.copy_from_slice(bytes))
    }

    /// Queues a datagram of `len` bytes for `dest` that `fill` writes straight into a pooled
    /// buffer (exactly `len` bytes long), saving the copy of [`UdpIo::push_send`].
    pub fn push_send_with(
        &mut self,
        dest: SocketAddr,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), IoError> {
        if len > self.buf_size() {
            return Err(IoError::TooLarge {
                len,
                max: self.buf_size(),
            });
        }
        self.push_multicast_with(&[dest], len, fill)
    }

    /// Queues a copy of `bytes` for every address in `dests`, copying it once (see
    /// [`UdpIo::push_multicast_with`]).
    pub fn push_multicast(&mut self, dests: &[SocketAddr], bytes: &[u8]) -> Result<(), IoError> {
        self.push_multicast_with(dests, bytes.len(), |buf| buf.copy_from_slice(bytes))
    }

    /// Queues one datagram of `len` bytes for every address in `dests`; `fill` writes it
    /// once, straight into one pooled buffer (exactly `len` bytes long), and every send
    /// reads that same buffer, which goes back to the pool only when all of them have
    /// completed. `fill` is not called when `dests` is empty. A `dests` longer than the
    /// pool (`ring_entries` send slots for io_uring, `batch` for the fallback) costs one
    /// extra copy per destination instead.
    pub fn push_multicast_with(
        &mut self,
        dests: &[SocketAddr],
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), IoError> {
        if len > self.buf_size() {
            return Err(IoError::TooLarge {
                len,
                max: self.buf_size(),
            });
        }
        if dests.is_empty() {
            return Ok(());
        }
        let fanout = match &self.inner {
            Inner::Uring(u) => u.max_fanout(),
            Inner::Mmsg(m) => m.max_fanout(),
        };
        if dests.len() > fanout {
            let mut tmp = vec![0; len];
            fill(&mut tmp);
            for chunk in dests.chunks(fanout) {
                self.push_fanout(chunk, len, |buf| buf.copy_from_slice(&tmp))?;
            }
            return Ok(());
        }
        self.push_fanout(dests, len, fill)
    }

    /// `dests` is 1..=the backend's fan-out long and `len` fits a buffer.
    fn push_fanout(
        &mut self,
        dests: &[SocketAddr],
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), IoError> {
        match &mut self.inner {
            Inner::Uring(u) => u.push_send(dests, len, fill),
            Inner::Mmsg(m) => m.push_send(dests, len, fill),
        }
    }

    /// Sends queued but not yet handed to the kernel.
    pub fn queued_sends(&self) -> usize {
        match &self.inner {
            Inner::Uring(u) => u.queued_sends(),
            Inner::Mmsg(m) => m.queued_sends(),
        }
    }

    /// Hands every queued send to the kernel and calls `on_recv(from, payload)` for every
    /// datagram that has arrived, in one system call in the common case.
    ///
    /// `timeout`: `Some(Duration::ZERO)` never sleeps; `Some(t)` sleeps up to `t` when no
    /// datagram is ready; `None` sleeps until one is. It returns early with
    /// `received == 0` on a signal.
    pub fn submit_and_poll(
        &mut self,
        timeout: Option<Duration>,
        mut on_recv: impl FnMut(SocketAddr, &[u8]),
    ) -> Result<PollOutcome, IoError> {
        match &mut self.inner {
            Inner::Uring(u) => u.submit_and_poll(timeout, &mut on_recv),
            Inner::Mmsg(m) => m.submit_and_poll(timeout, &mut on_recv),
        }
    }

    /// Hands queued sends to the kernel without looking at receives.
    pub fn flush(&mut self) -> Result<(), IoError> {
        match &mut self.inner {
            Inner::Uring(u) => u.flush(),
            Inner::Mmsg(m) => m.flush(),
        }
    }

    /// The fd to register (readable interest) with the worker's poller so it can sleep in
    /// one place: the ring for io_uring, the socket for the fallback.
    pub fn wait_fd(&self) -> RawFd {
        match &self.inner {
            Inner::Uring(u) => u.wait_fd(),
            Inner::Mmsg(m) => m.wait_fd(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> IoStats {
        match &self.inner {
            Inner::Uring(u) => u.stats(),
            Inner::Mmsg(m) => m.stats(),
        }
    }
}

impl AsRawFd for UdpIo {
    /// Same as [`UdpIo::wait_fd`].
    fn as_raw_fd(&self) -> RawFd {
        self.wait_fd()
    }
}

fn validate(opts: &IoOptions) -> Result<(), IoError> {
    if opts.batch == 0 || opts.batch > 1024 {
        return Err(IoError::InvalidOptions("batch must be in 1..=1024"));
    }
    if opts.buf_size == 0 || opts.buf_size > MAX_DATAGRAM.next_power_of_two() {
        return Err(IoError::InvalidOptions("buf_size must be in 1..=65536"));
    }
    if opts.ring_entries < 2 || opts.ring_entries > 4096 {
        return Err(IoError::InvalidOptions("ring_entries must be in 2..=4096"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_from_toml_with_defaults_for_the_rest() {
        let o: IoOptions = toml::from_str("backend = \"fallback\"\nbatch = 64\n").unwrap();
        assert_eq!(o.backend, BackendChoice::Fallback);
        assert_eq!(o.batch, 64);
        assert_eq!(o.buf_size, IoOptions::default().buf_size);
        assert!(toml::from_str::<IoOptions>("backend = \"kqueue\"").is_err());
    }

    #[test]
    fn impossible_options_are_refused_before_any_socket() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for bad in [
            IoOptions {
                batch: 0,
                ..IoOptions::default()
            },
            IoOptions {
                buf_size: 0,
                ..IoOptions::default()
            },
            IoOptions {
                buf_size: 70_000,
                ..IoOptions::default()
            },
            IoOptions {
                ring_entries: 1,
                ..IoOptions::default()
            },
            IoOptions {
                ring_entries: 1 << 13,
                ..IoOptions::default()
            },
        ] {
            assert!(matches!(
                UdpIo::bind(addr, bad),
                Err(IoError::InvalidOptions(_))
            ));
        }
    }
}
