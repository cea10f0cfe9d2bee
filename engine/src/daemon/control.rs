//! The control-plane thread: owns the daemon's shutdown and aggregates the workers' status.
//!
//! It talks to each data-plane worker over two bounded crossbeam queues: commands go down
//! ([`WorkerCommand`]; the worker is woken through its mio [`Waker`] and drains a bounded
//! number of them per cycle) and reports come up ([`WorkerReport`]). The control plane
//! never has more than one snapshot request and one stop outstanding per worker, so its
//! `try_send`s cannot find a queue full; a worker answers with `try_send` too and never
//! blocks on the control plane.
//!
//! Requests from the outside world (a signal thread's [`super::Stopper`], a
//! [`super::DaemonHandle::worker_status`] call) arrive on a third bounded queue. A stop
//! also raises a flag before it is queued, so a stop is never lost to a full queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select};
use mio::Waker;

use super::DaemonError;

/// Depth of each worker's command queue: a stop and one snapshot request fit with room.
pub(crate) const COMMAND_QUEUE: usize = 4;
/// Depth of the request queue into the control plane.
pub(crate) const REQUEST_QUEUE: usize = 16;
/// How long a status request waits for the workers' snapshots.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// What the control plane tells a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerCommand {
    /// Say goodbye to the clients and exit the loop.
    Stop,
    /// Send a [`WorkerStatus`] back.
    Snapshot,
}

/// What a worker tells the control plane.
#[derive(Debug)]
pub(crate) enum WorkerReport {
    /// The answer to [`WorkerCommand::Snapshot`].
    Snapshot(WorkerStatus),
    /// The worker's loop ended (after its goodbyes), with why if it failed.
    Exited {
        index: usize,
        result: Result<(), WorkerFailure>,
    },
}

/// How a worker's loop failed.
#[derive(Debug)]
pub(crate) enum WorkerFailure {
    /// A bug.
    Panicked,
    /// The event loop's poll failed.
    Io(std::io::Error),
}

/// One data-plane worker as its last snapshot saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The worker's index (0 runs the sequencer and the group table).
    pub index: usize,
    /// `"order"` for worker 0 (sequencer, table, ring I/O, listeners and a share of the
    /// clients), `"session"` for the others (a share of the clients).
    pub role: &'static str,
    /// The core the worker pinned itself to; `None` when pinning is off or failed.
    pub core: Option<usize>,
    /// Loop cycles run so far.
    pub cycles: u64,
    /// Client sessions the worker owns (including ones not yet welcomed).
    pub clients: usize,
}

/// The worker's end of its two queues.
pub(crate) struct WorkerLink {
    /// The worker's index.
    pub index: usize,
    /// Commands from the control plane.
    pub commands: Receiver<WorkerCommand>,
    /// Reports to the control plane.
    pub reports: Sender<WorkerReport>,
}

impl WorkerLink {
    /// Reports without ever blocking the worker; the queue is sized so this cannot fail
    /// while the control plane runs, and once it is gone there is nobody to tell.
    pub(crate) fn report(&self, report: WorkerReport) {
        if let Err(TrySendError::Full(r)) = self.reports.try_send(report) {
            tracing::warn!(
                ?r,
                "the control plane's report queue is full; report dropped"
            );
        }
    }
}

/// A request from outside the daemon's threads.
#[derive(Debug)]
pub(crate) enum Request {
    /// Stop every worker (the stop flag is raised too).
    Stop,
    /// Collect a snapshot from every worker.
    Status(Sender<Vec<WorkerStatus>>),
}

/// The outside world's end of the control plane.
#[derive(Debug, Clone)]
pub(crate) struct ControlLink {
    pub requests: Sender<Request>,
    pub stop: Arc<AtomicBool>,
}

impl ControlLink {
    /// Raises the stop flag, then asks the control plane to act on it; returns at once.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        // Full: the control plane has requests to read and looks at the flag after each.
        // Disconnected: it has finished already.
        let _ = self.requests.try_send(Request::Stop);
    }
}

/// The control plane's end of one worker.
pub(crate) struct WorkerPort {
    pub commands: Sender<WorkerCommand>,
    pub waker: Arc<Waker>,
    pub thread: Option<JoinHandle<()>>,
    exited: Option<Result<(), WorkerFailure>>,
    stop_sent: bool,
    snapshot_asked: bool,
}

impl WorkerPort {
    pub(crate) fn new(commands: Sender<WorkerCommand>, waker: Arc<Waker>) -> Self {
        Self {
            commands,
            waker,
            thread: None,
            exited: None,
            stop_sent: false,
            snapshot_asked: false,
        }
    }

    fn send(&mut self, command: WorkerCommand) {
        match self.commands.try_send(command) {
            Ok(()) => {
                if let Err(e) = self.waker.wake() {
                    tracing::error!("cannot wake a worker: {e}");
                }
            }
            // The worker has exited; its Exited report says how.
            Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                // At most two commands are ever outstanding (see the module doc).
                tracing::error!(?command, "a worker's command queue is full");
            }
        }
    }
}

/// The control plane's state, run on its own thread by [`ControlPlane::run`].
pub(crate) struct ControlPlane {
    pub requests: Receiver<Request>,
    pub reports: Receiver<WorkerReport>,
    pub stop: Arc<AtomicBool>,
    pub workers: Vec<WorkerPort>,
}

impl ControlPlane {
    /// Runs until every worker has exited; returns the first worker failure.
    pub(crate) fn run(mut self) -> Result<(), DaemonError> {
        let mut stopping = false;
        let mut pending: Vec<Sender<Vec<WorkerStatus>>> = Vec::new();
        let mut snapshots: Vec<WorkerStatus> = Vec::new();
        let mut snapshot_deadline: Option<Instant> = None;
        while self.workers.iter().any(|w| w.exited.is_none()) {
            if !stopping && self.stop.load(Ordering::Acquire) {
                stopping = true;
                for w in &mut self.workers {
                    if !w.stop_sent && w.exited.is_none() {
                        w.stop_sent = true;
                        w.send(WorkerCommand::Stop);
                    }
                }
            }
            let timeout = snapshot_deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            select! {
                recv(self.requests) -> r => match r {
                    Ok(Request::Stop) => self.stop.store(true, Ordering::Release),
                    Ok(Request::Status(reply)) => {
                        if pending.is_empty() {
                            snapshots.clear();
                            for w in &mut self.workers {
                                if w.exited.is_none() && !w.snapshot_asked {
                                    w.snapshot_asked = true;
                                    w.send(WorkerCommand::Snapshot);
                                }
                            }
                            snapshot_deadline = Some(Instant::now() + SNAPSHOT_WAIT);
                        }
                        pending.push(reply);
                    }
                    // Every handle is gone: nobody can ask for a stop any more, so stop.
                    Err(_) => self.stop.store(true, Ordering::Release),
                },
                recv(self.reports) -> r => match r {
                    Ok(WorkerReport::Snapshot(s)) => {
                        if let Some(w) = self.workers.get_mut(s.index) {
                            w.snapshot_asked = false;
                        }
                        snapshots.push(s);
                    }
                    Ok(WorkerReport::Exited { index, result }) => {
                        if let Some(w) = self.workers.get_mut(index) {
                            w.exited = Some(result);
                            w.snapshot_asked = false;
                        }
                    }
                    // Every worker thread is gone; one that said nothing died unreported.
                    Err(_) => {
                        for w in &mut self.workers {
                            if w.exited.is_none() {
                                w.exited = Some(Err(WorkerFailure::Panicked));
                            }
                        }
                    }
                },
                default(timeout) => {}
            }
            let all_in = self
                .workers
                .iter()
                .all(|w| !w.snapshot_asked || w.exited.is_some());
            let late = snapshot_deadline.is_some_and(|d| Instant::now() >= d);
            if !pending.is_empty() && (all_in || late) {
                snapshots.sort_by_key(|s| s.index);
                for reply in pending.drain(..) {
                    let _ = reply.send(snapshots.clone());
                }
                snapshot_deadline = None;
            }
        }
        for reply in pending.drain(..) {
            let _ = reply.send(Vec::new());
        }
        let mut result = Ok(());
        for (index, w) in self.workers.iter_mut().enumerate() {
            let panicked = w.thread.take().is_some_and(|t| t.join().is_err());
            let failure = match w.exited.take() {
                _ if panicked => Some(DaemonError::WorkerPanicked),
                Some(Err(WorkerFailure::Panicked)) => Some(DaemonError::WorkerPanicked),
                Some(Err(WorkerFailure::Io(source))) => Some(DaemonError::Io {
                    what: format!("event loop of data-plane worker {index}"),
                    source,
                }),
                _ => None,
            };
            if let Some(e) = failure
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }
}

/// The queues between the control plane and one worker.
pub(crate) fn worker_queues(
    index: usize,
    reports: Sender<WorkerReport>,
) -> (WorkerLink, Sender<WorkerCommand>) {
    let (tx, rx) = bounded(COMMAND_QUEUE);
    (
        WorkerLink {
            index,
            commands: rx,
            reports,
        },
        tx,
    )
}
