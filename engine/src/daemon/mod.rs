//! The daemon runtime: listeners, the data-plane worker and its client sessions.
//!
//! Threads (DESIGN §3): a control-plane thread (module `control`) owns shutdown and
//! status aggregation; it talks to the data-plane workers over bounded crossbeam queues
//! and wakes them through their mio wakers. A [`Stopper`] (e.g. in the binary's signal
//! thread) asks the control plane to stop, which tells every worker. The profile's
//! `workers` sets how many data-plane workers run. Worker 0, the order worker, owns the
//! listeners, the group table and the sequencer (and the ring's I/O); with `workers > 1`
//! it deals accepted clients round-robin over itself and the session workers, which parse
//! their clients' frames and send what needs the table to worker 0 in one batch per
//! cycle (module `shard`). With `workers = 1` worker 0 does everything, as before. Each
//! worker pins itself to core `index % cores` when the profile's `pin_workers` is set.

//! With one daemon in the configuration, events are ordered on the spot
//! ([`LocalSequencer`]). With several, the worker also drives the daemon ring
//! ([`net::RingSequencer`]): it sleeps on the ring's UDP fd and timers as well as the
//! client sockets, and once per turn exchanges datagrams and applies what the token
//! ordered. The ring is static for now (membership changes: next issue).
//!
//! ```no_run
//! use conclave_engine::config::Config;
//! use conclave_engine::daemon::Daemon;
//! let config = Config::embedded();
//! let profile = config.load_profile()?;
//! let handle = Daemon::start(config, profile)?;
//! println!("{}", handle.ready_line());
//! handle.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod control;
pub mod net;
mod persist;
mod session;
mod shard;
mod status;
mod worker;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use conclave_control::wire::client::max_frame_len;
use mio::net::{TcpListener, UnixListener};
use mio::{Interest, Poll, Waker};
use thiserror::Error;

use crate::config::{Config, ConfigError, Profile};
use crate::core::{GroupTable, LocalSequencer, TableConfig};
pub use control::WorkerStatus;
use control::{ControlLink, ControlPlane, Request, WorkerFailure, WorkerPort, WorkerReport};
use worker::{Limits, RING, TCP_LISTENER, UNIX_LISTENER, WAKER, Worker};

/// Why the daemon could not start or stopped with a failure.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The configuration or profile is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another process is listening on the Unix socket path.
    #[error("{0}: another daemon is listening on this socket")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket, so it is not ours to remove.
    #[error("{0}: exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread panicked (a bug).
    #[error("the data-plane worker panicked")]
    WorkerPanicked,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Starts daemons.
#[derive(Debug)]
pub struct Daemon;

/// Asks a running daemon's control plane to stop, from any thread (e.g. a signal thread).
#[derive(Debug, Clone)]
pub struct Stopper {
    link: ControlLink,
}

impl Stopper {
    /// Asks the daemon to say goodbye to its clients and exit; returns at once.
    pub fn stop(&self) {
        self.link.stop();
    }
}

/// How long [`DaemonHandle::worker_status`] waits for the control plane's answer.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// A running daemon.
#[derive(Debug)]
pub struct DaemonHandle {
    stopper: Stopper,
    control: Option<JoinHandle<Result<(), DaemonError>>>,
    unix_socket: Option<PathBuf>,
    tcp_address: Option<SocketAddr>,
    name: String,
}

impl DaemonHandle {
    /// The Unix socket clients connect to, if enabled.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// The bound TCP address, if enabled.
    pub fn tcp_address(&self) -> Option<SocketAddr> {
        self.tcp_address
    }

    /// The daemon's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The line `conclaved ready: unix=<path> tcp=<addr>` (`-` for a disabled transport).
    pub fn ready_line(&self) -> String {
        let unix = self
            .unix_socket
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
        let tcp = self
            .tcp_address
            .map_or_else(|| "-".to_owned(), |a| a.to_string());
        format!("conclaved ready: unix={unix} tcp={tcp}")
    }

    /// A handle that stops the daemon from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// A snapshot of every running worker, collected by the control plane (empty once
    /// the daemon has stopped or if the control plane does not answer in time).
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let request = Request::Status(tx);
        if self
            .stopper
            .link
            .requests
            .send_timeout(request, STATUS_WAIT)
            .is_err()
        {
            return Vec::new();
        }
        rx.recv_timeout(STATUS_WAIT).unwrap_or_default()
    }

    /// Waits until the daemon stops (after [`Stopper::stop`] or a fatal error).
    pub fn wait(mut self) -> Result<(), DaemonError> {
        match self.control.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(DaemonError::WorkerPanicked),
            None => Ok(()),
        }
    }

    /// Stops the daemon (clients get a Goodbye, the socket file is removed) and waits.
    pub fn shutdown(self) -> Result<(), DaemonError> {
        self.stopper.stop();
        self.wait()
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            self.stopper.stop();
            let _ = control.join();
        }
    }
}

impl Daemon {
    /// Binds the listeners and starts the data-plane worker. Returns once clients can
    /// connect.
    pub fn start(config: Config, profile: Profile) -> Result<DaemonHandle, DaemonError> {
        config.validate("(config)")?;
        profile.validate("(profile)")?;
        let poll = Poll::new().map_err(io_err("creating the event loop"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(io_err("creating the event-loop waker"))?,
        );

        let mut tcp = None;
        let mut tcp_address = None;
        if let Some(addr) = config.tcp_listen_address() {
            let mut listener =
                TcpListener::bind(addr).map_err(io_err(format!("binding TCP {addr}")))?;
            tcp_address = Some(
                listener
                    .local_addr()
                    .map_err(io_err("reading the TCP address"))?,
            );
            poll.registry()
                .register(&mut listener, TCP_LISTENER, Interest::READABLE)
                .map_err(io_err("registering the TCP listener"))?;
            tcp = Some(listener);
        }
        let mut unix = None;
        if let Some(path) = &config.clients.unix_socket {
            remove_stale_socket(path)?;
            let mut listener = UnixListener::bind(path)
                .map_err(io_err(format!("binding Unix socket {}", path.display())))?;
            poll.registry()
                .register(&mut listener, UNIX_LISTENER, Interest::READABLE)
                .map_err(io_err("registering the Unix listener"))?;
            unix = Some((listener, path.clone()));
        }

        let table = GroupTable::new(TableConfig {
            groups: config.groups.clone(),
            max_groups_per_client: config.clients.max_groups,
            epoch: 1,
        });
        let limits = Limits {
            daemon: config.me.clone(),
            profile: config.profile.clone(),
            started: std::time::Instant::now(),
            max_clients: config.clients.max_clients,
            max_payload: config.clients.max_payload,
            max_frame: max_frame_len(config.clients.max_payload),
            queue_limit: config.queue_limit(&profile),
            pause_mark: profile
                .client_pause_bytes
                .min(config.queue_limit(&profile) / 2),
            stall: Duration::from_millis(profile.client_stall_ms),
            hello_timeout: Duration::from_millis(profile.hello_timeout_ms),
            flush_timeout: Duration::from_millis(config.groups.flush_timeout_ms),
            read_chunk: profile.read_chunk_bytes,
            reads_per_turn: profile.reads_per_turn,
            write_chunk: profile.write_chunk_bytes,
            poll_events: profile.poll_events,
            workers: profile.workers,
            sndbuf: profile.socket_send_buffer,
            rcvbuf: profile.socket_recv_buffer,
        };
        let unix_socket = unix
            .as_ref()
            .map(|(_, p): &(UnixListener, PathBuf)| p.clone());
        let pin = profile.pin_workers;
        // One daemon orders locally (the fast path); several order through the ring.
        let sequencer: Box<dyn crate::core::Sequencer> = if config.daemons.len() > 1 {
            let now = crate::core::time::Instant::ZERO;
            let ring =
                net::RingSequencer::new(&config, &profile, now).map_err(|e| DaemonError::Io {
                    what: "starting the daemon ring".into(),
                    source: std::io::Error::other(e),
                })?;
            Box::new(ring)
        } else {
            Box::new(LocalSequencer::default())
        };
        if let Some(fd) = sequencer.wait_fd() {
            poll.registry()
                .register(&mut mio::unix::SourceFd(&fd), RING, Interest::READABLE)
                .map_err(io_err("registering the ring socket"))?;
        }

        let running = profile.workers.max(1);
        let (report_tx, report_rx) = crossbeam_channel::bounded(running * 4);
        let (request_tx, request_rx) = crossbeam_channel::bounded(control::REQUEST_QUEUE);
        let registry = Arc::new(shard::Registry::default());
        // Session workers first: worker 0 holds their ends.
        let mut peers = Vec::new();
        let mut session_workers = Vec::new();
        for index in 1..running {
            let poll = Poll::new().map_err(io_err("creating a session worker's event loop"))?;
            let own_waker = Arc::new(
                Waker::new(poll.registry(), WAKER)
                    .map_err(io_err("creating a session worker's waker"))?,
            );
            let (up, up_end) = shard::pipe();
            let (down, down_end) = shard::pipe();
            let (sockets_tx, sockets_rx) = crossbeam_channel::bounded(shard::SOCKET_QUEUE);
            let published = Arc::new(std::sync::Mutex::new(shard::Published {
                status: WorkerStatus {
                    index,
                    role: "session",
                    core: None,
                    cycles: 0,
                    clients: 0,
                },
                counters: Default::default(),
            }));
            peers.push(shard::Peer {
                out: shard::Outgoing::new(down, own_waker.clone()),
                input: up_end,
                sockets: sockets_tx,
                published: published.clone(),
                clients: Default::default(),
                pending: Default::default(),
            });
            let link = shard::OrderLink {
                out: shard::Outgoing::new(up, waker.clone()),
                input: down_end,
                sockets: sockets_rx,
                published,
            };
            session_workers.push((index, poll, own_waker, link));
        }
        let role = worker::Role::Order {
            table,
            sequencer,
            peers,
            next_worker: 0,
        };
        let mut ports = Vec::with_capacity(running);
        let (link, commands) = control::worker_queues(0, report_tx.clone());
        let mut port = WorkerPort::new(commands, waker);
        let worker = Worker::new(
            poll,
            unix,
            tcp,
            role,
            registry.clone(),
            limits.clone(),
            link,
        );
        port.thread = Some(
            std::thread::Builder::new()
                .name("conclave-worker-0".into())
                .spawn(move || run_worker(worker, pin))
                .map_err(io_err("spawning the worker thread"))?,
        );
        ports.push(port);
        for (index, poll, own_waker, order) in session_workers {
            let (link, commands) = control::worker_queues(index, report_tx.clone());
            let mut port = WorkerPort::new(commands, own_waker);
            let worker = Worker::new(
                poll,
                None,
                None,
                worker::Role::Session(order),
                registry.clone(),
                limits.clone(),
                link,
            );
            port.thread = Some(
                std::thread::Builder::new()
                    .name(format!("conclave-worker-{index}"))
                    .spawn(move || run_worker(worker, pin))
                    .map_err(io_err("spawning a session worker thread"))?,
            );
            ports.push(port);
        }
        drop(report_tx);
        let stop = Arc::new(AtomicBool::new(false));
        let plane = ControlPlane {
            requests: request_rx,
            reports: report_rx,
            stop: stop.clone(),
            workers: ports,
        };
        // If this spawn fails the worker's command queue closes with `plane`, which the
        // worker takes as a stop: it says goodbye and exits on its own.
        let control = std::thread::Builder::new()
            .name("conclave-control".into())
            .spawn(move || plane.run())
            .map_err(io_err("spawning the control-plane thread"))?;
        Ok(DaemonHandle {
            stopper: Stopper {
                link: ControlLink {
                    requests: request_tx,
                    stop,
                },
            },
            control: Some(control),
            unix_socket,
            tcp_address,
            name: config.me.clone(),
        })
    }
}

/// A worker thread's body: pin, run the loop, and always tell the control plane how it
/// ended (a panic included, so the control plane never waits for a dead worker).
fn run_worker(mut worker: Worker, pin: bool) {
    let index = worker.index();
    if pin {
        worker.set_core(pin_to_core(index));
    }
    let reports = worker.reports();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
    let result = match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WorkerFailure::Io(e)),
        Err(_) => Err(WorkerFailure::Panicked),
    };
    let _ = reports.try_send(WorkerReport::Exited { index, result });
}

/// Pins the calling thread to core `index % cores`; the core, if pinned.
fn pin_to_core(index: usize) -> Option<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => {
            let id = ids[index % ids.len()];
            if core_affinity::set_for_current(id) {
                tracing::info!(worker = index, core = id.id, "worker pinned");
                Some(id.id)
            } else {
                tracing::warn!(worker = index, core = id.id, "could not pin the worker");
                None
            }
        }
        _ => {
            tracing::warn!(worker = index, "no core list; the worker is not pinned");
            None
        }
    }
}

/// Removes a socket file left by a dead daemon; refuses if something still listens on it.
fn remove_stale_socket(path: &Path) -> Result<(), DaemonError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("inspecting {}", path.display()))(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::NotASocket(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(DaemonError::SocketInUse(path.to_owned()));
    }
    tracing::info!("removing stale socket {}", path.display());
    std::fs::remove_file(path).map_err(io_err(format!("removing stale socket {}", path.display())))
}
