//! The `conclave` CLI against a real daemon: flood, user and status.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Daemon, WAIT, conclave_bench, conclave_cli};

fn socket_arg(d: &Daemon) -> String {
    format!("unix:{}", d.socket.display())
}

#[test]
fn flood_receiver_counts_every_message_and_reports_latency() {
    let d = Daemon::start();
    let n = 5000;
    let mut recv = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(&d), "flood", "recv", "--json"])
        .args(["--group", "cli-flood", "--size", "64", "--service", "fifo"])
        .args(["--count", &n.to_string(), "--timeout", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = recv.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(
        rx.recv_timeout(WAIT).expect("receiver ready line"),
        "flood receiver ready"
    );
    let send = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(&d), "flood", "send", "--json"])
        .args(["--group", "cli-flood", "--size", "64", "--service", "fifo"])
        .args(["--count", &n.to_string(), "--timeout", "30"])
        .output()
        .unwrap();
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&send.stdout).unwrap();
    assert_eq!(sent["role"], "send");
    assert_eq!(sent["messages"], n);
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("receiver report");
    let got: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["role"], "recv");
    assert_eq!(got["messages"], n);
    assert_eq!(got["bytes"], n * 64);
    assert_eq!(got["missing"], 0);
    assert_eq!(
        got["out_of_order"], 0,
        "fifo from one sender arrives in order"
    );
    assert_eq!(got["complete"], true);
    assert_eq!(got["latency"]["samples"], n);
    assert!(got["latency"]["p50_us"].as_f64().unwrap() > 0.0);
    let deadline = Instant::now() + WAIT;
    while recv.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "receiver did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(recv.wait().unwrap().success());
}

#[test]
fn user_mode_runs_a_script_of_commands() {
    let d = Daemon::start();
    let mut child = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(&d), "user", "--name", "scripted"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"j chat\ns chat hello world\ns fifo chat second\nl nothere\nr\nm\nq\n")
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "user mode did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as #scripted#"), "{text}");
    assert!(text.contains("Join of #scripted#"), "{text}");
    assert!(
        text.contains("[agreed from #scripted#") && text.contains("hello world"),
        "{text}"
    );
    assert!(text.contains("[fifo from #scripted#"), "{text}");
    assert!(text.contains("[error NotJoined]"), "{text}");
    assert!(
        text.contains("chat view "),
        "m lists the membership: {text}"
    );
}

#[test]
fn status_summarises_by_default_and_leaves_itself_out() {
    let d = Daemon::start();
    let mut member = d.client("watched");
    member.join("visible").unwrap();
    common::expect_own_view(&mut member, "visible");
    let out = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(&d), "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("daemon local (profile default)"), "{text}");
    assert!(
        text.contains("clients (1):\n  #watched#local over unix, in visible\n"),
        "only the watched client, not the status tool: {text}"
    );
    assert!(text.contains("visible view "), "{text}");
    assert!(text.contains("  clients_welcomed "), "{text}");
    assert!(!text.contains(" 0\n"), "zero counters are left out: {text}");
}

#[test]
fn status_json_pretty_prints_clients_groups_and_counters() {
    let d = Daemon::start();
    let mut member = d.client("watched");
    member.join("visible").unwrap();
    common::expect_own_view(&mut member, "visible");
    let out = Command::new(conclave_cli())
        .args(["--daemon", &socket_arg(&d), "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().count() > 10,
        "pretty-printed over many lines: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert!(groups.iter().any(|g| g["name"] == "visible"), "{v}");
    assert!(
        v["counters"]["clients_welcomed"].as_u64().unwrap() >= 2,
        "{v}"
    );
    let clients = v["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "the status tool leaves itself out: {v}");
}

#[test]
fn bench_flood_writes_table_csv_and_svg() {
    let out_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(conclave_bench())
        .args(["flood", "--transports", "unix,tcp", "--sizes", "100,2000"])
        .args([
            "--repeats",
            "2",
            "--count",
            "300",
            "--run-timeout",
            "60",
            "--out",
        ])
        .arg(out_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "conclave-bench did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "| unix | 100 |",
        "| unix | 2000 |",
        "| tcp | 100 |",
        "| tcp | 2000 |",
    ] {
        assert!(table.contains(row), "missing {row} in {table}");
    }
    let csv = std::fs::read_to_string(out_dir.path().join("flood.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "2 transports x 2 sizes x 2 repeats: {csv}");
    for row in rows {
        let cols: Vec<&str> = row.split(',').collect();
        assert_eq!(cols[4], "300", "every message arrived: {row}");
        assert_eq!(cols[9], "0", "none missing: {row}");
    }
    let svg = std::fs::read_to_string(out_dir.path().join("flood.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "2 panels x 2 transports"
    );
}
