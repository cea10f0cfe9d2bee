//! Protocol version 2: every Error names the request it answers (a client-chosen id), and
//! a client's requests are answered in the order sent, on one daemon with several workers
//! and on a ring of three.

mod common;

use std::process::Command;

use common::cluster::{Backend, Cluster, profile_text};
use common::{Daemon, Raw, conclave_cli, status_counter};
use conclave::ErrorCode;
use conclave_control::wire::client::{DaemonFrame, RefuseCode, Service, encode};

/// What a raw client saw, in order.
#[derive(Debug, PartialEq)]
enum Seen {
    View(String),
    Data(Vec<u8>),
    Error(u32, ErrorCode),
}

/// Reads frames until the Error answering `request`; returns everything seen up to it.
fn until_error(raw: &mut Raw, request: u32) -> Vec<Seen> {
    let mut seen = Vec::new();
    raw.expect_frame(&format!("the error answering request {request}"), |f| {
        let s = match f {
            DaemonFrame::Membership { group, .. } => Seen::View((*group).to_owned()),
            DaemonFrame::Data { payload, .. } => Seen::Data(payload.to_vec()),
            DaemonFrame::Error { request, code, .. } => Seen::Error(*request, *code),
            _ => return None,
        };
        let done = matches!(s, Seen::Error(r, _) if r == request);
        seen.push(s);
        done.then_some(())
    });
    seen
}

#[test]
fn every_error_names_the_request_it_answers() {
    let d = Daemon::start();
    let (mut raw, me) = Raw::hello(&d, "numbered");
    let mut b = Vec::new();
    encode::join(&mut b, 11, "g");
    encode::join(&mut b, 12, "bad#group");
    encode::leave(&mut b, 13, "never-joined");
    encode::multicast(&mut b, 14, Service::Agreed, 0, ["nobody-here"], b"x");
    encode::join(&mut b, 15, "g");
    encode::multicast(&mut b, 16, Service::Agreed, 0, [me.as_str()], b"to me");
    encode::multicast(&mut b, 17, Service::Agreed, 0, ["#ghost#local"], b"x");
    raw.send(&b);
    let seen = until_error(&mut raw, 17);
    assert_eq!(
        seen,
        [
            Seen::View("g".into()),
            Seen::Error(12, ErrorCode::BadGroupName),
            Seen::Error(13, ErrorCode::NotJoined),
            Seen::Error(14, ErrorCode::NoRecipients),
            Seen::Error(15, ErrorCode::AlreadyJoined),
            Seen::Data(b"to me".to_vec()),
            Seen::Error(17, ErrorCode::UnknownRecipient),
        ]
    );
    // A malformed request still names itself when its id could be read.
    let mut bad = Vec::new();
    encode::join(&mut bad, 18, "g2");
    let len = bad.len();
    bad.truncate(len - 1);
    bad[..4].copy_from_slice(&((len - 5) as u32).to_le_bytes());
    raw.send(&bad);
    assert_eq!(
        until_error(&mut raw, 18),
        [Seen::Error(18, ErrorCode::MalformedFrame)]
    );
    let mut watcher = d.client("watcher");
    let status = watcher.status().unwrap();
    assert_eq!(
        status_counter(&status, &["errors_by_code", "NoRecipients"]),
        1
    );
    assert_eq!(status_counter(&status, &["messages_undeliverable"]), 1);
}

#[test]
fn a_version_one_client_is_refused_clearly() {
    let d = Daemon::start();
    let mut raw = Raw::connect(&d);
    let mut b = Vec::new();
    encode::hello(&mut b, 1, "old");
    raw.send(&b);
    let (code, reason) = raw.expect_frame("refusal", |f| match f {
        DaemonFrame::Refused { code, reason } => Some((*code, (*reason).to_owned())),
        _ => None,
    });
    assert_eq!(code, RefuseCode::UnsupportedVersion);
    assert!(
        reason.contains("version 1") && reason.contains('2'),
        "{reason}"
    );
}

#[test]
fn a_version_two_client_is_refused_naming_the_flush_round() {
    // Version 2 clients cannot read FlushRequest frames: refused, not left to misbehave.
    let d = Daemon::start();
    let mut raw = Raw::connect(&d);
    let mut b = Vec::new();
    encode::hello(&mut b, 2, "old");
    raw.send(&b);
    let (code, reason) = raw.expect_frame("refusal", |f| match f {
        DaemonFrame::Refused { code, reason } => Some((*code, (*reason).to_owned())),
        _ => None,
    });
    assert_eq!(code, RefuseCode::UnsupportedVersion);
    assert!(
        reason.contains("version 2") && reason.contains("speaks 3") && reason.contains("flush"),
        "{reason}"
    );
}

/// Each client joins its own group, then sends a request the daemon refuses before
/// ordering (a bad group name), leaves, and leaves again: each answer must come in the
/// order of the requests (before the fix, the refusal overtook the join's view).
fn refusals_follow_earlier_effects(daemons: &[&Daemon], rounds: usize) {
    let mut clients: Vec<Raw> = (0..6)
        .map(|i| Raw::hello(daemons[i % daemons.len()], &format!("o{i}")).0)
        .collect();
    for round in 0..rounds {
        for (i, raw) in clients.iter_mut().enumerate() {
            let group = format!("g{i}-{round}");
            let mut b = Vec::new();
            encode::join(&mut b, 1, &group);
            encode::join(&mut b, 2, "");
            encode::leave(&mut b, 3, &group);
            encode::leave(&mut b, 4, &group);
            raw.send(&b);
            let seen = until_error(raw, 4);
            assert_eq!(
                seen,
                [
                    Seen::View(group.clone()),
                    Seen::Error(2, ErrorCode::BadGroupName),
                    Seen::View(group.clone()),
                    Seen::Error(4, ErrorCode::NotJoined),
                ],
                "round {round}, client {i}"
            );
        }
    }
}

#[test]
fn requests_are_answered_in_order_with_three_workers() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("three.toml");
    std::fs::write(&profile, "base = \"default\"\nworkers = 3\n").unwrap();
    let d = Daemon::start_with(None, &["--profile", &profile.display().to_string()]);
    refusals_follow_earlier_effects(&[&d], 10);
}

#[test]
fn requests_are_answered_in_order_on_a_ring_of_three() {
    let cluster = Cluster::start(
        &["a", "b", "c"],
        &profile_text("default", Backend::Fallback),
    );
    let daemons: Vec<&Daemon> = cluster.daemons.iter().collect();
    refusals_follow_earlier_effects(&daemons, 5);
}

#[test]
fn flood_send_to_an_empty_group_fails_instead_of_reporting_a_rate() {
    let d = Daemon::start();
    let out = Command::new(conclave_cli())
        .args(["--daemon", &format!("unix:{}", d.socket.display())])
        .args(["flood", "send", "--group", "nobody", "--count", "5000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("NoRecipients"), "{stderr}");
    assert!(stdout.is_empty(), "no throughput report: {stdout}");
}

#[test]
fn user_mode_asks_about_a_misspelt_service_instead_of_sending() {
    let d = Daemon::start();
    let mut child = Command::new(conclave_cli())
        .args(["--daemon", &format!("unix:{}", d.socket.display())])
        .args(["user", "--name", "typist"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"j saf\ns saf chat x\ns safe saf y\nq\n")
        .unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "user mode did not quit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("did you mean safe"), "{text}");
    assert!(
        !text.contains("] chat x"),
        "nothing went to the group saf: {text}"
    );
    assert!(text.contains("[safe from #typist#"), "{text}");
}

#[test]
fn a_private_name_is_addressable_from_another_daemon_as_soon_as_it_is_welcomed() {
    let cluster = Cluster::start(
        &["a", "b", "c"],
        &profile_text("default", Backend::Fallback),
    );
    // The peer sits at the daemon that holds the idle token, the fresh clients at the
    // last one: a fresh client's Connect waits for the token, and the peer's send (made
    // the moment the fresh client is welcomed) would otherwise be ordered first.
    let mut peer = cluster.daemons[0].client("peer");
    for i in 0..30 {
        let mut fresh = cluster.daemons[2].client(&format!("fresh{i}"));
        // The moment the name is known to the client, a client of another daemon uses it.
        let to = fresh.private_name().to_owned();
        peer.send_to(&to, Service::Agreed, 0, format!("hello {i}").as_bytes())
            .unwrap();
        let got = common::expect_event(&mut fresh, "the peer's message", |ev| match ev {
            conclave::Event::Data { payload, .. } => Some(payload.clone()),
            _ => None,
        });
        assert_eq!(got, format!("hello {i}").as_bytes());
    }
    let errors: Vec<_> = common::drain(&mut peer, std::time::Duration::from_millis(200))
        .into_iter()
        .filter(|e| matches!(e, conclave::Event::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "no UnknownRecipient: {errors:?}");
}
