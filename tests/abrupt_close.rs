//! A client that vanishes mid-frame must never keep its slot, its name or its groups:
//! for every client frame kind and every byte offset into it, on both transports, a
//! client sends that much and closes; afterwards the daemon must list nobody and accept
//! `max_clients` new clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Daemon;
use conclave::{Address, Connection, Error, Service};
use conclave_control::wire::client::{
    DaemonFrame, PROTOCOL_VERSION, RefuseCode, decode_daemon, encode, max_frame_len, split_frame,
};

/// Fewer than the abrupt closes of one run, so leaked slots would run out.
const MAX_CLIENTS: usize = 16;

const CONFIG: &str = r#"
me = "d"
[[daemons]]
name = "d"
address = "127.0.0.1"
ring_port = 1
client_port = @PORT@

[clients]
max_clients = 16
"#;

#[derive(Clone, Copy, Debug)]
enum Transport {
    Unix,
    Tcp,
}

trait Socket: Read + Write {}
impl<T: Read + Write> Socket for T {}

fn connect(d: &Daemon, t: Transport) -> Box<dyn Socket> {
    match t {
        Transport::Unix => {
            let s = UnixStream::connect(&d.socket).expect("unix connect");
            s.set_read_timeout(Some(common::WAIT)).expect("timeout");
            Box::new(s)
        }
        Transport::Tcp => {
            let s = TcpStream::connect(("127.0.0.1", d.port)).expect("tcp connect");
            s.set_read_timeout(Some(common::WAIT)).expect("timeout");
            s.set_nodelay(true).expect("nodelay");
            Box::new(s)
        }
    }
}

/// Reads the Welcome and the view of the client's join: true then, false for a refusal
/// because the daemon has not yet noticed the previous abrupt closes. Everything the
/// daemon sent is read, so the close that follows is a plain FIN: closing a TCP socket
/// with unread input sends a reset instead, which the daemon noticed even before the fix.
fn welcomed(s: &mut dyn Socket, what: &str) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + common::WAIT;
    let mut welcome = false;
    loop {
        while let Some((body, used)) = split_frame(&buf, max_frame_len(1 << 20)).expect("framing") {
            match decode_daemon(body).expect("daemon frame") {
                DaemonFrame::Welcome { .. } => welcome = true,
                DaemonFrame::Membership { .. } if welcome => return true,
                DaemonFrame::Refused {
                    code: RefuseCode::TooManyClients,
                    ..
                } => {
                    return false;
                }
                other => panic!("{what}: expected a welcome, got {other:?}"),
            }
            buf.drain(..used);
        }
        assert!(Instant::now() < deadline, "{what}: no welcome");
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            // A refused connection may be reset before its Refused frame is read.
            Err(_) => return false,
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Every client frame kind, encoded whole; `true` when it is sent after a hello (which
/// joins the group named like the client).
fn frames(name: &str) -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut hello = Vec::new();
    encode::hello(&mut hello, PROTOCOL_VERSION, name);
    let mut join = Vec::new();
    encode::join(&mut join, 0, "g2");
    let mut leave = Vec::new();
    encode::leave(&mut leave, 0, name);
    let mut multicast = Vec::new();
    encode::multicast(&mut multicast, 0, Service::Agreed, 7, [name], b"abc");
    let mut disconnect = Vec::new();
    encode::disconnect(&mut disconnect);
    let mut status = Vec::new();
    encode::status_request(&mut status, 0);
    vec![
        ("hello", hello, false),
        ("join", join, true),
        ("leave", leave, true),
        ("multicast", multicast, true),
        ("disconnect", disconnect, true),
        ("status", status, true),
    ]
}

/// The names in the status report other than `me`, and the groups that have members.
fn listed(status: &str, me: &str) -> (Vec<String>, Vec<String>) {
    let v: serde_json::Value = serde_json::from_str(status).expect("status JSON");
    let names = v["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| *n != me)
        .map(str::to_owned)
        .collect();
    let groups = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .map(str::to_owned)
        .collect();
    (names, groups)
}

/// A partial profile (docs/config.md): the default one with three workers, so that
/// clients are also served by session workers.
const THREE_WORKERS: &str = "base = \"default\"\nworkers = 3\n";

fn abrupt_closes_leak_nothing(t: Transport, workers: usize) {
    let d = if workers == 1 {
        Daemon::start_with(Some(CONFIG), &[])
    } else {
        let profile =
            std::env::temp_dir().join(format!("conclave-abrupt-{}-{t:?}.toml", std::process::id()));
        std::fs::write(&profile, THREE_WORKERS).expect("profile");
        let path = profile.display().to_string();
        let d = Daemon::start_with(Some(CONFIG), &["--profile", &path]);
        let _ = std::fs::remove_file(&profile);
        d
    };
    let mut tries = 0;
    // Names of one length, so every hello is as long as this one.
    let name_of = |kind: usize, offset: usize| format!("k{kind}o{offset:03}");
    for (kind_index, (_, whole, _)) in frames(&name_of(0, 0)).into_iter().enumerate() {
        for offset in 0..=whole.len() {
            let name = name_of(kind_index, offset);
            let (_, bytes, after_hello) = frames(&name).swap_remove(kind_index);
            let mut s = connect(&d, t);
            if after_hello {
                let mut hello = Vec::new();
                encode::hello(&mut hello, PROTOCOL_VERSION, &name);
                // Membership to lose as well: the client is in a group of its own (a
                // shared one would hide the leak: the daemon would write the next
                // member's view to the leaked client and so learn that it is gone).
                encode::join(&mut hello, 0, &name);
                let mut attempts = 0;
                while s.write_all(&hello).is_err() || !welcomed(&mut *s, &name) {
                    attempts += 1;
                    assert!(
                        attempts < 100,
                        "{name}: never welcomed (the daemon stays full: leaked slots)"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                    s = connect(&d, t);
                }
            }
            let cut = offset.min(bytes.len());
            // A refused connection (the daemon is still closing earlier ones) may fail
            // here; the loop goes on either way.
            let _ = s.write_all(&bytes[..cut]);
            drop(s);
            tries += 1;
        }
    }
    assert!(tries > 50, "every offset of every kind was tried ({tries})");

    // Bounded: well under the hello timeout (10 s), which would free silent slots anyway.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut watcher = Connection::connect_as(d.tcp(), "watcher").expect("watcher");
    let me = watcher.private_name().to_owned();
    loop {
        let (names, groups) = listed(&watcher.status().expect("status"), &me);
        if names.is_empty() && groups.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{t:?}: after {tries} abrupt closes the daemon still lists clients {names:?} and groups {groups:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(watcher);

    // Every slot is free again and every name reusable.
    let addr = match t {
        Transport::Unix => d.unix(),
        Transport::Tcp => Address::Tcp(format!("127.0.0.1:{}", d.port)),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = Vec::new();
    while held.len() < MAX_CLIENTS {
        let name = name_of(1, held.len());
        match Connection::connect_as(addr.clone(), &name) {
            Ok(c) => held.push(c),
            // The watcher's slot may not be released yet.
            Err(Error::Refused { .. }) | Err(Error::Closed { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{t:?}: client {} of {MAX_CLIENTS} refused: {e}", held.len()),
        }
    }
}

#[test]
fn abrupt_closes_at_every_offset_leak_no_slot_over_unix() {
    abrupt_closes_leak_nothing(Transport::Unix, 1);
}

#[test]
fn abrupt_closes_at_every_offset_leak_no_slot_over_tcp() {
    abrupt_closes_leak_nothing(Transport::Tcp, 1);
}

#[test]
fn abrupt_closes_leak_no_slot_with_three_workers() {
    abrupt_closes_leak_nothing(Transport::Unix, 3);
    abrupt_closes_leak_nothing(Transport::Tcp, 3);
}
