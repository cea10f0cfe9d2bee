//! What an operator sees: signals other than SIGTERM, and the daemon's log lines.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, expect_own_view};
use conclave::{Connection, Service};

/// Waits (bounded) until the daemon's log holds `needle`; returns the log.
fn wait_log(d: &Daemon, needle: &str) -> String {
    let deadline = Instant::now() + common::WAIT;
    loop {
        let log = d.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log within {:?}:\n{log}",
            common::WAIT
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_neither_kills_the_daemon_nor_disturbs_its_clients() {
    let mut d = Daemon::start_logged(None, &[], Some("info"));
    let mut c = d.client("stays");
    c.join("g").unwrap();
    expect_own_view(&mut c, "g");
    common::signal(d.pid(), "HUP");
    wait_log(&d, "SIGHUP");
    // A second one too: the handler stays installed.
    common::signal(d.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.running(), "conclaved must survive SIGHUP");
    assert!(d.socket.exists(), "the socket file stays");
    c.multicast(Service::Agreed, &["g"], 0, b"after hup")
        .unwrap();
    common::expect_event(&mut c, "own message after SIGHUP", |ev| match ev {
        conclave::Event::Data { payload, .. } if payload == b"after hup" => Some(()),
        _ => None,
    });
    let status = d.terminate();
    assert!(
        status.success(),
        "SIGTERM still ends it cleanly: {status:?}"
    );
    assert!(
        d.log().contains("reload is not supported yet"),
        "says what SIGHUP did: {}",
        d.log()
    );
}

#[test]
fn logs_to_a_file_are_plain_and_name_each_client_and_its_peer() {
    let mut d = Daemon::start_logged(None, &[], Some("debug"));
    let mut tcp = Connection::connect_as(d.tcp(), "over-tcp").unwrap();
    let unix = d.client("over-unix");
    tcp.status().unwrap();
    drop(unix);
    tcp.disconnect().unwrap();
    let log = wait_log(&d, "#over-tcp#local");
    let log = {
        // Both disconnects are logged too.
        let deadline = Instant::now() + common::WAIT;
        let mut log = log;
        while log.matches("client disconnected").count() < 2 {
            assert!(Instant::now() < deadline, "disconnects not logged:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
            log = d.log();
        }
        log
    };
    d.terminate();
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escape codes when stderr is a file:\n{log}"
    );
    let line = |what: &str, who: &str| {
        log.lines()
            .find(|l| l.contains(what) && l.contains(who))
            .unwrap_or_else(|| panic!("no {what:?} line for {who}:\n{log}"))
            .to_owned()
    };
    for (who, transport) in [("#over-tcp#local", "tcp"), ("#over-unix#local", "unix")] {
        for what in ["client connected", "client disconnected"] {
            let l = line(what, who);
            assert!(l.contains(" INFO "), "at INFO: {l}");
            assert!(
                l.contains(&format!("transport=\"{transport}\""))
                    || l.contains(&format!("transport={transport}")),
                "names the transport: {l}"
            );
        }
    }
    // Debug lines carry the peer: the TCP client's address and port.
    let accepted = log
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("connection accepted"))
        .collect::<Vec<_>>();
    assert!(
        accepted.iter().any(|l| l.contains("peer=127.0.0.1:")),
        "the accept of a TCP client names its address: {accepted:?}"
    );
}

#[test]
fn a_shared_config_without_me_runs_with_name_and_check_config_catches_shared_endpoints() {
    let ring = "[[daemons]]\nname = \"d0\"\naddress = \"127.0.0.1\"\nring_port = 7000\nclient_port = @PORT@\n";
    // `--name` replaces `me`: a daemon starts from a file that has none.
    let d = Daemon::start_with(Some(ring), &["--name", "d0"]);
    let c = d.client("named");
    assert_eq!(c.daemon_name(), "d0");
    drop(c);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring.toml");
    let two = |second_ring_port: u16| {
        format!(
            "[[daemons]]\nname = \"d0\"\naddress = \"127.0.0.1\"\nring_port = 7000\nclient_port = 7001\n\
             [[daemons]]\nname = \"d1\"\naddress = \"127.0.0.1\"\nring_port = {second_ring_port}\nclient_port = 7011\n"
        )
    };
    let check = |text: &str, name: Option<&str>| {
        std::fs::write(&path, text).unwrap();
        let mut cmd = std::process::Command::new(common::conclaved());
        cmd.arg("--config").arg(&path).arg("--check-config");
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        cmd.output().unwrap()
    };
    let out = check(&two(7010), Some("d1"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&two(7010), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("me: missing"), "{stderr}");
    let out = check(&two(7000), Some("d0"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("daemons[1].ring_port") && stderr.contains("127.0.0.1:7000"),
        "{stderr}"
    );
}
