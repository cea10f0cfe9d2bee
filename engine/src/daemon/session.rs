//! One client connection: its socket, its read buffer of not-yet-parsed bytes and its
//! output queue of encoded frames. Buffers live as long as the session and are reused, so
//! steady traffic allocates nothing.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;

use conclave_control::wire::client::LEN_PREFIX;
use mio::net::{TcpStream, UnixStream};

/// A client socket of either transport.
#[derive(Debug)]
pub(crate) enum Stream {
    /// A local client on the Unix socket.
    Unix(UnixStream),
    /// A client over TCP.
    Tcp(TcpStream),
}

impl Stream {
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Stream::Unix(_) => "unix",
            Stream::Tcp(_) => "tcp",
        }
    }

    /// Who is on the other end, for log lines: the TCP peer's address, or the Unix
    /// peer's socket path (clients' sockets are usually unnamed).
    pub(crate) fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map_or_else(|e| format!("tcp:?({e})"), |a| a.to_string()),
            Stream::Unix(s) => match s.peer_addr() {
                Ok(a) => a.as_pathname().map_or_else(
                    || "unix:unnamed".to_owned(),
                    |p| format!("unix:{}", p.display()),
                ),
                Err(e) => format!("unix:?({e})"),
            },
        }
    }

    pub(crate) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }

    /// Sends FIN: the peer reads what was sent, then end of stream.
    pub(crate) fn shutdown_write(&self) {
        let result = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
        if let Err(e) = result {
            tracing::debug!("shutdown(write) failed: {e}");
        }
    }

    /// Reads and throws away whatever the peer sent (bounded); true once it closed.
    pub(crate) fn discard_input(&mut self, scratch: &mut [u8]) -> bool {
        for _ in 0..16 {
            match self.read(scratch) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Applies the profile's socket buffer sizes (best effort: the kernel caps them; 0
    /// keeps the kernel's default).
    pub(crate) fn tune(&self, send: usize, recv: usize) {
        let sock = match self {
            Stream::Unix(s) => socket2::SockRef::from(s),
            Stream::Tcp(s) => {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY refused: {e}");
                }
                socket2::SockRef::from(s)
            }
        };
        if send > 0
            && let Err(e) = sock.set_send_buffer_size(send)
        {
            tracing::debug!("SO_SNDBUF {send} refused: {e}");
        }
        if recv > 0
            && let Err(e) = sock.set_recv_buffer_size(recv)
        {
            tracing::debug!("SO_RCVBUF {recv} refused: {e}");
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a session ends (counted, logged, and said in a Goodbye where one is due).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client closed its end or sent Disconnect.
    Client,
    /// A socket error.
    Io(String),
    /// The hello was refused (the Refused frame is queued).
    Refused,
    /// A frame longer than the maximum: the stream cannot be resynchronised.
    TooLarge,
    /// The client fell behind (the Goodbye is queued).
    SlowConsumer,
    /// The client, a member of a Virtual Synchrony group, did not answer a flush request
    /// in time (the Goodbye is queued).
    FlushTimeout,
}

/// A connected client.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) stream: Stream,
    /// Bytes received; `rbuf[..rlen]` is unparsed input. Its length is its usable size.
    pub(crate) rbuf: Vec<u8>,
    pub(crate) rlen: usize,
    /// Encoded frames waiting for the socket; `wbuf[wpos..]` is unsent.
    pub(crate) wbuf: Vec<u8>,
    pub(crate) wpos: usize,
    /// `wbuf[head..]` starts at a frame boundary (bytes before it finish a frame that was
    /// partly sent before the last compaction).
    pub(crate) head: usize,
    /// Set once the hello was accepted.
    pub(crate) welcomed: bool,
    /// Listed in the worker's dirty list this turn.
    pub(crate) dirty: bool,
    /// Listed in the worker's read queue.
    pub(crate) queued_read: bool,
    /// Set when the session must end at the end of this turn.
    pub(crate) closing: Option<CloseReason>,
    /// Since when the output queue has been above the congestion mark.
    pub(crate) congested_since: Option<Instant>,
    pub(crate) frames_in: u64,
    /// When the connection was accepted (for the hello timeout).
    pub(crate) accepted: Instant,
    /// While closing: our side is shut for writing (all last frames are out).
    pub(crate) fin_sent: bool,
    /// While closing: the peer closed its side.
    pub(crate) peer_closed: bool,
    /// Epoll reported the peer's close (or an error) with some edge. The close may have
    /// come in the same edge as the last data, so a short read no longer proves that
    /// nothing is left to learn: only a read of 0 (or an error) does. Without this, a
    /// client that wrote and closed at once kept its slot and name for good.
    pub(crate) hup_seen: bool,
    /// The peer's address, read once at accept (it cannot be read after a reset).
    pub(crate) peer: Box<str>,
    /// Ids of this client's requests submitted for ordering and not yet applied, oldest
    /// first (kept on worker 0 only: the table answers there).
    pub(crate) pending: VecDeque<u32>,
    /// The encoded Welcome, held until the client's Connect has been ordered (then its
    /// private name is known at every daemon).
    pub(crate) welcome: Option<Vec<u8>>,
    /// Flush requests this client has not answered yet: the group, and when it was
    /// asked (it is disconnected once the profile's flush timeout passes).
    pub(crate) flush_waits: Vec<(Box<str>, Instant)>,
}

/// First size of a session's read buffer; it grows (to the profile's read chunk, or to
/// hold one whole frame) only for clients that send that much.
const INITIAL_READ_BUFFER: usize = 16 * 1024;

/// Output capacity an emptied queue keeps; a burst beyond it is given back, so idle
/// clients do not pin the memory of their largest backlog.
const KEEP_WRITE_CAPACITY: usize = 8 << 20;

impl Session {
    pub(crate) fn new(stream: Stream) -> Self {
        Self {
            peer: stream.peer().into(),
            stream,
            rbuf: vec![0; INITIAL_READ_BUFFER],
            rlen: 0,
            wbuf: Vec::new(),
            wpos: 0,
            head: 0,
            welcomed: false,
            dirty: false,
            queued_read: false,
            closing: None,
            congested_since: None,
            frames_in: 0,
            accepted: Instant::now(),
            fin_sent: false,
            peer_closed: false,
            hup_seen: false,
            pending: VecDeque::new(),
            welcome: None,
            flush_waits: Vec::new(),
        }
    }

    /// Output bytes not yet taken by the socket.
    pub(crate) fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Makes room to read: grows the buffer when it is full, to at least `need` bytes (the
    /// whole frame whose prefix is at the front) and otherwise by doubling up to `chunk`.
    pub(crate) fn reserve_read(&mut self, chunk: usize, max_frame: usize) {
        if self.rlen < self.rbuf.len() {
            return;
        }
        let need = if self.rlen >= LEN_PREFIX {
            let p = &self.rbuf[..LEN_PREFIX];
            let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
            LEN_PREFIX + len.min(max_frame)
        } else {
            0
        };
        let grown = (self.rbuf.len() * 2).min(chunk.max(LEN_PREFIX + max_frame));
        let size = need.max(grown).max(self.rbuf.len() + 1);
        self.rbuf.resize(size, 0);
    }

    /// Gives back a read buffer grown for a large frame once it is empty again.
    pub(crate) fn shrink_read(&mut self, chunk: usize) {
        let keep = chunk.max(INITIAL_READ_BUFFER);
        if self.rlen == 0 && self.rbuf.len() > keep {
            self.rbuf.truncate(keep);
            self.rbuf.shrink_to_fit();
        }
    }

    /// Writes queued output: chunks of at most `chunk` bytes until the socket is full.
    /// Returns the bytes written.
    pub(crate) fn flush(&mut self, chunk: usize) -> io::Result<usize> {
        let mut written = 0;
        while self.wpos < self.wbuf.len() {
            let end = self.wbuf.len().min(self.wpos + chunk);
            match self.stream.write(&self.wbuf[self.wpos..end]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wpos += n;
                    written += n;
                    if self.wpos < end {
                        break; // the socket buffer is full; wait for the writable edge
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            self.head = 0;
            if self.wbuf.capacity() > KEEP_WRITE_CAPACITY {
                self.wbuf.shrink_to(KEEP_WRITE_CAPACITY);
            }
        } else if self.wpos >= self.wbuf.len() / 2 {
            // Compact only when the sent part is at least half the buffer, so every byte
            // is moved O(1) times however slowly the socket drains.
            let boundary = self.boundary_at_or_after_wpos();
            self.head = boundary - self.wpos;
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(written)
    }

    /// The first frame boundary in `wbuf` at or after `wpos`.
    fn boundary_at_or_after_wpos(&self) -> usize {
        let mut at = self.head;
        while at < self.wpos {
            let p = &self.wbuf[at..at + LEN_PREFIX];
            at += LEN_PREFIX + u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
        }
        at
    }

    /// Drops queued whole frames that the socket has not started on, keeping the stream
    /// consistent, so that a final frame (a Goodbye) can follow at once.
    pub(crate) fn drop_unsent_frames(&mut self) {
        let boundary = self.boundary_at_or_after_wpos();
        self.wbuf.truncate(boundary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_control::wire::client::{encode, split_frame};

    fn pair() -> (Session, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Session::new(Stream::Unix(UnixStream::from_std(a))), b)
    }

    #[test]
    fn partial_writes_keep_frames_whole_when_unsent_ones_are_dropped() {
        let (mut s, mut peer) = pair();
        s.stream.tune(4096, 4096);
        for i in 0..2000u32 {
            encode::goodbye(&mut s.wbuf, &format!("frame {i} {}", "x".repeat(200)));
        }
        let mut sent = 0;
        // Bounded: the socket fills after a few hundred KiB at most.
        for _ in 0..10 {
            sent += s.flush(1 << 20).unwrap();
        }
        assert!(
            s.queued() > 0,
            "the peer reads nothing, so output must back up"
        );
        s.drop_unsent_frames();
        encode::goodbye(&mut s.wbuf, "last");
        peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut tmp = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            s.flush(1 << 20).unwrap();
            match peer.read(&mut tmp) {
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if s.queued() == 0 {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got.len() >= sent);
        let mut rest = &got[..];
        let mut frames = 0;
        let mut last = Vec::new();
        while let Some((body, used)) = split_frame(rest, 1 << 20).unwrap() {
            frames += 1;
            last = body.to_vec();
            rest = &rest[used..];
        }
        assert!(rest.is_empty(), "the stream ends on a frame boundary");
        assert!(frames < 2001, "unsent frames were dropped");
        assert!(last.ends_with(b"last"));
    }

    #[test]
    fn read_buffer_grows_to_hold_a_whole_frame() {
        let (mut s, _peer) = pair();
        s.rlen = s.rbuf.len();
        s.rbuf[..4].copy_from_slice(&100_000u32.to_le_bytes());
        s.reserve_read(32 * 1024, 1 << 20);
        assert!(s.rbuf.len() >= 100_004);
        let before = s.rbuf.len();
        s.reserve_read(32 * 1024, 1 << 20);
        assert_eq!(s.rbuf.len(), before, "no growth while there is room");
        s.shrink_read(32 * 1024);
        assert_eq!(s.rbuf.len(), before, "no shrinking while bytes are pending");
        s.rlen = 0;
        s.shrink_read(32 * 1024);
        assert_eq!(s.rbuf.len(), 32 * 1024);
    }
}
