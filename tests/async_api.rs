//! The tokio front end against a real daemon.
#![cfg(feature = "tokio")]

mod common;

use std::time::Duration;

use common::Daemon;
use conclave::tokio::Connection;
use conclave::{Event, MembershipReason, Service};

async fn next_data(c: &mut Connection) -> Event {
    for _ in 0..100 {
        if let Some(ev @ Event::Data { .. }) = c.receive(Duration::from_millis(100)).await.unwrap()
        {
            return ev;
        }
    }
    panic!("no data within 10 s");
}

#[tokio::test(flavor = "current_thread")]
async fn async_connection_joins_sends_receives_and_reports_status() {
    let d = Daemon::start();
    let mut a = Connection::connect_as(d.unix(), "async-a").await.unwrap();
    let mut b = Connection::connect_as(d.tcp(), "async-b").await.unwrap();
    let an = a.private_name().to_owned();
    // Joins sent on two connections have no defined order between them, so b joins only
    // once a has seen its own view: then a sees its join, then b's.
    a.join("async").await.unwrap();
    let first = next_view(&mut a).await;
    b.join("async").await.unwrap();
    let views = [first, next_view(&mut a).await];
    assert!(views[1].0 > views[0].0);
    assert_eq!(views[1].1, MembershipReason::Join);
    assert_eq!(views[1].2.len(), 2);

    for i in 0..100u32 {
        a.multicast_buffered(Service::Fifo, &["async"], 1, &i.to_le_bytes())
            .await
            .unwrap();
    }
    a.flush().await.unwrap();
    for i in 0..100u32 {
        match next_data(&mut b).await {
            Event::Data {
                sender, payload, ..
            } => {
                assert_eq!(sender, an);
                assert_eq!(payload, i.to_le_bytes(), "FIFO order from one sender");
            }
            _ => unreachable!(),
        }
    }
    b.send_to(&an, Service::Reliable, 2, b"direct")
        .await
        .unwrap();
    let status = a.status().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(v["clients"].as_array().is_some_and(|c| c.len() == 2), "{v}");
    // Events that arrived while waiting for the status were kept: a's own 100 messages
    // and then b's direct one.
    let mut own = 0;
    loop {
        match next_data(&mut a).await {
            Event::Data { payload, .. } if payload == b"direct" => break,
            Event::Data { .. } => own += 1,
            _ => unreachable!(),
        }
    }
    assert_eq!(
        own, 100,
        "self-delivery of every message before the direct one"
    );
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

/// The next event at `conn`, which must be a membership notification within 10 s.
async fn next_view(conn: &mut Connection) -> (conclave::ViewId, MembershipReason, Vec<String>) {
    match conn.receive(Duration::from_secs(10)).await.unwrap() {
        Some(Event::Membership {
            view_id,
            reason,
            members,
            ..
        }) => (view_id, reason, members),
        Some(other) => panic!("unexpected {other:?}"),
        None => panic!("no membership within 10 s"),
    }
}
