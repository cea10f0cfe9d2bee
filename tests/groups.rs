//! Group semantics against a real daemon: views, services, self-delivery, many groups,
//! multi-group sends, open and closed groups, private names.

mod common;

use std::time::Duration;

use common::{Daemon, drain, expect_event, expect_own_view, expect_view};
use conclave::{Address, Connection, ErrorCode, Event, MembershipReason, Service};

fn data_from(ev: &Event, want: &[u8]) -> Option<(String, Vec<String>, Service)> {
    match ev {
        Event::Data {
            sender,
            groups,
            service,
            payload,
            ..
        } if payload == want => Some((sender.clone(), groups.clone(), *service)),
        _ => None,
    }
}

fn views_increase_on(addr_of: impl Fn(&Daemon) -> Address) {
    let d = Daemon::start();
    let mut a = Connection::connect_as(addr_of(&d), "alice").expect("alice");
    let mut b = Connection::connect_as(addr_of(&d), "bob").expect("bob");
    let (an, bn) = (a.private_name().to_owned(), b.private_name().to_owned());
    assert!(
        an.starts_with("#alice#") && bn.starts_with("#bob#"),
        "{an} {bn}"
    );

    a.join("room").unwrap();
    let (v1, r1, m1) = expect_view(&mut a, "room", &an, true);
    assert_eq!(r1, MembershipReason::Join);
    assert_eq!(m1, [an.as_str()]);

    b.join("room").unwrap();
    let (v2, r2, m2) = expect_view(&mut a, "room", &bn, true);
    let (vb, _, mb) = expect_view(&mut b, "room", &bn, true);
    assert_eq!(r2, MembershipReason::Join);
    assert!(v2 > v1, "view ids must increase: {v1} then {v2}");
    assert_eq!(vb, v2, "both members see the same view");
    assert_eq!(mb, m2, "both members see the same member order");
    let mut sorted = m2.clone();
    sorted.sort();
    assert_eq!(sorted, {
        let mut v = vec![an.clone(), bn.clone()];
        v.sort();
        v
    });

    b.leave("room").unwrap();
    let (v3, r3, m3) = expect_view(&mut a, "room", &bn, false);
    assert_eq!(r3, MembershipReason::Leave);
    assert!(v3 > v2, "view ids must increase: {v2} then {v3}");
    assert_eq!(m3, [an.as_str()]);

    b.join("room").unwrap();
    let (v4, _, _) = expect_view(&mut a, "room", &bn, true);
    drop(b);
    let (v5, r5, m5) = expect_view(&mut a, "room", &bn, false);
    assert_eq!(r5, MembershipReason::Disconnect);
    assert!(v4 > v3 && v5 > v4, "{v3} {v4} {v5}");
    assert_eq!(m5, [an]);
}

#[test]
fn join_leave_disconnect_views_increase_over_unix() {
    views_increase_on(Daemon::unix);
}

#[test]
fn join_leave_disconnect_views_increase_over_tcp() {
    views_increase_on(Daemon::tcp);
}

#[test]
fn all_six_services_deliver_in_order_with_self_delivery() {
    let d = Daemon::start();
    let mut a = d.client("a");
    let mut b = d.client("b");
    let an = a.private_name().to_owned();
    a.join("svc").unwrap();
    b.join("svc").unwrap();
    expect_view(&mut a, "svc", b.private_name(), true);
    expect_own_view(&mut b, "svc");
    for (i, service) in Service::ALL.into_iter().enumerate() {
        let body = format!("msg-{i}-{}", service.name());
        a.multicast(service, &["svc"], i as u16, body.as_bytes())
            .unwrap();
    }
    for conn in [&mut a, &mut b] {
        for (i, service) in Service::ALL.into_iter().enumerate() {
            let body = format!("msg-{i}-{}", service.name());
            let (sender, groups, got) = expect_event(conn, &body, |ev| match ev {
                Event::Data { .. } => Some(data_from(ev, body.as_bytes()).unwrap_or_else(|| {
                    panic!("expected {body} next (one order for all), got {ev:?}")
                })),
                _ => None,
            });
            assert_eq!(sender, an);
            assert_eq!(groups, ["svc"]);
            assert_eq!(got, service);
        }
    }
}

#[test]
fn a_client_in_many_groups_and_a_multigroup_send_arrives_once() {
    let d = Daemon::start();
    let mut a = d.client("many");
    let mut s = d.client("sender");
    let groups: Vec<String> = (0..40).map(|i| format!("g{i}")).collect();
    for g in &groups {
        a.join(g).unwrap();
    }
    let an = a.private_name().to_owned();
    for g in &groups {
        expect_view(&mut a, g, &an, true);
    }
    // One message to each group, then one to several groups at once.
    for g in &groups {
        s.multicast(Service::Agreed, &[g.as_str()], 1, g.as_bytes())
            .unwrap();
    }
    s.multicast(
        Service::Agreed,
        &["g1", "g2", "g3", "nobody-here"],
        2,
        b"multi",
    )
    .unwrap();
    s.multicast(Service::Agreed, &["g0"], 3, b"after").unwrap();
    for g in &groups {
        let (_, to, _) = expect_event(&mut a, g, |ev| data_from(ev, g.as_bytes()));
        assert_eq!(to, [g.as_str()]);
    }
    let (_, to, _) = expect_event(&mut a, "multi", |ev| data_from(ev, b"multi"));
    assert_eq!(to, ["g1", "g2", "g3", "nobody-here"]);
    // Delivery is in order, so a duplicate would show up before the next message.
    let mut duplicates = 0;
    expect_event(&mut a, "the message after the multi-group one", |ev| {
        if data_from(ev, b"multi").is_some() {
            duplicates += 1;
        }
        data_from(ev, b"after")
    });
    assert_eq!(duplicates, 0, "a multi-group message must arrive once");
}

#[test]
fn open_groups_take_sends_from_non_members() {
    let d = Daemon::start();
    let mut member = d.client("m");
    let mut outsider = d.client("o");
    member.join("open-room").unwrap();
    expect_own_view(&mut member, "open-room");
    outsider
        .multicast(Service::Fifo, &["open-room"], 0, b"from outside")
        .unwrap();
    let (sender, _, _) = expect_event(&mut member, "outsider's message", |ev| {
        data_from(ev, b"from outside")
    });
    assert_eq!(sender, outsider.private_name());
    // The outsider is not a member, so it gets no copy.
    let back = drain(&mut outsider, Duration::from_millis(300));
    assert!(
        back.iter().all(|e| !matches!(e, Event::Data { .. })),
        "{back:?}"
    );
}

const CLOSED_CONFIG: &str = r#"
me = "t1"
[[daemons]]
name = "t1"
address = "127.0.0.1"
ring_port = 1
client_port = @PORT@

[groups]
default = "open"
closed = ["vault", "locked-*"]
"#;

#[test]
fn closed_groups_refuse_non_members() {
    let d = Daemon::start_with(Some(CLOSED_CONFIG), &[]);
    let mut member = d.client("m");
    let mut outsider = d.client("o");
    for g in ["vault", "locked-1"] {
        member.join(g).unwrap();
        expect_own_view(&mut member, g);
        outsider
            .multicast(Service::Agreed, &[g], 0, b"let me in")
            .unwrap();
        let (code, reason) = expect_event(&mut outsider, "NotPermitted", |ev| match ev {
            Event::Error { code, reason, .. } => Some((*code, reason.clone())),
            _ => None,
        });
        assert_eq!(code, ErrorCode::NotPermitted, "{reason}");
        assert!(reason.contains(g), "the reason names the group: {reason}");
    }
    // A member may send, and the outsider is still served.
    member
        .multicast(Service::Agreed, &["vault"], 0, b"inside")
        .unwrap();
    expect_event(&mut member, "member's own message", |ev| {
        data_from(ev, b"inside")
    });
    let got = drain(&mut member, Duration::from_millis(300));
    assert!(
        got.iter().all(|e| data_from(e, b"let me in").is_none()),
        "refused messages must not be delivered: {got:?}"
    );
    outsider.join("vault").unwrap();
    expect_own_view(&mut outsider, "vault");
    outsider
        .multicast(Service::Agreed, &["vault"], 0, b"now a member")
        .unwrap();
    expect_event(&mut member, "new member's message", |ev| {
        data_from(ev, b"now a member")
    });
}

#[test]
fn private_names_reach_one_client_and_unknown_ones_are_errors() {
    let d = Daemon::start();
    let mut a = d.client("alice");
    let mut b = d.client("bob");
    let mut c = d.client("carol");
    let bn = b.private_name().to_owned();
    a.send_to(&bn, Service::Reliable, 5, b"psst").unwrap();
    let (sender, to, _) = expect_event(&mut b, "private message", |ev| data_from(ev, b"psst"));
    assert_eq!(sender, a.private_name());
    assert_eq!(to, [bn.as_str()]);
    let seen = drain(&mut c, Duration::from_millis(300));
    assert!(
        seen.is_empty(),
        "carol must not see bob's message: {seen:?}"
    );
    let daemon = bn.rsplit('#').next().unwrap().to_owned();
    a.send_to(&format!("#nobody#{daemon}"), Service::Reliable, 0, b"?")
        .unwrap();
    let code = expect_event(&mut a, "UnknownRecipient", |ev| match ev {
        Event::Error { code, .. } => Some(*code),
        _ => None,
    });
    assert_eq!(code, ErrorCode::UnknownRecipient);
}
