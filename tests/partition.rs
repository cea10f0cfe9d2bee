//! A partition between live daemons, made with network namespaces: three `conclaved`
//! processes `d0`, `d1`, `d2`, each in its own namespace behind a bridge. Cutting `d2`'s
//! bridge port splits {d0, d1} from {d2}; both sides must keep serving (EVS: a transitional
//! view, then a regular view, reason network), order each side's messages, and merge back
//! into one view of three when the port is attached again.
//!
//! Needs root (namespaces and links); elsewhere it prints `skipped: <why>` and returns.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Backend;
use common::history::{Seen, quick_profile, record};
use common::netns::NetCluster;
use conclave::{Connection, MembershipReason, Service, ViewKind};

/// Whether `seen` holds a regular view of exactly `members` (in any order).
fn has_regular(seen: &[Seen], members: &[String]) -> bool {
    seen.iter()
        .any(|e| matches!(e, Seen::View(ViewKind::Regular, _, m) if same_set(m, members)))
}

fn same_set(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// Checks that `seen` has a transitional view of `members` (reason network) followed by
/// a regular view of them (reason network).
fn assert_evs_views(seen: &[Seen], members: &[String]) {
    let t = seen.iter().position(|e| {
        matches!(e, Seen::View(ViewKind::Transitional, MembershipReason::Network, m) if same_set(m, members))
    });
    let r = seen.iter().position(|e| {
        matches!(e, Seen::View(ViewKind::Regular, MembershipReason::Network, m) if same_set(m, members))
    });
    assert!(
        matches!((t, r), (Some(t), Some(r)) if t < r),
        "no transitional then regular network view of {members:?}: {seen:?}"
    );
}

fn payload(tag: &str, sender: usize, i: usize) -> Vec<u8> {
    format!("{tag}:{sender}:{i}").into_bytes()
}

/// Sends `count` AGREED messages tagged `tag` from client number `sender`.
fn send(c: &mut Connection, tag: &str, sender: usize, count: usize) {
    for i in 0..count {
        c.multicast_buffered(Service::Agreed, &["g"], 1, &payload(tag, sender, i))
            .expect("multicast");
    }
    c.flush().expect("flush");
}

/// The data messages of `seen`, in order.
fn data(seen: &[Seen]) -> Vec<(String, Vec<u8>)> {
    seen.iter()
        .filter_map(|e| match e {
            Seen::Data(s, p) => Some((s.clone(), p.clone())),
            Seen::View(..) => None,
        })
        .collect()
}

/// Checks that `got` holds exactly `count` messages of each sender in `senders`, each
/// sender's in the order sent (`senders[k]` is client number `numbers[k]`).
fn assert_complete(
    got: &[(String, Vec<u8>)],
    tag: &str,
    senders: &[(String, usize)],
    count: usize,
) {
    for (name, number) in senders {
        let mine: Vec<Vec<u8>> = got
            .iter()
            .filter(|(s, _)| s == name)
            .map(|(_, p)| p.clone())
            .collect();
        let want: Vec<Vec<u8>> = (0..count).map(|i| payload(tag, *number, i)).collect();
        assert_eq!(
            mine, want,
            "messages of {name} lost, duplicated or reordered"
        );
    }
    assert_eq!(
        got.len(),
        count * senders.len(),
        "messages from outside this side: {got:?}"
    );
}

#[test]
fn partition_and_heal() {
    let started = Instant::now();
    let names = ["d0", "d1", "d2"];
    // Declared before the clients, so that the clients close first and the namespaces
    // (deleted when `cluster` drops, after its daemons) go last, also on panic.
    let cluster = match NetCluster::start(&names, &quick_profile(Backend::Auto)) {
        Ok(c) => c,
        Err(why) => {
            println!("skipped: {why}");
            eprintln!("partition_and_heal skipped: {why}");
            return;
        }
    };
    let mut clients: Vec<Connection> = (0..3)
        .map(|i| cluster.daemons[i].client(&format!("c{i}")))
        .collect();
    let pn: Vec<String> = clients
        .iter()
        .map(|c| c.private_name().to_owned())
        .collect();
    for c in &mut clients {
        c.join("g").expect("join");
    }
    for c in &mut clients {
        record(c, Duration::from_secs(10), |s| has_regular(s, &pn));
    }

    // The partition: d2 loses the bridge, {d0, d1} and {d2} each re-form.
    cluster.net.cut(&[2]).expect("cut d2 off");
    let majority = pn[..2].to_vec();
    let minority = pn[2..].to_vec();
    for c in &mut clients[..2] {
        let seen = record(c, Duration::from_secs(10), |s| has_regular(s, &majority));
        assert_evs_views(&seen, &majority);
    }
    let seen = record(&mut clients[2], Duration::from_secs(10), |s| {
        has_regular(s, &minority)
    });
    assert_evs_views(&seen, &minority);

    // Both sides keep serving: each orders its own messages, in one order per side.
    const PER: usize = 30;
    for (i, c) in clients.iter_mut().enumerate() {
        send(c, "split", i, PER);
    }
    let mut orders = Vec::new();
    for c in &mut clients[..2] {
        let seen = record(c, Duration::from_secs(10), |s| data(s).len() >= 2 * PER);
        let got = data(&seen);
        assert_complete(
            &got,
            "split",
            &[(pn[0].clone(), 0), (pn[1].clone(), 1)],
            PER,
        );
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "the majority side's orders differ");
    let seen = record(&mut clients[2], Duration::from_secs(10), |s| {
        data(s).len() >= PER
    });
    assert_complete(&data(&seen), "split", &[(pn[2].clone(), 2)], PER);

    // The heal: one merged view of all three at every client.
    cluster.net.heal().expect("heal");
    for c in &mut clients {
        record(c, Duration::from_secs(10), |s| has_regular(s, &pn));
    }
    // A message from each client then reaches all three, in one order.
    for (i, c) in clients.iter_mut().enumerate() {
        send(c, "merged", i, 1);
    }
    let mut orders = Vec::new();
    for c in &mut clients {
        let seen = record(c, Duration::from_secs(10), |s| data(s).len() >= 3);
        let got = data(&seen);
        let everyone: Vec<(String, usize)> = pn
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        assert_complete(&got, "merged", &everyone, 1);
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "the merged orders differ");
    assert_eq!(orders[0], orders[2], "the merged orders differ");
    let status = clients[0].status().expect("status");
    let v: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
    assert_eq!(v["ring"]["membership"], "operational", "{status}");
    assert_eq!(v["ring"]["members"], serde_json::json!(names), "{status}");
    eprintln!("partition and heal took {:?}", started.elapsed());
    drop(clients);
    drop(cluster);
}
