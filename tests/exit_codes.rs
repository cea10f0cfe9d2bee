//! The exit codes of docs/exit-codes.md: 0 ok, 1 failed, 2 usage, 3 lost.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, WAIT, conclave_cli, conclaved};

fn socket_arg(d: &Daemon) -> String {
    format!("unix:{}", d.socket.display())
}

/// Starts `conclave user` with an open stdin and waits for its "connected" line.
fn interactive(d: &Daemon) -> Child {
    let mut child = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(d), "user", "--name", "waiting"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("user mode connects");
        if line.contains("connected to") {
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    child
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited, not signalled");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn user_mode_exits_zero_on_the_daemons_shutdown_goodbye() {
    let mut d = Daemon::start();
    let mut user = interactive(&d);
    assert!(d.terminate().success());
    assert_eq!(wait_exit(&mut user), 0, "a graceful goodbye is no failure");
}

#[test]
fn user_mode_exits_three_when_its_daemon_crashes() {
    let d = Daemon::start();
    let mut user = interactive(&d);
    common::signal(d.pid(), "KILL");
    let mut stderr = String::new();
    let code = wait_exit(&mut user);
    if let Some(mut e) = user.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(code, 3, "a crash is reported as lost: {stderr}");
    assert!(stderr.contains("without a goodbye"), "{stderr}");
    drop(d);
}

#[test]
fn flood_recv_that_received_nothing_fails() {
    let d = Daemon::start();
    let out = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(&d), "flood", "recv"])
        .args(["--group", "silence", "--count", "10", "--timeout", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("received nothing"), "{stderr}");
}

#[test]
fn status_against_a_full_daemon_says_too_many_clients_over_unix() {
    let d = Daemon::start_with(
        Some(
            "me = \"full\"\n[[daemons]]\nname = \"full\"\naddress = \"127.0.0.1\"\n\
             ring_port = 1\nclient_port = @PORT@\n[clients]\nmax_clients = 1\n",
        ),
        &[],
    );
    let _only = d.client("only");
    // The refusal races the hello: try a few times so both orders are seen.
    for _ in 0..5 {
        let out = Command::new(conclave_cli())
            .args(["--daemon", &socket_arg(&d), "status"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("TooManyClients"), "{stderr}");
    }
}

#[test]
fn conclaved_exits_one_for_a_bad_config_and_three_when_it_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "me = 1\n").unwrap();
    let out = Command::new(conclaved())
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let out = Command::new(conclaved())
        .arg("--bogus-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage");

    // The socket of a running daemon: the second one cannot start.
    let d = Daemon::start();
    let out = Command::new(conclaved())
        .arg("--socket")
        .arg(&d.socket)
        .arg("--port")
        .arg(common::free_port().to_string())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_binary_states_the_same_table_as_the_docs() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/exit-codes.md"))
        .unwrap();
    for (code, name) in [(0, "OK"), (1, "FAILED"), (2, "USAGE"), (3, "LOST")] {
        assert!(
            docs.contains(&format!("| {code} | {name} |")),
            "docs/exit-codes.md has row {code} {name}"
        );
    }
    for bin in [conclaved(), conclave_cli(), common::conclave_bench()] {
        let out = Command::new(&bin).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Exit codes: 0 ok, 1 failed, 2 usage, 3 lost"),
            "{}: {help}",
            bin.display()
        );
    }
}
