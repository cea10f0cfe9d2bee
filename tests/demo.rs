//! The README's demo command stays true: `conclave demo` starts a daemon on the embedded
//! default config and walks its clients through joins, messages, a disconnect, a leave and
//! shutdown, checking each step as it goes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{conclave_cli, conclaved};

#[test]
fn demo_runs_to_completion_on_the_embedded_default_config() {
    // The demo uses the default endpoints; something else holding them (a developer's own
    // daemon) is reported as such rather than as a demo failure.
    assert!(
        std::net::TcpListener::bind("127.0.0.1:4803").is_ok(),
        "127.0.0.1:4803 is in use on this machine: stop the daemon holding it and rerun"
    );
    assert!(
        conclaved().exists(),
        "the demo needs conclaved beside conclave"
    );
    let mut child = Command::new(conclave_cli())
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("conclave demo starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on the demo") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "conclave demo did not finish within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("demo output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(status.success(), "demo failed:\n{text}");
    for step in [
        "view 1.2 of demo-chat (Join of #bob#local)",
        "agreed message from #alice#local: \"hello bob\"",
        "reliable message from #carol#local: \"psst, bob\"",
        "(Disconnect of #carol#local)",
        "(Leave of #bob#local)",
        "goodbye: daemon shutting down",
        "Demo complete.",
    ] {
        assert!(text.contains(step), "demo output lacks {step:?}:\n{text}");
    }
    assert!(
        !std::path::Path::new("/tmp/conclave-4803.sock").exists(),
        "the daemon left its socket file behind"
    );
}

#[test]
fn demo_uses_the_daemon_that_daemon_names() {
    let mut d = common::Daemon::start();
    let out = Command::new(conclave_cli())
        .args(["--daemon", &format!("unix:{}", d.socket.display()), "demo"])
        .output()
        .expect("conclave demo runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Using the daemon at"), "{text}");
    assert!(text.contains("Demo complete."), "{text}");
    assert!(
        d.running(),
        "the demo leaves a daemon it did not start running"
    );
}
