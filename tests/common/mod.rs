//! Shared helpers of the integration tests: a real `conclaved` process per test, raw
//! sockets for malformed input, and bounded waits.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod cluster;
pub mod history;
pub mod netns;

use conclave::{Address, Connection, Event};
use conclave_control::wire::client::{
    DaemonFrame, PROTOCOL_VERSION, decode_daemon, encode, max_frame_len, split_frame,
};

/// The default wait for anything a test expects to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Builds `conclaved` once per test binary and returns its path.
pub fn conclaved() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_tool("conclaved")).clone()
}

/// Builds the `conclave` CLI once per test binary and returns its path.
pub fn conclave_cli() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_tool("conclave")).clone()
}

/// Builds `conclave-bench` (and the binaries it starts) once per test binary.
pub fn conclave_bench() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        conclaved();
        conclave_cli();
        build_tool("conclave-bench")
    })
    .clone()
}

/// Runs `cargo build` for one binary of conclave-tools in this test's target dir.
fn build_tool(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps/<test>-<hash>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> above deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "conclave-tools", "--bin", name])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    let bin = profile_dir.join(name);
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running daemon, stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Its Unix socket path.
    pub socket: PathBuf,
    /// Its TCP port.
    pub port: u16,
    /// The temp dir holding the socket and any config.
    pub dir: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts a daemon with the embedded default config on a temp socket and a free port.
    pub fn start() -> Daemon {
        Self::start_with(None, &[])
    }

    /// Starts a daemon with an optional config text (written to a temp file) and extra args.
    pub fn start_with(config: Option<&str>, extra: &[&str]) -> Daemon {
        Self::start_full(&[], config, extra, None)
    }

    /// As [`Daemon::start_with`]; with `rust_log`, stderr goes to a file (read with
    /// [`Daemon::log`]) under that `RUST_LOG` filter.
    pub fn start_logged(config: Option<&str>, extra: &[&str], rust_log: Option<&str>) -> Daemon {
        Self::start_full(&[], config, extra, rust_log)
    }

    /// Like [`Daemon::start_with`], with `conclaved` run through the command `prefix`
    /// (e.g. `ip netns exec <ns>`, which execs it, so the child's pid is the daemon's).
    pub fn start_in(prefix: &[OsString], config: Option<&str>, extra: &[&str]) -> Daemon {
        Self::start_full(prefix, config, extra, None)
    }

    /// Starts `conclaved` through `prefix` (none: directly), with its stderr in a file
    /// under `rust_log` when given.
    fn start_full(
        prefix: &[OsString],
        config: Option<&str>,
        extra: &[&str],
        rust_log: Option<&str>,
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("d.sock");
        let port = free_port();
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(conclaved());
                c
            }
            None => Command::new(conclaved()),
        };
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--port")
            .arg(port.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(filter) = rust_log {
            let file = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
            cmd.env("RUST_LOG", filter).stderr(file);
        } else if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        if let Some(text) = config {
            let path = dir.path().join("conclave.toml");
            std::fs::write(&path, text.replace("@PORT@", &port.to_string())).expect("config");
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().expect("spawn conclaved");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child: Some(child),
            socket,
            port,
            dir,
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match d.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("conclaved ready") => break,
                Ok(_) => {}
                Err(e) => {
                    let status = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    panic!("conclaved did not get ready ({e:?}); exit status {status:?}");
                }
            }
        }
        d
    }

    /// What the daemon wrote to stderr so far (started with [`Daemon::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The Unix socket address.
    pub fn unix(&self) -> Address {
        Address::Unix(self.socket.clone())
    }

    /// The TCP address.
    pub fn tcp(&self) -> Address {
        Address::Tcp(format!("127.0.0.1:{}", self.port))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// Kills the daemon with SIGKILL (no goodbyes, nothing flushed) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("conclaved did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects a client over the Unix socket.
    pub fn client(&self, name: &str) -> Connection {
        Connection::connect_as(self.unix(), name).expect("connect")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                signal(child.id(), "TERM");
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Sends a signal by name with kill(1): the tests stay free of unsafe code.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Receives until `pred` picks an event, failing after `WAIT`.
pub fn expect_event<T>(
    conn: &mut Connection,
    what: &str,
    mut pred: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.receive(left.min(Duration::from_millis(500))) {
            Ok(Some(ev)) => {
                if let Some(t) = pred(&ev) {
                    return t;
                }
                seen.push(ev);
            }
            Ok(None) => {}
            Err(e) => panic!("waiting for {what}: {e}; seen {seen:?}"),
        }
    }
    panic!("no {what} within {WAIT:?}; seen {seen:?}");
}

/// Reads `conn` until the daemon ends the stream, which must come after a Goodbye whose
/// reason contains `needle` (frames queued before it are skipped).
pub fn expect_goodbye_then_close(conn: &mut Connection, needle: &str) {
    let end = Instant::now() + WAIT;
    let mut goodbye = None;
    loop {
        assert!(Instant::now() < end, "the client never saw its stream end");
        match conn.receive(Duration::from_millis(200)) {
            Ok(Some(Event::Goodbye { reason })) => goodbye = Some(reason),
            Ok(_) => {}
            Err(conclave::Error::Closed { .. }) => {
                let reason = goodbye.expect("a goodbye before the end of the stream");
                assert!(reason.contains(needle), "goodbye reason: {reason}");
                return;
            }
            Err(e) => panic!("waiting for the stream to end: {e}"),
        }
    }
}

/// Receives for `quiet` and returns everything that came (to check that nothing else did).
pub fn drain(conn: &mut Connection, quiet: Duration) -> Vec<Event> {
    let mut v = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match conn.receive(quiet) {
            Ok(Some(ev)) => v.push(ev),
            Ok(None) => break,
            Err(e) => panic!("drain: {e}"),
        }
    }
    v
}

/// Waits for the membership notification of `group` that lists `member` (or not).
pub fn expect_view(
    conn: &mut Connection,
    group: &str,
    member: &str,
    present: bool,
) -> (conclave::ViewId, conclave::MembershipReason, Vec<String>) {
    expect_event(
        conn,
        &format!("view of {group} with {member} present={present}"),
        |ev| match ev {
            Event::Membership {
                group: g,
                view_id,
                reason,
                members,
                ..
            } if g == group && members.iter().any(|m| m == member) == present => {
                Some((*view_id, *reason, members.clone()))
            }
            _ => None,
        },
    )
}

/// Waits for the view of `group` that lists this connection itself.
pub fn expect_own_view(conn: &mut Connection, group: &str) -> conclave::ViewId {
    let me = conn.private_name().to_owned();
    expect_view(conn, group, &me, true).0
}

/// A numeric value somewhere in a status document whose key path mentions every one of
/// `words` (case-insensitive, ignoring `_`); 0 when absent. Summed over all matches.
pub fn status_counter(json: &str, words: &[&str]) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("status is JSON");
    let words: Vec<String> = words.iter().map(|w| norm(w)).collect();
    let mut sum = 0;
    walk(&v, String::new(), &mut |path, n| {
        let p = norm(path);
        if words.iter().all(|w| p.contains(w.as_str())) {
            sum += n;
        }
    });
    sum
}

fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn walk(v: &serde_json::Value, path: String, f: &mut impl FnMut(&str, u64)) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                walk(v, format!("{path}/{k}"), f);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                walk(v, path.clone(), f);
            }
        }
        serde_json::Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                f(&path, n);
            }
        }
        _ => {}
    }
}

/// A client socket driven by hand, for bytes the SDK would never send.
pub struct Raw {
    /// The socket.
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects without saying hello.
    pub fn connect(d: &Daemon) -> Raw {
        let stream = UnixStream::connect(&d.socket).expect("raw connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and completes a hello as `name`; returns the private name.
    pub fn hello(d: &Daemon, name: &str) -> (Raw, String) {
        let mut r = Raw::connect(d);
        let mut b = Vec::new();
        encode::hello(&mut b, PROTOCOL_VERSION, name);
        r.send(&b);
        let pn = r.expect_frame("welcome", |f| match f {
            DaemonFrame::Welcome { private_name, .. } => Some((*private_name).to_owned()),
            _ => None,
        });
        (r, pn)
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("raw write");
    }

    /// Reads frames until `pred` picks one (bounded by `WAIT`). Panics on EOF.
    pub fn expect_frame<T>(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&DaemonFrame<'_>) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some((body, used)) =
                split_frame(&self.buf, max_frame_len(64 << 20)).expect("daemon framing")
            {
                let frame = decode_daemon(body).expect("daemon frame decodes");
                let hit = pred(&frame);
                self.buf.drain(..used);
                if let Some(t) = hit {
                    return t;
                }
            }
            assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
            if let Some(0) = self.read_some() {
                panic!("connection closed while waiting for {what}");
            }
        }
    }

    /// One read: `Some(n)` bytes (0 = end of stream), `None` on timeout.
    fn read_some(&mut self) -> Option<usize> {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => Some(0),
        }
    }

    /// Waits (bounded) for the daemon to close the connection; returns the frames before.
    pub fn expect_close(&mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut frames = Vec::new();
        loop {
            while let Ok(Some((body, used))) = split_frame(&self.buf, max_frame_len(64 << 20)) {
                if let Ok(f) = decode_daemon(body) {
                    frames.push(format!("{f:?}"));
                }
                self.buf.drain(..used);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not close within {WAIT:?}; frames {frames:?}"
            );
            if self.read_some() == Some(0) {
                return frames;
            }
        }
    }
}
