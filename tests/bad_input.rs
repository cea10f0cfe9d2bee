//! Malformed and refused input: each gets its typed answer and a counter in `status`,
//! and a well-behaved client keeps being served throughout.

mod common;

use std::time::Duration;

use common::{Daemon, Raw, expect_event, expect_own_view};
use conclave::{Connection, Error, ErrorCode, Event, RefuseCode, Service};
use conclave_control::wire::client::{DaemonFrame, PROTOCOL_VERSION, encode};

/// A counter from the status document, by JSON pointer (0 when absent).
fn counter(conn: &mut Connection, pointer: &str) -> u64 {
    let json = conn.status().expect("status");
    let v: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    v.pointer(pointer).and_then(|n| n.as_u64()).unwrap_or(0)
}

/// A bystander that checks the daemon still serves it: a round trip through a group.
struct Bystander {
    conn: Connection,
    n: u32,
}

impl Bystander {
    fn new(d: &Daemon) -> Bystander {
        let mut conn = d.client("bystander");
        conn.join("calm").unwrap();
        expect_own_view(&mut conn, "calm");
        Bystander { conn, n: 0 }
    }

    fn still_served(&mut self) {
        self.n += 1;
        let body = format!("still here {}", self.n);
        self.conn
            .multicast(Service::Agreed, &["calm"], 0, body.as_bytes())
            .unwrap();
        expect_event(&mut self.conn, &body, |ev| match ev {
            Event::Data { payload, .. } if payload == body.as_bytes() => Some(()),
            _ => None,
        });
    }

    /// Runs `bad`, then checks that `pointer` went up by at least one and we are served.
    fn counts(&mut self, pointer: &str, bad: impl FnOnce()) {
        let before = counter(&mut self.conn, pointer);
        bad();
        let after = counter(&mut self.conn, pointer);
        assert!(
            after > before,
            "{pointer} should count the bad input: {before} -> {after}"
        );
        self.still_served();
    }
}

fn frame(kind_and_body: &[u8]) -> Vec<u8> {
    let mut f = (kind_and_body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(kind_and_body);
    f
}

fn error_frame(raw: &mut Raw) -> (ErrorCode, String) {
    raw.expect_frame("error frame", |f| match f {
        DaemonFrame::Error { code, reason, .. } => Some((*code, (*reason).to_owned())),
        _ => None,
    })
}

#[test]
fn truncated_frame_is_malformed_and_the_session_goes_on() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    let (mut raw, _) = Raw::hello(&d, "raw");
    by.counts("/counters/malformed_frames", || {
        // A join whose string claims 10 bytes but carries 2.
        raw.send(&frame(&[0x02, 10, 0, b'a', b'b']));
        let (code, reason) = error_frame(&mut raw);
        assert_eq!(code, ErrorCode::MalformedFrame, "{reason}");
        assert!(reason.contains("truncated"), "{reason}");
    });
    by.counts("/counters/errors_by_code/UnexpectedFrame", || {
        // A kind byte no client frame uses.
        raw.send(&frame(&[0x7e]));
        let (code, reason) = error_frame(&mut raw);
        assert_eq!(code, ErrorCode::UnexpectedFrame, "{reason}");
        assert!(reason.contains("126"), "{reason}");
    });
    // The same connection still works after its bad frames.
    let mut ok = Vec::new();
    encode::join(&mut ok, 0, "after-junk");
    raw.send(&ok);
    raw.expect_frame("membership after junk", |f| match f {
        DaemonFrame::Membership { group, .. } if *group == "after-junk" => Some(()),
        _ => None,
    });
}

#[test]
fn unknown_protocol_version_is_refused() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    by.counts("/counters/refusals_by_code/UnsupportedVersion", || {
        let mut raw = Raw::connect(&d);
        let mut b = Vec::new();
        encode::hello(&mut b, PROTOCOL_VERSION + 41, "future");
        raw.send(&b);
        let (code, reason) = raw.expect_frame("refusal", |f| match f {
            DaemonFrame::Refused { code, reason } => Some((*code, (*reason).to_owned())),
            _ => None,
        });
        assert_eq!(code, RefuseCode::UnsupportedVersion, "{reason}");
        raw.expect_close();
    });
}

#[test]
fn garbage_instead_of_hello_is_refused() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    by.counts("/counters/refusals_by_code/BadHello", || {
        let mut raw = Raw::connect(&d);
        raw.send(&frame(b"\x01JUNKJUNK"));
        let code = raw.expect_frame("refusal", |f| match f {
            DaemonFrame::Refused { code, .. } => Some(*code),
            _ => None,
        });
        assert_eq!(code, RefuseCode::BadHello);
        raw.expect_close();
    });
}

#[test]
fn an_http_request_instead_of_hello_gets_bad_hello_on_both_transports() {
    const HTTP: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    by.counts("/counters/refusals_by_code/BadHello", || {
        let mut raw = Raw::connect(&d);
        raw.send(HTTP);
        let frames = raw.expect_close();
        assert!(
            frames.iter().any(|f| f.contains("BadHello")),
            "unix: {frames:?}"
        );
    });
    by.counts("/counters/refusals_by_code/BadHello", || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
        tcp.set_read_timeout(Some(common::WAIT)).unwrap();
        tcp.write_all(HTTP).unwrap();
        let mut got = Vec::new();
        // The daemon answers and closes: read to the end of the stream (bounded by the
        // read timeout).
        tcp.read_to_end(&mut got).unwrap();
        let (body, _) = conclave_control::wire::client::split_frame(&got, 1 << 20)
            .unwrap()
            .expect("one whole frame");
        match conclave_control::wire::client::decode_daemon(body).unwrap() {
            DaemonFrame::Refused { code, reason } => {
                assert_eq!(code, RefuseCode::BadHello, "{reason}");
            }
            other => panic!("tcp: expected BadHello, got {other:?}"),
        }
    });
}

#[test]
fn length_over_the_maximum_is_too_large_and_closes() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    by.counts("/counters/errors_by_code/TooLarge", || {
        let (mut raw, _) = Raw::hello(&d, "huge");
        raw.send(&(512u32 << 20).to_le_bytes());
        raw.send(&[0x04; 64]);
        let frames = raw.expect_close();
        assert!(
            frames.iter().any(|f| f.contains("TooLarge")),
            "a TooLarge error comes before the close: {frames:?}"
        );
    });
    // The SDK refuses such a payload itself, before it reaches the wire.
    let mut c = d.client("sdk");
    let max = c.max_payload();
    match c.multicast(Service::Agreed, &["calm"], 0, &vec![0; max + 1]) {
        Err(Error::TooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn bad_group_names_are_rejected_with_the_rule() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    let (mut raw, _) = Raw::hello(&d, "namer");
    let long = "x".repeat(33);
    for (name, hint) in [
        ("", "empty"),
        (long.as_str(), "32"),
        ("a\u{1}b", "printable"),
    ] {
        by.counts("/counters/errors_by_code/BadGroupName", || {
            let mut b = Vec::new();
            encode::join(&mut b, 0, name);
            raw.send(&b);
            let (code, reason) = error_frame(&mut raw);
            assert_eq!(code, ErrorCode::BadGroupName, "{reason}");
            assert!(
                reason.contains(hint),
                "{name:?}: {reason:?} should say {hint}"
            );
        });
    }
    // The SDK checks the same rules locally.
    let mut c = d.client("sdk");
    assert!(matches!(c.join(""), Err(Error::BadName { .. })));
    assert!(matches!(c.join(&long), Err(Error::BadName { .. })));
}

#[test]
fn leave_of_a_group_not_joined_and_double_join() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    let mut c = d.client("leaver");
    by.counts("/counters/errors_by_code/NotJoined", || {
        c.leave("never-joined").unwrap();
        let (code, reason) = expect_event(&mut c, "NotJoined", |ev| match ev {
            Event::Error { code, reason, .. } => Some((*code, reason.clone())),
            _ => None,
        });
        assert_eq!(code, ErrorCode::NotJoined);
        assert!(reason.contains("never-joined"), "{reason}");
    });
    c.join("twice").unwrap();
    expect_own_view(&mut c, "twice");
    by.counts("/counters/errors_by_code/AlreadyJoined", || {
        c.join("twice").unwrap();
        let code = expect_event(&mut c, "AlreadyJoined", |ev| match ev {
            Event::Error { code, .. } => Some(*code),
            _ => None,
        });
        assert_eq!(code, ErrorCode::AlreadyJoined);
    });
}

#[test]
fn duplicate_private_name_is_refused() {
    let d = Daemon::start();
    let mut by = Bystander::new(&d);
    let first = d.client("solo");
    by.counts(
        "/counters/refusals_by_code/DuplicateName",
        || match Connection::connect_as(d.unix(), "solo") {
            Err(Error::Refused { code, reason }) => {
                assert_eq!(code, RefuseCode::DuplicateName, "{reason}")
            }
            other => panic!("expected a DuplicateName refusal, got {other:?}"),
        },
    );
    // Once the first holder leaves, the name is free again.
    first.disconnect().unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        match Connection::connect_as(d.unix(), "solo") {
            Ok(c) => {
                assert!(c.private_name().starts_with("#solo#"));
                break;
            }
            Err(Error::Refused { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("name never freed: {e}"),
        }
    }
    by.still_served();
}

#[test]
fn a_frame_split_across_writes_is_reassembled() {
    let d = Daemon::start();
    let (mut raw, pn) = Raw::hello(&d, "slowpoke");
    let mut b = Vec::new();
    encode::join(&mut b, 0, "bytewise");
    encode::multicast(
        &mut b,
        0,
        Service::Agreed,
        3,
        ["bytewise"],
        b"one byte at a time",
    );
    for chunk in b.chunks(1) {
        raw.send(chunk);
    }
    raw.expect_frame("own message", |f| match f {
        DaemonFrame::Data {
            sender, payload, ..
        } if *sender == pn && *payload == b"one byte at a time" => Some(()),
        _ => None,
    });
}
