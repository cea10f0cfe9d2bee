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
