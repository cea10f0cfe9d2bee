//! The blocking client: one socket, one [`Session`], calls that wait.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use conclave_control::wire::client::{DaemonFrame, Service};

use crate::address::{Address, IntoAddress};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::session::Session;

/// How long `connect` waits for the daemon's welcome.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Connection::status`] waits for the answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// The smallest read timeout the OS accepts (zero would mean "forever").
const MIN_WAIT: Duration = Duration::from_micros(1);

#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn open(addr: &Address) -> io::Result<Stream> {
        Ok(match addr {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
            Address::Tcp(hp) => {
                let addrs = Address::resolve_tcp(hp)?;
                let s = TcpStream::connect(&addrs[..])?;
                // Frames are batched by us; Nagle would only add latency to small requests.
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }

    fn sock_ref(&self) -> socket2::SockRef<'_> {
        match self {
            Stream::Unix(s) => socket2::SockRef::from(s),
            Stream::Tcp(s) => socket2::SockRef::from(s),
        }
    }
}

/// A blocking connection to a daemon.
///
/// Requests (`join`, `multicast`, ...) are written at once; the `*_buffered` variants
/// only queue, and [`Connection::flush`] (or a full batch) writes them in one go.
/// Deliveries are read in large chunks and handed out one per [`Connection::receive`],
/// or all at once, borrowed, by [`Connection::receive_frames`].
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    session: Session,
    address: Address,
    /// The read timeout last set on the socket, to skip redundant system calls.
    read_timeout: Option<Duration>,
}

impl Connection {
    /// Connects and lets the daemon pick a private name.
    pub fn connect(addr: impl IntoAddress) -> Result<Connection> {
        Self::connect_as(addr, "")
    }

    /// Connects asking for the private name `#name#daemon`.
    pub fn connect_as(addr: impl IntoAddress, name: &str) -> Result<Connection> {
        let address = addr.into_address()?;
        let session = Session::new(name)?;
        let stream = Stream::open(&address)?;
        let mut conn = Connection {
            stream,
            session,
            address,
            read_timeout: None,
        };
        // A daemon that refuses on accept (TooManyClients) writes its Refused and closes
        // before reading our hello, so the write may fail although the answer that says
        // why is waiting in our receive buffer: read it before reporting the write.
        let sent = conn.flush();
        let deadline = Instant::now() + WELCOME_TIMEOUT;
        loop {
            match conn.session.handle_welcome() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Err(e),
            }
            match conn.fill(remaining(deadline)) {
                Ok(true) => {}
                Ok(false) => {
                    sent?;
                    return Err(Error::Timeout("the daemon's welcome"));
                }
                Err(e) => return Err(sent.err().unwrap_or(e)),
            }
        }
        sent?;
        Ok(conn)
    }

    /// The daemon this connection goes to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// This client's private name, `#user#daemon`; a multicast to it reaches only us.
    pub fn private_name(&self) -> &str {
        self.session.private_name()
    }

    /// The daemon's name.
    pub fn daemon_name(&self) -> &str {
        self.session.daemon_name()
    }

    /// Largest payload the daemon accepts.
    pub fn max_payload(&self) -> usize {
        self.session.max_payload()
    }

    /// The id of the request queued last (join, leave, multicast, status): an
    /// [`crate::Event::Error`] whose `request` equals it answers that request.
    pub fn last_request(&self) -> u32 {
        self.session.last_request()
    }

    /// Why the stream is over (the daemon's goodbye, or that it closed without one), once
    /// a read has seen it end; `None` while it is open.
    pub fn closed_reason(&self) -> Option<&str> {
        self.session.closed_reason()
    }

    /// Answers the pending FlushRequest of Virtual Synchrony group `group`: what was sent
    /// to it before this call is delivered in the current view. Until the group's next
    /// view arrives, multicasts naming it fail with [`Error::Flushing`]. Fails with
    /// [`Error::NoFlushRequest`] when no request waits for an answer.
    pub fn flush_ok(&mut self, group: &str) -> Result<()> {
        self.session.flush_ok(group)?;
        self.flush()
    }

    /// Answer every FlushRequest automatically, as soon as the sends queued before it
    /// are handed to the daemon (`true`), or leave them to [`Connection::flush_ok`]
    /// (`false`, the default). [`Event::FlushRequest`] is delivered either way.
    pub fn set_auto_flush_ok(&mut self, on: bool) {
        self.session.set_auto_flush_ok(on);
    }

    /// Joins a group (created on first join); the membership notification follows.
    pub fn join(&mut self, group: &str) -> Result<()> {
        self.session.join(group)?;
        self.flush()
    }

    /// Leaves a group.
    pub fn leave(&mut self, group: &str) -> Result<()> {
        self.session.leave(group)?;
        self.flush()
    }

    /// Sends a message to one or more groups or private names, now.
    pub fn multicast<S: AsRef<str>>(
        &mut self,
        service: Service,
        groups: &[S],
        msg_type: u16,
        payload: &[u8],
    ) -> Result<()> {
        self.session.multicast(service, groups, msg_type, payload)?;
        self.flush()
    }

    /// Queues a message; it goes out with the next [`Connection::flush`] or once a batch
    /// fills (so a stream of small messages costs few system calls).
    ///
    /// Writes block while the daemon's socket buffer is full. A client that floods a group
    /// it belongs to gets its own messages back and must read them too (e.g. with
    /// [`Connection::receive_frames`] between batches): the daemon disconnects clients
    /// whose unread output passes its queue limit.
    pub fn multicast_buffered<S: AsRef<str>>(
        &mut self,
        service: Service,
        groups: &[S],
        msg_type: u16,
        payload: &[u8],
    ) -> Result<()> {
        self.session.multicast(service, groups, msg_type, payload)?;
        if self.session.should_flush() {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends a message to one client by its private name.
    pub fn send_to(
        &mut self,
        private_name: &str,
        service: Service,
        msg_type: u16,
        payload: &[u8],
    ) -> Result<()> {
        if !conclave_control::wire::names::is_private_name(private_name) {
            return Err(Error::BadPrivateName(private_name.to_owned()));
        }
        self.multicast(service, &[private_name], msg_type, payload)
    }

    /// Asks the kernel for socket buffers of these sizes (bytes; the kernel caps them at
    /// `net.core.wmem_max` / `rmem_max`) and returns the sizes it granted.
    ///
    /// Larger buffers let a fast sender or receiver move more per system call.
    pub fn set_socket_buffers(&mut self, send: usize, recv: usize) -> Result<(usize, usize)> {
        let sock = self.stream.sock_ref();
        sock.set_send_buffer_size(send)?;
        sock.set_recv_buffer_size(recv)?;
        Ok((sock.send_buffer_size()?, sock.recv_buffer_size()?))
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<()> {
        while !self.session.output().is_empty() {
            match self.stream.write(self.session.output()) {
                Ok(0) => {
                    self.session.mark_eof();
                    return Err(self.session.closed_error());
                }
                Ok(n) => self.session.consumed_output(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) => {
                    self.session.mark_eof();
                    return Err(self.session.closed_error());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn buffered_output(&self) -> usize {
        self.session.output().len()
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` when none came in time.
    ///
    /// After a [`Event::Goodbye`] (or end of stream) it fails with [`Error::Closed`].
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        // The first wait is the caller's timeout as given, so a steady caller's socket
        // option stays unchanged and costs no system call.
        let mut wait = timeout;
        loop {
            if let Some(event) = self.session.next_event()? {
                if self.session.take_auto_answered() {
                    self.flush()?;
                }
                return Ok(Some(event));
            }
            if self.session.closed_reason().is_some() {
                return Err(self.session.closed_error());
            }
            if !self.fill(wait)? {
                return Ok(None);
            }
            wait = remaining(deadline);
        }
    }

    /// Waits up to `timeout` for input, then hands every whole frame read so far to `f`,
    /// borrowed from the read buffer (no allocation per message).
    ///
    /// Returns the number of frames handed out (0 on timeout). Frames are the raw daemon
    /// frames: data, membership, error, status, goodbye and flush request (tracked for
    /// [`Connection::flush_ok`] and answered here in automatic mode).
    pub fn receive_frames(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&DaemonFrame<'_>),
    ) -> Result<usize> {
        if !self.session.has_frame() {
            if self.session.closed_reason().is_some() {
                return Err(self.session.closed_error());
            }
            // One read is enough: a big read usually carries many frames, and a partial
            // frame waits for the next call.
            self.fill(timeout)?;
        }
        let n = self.session.drain_frames(f)?;
        if self.session.take_auto_answered() {
            self.flush()?;
        }
        Ok(n)
    }

    /// Asks the daemon for its status (clients, groups, counters) as JSON text; events that
    /// arrive meanwhile are kept for later `receive` calls.
    pub fn status(&mut self) -> Result<String> {
        self.status_timeout(STATUS_TIMEOUT)
    }

    /// As [`Connection::status`], waiting at most `timeout`.
    pub fn status_timeout(&mut self, timeout: Duration) -> Result<String> {
        self.session.status_request();
        self.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(json) = self.session.take_status()? {
                return Ok(json);
            }
            if self.session.closed_reason().is_some() {
                return Err(self.session.closed_error());
            }
            if !self.fill(remaining(deadline))? {
                return Err(Error::Timeout("the daemon's status"));
            }
        }
    }

    /// Says goodbye and closes the connection.
    pub fn disconnect(mut self) -> Result<()> {
        self.session.disconnect();
        let flushed = self.flush();
        // The daemon may already have closed its side; either way we are done.
        let _ = self.stream.shutdown();
        match flushed {
            Err(Error::Closed { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads once, waiting at most `wait`. Returns false on timeout.
    fn fill(&mut self, wait: Duration) -> Result<bool> {
        let wait = wait.max(MIN_WAIT);
        if self.read_timeout != Some(wait) {
            self.stream.set_read_timeout(Some(wait))?;
            self.read_timeout = Some(wait);
        }
        loop {
            let space = self.session.read_space();
            match self.stream.read(space) {
                Ok(0) => {
                    self.session.mark_eof();
                    return Err(self.session.closed_error());
                }
                Ok(n) => {
                    self.session.filled(n);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ok(false);
                }
                Err(e) if is_reset(&e) => {
                    self.session.mark_eof();
                    return Err(self.session.closed_error());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    //! The blocking front end over a scripted fake daemon: framing and timeouts only;
    //! daemon behaviour is tested against the real daemon in tests/.
    use super::*;
    use conclave_control::wire::client::{
        ClientFrame, ErrorCode, RefuseCode, decode_client, encode, max_frame_len, split_frame,
    };
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    /// Reads client frames off `s` until `n` whole frames arrived; returns their kinds.
    fn read_client_frames(s: &mut UnixStream, n: usize) -> Vec<String> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        while out.len() < n {
            while let Some((body, used)) = split_frame(&buf, max_frame_len(1 << 20)).unwrap() {
                let f = decode_client(body).unwrap();
                out.push(match f {
                    ClientFrame::Hello { name, .. } => format!("hello {name}"),
                    ClientFrame::Join { group, .. } => format!("join {group}"),
                    ClientFrame::Multicast { payload, .. } => format!("mcast {}", payload.len()),
                    ClientFrame::StatusRequest { .. } => "status".into(),
                    ClientFrame::Disconnect => "disconnect".into(),
                    other => format!("{other:?}"),
                });
                buf.drain(..used);
            }
            if out.len() >= n {
                break;
            }
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0, "client closed early; got {out:?}");
            buf.extend_from_slice(&chunk[..k]);
        }
        out
    }

    fn fake(
        script: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, Address, JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            script(s);
        });
        (dir, Address::Unix(path), handle)
    }

    fn welcome(s: &mut UnixStream) {
        assert_eq!(read_client_frames(s, 1), ["hello bob"]);
        let mut w = Vec::new();
        encode::welcome(&mut w, "#bob#fake", "fake", 4096);
        s.write_all(&w).unwrap();
    }

    #[test]
    fn batches_timeouts_status_and_goodbye() {
        let (_dir, addr, fake) = fake(|mut s| {
            welcome(&mut s);
            let got = read_client_frames(&mut s, 102);
            assert_eq!(got[0], "join g");
            assert!(got[1..101].iter().all(|f| f == "mcast 100"), "{got:?}");
            assert_eq!(got[101], "status");
            // Deliveries and the status answer, written byte by byte in places.
            let mut w = Vec::new();
            for i in 0..50u16 {
                encode::data_to(&mut w, "#x#fake", ["g"], Service::Fifo, i, b"abc");
            }
            encode::error(&mut w, 0, ErrorCode::NotJoined, "nope");
            encode::status(&mut w, "{\"ok\":true}");
            for i in 50..60u16 {
                encode::data_to(&mut w, "#x#fake", ["g"], Service::Fifo, i, b"abc");
            }
            let (a, b) = w.split_at(7);
            s.write_all(a).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b).unwrap();
            let mut bye = Vec::new();
            encode::goodbye(&mut bye, "fake daemon closing");
            assert_eq!(read_client_frames(&mut s, 1), ["status"]);
            s.write_all(&bye).unwrap();
        });
        let mut c = Connection::connect_as(&addr, "bob").unwrap();
        assert_eq!(c.private_name(), "#bob#fake");
        assert_eq!(c.max_payload(), 4096);
        let (snd, rcv) = c.set_socket_buffers(64 << 10, 64 << 10).unwrap();
        assert!(snd >= 64 << 10 && rcv >= 64 << 10, "granted {snd} / {rcv}");
        assert!(matches!(
            c.multicast(Service::Agreed, &["g"], 0, &[0; 4097]),
            Err(Error::TooLarge { .. })
        ));
        c.join("g").unwrap();
        for _ in 0..100 {
            c.multicast_buffered(Service::Agreed, &["g"], 0, &[1; 100])
                .unwrap();
        }
        assert!(c.buffered_output() > 0, "buffered sends wait for flush");
        c.flush().unwrap();
        assert_eq!(c.status().unwrap(), "{\"ok\":true}");
        // The 50 deliveries before the status answer were kept, in order.
        for i in 0..50u16 {
            match c.receive(Duration::from_secs(5)).unwrap() {
                Some(Event::Data { msg_type, .. }) => assert_eq!(msg_type, i),
                other => panic!("expected data {i}, got {other:?}"),
            }
        }
        assert!(matches!(
            c.receive(Duration::from_secs(5)).unwrap(),
            Some(Event::Error {
                code: ErrorCode::NotJoined,
                ..
            })
        ));
        let mut types = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while types.len() < 10 && Instant::now() < deadline {
            c.receive_frames(Duration::from_millis(100), |f| {
                if let DaemonFrame::Data { msg_type, .. } = f {
                    types.push(*msg_type);
                }
            })
            .unwrap();
        }
        assert_eq!(types, (50..60).collect::<Vec<u16>>());
        let t0 = Instant::now();
        assert_eq!(c.receive(Duration::from_millis(100)).unwrap(), None);
        assert!(
            t0.elapsed() >= Duration::from_millis(90),
            "waits for the timeout"
        );
        c.session.status_request();
        c.flush().unwrap();
        match c.receive(Duration::from_secs(5)).unwrap() {
            Some(Event::Goodbye { reason }) => assert_eq!(reason, "fake daemon closing"),
            other => panic!("expected goodbye, got {other:?}"),
        }
        match c.receive(Duration::from_secs(5)) {
            Err(Error::Closed { reason }) => assert_eq!(reason, "fake daemon closing"),
            other => panic!("expected closed, got {other:?}"),
        }
        fake.join().unwrap();
    }

    #[test]
    fn refusal_and_silence_at_connect() {
        let (_dir, addr, fake1) = fake(|mut s| {
            read_client_frames(&mut s, 1);
            let mut w = Vec::new();
            encode::refused(&mut w, RefuseCode::TooManyClients, "full");
            s.write_all(&w).unwrap();
        });
        match Connection::connect_as(&addr, "bob") {
            Err(Error::Refused { code, reason }) => {
                assert_eq!(code, RefuseCode::TooManyClients);
                assert_eq!(reason, "full");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        fake1.join().unwrap();
        let (_dir, addr, fake2) = fake(|mut s| {
            read_client_frames(&mut s, 1);
            // Hang up without a word.
        });
        assert!(matches!(
            Connection::connect_as(&addr, "bob"),
            Err(Error::Closed { .. })
        ));
        fake2.join().unwrap();
    }
}
