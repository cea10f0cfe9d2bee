//! What clients of group `g` saw across daemon configuration changes, for the membership
//! tests: a recorder and a profile with short membership timeouts.

use std::time::{Duration, Instant};

use conclave::{Connection, Event, MembershipReason, ViewKind};

use super::cluster::{Backend, profile_text};

/// The default profile with a short token timeout, so that the tests do not wait long.
pub fn quick_profile(backend: Backend) -> String {
    let text = profile_text("default", backend);
    assert!(
        text.contains("token_timeout_ms = 700"),
        "the default profile changed"
    );
    // `[ring]` is the profile's last table, so the appended key lands in it.
    text.replace("token_timeout_ms = 700", "token_timeout_ms = 300")
        + "consensus_timeout_ms = 120\n"
}

/// What a client saw of group `g`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A message: sender and payload.
    Data(String, Vec<u8>),
    /// A view: kind, reason and members.
    View(ViewKind, MembershipReason, Vec<String>),
}

/// Receives until `done` says the history is complete; panics after `limit`.
pub fn record(
    c: &mut Connection,
    limit: Duration,
    mut done: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "{} saw only {seen:?}",
            c.private_name()
        );
        match c.receive(Duration::from_millis(100)) {
            Ok(Some(Event::Data {
                sender, payload, ..
            })) => seen.push(Seen::Data(sender, payload)),
            Ok(Some(Event::Membership {
                group,
                kind,
                reason,
                members,
                ..
            })) if group == "g" => seen.push(Seen::View(kind, reason, members)),
            Ok(_) => {}
            Err(e) => panic!("{}: {e}; saw {seen:?}", c.private_name()),
        }
    }
    seen
}
