//! Several data-plane workers (`workers = 2` and `3`), over one daemon and over the
//! three-daemon ring. Accepted clients are dealt round-robin over the workers (worker 0,
//! the order worker, then the session workers), so consecutive clients of a test sit on
//! different workers: views, all services, one order for everyone, slow consumers,
//! SIGTERM goodbyes and the status report must not depend on which worker a client has.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster, profile_text};
use common::{Daemon, expect_event, expect_goodbye_then_close, expect_own_view, expect_view};
use conclave::{Connection, Error, Event, Service};

/// The default profile with `workers` set and pinning on.
fn profile(workers: usize) -> String {
    let base = include_str!("../tuning/default.toml");
    assert!(base.contains("workers = 1") && base.contains("pin_workers = false"));
    base.replace("workers = 1", &format!("workers = {workers}"))
        .replace("pin_workers = false", "pin_workers = true")
}

/// A daemon started with `profile(workers)` from a file, plus the dir holding that file.
fn start(workers: usize, config: Option<&str>) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("profile.toml");
    std::fs::write(&path, profile(workers)).expect("write profile");
    let path = path.display().to_string();
    (Daemon::start_with(config, &["--profile", &path]), dir)
}

/// Checks the status document's worker section: as many workers running as configured,
/// each listed with its index, role, a pinned core and the cycles it ran.
fn check_workers(conn: &mut Connection, configured: usize) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&conn.status().expect("status")).expect("status is JSON");
    let w = &status["workers"];
    assert_eq!(w["configured"], configured, "{w}");
    assert_eq!(w["running"], configured, "{w}");
    let threads = w["threads"].as_array().expect("worker list");
    assert_eq!(threads.len(), configured, "{w}");
    for (i, t) in threads.iter().enumerate() {
        assert_eq!(t["index"], i, "{w}");
        assert_eq!(t["role"], if i == 0 { "order" } else { "session" }, "{w}");
        assert!(t["core"].is_u64(), "worker {i} is not pinned: {w}");
        assert!(t["cycles"].as_u64().is_some_and(|c| c > 0), "{w}");
    }
    status
}

/// Data payloads `conn` receives in group `g` until `n` have come (views are skipped).
fn data(conn: &mut Connection, n: usize) -> Vec<(String, Service, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} got {} of {n}",
            conn.private_name(),
            got.len()
        );
        match conn.receive(Duration::from_millis(500)) {
            Ok(Some(Event::Data {
                sender,
                service,
                payload,
                ..
            })) => got.push((sender, service, payload)),
            Ok(_) => {}
            Err(e) => panic!("receive: {e}"),
        }
    }
    got
}

fn one_daemon(workers: usize) {
    let (d, _profile) = start(workers, None);
    let mut clients = vec![
        d.client("u1"),
        Connection::connect_as(d.tcp(), "t1").expect("tcp connect"),
        d.client("u2"),
    ];
    let names: Vec<String> = clients
        .iter()
        .map(|c| c.private_name().to_owned())
        .collect();
    for c in &mut clients {
        c.join("g").expect("join");
        expect_own_view(c, "g");
    }
    // Everyone sees the view that lists the last joiner.
    for c in &mut clients[..2] {
        let (_, _, members) = expect_view(c, "g", &names[2], true);
        assert_eq!(members.len(), 3);
    }
    // Every client sends every service, interleaved; all must see one order.
    for round in 0..4u8 {
        for (i, c) in clients.iter_mut().enumerate() {
            for service in Service::ALL {
                let payload = [i as u8, round, service as u8];
                c.multicast_buffered(service, &["g"], 1, &payload)
                    .expect("multicast");
            }
        }
        for c in &mut clients {
            c.flush().expect("flush");
        }
    }
    let per_client = 4 * Service::ALL.len();
    let seen: Vec<_> = clients
        .iter_mut()
        .map(|c| data(c, 3 * per_client))
        .collect();
    assert_eq!(seen[0], seen[1], "two clients saw different orders");
    assert_eq!(seen[0], seen[2], "two clients saw different orders");
    for (i, name) in names.iter().enumerate() {
        let from: Vec<_> = seen[0].iter().filter(|(s, _, _)| s == name).collect();
        assert_eq!(from.len(), per_client, "messages of {name}");
        // Each sender's messages arrive in the order it sent them.
        for (k, (_, service, payload)) in from.iter().enumerate() {
            let want_service = Service::ALL[k % Service::ALL.len()];
            assert_eq!(*service, want_service);
            assert_eq!(
                payload,
                &vec![i as u8, (k / Service::ALL.len()) as u8, want_service as u8]
            );
        }
    }
    let status = check_workers(&mut clients[0], workers);
    assert_eq!(status["clients"].as_array().map(Vec::len), Some(3));
    let per_worker: Vec<u64> = status["workers"]["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .filter_map(|t| t["clients"].as_u64())
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 3, "{per_worker:?}");
    // Round-robin: every worker serves at least one of the three clients.
    assert!(per_worker.iter().all(|&n| n >= 1), "{per_worker:?}");
    let counters = &status["counters"];
    assert_eq!(counters["clients_welcomed"], 3, "{counters}");
    assert_eq!(
        counters["messages_delivered"],
        (3 * 3 * per_client) as u64,
        "{counters}"
    );
}

#[test]
fn two_workers_one_daemon_views_services_and_one_order() {
    one_daemon(2);
}

#[test]
fn three_workers_one_daemon_views_services_and_one_order() {
    one_daemon(3);
}

#[test]
fn sigterm_says_goodbye_to_every_client_with_three_workers() {
    let (mut d, _profile) = start(3, None);
    let mut conns: Vec<Connection> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                d.client(&format!("u{i}"))
            } else {
                Connection::connect_as(d.tcp(), &format!("t{i}")).expect("tcp connect")
            }
        })
        .collect();
    check_workers(&mut conns[0], 3);
    let status = d.terminate();
    assert!(status.success(), "conclaved exit status {status:?}");
    for conn in &mut conns {
        let reason = expect_event(conn, "goodbye", |ev| match ev {
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
}

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
fn a_slow_consumer_is_disconnected_with_two_workers() {
    let (d, _profile) = start(2, Some(SMALL_QUEUE));
    // The flooder is dealt to worker 0, the lazy client to the session worker.
    let mut flooder = Connection::connect_as(d.tcp(), "flooder").expect("tcp connect");
    let mut lazy = d.client("lazy");
    lazy.join("firehose").expect("join");
    expect_own_view(&mut lazy, "firehose");
    let lazy_name = lazy.private_name().to_owned();
    let status = check_workers(&mut flooder, 2);
    assert_eq!(status["workers"]["threads"][1]["clients"], 1, "{status}");
    let payload = vec![0x5au8; 8192];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    let dropped = loop {
        for _ in 0..256 {
            flooder
                .multicast_buffered(Service::Agreed, &["firehose"], 0, &payload)
                .expect("multicast");
        }
        flooder.flush().expect("flush");
        sent += 256;
        let status = check_workers(&mut flooder, 2);
        let still_there = status["clients"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == lazy_name.as_str()));
        if !still_there {
            break status
                .pointer("/counters/slow_consumer_disconnects")
                .and_then(serde_json::Value::as_u64);
        }
        assert!(
            Instant::now() < deadline && sent < 400_000,
            "the lazy client was never disconnected ({sent} messages sent)"
        );
    };
    assert_eq!(dropped, Some(1));
    expect_goodbye_then_close(&mut lazy, "slow consumer");
}

#[test]
fn a_ring_of_daemons_with_two_workers_each_agrees_on_one_order() {
    let text = profile_text("default", Backend::Fallback)
        .replace("workers = 1", "workers = 2")
        .replace("pin_workers = false", "pin_workers = true");
    let cluster = Cluster::start(&["d0", "d1", "d2"], &text);
    // Two clients per daemon: the first on its order worker, the second on its session
    // worker.
    let mut clients: Vec<Connection> = cluster
        .daemons
        .iter()
        .enumerate()
        .flat_map(|(i, d)| [d.client(&format!("a{i}")), d.client(&format!("b{i}"))])
        .collect();
    for c in &mut clients {
        c.join("g").expect("join");
    }
    // Joins from three daemons are ordered in any order: wait for the view of all six.
    for c in &mut clients {
        expect_event(c, "a view of six", |ev| match ev {
            Event::Membership { group, members, .. } if group == "g" && members.len() == 6 => {
                Some(())
            }
            _ => None,
        });
    }
    for round in 0..3u8 {
        for (i, c) in clients.iter_mut().enumerate() {
            for service in [Service::Agreed, Service::Safe, Service::Fifo] {
                c.multicast(service, &["g"], 0, &[i as u8, round, service as u8])
                    .expect("multicast");
            }
        }
    }
    let seen: Vec<_> = clients.iter_mut().map(|c| data(c, 54)).collect();
    for (i, s) in seen.iter().enumerate().skip(1) {
        assert_eq!(&seen[0], s, "clients 0 and {i} saw different orders");
    }
    for (i, c) in clients.iter().enumerate() {
        let from: Vec<_> = seen[0]
            .iter()
            .filter(|(s, _, _)| s == c.private_name())
            .map(|(_, _, p)| p.clone())
            .collect();
        assert_eq!(from.len(), 9, "messages of client {i}");
        // FIFO per sender across every service.
        for (k, p) in from.iter().enumerate() {
            assert_eq!((p[0], p[1]), (i as u8, (k / 3) as u8), "client {i}");
        }
    }
    for c in &mut clients {
        check_workers(c, 2);
    }
}
