//! Daemon lifecycle seen by clients: slow consumers, SIGTERM, config checking.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, conclaved, expect_goodbye_then_close, expect_own_view};
use conclave::{Connection, Error, Event, Service};

const SMALL_QUEUE: &str = r#"
me = "slow"
[[daemons]]
name = "slow"
address = "127.0.0.1"
ring_port = 1
client_port = @PORT@

[clients]
queue_limit = 4194304
"#;

#[test]
fn a_client_that_stops_reading_is_disconnected_and_memory_stays_bounded() {
    let d = Daemon::start_with(Some(SMALL_QUEUE), &[]);
    let mut lazy = d.client("lazy");
    lazy.join("firehose").unwrap();
    expect_own_view(&mut lazy, "firehose");
    let lazy_name = lazy.private_name().to_owned();
    let mut flooder = d.client("flooder");
    let rss_before = d.rss_kib();

    let payload = vec![0x5au8; 8192];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    let mut peak_rss = rss_before;
    let dropped = loop {
        for _ in 0..256 {
            flooder
                .multicast_buffered(Service::Agreed, &["firehose"], 0, &payload)
                .unwrap();
        }
        flooder.flush().unwrap();
        sent += 256;
        peak_rss = peak_rss.max(d.rss_kib());
        let status: serde_json::Value = serde_json::from_str(&flooder.status().unwrap()).unwrap();
        let still_there = status["clients"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == lazy_name.as_str()));
        if !still_there {
            let n = status
                .pointer("/counters/slow_consumer_disconnects")
                .and_then(|n| n.as_u64());
            break n;
        }
        assert!(
            Instant::now() < deadline && sent < 400_000,
            "the lazy client was never disconnected ({sent} messages sent)"
        );
    };
    assert_eq!(dropped, Some(1), "one slow-consumer disconnect is counted");
    // Keep going a little: with nobody to deliver to, memory must not grow.
    for _ in 0..2000 {
        flooder
            .multicast_buffered(Service::Agreed, &["firehose"], 0, &payload)
            .unwrap();
    }
    flooder.flush().unwrap();
    flooder.status().unwrap();
    peak_rss = peak_rss.max(d.rss_kib());
    let growth_kib = peak_rss.saturating_sub(rss_before);
    assert!(
        growth_kib < 64 * 1024,
        "daemon RSS grew by {growth_kib} KiB flooding a stalled client (queue limit 4 MiB)"
    );

    // The lazy client finds a goodbye naming the reason (after what was queued), then the end.
    expect_goodbye_then_close(&mut lazy, "slow consumer");
}

#[test]
fn sigterm_says_goodbye_removes_the_socket_and_exits_zero() {
    let mut d = Daemon::start();
    let mut over_unix = d.client("u");
    let mut over_tcp = Connection::connect_as(d.tcp(), "t").unwrap();
    over_unix.join("g").unwrap();
    expect_own_view(&mut over_unix, "g");
    assert!(d.socket.exists());
    let status = d.terminate();
    assert!(status.success(), "conclaved exit status {status:?}");
    for conn in [&mut over_unix, &mut over_tcp] {
        let reason = common::expect_event(conn, "goodbye", |ev| match ev {
            Event::Goodbye { reason } => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.contains("shutting down"), "{reason}");
        assert!(matches!(
            conn.receive(Duration::from_millis(100)),
            Err(Error::Closed { .. })
        ));
    }
    assert!(!d.socket.exists(), "the socket file must be removed");
    assert!(matches!(Connection::connect(d.unix()), Err(Error::Io(_))));
}

#[test]
fn check_config_names_the_key_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "me = \"a\"\nbogus_key = 1\n[[daemons]]\nname = \"a\"\naddress = \"127.0.0.1\"\nring_port = 1\nclient_port = 2\n",
    )
    .unwrap();
    let out = Command::new(conclaved())
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config must fail the check");
    assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
    assert!(stderr.contains("bogus_key"), "names the key: {stderr}");

    let dup = dir.path().join("dup.toml");
    std::fs::write(
        &dup,
        "me = \"a\"\n[[daemons]]\nname = \"a\"\naddress = \"127.0.0.1\"\nring_port = 1\nclient_port = 2\n[[daemons]]\nname = \"a\"\naddress = \"127.0.0.1\"\nring_port = 3\nclient_port = 4\n",
    )
    .unwrap();
    let out = Command::new(conclaved())
        .arg("--config")
        .arg(&dup)
        .arg("--check-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "duplicate daemon names must fail");
    assert!(stderr.contains("daemons"), "names the key: {stderr}");
    assert!(
        stderr.to_lowercase().contains("duplicate"),
        "says why: {stderr}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "me = \"a\"\n[[daemons]]\nname = \"a\"\naddress = \"127.0.0.1\"\nring_port = 1\nclient_port = 2\n",
    )
    .unwrap();
    let out = Command::new(conclaved())
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a good config passes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
