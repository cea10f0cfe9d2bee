//! Virtual Synchrony groups against a real daemon: the flush round before a view change
//! (FlushRequest, FlushOk), messages sent before FlushOk delivered in the old view, the
//! automatic answer, and the timeout that disconnects a member that never answers.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Backend, Cluster, profile_text};
use common::{
    Daemon, drain, expect_event, expect_goodbye_then_close, expect_own_view, expect_view,
};
use conclave::{Connection, Error, Event, MembershipReason, Service, ViewId};

fn config(flush_timeout_ms: u64) -> String {
    format!(
        r#"
me = "t1"
[[daemons]]
name = "t1"
address = "127.0.0.1"
ring_port = 1
client_port = @PORT@

[groups]
closed = ["vs.*"]
vs = ["vs.*"]
flush_timeout_ms = {flush_timeout_ms}
"#
    )
}

/// Waits for the FlushRequest of `group` naming `changed` and `reason`; returns its view.
fn expect_flush(
    conn: &mut Connection,
    group: &str,
    reason: MembershipReason,
    changed: &str,
) -> ViewId {
    expect_event(conn, &format!("flush request of {group}"), |ev| match ev {
        Event::FlushRequest {
            group: g,
            view_id,
            reason: r,
            changed: c,
        } if g == group && *r == reason && c.iter().any(|x| x == changed) => Some(*view_id),
        _ => None,
    })
}

/// Everything `conn` receives up to and including the view of `group` that lists
/// `member`.
fn until_view(conn: &mut Connection, group: &str, member: &str) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match conn.receive(Duration::from_millis(200)) {
            Ok(Some(ev)) => {
                let done = matches!(&ev, Event::Membership { group: g, members, .. }
                    if g == group && members.iter().any(|m| m == member));
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(None) => {}
            Err(e) => panic!("waiting for the view of {group} with {member}: {e}; seen {seen:?}"),
        }
    }
    panic!("no view of {group} with {member}; seen {seen:?}");
}

fn payloads(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Data { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

/// `a` and `b` in `vs.room`, b's join flushed by a.
fn pair(d: &Daemon) -> (Connection, Connection) {
    pair_on(d, d)
}

/// As [`pair`], with `a` a client of `da` and `b` of `db`.
fn pair_on(da: &Daemon, db: &Daemon) -> (Connection, Connection) {
    let mut a = da.client("a");
    let mut b = db.client("b");
    a.join("vs.room").unwrap();
    expect_own_view(&mut a, "vs.room");
    b.join("vs.room").unwrap();
    let bn = b.private_name().to_owned();
    expect_flush(&mut a, "vs.room", MembershipReason::Join, &bn);
    a.flush_ok("vs.room").unwrap();
    expect_view(&mut a, "vs.room", &bn, true);
    expect_own_view(&mut b, "vs.room");
    (a, b)
}

#[test]
fn a_join_is_flushed_by_the_old_members_and_earlier_messages_come_before_the_view() {
    let d = Daemon::start_with(Some(&config(10_000)), &[]);
    join_is_flushed(&d, &d, &d);
}

#[test]
fn a_join_is_flushed_alike_across_a_ring_of_two() {
    // a and c on d1, b on d2: FlushOk is ordered like any event, so both daemons count
    // the answers at the same point and deliver the same messages before the view.
    let mut cluster = Cluster::start_some(
        &["d1", "d2"],
        0,
        &profile_text("default", Backend::Fallback),
    );
    cluster
        .config
        .push_str("\n[groups]\nclosed = [\"vs.*\"]\nvs = [\"vs.*\"]\nflush_timeout_ms = 10000\n");
    for i in 0..2 {
        cluster.daemons.push(Daemon::start_with(
            Some(&cluster.config),
            &["--name", &cluster.names[i]],
        ));
    }
    let (d1, d2) = (&cluster.daemons[0], &cluster.daemons[1]);
    join_is_flushed(d1, d2, d1);
}

/// Two members (`a` of `da`, `b` of `db`) flush the join of `c` (of `dc`).
fn join_is_flushed(da: &Daemon, db: &Daemon, dc: &Daemon) {
    let (mut a, mut b) = pair_on(da, db);
    let mut c = dc.client("c");
    let cn = c.private_name().to_owned();
    c.join("vs.room").unwrap();
    let va = expect_flush(&mut a, "vs.room", MembershipReason::Join, &cn);
    let vb = expect_flush(&mut b, "vs.room", MembershipReason::Join, &cn);
    assert_eq!(va, vb, "both flush the same view");
    // Sent before each one's FlushOk: delivered in the old view, to a and b only.
    a.multicast(Service::Agreed, &["vs.room"], 0, b"from a")
        .unwrap();
    a.flush_ok("vs.room").unwrap();
    assert!(
        matches!(
            a.multicast(Service::Agreed, &["vs.room"], 0, b"too late"),
            Err(Error::Flushing { .. })
        ),
        "sends wait for the new view"
    );
    b.multicast(Service::Safe, &["vs.room"], 0, b"from b")
        .unwrap();
    b.flush_ok("vs.room").unwrap();
    for (who, conn) in [("a", &mut a), ("b", &mut b)] {
        let seen = until_view(conn, "vs.room", &cn);
        let got = payloads(&seen);
        assert_eq!(got.len(), 2, "{who} got both old-view messages: {seen:?}");
        assert!(got.contains(&b"from a".to_vec()) && got.contains(&b"from b".to_vec()));
        let Some(Event::Membership {
            view_id,
            reason,
            members,
            ..
        }) = seen.last()
        else {
            panic!("{who}: {seen:?}");
        };
        assert_eq!(*reason, MembershipReason::Join);
        assert!(*view_id > va);
        assert_eq!(members.len(), 3);
    }
    let seen = until_view(&mut c, "vs.room", &cn);
    assert!(
        payloads(&seen).is_empty(),
        "the joiner gets no old-view message: {seen:?}"
    );
    // In the new view everybody sends and receives again.
    a.multicast(Service::Agreed, &["vs.room"], 0, b"new view")
        .unwrap();
    for conn in [&mut a, &mut b, &mut c] {
        expect_event(conn, "the new view's message", |e| {
            matches!(e, Event::Data { payload, .. } if payload == b"new view").then_some(())
        });
    }
    // A group without the rule has no flush: a plain closed group changes at once.
    assert!(drain(&mut c, Duration::from_millis(100)).is_empty());
}

#[test]
fn automatic_answers_and_a_silent_member_is_disconnected_after_the_timeout() {
    silent_member(1);
}

#[test]
fn a_silent_member_of_a_session_worker_is_disconnected_after_the_timeout() {
    // Clients spread over three workers: the table's flush waits reach session workers
    // through their batches.
    silent_member(3);
}

fn silent_member(workers: usize) {
    let d = if workers == 1 {
        Daemon::start_with(Some(&config(300)), &[])
    } else {
        let profile = std::env::temp_dir().join(format!("conclave-vs-{}.toml", std::process::id()));
        std::fs::write(
            &profile,
            format!("base = \"default\"\nworkers = {workers}\n"),
        )
        .expect("profile");
        let path = profile.display().to_string();
        let d = Daemon::start_with(Some(&config(300)), &["--profile", &path]);
        let _ = std::fs::remove_file(&profile);
        d
    };
    let (mut a, mut b) = pair(&d);
    a.set_auto_flush_ok(true);
    let bn = b.private_name().to_owned();
    let mut c = d.client("c");
    c.set_auto_flush_ok(true);
    let cn = c.private_name().to_owned();
    c.join("vs.room").unwrap();
    // a and c keep reading (automatic answers are sent while the application reads);
    // b never reads, so never answers: its daemon ends it.
    let watch = |conn: &mut Connection| {
        let joined = expect_view(conn, "vs.room", &cn, true);
        let gone = expect_view(conn, "vs.room", &bn, false);
        (joined, gone)
    };
    let (from_a, from_c) = std::thread::scope(|s| {
        let ta = s.spawn(|| watch(&mut a));
        let tc = s.spawn(|| watch(&mut c));
        expect_goodbye_then_close(&mut b, "flush timeout");
        (ta.join().expect("a"), tc.join().expect("c"))
    });
    for (who, ((_, joined_reason, joined), (_, gone_reason, left))) in
        [("a", from_a), ("c", from_c)]
    {
        assert_eq!(joined_reason, MembershipReason::Join, "{who}");
        assert_eq!(
            joined.len(),
            3,
            "{who}: the join's view comes first, with b"
        );
        assert_eq!(gone_reason, MembershipReason::Disconnect, "{who}");
        assert_eq!(left.len(), 2, "{who}");
    }
    let status = a.status().unwrap();
    assert_eq!(common::status_counter(&status, &["flush", "timeouts"]), 1);
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn the_tokio_front_end_sees_flush_requests_and_answers_them() {
    use conclave::tokio::Connection as Async;
    let d = Daemon::start_with(Some(&config(10_000)), &[]);
    let mut a = Async::connect_as(d.unix(), "ta").await.unwrap();
    let mut b = Async::connect_as(d.tcp(), "tb").await.unwrap();
    let bn = b.private_name().to_owned();
    a.join("vs.t").await.unwrap();
    let mut request = None;
    let mut joined = false;
    // a: its own view, then b's join asks a to flush; b: its view after a's answer.
    for _ in 0..200 {
        match a.receive(Duration::from_millis(50)).await.unwrap() {
            Some(Event::Membership { members, .. }) if members.len() == 1 && !joined => {
                joined = true;
                b.join("vs.t").await.unwrap();
            }
            Some(Event::FlushRequest {
                group,
                reason,
                changed,
                ..
            }) => {
                assert_eq!((group.as_str(), reason), ("vs.t", MembershipReason::Join));
                assert_eq!(changed, std::slice::from_ref(&bn));
                a.multicast(Service::Agreed, &["vs.t"], 0, b"old")
                    .await
                    .unwrap();
                a.flush_ok("vs.t").await.unwrap();
                assert!(matches!(
                    a.multicast(Service::Agreed, &["vs.t"], 0, b"no").await,
                    Err(Error::Flushing { .. })
                ));
                request = Some(());
            }
            Some(Event::Membership { members, .. }) if members.len() == 2 => break,
            _ => {}
        }
    }
    assert!(request.is_some(), "a was asked to flush");
    // b joined after "old" was delivered: it sees its view, not the old-view message.
    let mut seen = Vec::new();
    while let Some(ev) = b.receive(Duration::from_millis(300)).await.unwrap() {
        seen.push(ev);
    }
    assert!(
        matches!(seen.as_slice(), [Event::Membership { members, .. }] if members.len() == 2),
        "{seen:?}"
    );
    a.multicast(Service::Agreed, &["vs.t"], 0, b"new")
        .await
        .unwrap();
}
