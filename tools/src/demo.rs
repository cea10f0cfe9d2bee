//! `conclave demo`: starts a daemon on the embedded default configuration and walks three
//! clients through the life of a group, printing what each one sees.
//!
//! Everything shown is what the real daemon sent: the demo only scripts the clients. It
//! checks as it goes (a view that does not arrive, or a message delivered out of order, ends
//! the demo with an error) so that a broken daemon cannot produce a happy-looking run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use conclave::{Connection, Event, MembershipReason, Service};
use thiserror::Error;

/// The group the demo's clients meet in.
const GROUP: &str = "demo-chat";

/// How long the demo waits for any one thing the daemon should send.
const WAIT: Duration = Duration::from_secs(5);

/// Why the demo stopped early.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The daemon binary could not be started.
    #[error("could not start {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon exited or went quiet before it was ready.
    #[error("conclaved did not become ready: {0}")]
    NotReady(String),
    /// A client call failed.
    #[error("client error: {0}")]
    Client(#[from] conclave::Error),
    /// The daemon did not send what the demo expected.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the step waited for.
        expected: String,
        /// What came instead (or "nothing").
        got: String,
    },
}

/// A running `conclaved` that is stopped with SIGTERM when dropped.
struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    /// Starts the daemon next to this binary with no `--config` (the embedded default) and
    /// waits for its ready line.
    fn start(path: &Path) -> Result<(Self, String), DemoError> {
        let mut child = Command::new(path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| DemoError::Spawn {
                path: path.to_owned(),
                source,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| DemoError::NotReady("no stdout".into()))?;
        let mut daemon = DaemonProcess { child };
        let line = daemon.wait_ready(stdout)?;
        Ok((daemon, line))
    }

    fn wait_ready(&mut self, stdout: ChildStdout) -> Result<String, DemoError> {
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) if line.starts_with("conclaved ready:") => Ok(line),
            Some(Ok(other)) => Err(DemoError::NotReady(other)),
            Some(Err(e)) => Err(DemoError::NotReady(e.to_string())),
            None => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(DemoError::NotReady(format!(
                    "it exited ({status}); is another daemon using /tmp/conclave-4803.sock or port 4803?"
                )))
            }
        }
    }

    /// Asks the daemon to stop the way an operator would, and waits for it.
    fn terminate(&mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        "killed after 5 s".into()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// One line of what a client saw, indented under its name.
fn show(who: &str, event: &Event) {
    match event {
        Event::Data {
            sender,
            service,
            payload,
            ..
        } => println!(
            "    {who:<6} <- {} message from {sender}: {:?}",
            service.name(),
            String::from_utf8_lossy(payload)
        ),
        Event::Membership {
            group,
            view_id,
            reason,
            changed,
            members,
            ..
        } => println!(
            "    {who:<6} <- view {view_id} of {group} ({reason:?} of {}): members {}",
            changed.join(", "),
            members.join(", ")
        ),
        Event::Error { code, reason, .. } => println!("    {who:<6} <- error {code:?}: {reason}"),
        Event::Goodbye { reason } => println!("    {who:<6} <- goodbye: {reason}"),
        Event::Status { .. } => println!("    {who:<6} <- status document"),
        Event::FlushRequest {
            group,
            view_id,
            reason,
            ..
        } => println!("    {who:<6} <- flush request for view {view_id} of {group} ({reason:?})"),
    }
}

/// Waits for the next event at `conn` that `want` accepts, printing every event seen.
fn expect(
    who: &str,
    conn: &mut Connection,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> Result<Event, DemoError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.receive(left)? {
            Some(event) => {
                show(who, &event);
                if want(&event) {
                    return Ok(event);
                }
                if matches!(event, Event::Error { .. } | Event::Goodbye { .. }) {
                    return Err(DemoError::Unexpected {
                        expected: what.into(),
                        got: format!("{event:?}"),
                    });
                }
            }
            None => {
                return Err(DemoError::Unexpected {
                    expected: format!("{what} at {who}"),
                    got: "nothing within 5 s".into(),
                });
            }
        }
    }
}

fn view_with(reason: MembershipReason, size: usize) -> impl Fn(&Event) -> bool {
    move |e| {
        matches!(e, Event::Membership { group, reason: r, members, .. }
            if group == GROUP && *r == reason && members.len() == size)
    }
}

fn data_saying(text: &'static str) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::Data { payload, .. } if payload == text.as_bytes())
}

/// Runs the demo against the `conclaved` binary at `daemon_bin`, which it starts on the
/// embedded default configuration; or, given `existing`, against the daemon already
/// running there (`conclave --daemon ADDR demo`), which it leaves running.
pub fn run(daemon_bin: &Path, existing: Option<&conclave::Address>) -> Result<(), DemoError> {
    let (mut daemon, unix, tcp) = match existing {
        None => {
            println!("== Starting conclaved on its embedded default configuration");
            let (daemon, ready) = DaemonProcess::start(daemon_bin)?;
            println!("   {ready}");
            let unix = conclave::Address::Unix(conclave::DEFAULT_UNIX_SOCKET.into());
            let tcp = conclave::Address::Tcp(conclave::DEFAULT_TCP.to_owned());
            (Some(daemon), unix, tcp)
        }
        Some(addr) => {
            println!("== Using the daemon at {addr} (it keeps running afterwards)");
            (None, addr.clone(), addr.clone())
        }
    };

    println!("\n== alice, bob and carol connect (alice and carol at {unix}, bob at {tcp})");
    let mut alice = Connection::connect_as(unix.clone(), "alice")?;
    let mut bob = Connection::connect_as(tcp, "bob")?;
    let mut carol = Connection::connect_as(unix, "carol")?;
    for c in [&alice, &bob, &carol] {
        println!("   connected as {}", c.private_name());
    }

    println!("\n== alice joins {GROUP}");
    alice.join(GROUP)?;
    expect(
        "alice",
        &mut alice,
        "alice's join",
        view_with(MembershipReason::Join, 1),
    )?;

    println!("\n== bob joins {GROUP}: both members see the new view");
    bob.join(GROUP)?;
    expect(
        "alice",
        &mut alice,
        "bob's join",
        view_with(MembershipReason::Join, 2),
    )?;
    expect(
        "bob",
        &mut bob,
        "bob's join",
        view_with(MembershipReason::Join, 2),
    )?;

    println!(
        "\n== alice multicasts (AGREED) and bob answers (SAFE); each message reaches both, its sender included"
    );
    alice.multicast(Service::Agreed, &[GROUP], 1, b"hello bob")?;
    expect(
        "alice",
        &mut alice,
        "alice's message",
        data_saying("hello bob"),
    )?;
    expect("bob", &mut bob, "alice's message", data_saying("hello bob"))?;
    bob.multicast(Service::Safe, &[GROUP], 1, b"hi alice")?;
    expect(
        "alice",
        &mut alice,
        "bob's message",
        data_saying("hi alice"),
    )?;
    expect("bob", &mut bob, "bob's message", data_saying("hi alice"))?;

    println!("\n== carol is not a member, but {GROUP} is open: she may send to it");
    carol.multicast(Service::Fifo, &[GROUP], 2, b"carol says hi from outside")?;
    expect(
        "alice",
        &mut alice,
        "carol's message",
        data_saying("carol says hi from outside"),
    )?;
    expect(
        "bob",
        &mut bob,
        "carol's message",
        data_saying("carol says hi from outside"),
    )?;

    println!("\n== a private message from carol to bob (only bob receives it)");
    let bob_name = bob.private_name().to_owned();
    carol.send_to(&bob_name, Service::Reliable, 3, b"psst, bob")?;
    expect(
        "bob",
        &mut bob,
        "carol's private message",
        data_saying("psst, bob"),
    )?;

    println!("\n== carol joins, then disconnects without leaving");
    carol.join(GROUP)?;
    expect(
        "carol",
        &mut carol,
        "carol's join",
        view_with(MembershipReason::Join, 3),
    )?;
    expect(
        "alice",
        &mut alice,
        "carol's join",
        view_with(MembershipReason::Join, 3),
    )?;
    expect(
        "bob",
        &mut bob,
        "carol's join",
        view_with(MembershipReason::Join, 3),
    )?;
    drop(carol);
    expect(
        "alice",
        &mut alice,
        "carol's disconnect",
        view_with(MembershipReason::Disconnect, 2),
    )?;
    expect(
        "bob",
        &mut bob,
        "carol's disconnect",
        view_with(MembershipReason::Disconnect, 2),
    )?;

    println!("\n== bob leaves: alice is alone in the group");
    bob.leave(GROUP)?;
    expect(
        "alice",
        &mut alice,
        "bob's leave",
        view_with(MembershipReason::Leave, 1),
    )?;

    println!("\n== the daemon's own account (conclave status)");
    let status = alice.status()?;
    match serde_json::from_str::<serde_json::Value>(&status) {
        Ok(doc) => {
            if let Some(counters) = doc.get("counters") {
                println!("   counters: {counters}");
            }
            if let Some(groups) = doc.get("groups") {
                println!("   groups: {groups}");
            }
        }
        Err(_) => println!("   {status}"),
    }

    let Some(daemon) = daemon.as_mut() else {
        println!("\n== alice disconnects; the daemon is not ours to stop");
        alice.disconnect()?;
        println!("\nDemo complete.");
        return Ok(());
    };
    println!("\n== SIGTERM: the daemon says goodbye to its clients and exits");
    let status = daemon.terminate();
    expect("alice", &mut alice, "the daemon's goodbye", |e| {
        matches!(e, Event::Goodbye { .. })
    })?;
    println!("   conclaved exited: {status}");
    println!("\nDemo complete.");
    Ok(())
}
