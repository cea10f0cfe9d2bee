//! Daemon membership with real processes on 127.0.0.1, on both UDP backends: a daemon
//! killed with SIGKILL while its peers' clients send AGREED and SAFE messages, a restart
//! that merges back, and two daemons killed in a row (a cascade). A history checker
//! compares what every surviving client saw.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster};
use common::history::{Seen, quick_profile, record};
use common::{WAIT, expect_event};
use conclave::{Connection, Event, MembershipReason, Service, ViewKind};

fn payload(sender: usize, i: usize) -> Vec<u8> {
    format!("{sender}:{i}").into_bytes()
}

/// Sends `count` messages from `c` to `g`, alternating SAFE and AGREED.
fn send(c: &mut Connection, sender: usize, from: usize, count: usize) {
    for i in from..from + count {
        let service = if i % 2 == 0 {
            Service::Safe
        } else {
            Service::Agreed
        };
        c.multicast_buffered(service, &["g"], 1, &payload(sender, i))
            .expect("multicast");
    }
    c.flush().expect("flush");
}

/// Waits until every client's view of `g` has `n` members.
fn await_members(clients: &mut [Connection], n: usize) {
    for c in clients {
        expect_event(c, &format!("view of g with {n} members"), |ev| match ev {
            Event::Membership {
                group,
                kind: ViewKind::Regular,
                members,
                ..
            } if group == "g" && members.len() == n => Some(()),
            _ => None,
        });
    }
}

/// Checks one client's history: every message of `senders` (by private name) exactly once
/// and in each sender's order; returns the count per sender.
fn check_history(seen: &[Seen], senders: &[String], per_sender: usize) {
    for s in senders {
        let idx = senders.iter().position(|x| x == s).unwrap_or(0);
        let got: Vec<&Vec<u8>> = seen
            .iter()
            .filter_map(|e| match e {
                Seen::Data(from, p) if from == s => Some(p),
                _ => None,
            })
            .collect();
        let want: Vec<Vec<u8>> = (0..per_sender).map(|i| payload(idx, i)).collect();
        let got: Vec<Vec<u8>> = got.into_iter().cloned().collect();
        assert_eq!(got, want, "messages of {s} lost, duplicated or reordered");
    }
}

fn crash_and_restart(backend: Backend) {
    let names = ["d0", "d1", "d2"];
    let mut cluster = Cluster::start(&names, &quick_profile(backend));
    let mut clients: Vec<Connection> = (0..3)
        .map(|i| cluster.daemons[i].client(&format!("c{i}")))
        .collect();
    for c in &mut clients {
        c.join("g").expect("join");
    }
    await_members(&mut clients, 3);
    let survivors: Vec<String> = clients[..2]
        .iter()
        .map(|c| c.private_name().to_owned())
        .collect();
    let victim = clients[2].private_name().to_owned();
    // Half of the survivors' messages go out before the kill, half while the survivors
    // re-form; the victim sends too, and what of its messages arrives must agree.
    const PER: usize = 200;
    for (s, c) in clients[..2].iter_mut().enumerate() {
        send(c, s, 0, PER / 2);
    }
    send(&mut clients[2], 2, 0, 50);
    let killed = Instant::now();
    cluster.daemons[2].kill9();
    for (s, c) in clients[..2].iter_mut().enumerate() {
        send(c, s, PER / 2, PER / 2);
    }
    let mut histories = Vec::new();
    let mut view_after = Vec::new();
    for c in clients[..2].iter_mut() {
        let h = record(c, Duration::from_secs(30), |seen| {
            let data = seen
                .iter()
                .filter(|e| matches!(e, Seen::Data(from, _) if survivors.contains(from)))
                .count();
            let gone = seen.iter().any(|e| {
                matches!(e, Seen::View(ViewKind::Regular, MembershipReason::Network, m) if m.len() == 2)
            });
            if gone && view_after.len() < histories.len() + 1 {
                view_after.push(killed.elapsed());
            }
            data == 2 * PER && gone
        });
        histories.push(h);
    }
    eprintln!("kill -9 to the survivors' regular view: {view_after:?}");
    for h in &histories {
        check_history(h, &survivors, PER);
        // The victim's messages that arrived came once and in order.
        let mine: Vec<&Vec<u8>> = h
            .iter()
            .filter_map(|e| match e {
                Seen::Data(from, p) if *from == victim => Some(p),
                _ => None,
            })
            .collect();
        let want: Vec<Vec<u8>> = (0..mine.len()).map(|i| payload(2, i)).collect();
        assert_eq!(mine.into_iter().cloned().collect::<Vec<_>>(), want);
        // The transitional view lists the survivors, then the regular view follows.
        let t = h
            .iter()
            .position(|e| matches!(e, Seen::View(ViewKind::Transitional, MembershipReason::Network, m) if *m == survivors));
        let r = h
            .iter()
            .position(|e| matches!(e, Seen::View(ViewKind::Regular, MembershipReason::Network, m) if *m == survivors));
        assert!(
            matches!((t, r), (Some(t), Some(r)) if t < r),
            "no transitional then regular view: {h:?}"
        );
    }
    // Both survivors moved together: the same history, messages and views, in one order.
    assert_eq!(
        histories[0], histories[1],
        "the survivors' histories differ"
    );

    // The killed daemon comes back as a new run and merges: one view of three again.
    cluster.restart(2);
    let mut back = cluster.daemons[2].client("c2");
    back.join("g").expect("join after restart");
    // The old client of d2 went with its daemon.
    clients.truncate(2);
    clients.push(back);
    let mut all = clients;
    await_members(&mut all, 3);
    send(&mut all[2], 2, 0, 10);
    for c in &mut all {
        let h = record(c, WAIT, |seen| {
            seen.iter().filter(|e| matches!(e, Seen::Data(..))).count() >= 10
        });
        let got: Vec<&Seen> = h.iter().filter(|e| matches!(e, Seen::Data(..))).collect();
        assert_eq!(got.len(), 10, "{h:?}");
    }
    let status = all[0].status().expect("status");
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(v["ring"]["membership"], "operational", "{status}");
    assert_eq!(v["ring"]["members"], serde_json::json!(names), "{status}");
    // The restarted daemon is a new run of d2.
    assert!(
        v["ring"]["daemons"][2]["incarnation"].as_u64() >= Some(2),
        "{status}"
    );
}

#[test]
fn crash_and_restart_on_fallback() {
    crash_and_restart(Backend::Fallback);
}

#[test]
fn crash_and_restart_on_io_uring() {
    crash_and_restart(Backend::Auto);
}

/// Two of five daemons killed in a row, the second while the first membership run is
/// under way: the three survivors end in one configuration, and nothing they sent is
/// lost, duplicated or reordered.
fn cascade_of_two_crashes(backend: Backend) {
    let names = ["d0", "d1", "d2", "d3", "d4"];
    let mut cluster = Cluster::start(&names, &quick_profile(backend));
    let mut clients: Vec<Connection> = (0..5)
        .map(|i| cluster.daemons[i].client(&format!("c{i}")))
        .collect();
    for c in &mut clients {
        c.join("g").expect("join");
    }
    await_members(&mut clients, 5);
    const PER: usize = 60;
    for (s, c) in clients[..3].iter_mut().enumerate() {
        send(c, s, 0, PER / 2);
    }
    cluster.daemons[4].kill9();
    // Within the first run's consensus time.
    std::thread::sleep(Duration::from_millis(320));
    cluster.daemons[3].kill9();
    for (s, c) in clients[..3].iter_mut().enumerate() {
        send(c, s, PER / 2, PER / 2);
    }
    let survivors: Vec<String> = clients[..3]
        .iter()
        .map(|c| c.private_name().to_owned())
        .collect();
    let mut histories = Vec::new();
    for c in clients[..3].iter_mut() {
        let h = record(c, Duration::from_secs(30), |seen| {
            let data = seen
                .iter()
                .filter(|e| matches!(e, Seen::Data(from, _) if survivors.contains(from)))
                .count();
            let three = seen
                .iter()
                .any(|e| matches!(e, Seen::View(ViewKind::Regular, _, m) if *m == survivors));
            data == 3 * PER && three
        });
        check_history(&h, &survivors, PER);
        histories.push(h);
    }
    // Only the survivors' messages, in one order everywhere.
    let order = |h: &[Seen]| -> Vec<Seen> {
        h.iter()
            .filter(|e| matches!(e, Seen::Data(from, _) if survivors.contains(from)))
            .cloned()
            .collect()
    };
    assert_eq!(order(&histories[0]), order(&histories[1]));
    assert_eq!(order(&histories[0]), order(&histories[2]));
}

#[test]
fn cascade_of_two_crashes_on_fallback() {
    cascade_of_two_crashes(Backend::Fallback);
}

#[test]
fn cascade_of_two_crashes_on_io_uring() {
    cascade_of_two_crashes(Backend::Auto);
}

/// Two daemons whose configurations differ in a key that must agree (here the largest
/// payload) refuse each other's joins, log which key differs, and each keep serving in a
/// configuration of its own, instead of merging and diverging.
#[test]
fn differing_settings_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("profile.toml");
    std::fs::write(&profile, quick_profile(Backend::Auto)).expect("profile");
    let ports: Vec<u16> = (0..2).map(|_| common::cluster::free_udp_port()).collect();
    let base = common::cluster::config_text(&["a", "b"], &ports, &profile.display().to_string());
    let state = |n: &str| format!("state_dir = \"{}\"\n", dir.path().join(n).display());
    let config_a = format!("{}{base}", state("a"));
    let config_b = format!("{}{base}\n[clients]\nmax_payload = 4096\n", state("b"));
    let a = common::Daemon::start_logged(Some(&config_a), &["--name", "a"], Some("warn"));
    let b = common::Daemon::start_logged(Some(&config_b), &["--name", "b"], Some("warn"));
    for (d, me) in [(&a, "a"), (&b, "b")] {
        let mut c = d.client("auditor");
        let deadline = Instant::now() + WAIT;
        loop {
            let json = c.status().expect("status");
            let v: serde_json::Value = serde_json::from_str(&json).expect("json");
            let refused = common::status_counter(&json, &["ring", "dropped_config_mismatch"]);
            if v["ring"]["membership"] == "operational" && refused > 0 {
                assert_eq!(v["ring"]["members"], serde_json::json!([me]), "{json}");
                break;
            }
            assert!(Instant::now() < deadline, "no refusal at {me}: {json}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still serving its own clients.
        c.join("alone").expect("join");
        let name = c.private_name().to_owned();
        common::expect_view(&mut c, "alone", &name, true);
        let log = d.log();
        assert!(
            log.contains("configuration differs") && log.contains("limits"),
            "{me}'s log does not name the key: {log}"
        );
    }
}
