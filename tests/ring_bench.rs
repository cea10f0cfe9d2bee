//! `conclave-bench ring` end to end (debug build, tiny counts): three daemons start from
//! the generated configuration, every receiver gets every message, and the table, CSV and
//! SVG come out.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::conclave_bench;

#[test]
fn bench_ring_writes_table_csv_and_svg_with_every_message_counted() {
    let out_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(conclave_bench())
        .args(["ring", "--sizes", "100,3000", "--services", "agreed,safe"])
        .args(["--senders", "1,3", "--repeats", "1", "--count", "300"])
        .args(["--backend", "fallback", "--run-timeout", "60", "--out"])
        .arg(out_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "conclave-bench ring did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("UDP backend fallback"), "{table}");
    for row in [
        "| agreed | 1 | 100 |",
        "| agreed | 3 | 3000 |",
        "| safe | 1 | 3000 |",
        "| safe | 3 | 100 |",
    ] {
        assert!(table.contains(row), "missing {row} in {table}");
    }
    let csv = std::fs::read_to_string(out_dir.path().join("ring.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        24,
        "2 services x 2 sender counts x 2 sizes x 3 receivers"
    );
    for row in rows {
        let cols: Vec<&str> = row.split(',').collect();
        assert_eq!(cols[5], "300", "every message arrived: {row}");
        assert_eq!(cols[9], "0", "none missing: {row}");
        assert_eq!(cols[10], "0", "none out of order: {row}");
    }
    let svg = std::fs::read_to_string(out_dir.path().join("ring.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 8, "2 panels x 4 series");
}
