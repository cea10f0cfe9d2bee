//! The async client for tokio (cargo feature `tokio`): the same operations as the
//! blocking [`crate::Connection`], over the same sans-IO [`Session`].

use std::io;
use std::time::Duration;

use conclave_control::wire::client::{DaemonFrame, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::address::{Address, IntoAddress};
use crate::blocking::{STATUS_TIMEOUT, WELCOME_TIMEOUT};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::session::Session;

#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf).await,
            Stream::Tcp(s) => s.read(buf).await,
        }
    }

    async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf).await,
            Stream::Tcp(s) => s.write(buf).await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown().await,
            Stream::Tcp(s) => s.shutdown().await,
        }
    }
}

/// An async connection to a daemon; see [`crate::Connection`] for the semantics.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    session: Session,
    address: Address,
}

/// The name the crate docs use for the async connection.
pub type AsyncConnection = Connection;

impl Connection {
    /// Connects and lets the daemon pick a private name.
    pub async fn connect(addr: impl IntoAddress) -> Result<Connection> {
        Self::connect_as(addr, "").await
    }

    /// Connects asking for the private name `#name#daemon`.
    pub async fn connect_as(addr: impl IntoAddress, name: &str) -> Result<Connection> {
        let address = addr.into_address()?;
        let session = Session::new(name)?;
        let stream = match &address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            Address::Tcp(hp) => {
                let s = TcpStream::connect(hp.as_str()).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        let mut conn = Connection {
            stream,
            session,
            address,
        };
        // As in the blocking connect: a refusal on accept may fail our write while its
        // Refused frame waits to be read, and that frame says why.
        let sent = conn.flush().await;
        let welcome = async {
            while !conn.session.handle_welcome()? {
                conn.fill().await?;
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout(WELCOME_TIMEOUT, welcome).await {
            Ok(Ok(())) => {}
            Ok(Err(e @ Error::Refused { .. })) => return Err(e),
            Ok(Err(e)) => return Err(sent.err().unwrap_or(e)),
            Err(_) => {
                sent?;
                return Err(Error::Timeout("the daemon's welcome"));
            }
        }
        sent?;
        Ok(conn)
    }

    /// The daemon this connection goes to.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The id of the request queued last (join, leave, multicast, status): an
    /// [`crate::Event::Error`] whose `request` equals it answers that request.
    pub fn last_request(&self) -> u32 {
        self.session.last_request()
    }

    /// This client's private name.
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

    /// Answers the pending FlushRequest of Virtual Synchrony group `group` (see
    /// [`crate::Connection::flush_ok`]).
    pub async fn flush_ok(&mut self, group: &str) -> Result<()> {
        self.session.flush_ok(group)?;
        self.flush().await
    }

    /// Answer every FlushRequest automatically (see
    /// [`crate::Connection::set_auto_flush_ok`]).
    pub fn set_auto_flush_ok(&mut self, on: bool) {
        self.session.set_auto_flush_ok(on);
    }

    /// Joins a group.
    pub async fn join(&mut self, group: &str) -> Result<()> {
        self.session.join(group)?;
        self.flush().await
    }

    /// Leaves a group.
    pub async fn leave(&mut self, group: &str) -> Result<()> {
        self.session.leave(group)?;
        self.flush().await
    }

    /// Sends a message to groups and/or private names, now.
    pub async fn multicast<S: AsRef<str>>(
        &mut self,
        service: Service,
        groups: &[S],
        msg_type: u16,
        payload: &[u8],
    ) -> Result<()> {
        self.session.multicast(service, groups, msg_type, payload)?;
        self.flush().await
    }

    /// Queues a message for the next [`Connection::flush`] (or a full batch).
    pub async fn multicast_buffered<S: AsRef<str>>(
        &mut self,
        service: Service,
        groups: &[S],
        msg_type: u16,
        payload: &[u8],
    ) -> Result<()> {
        self.session.multicast(service, groups, msg_type, payload)?;
        if self.session.should_flush() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends a message to one client by its private name.
    pub async fn send_to(
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
            .await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        while !self.session.output().is_empty() {
            match self.stream.write(self.session.output()).await {
                Ok(0) => {
                    self.session.mark_eof();
                    return Err(self.session.closed_error());
                }
                Ok(n) => self.session.consumed_output(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` when none came in time.
    pub async fn receive(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let next = async {
            loop {
                if let Some(event) = self.session.next_event()? {
                    if self.session.take_auto_answered() {
                        self.flush().await?;
                    }
                    return Ok(event);
                }
                if self.session.closed_reason().is_some() {
                    return Err(self.session.closed_error());
                }
                self.fill().await?;
            }
        };
        match tokio::time::timeout(timeout, next).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Waits up to `timeout` for input, then hands every whole frame read to `f`, borrowed.
    pub async fn receive_frames(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&DaemonFrame<'_>),
    ) -> Result<usize> {
        if !self.session.has_frame() {
            if self.session.closed_reason().is_some() {
                return Err(self.session.closed_error());
            }
            if tokio::time::timeout(timeout, self.fill()).await.is_err() {
                return Ok(0);
            }
        }
        let n = self.session.drain_frames(f)?;
        if self.session.take_auto_answered() {
            self.flush().await?;
        }
        Ok(n)
    }

    /// Asks for the daemon's status JSON; other events are kept for `receive`.
    pub async fn status(&mut self) -> Result<String> {
        self.session.status_request();
        self.flush().await?;
        let answer = async {
            loop {
                if let Some(json) = self.session.take_status()? {
                    return Ok(json);
                }
                if self.session.closed_reason().is_some() {
                    return Err(self.session.closed_error());
                }
                self.fill().await?;
            }
        };
        tokio::time::timeout(STATUS_TIMEOUT, answer)
            .await
            .map_err(|_| Error::Timeout("the daemon's status"))?
    }

    /// Says goodbye and closes the connection.
    pub async fn disconnect(mut self) -> Result<()> {
        self.session.disconnect();
        let flushed = self.flush().await;
        let _ = self.stream.shutdown().await;
        match flushed {
            Err(Error::Closed { .. }) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads once (cancel-safe: a cancelled read consumed nothing).
    async fn fill(&mut self) -> Result<()> {
        let space = self.session.read_space();
        match self.stream.read(space).await {
            Ok(0) => {
                self.session.mark_eof();
                Err(self.session.closed_error())
            }
            Ok(n) => {
                self.session.filled(n);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.session.mark_eof();
                Err(self.session.closed_error())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl std::os::fd::AsRawFd for Connection {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match &self.stream {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsFd for Connection {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.stream {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}
