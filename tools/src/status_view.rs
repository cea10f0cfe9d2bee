//! `conclave status`: the daemon's status document as a person reads it (the daemon, every
//! configured daemon with when it was last heard, clients, groups with members, counters
//! that are not zero), and the
//! document without the asking client itself.

use std::fmt::Write as _;

use serde_json::Value;

/// The status document without the client `me` that asked for it: a status tool is not
/// one of the clients an operator is looking for.
pub fn without_client(mut doc: Value, me: &str) -> Value {
    if let Some(clients) = doc.get_mut("clients").and_then(Value::as_array_mut) {
        clients.retain(|c| c.get("name").and_then(Value::as_str) != Some(me));
    }
    doc
}

/// A short, readable summary of a status document (already without the asking client).
pub fn summary(doc: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let uptime_s = doc["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let _ = writeln!(
        out,
        "daemon {} (profile {}), up {uptime_s:.1} s",
        text(&doc["daemon"]),
        text(&doc["profile"]),
    );
    let ring = &doc["ring"];
    match ring["mode"].as_str() {
        Some("ring") => {
            let members: Vec<String> = ring["members"]
                .as_array()
                .map(|m| m.iter().map(text).collect())
                .unwrap_or_default();
            let mut state = match ring["membership"].as_str() {
                Some(m) if !m.contains(' ') => format!("membership {m}"),
                _ => "ordering".to_owned(),
            };
            if ring["stalled"] == true {
                state.push_str(", STALLED");
            }
            match ring["daemons"].as_array() {
                // Every configured daemon, with when it was last heard from.
                Some(all) => {
                    let _ = writeln!(
                        out,
                        "daemons ({} configured, {} in the ring; {state}):",
                        all.len(),
                        members.len()
                    );
                    for d in all {
                        let heard = d["last_heard_ms_ago"].as_u64().map_or_else(
                            || "never heard".to_owned(),
                            |ms| format!("heard {ms} ms ago"),
                        );
                        let _ = writeln!(
                            out,
                            "  {} at {}: {}, {heard}",
                            text(&d["name"]),
                            text(&d["address"]),
                            if d["member"] == true {
                                "member"
                            } else {
                                "NOT a member"
                            },
                        );
                    }
                }
                None => {
                    let _ = writeln!(
                        out,
                        "daemons ({}): {}; {state}",
                        members.len(),
                        members.join(", ")
                    );
                }
            }
        }
        _ => {
            let _ = writeln!(out, "daemons (1): this one (no ring)");
        }
    }
    let clients = doc["clients"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "clients ({}):", clients.len());
    for c in &clients {
        let groups: Vec<String> = c["groups"]
            .as_array()
            .map(|g| g.iter().map(text).collect())
            .unwrap_or_default();
        let _ = write!(out, "  {} over {}", text(&c["name"]), text(&c["transport"]));
        if !groups.is_empty() {
            let _ = write!(out, ", in {}", groups.join(", "));
        }
        if let Some(q) = c["queued_bytes"].as_u64().filter(|q| *q > 0) {
            let _ = write!(out, ", {q} bytes queued");
        }
        out.push('\n');
    }
    let groups = doc["groups"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "groups ({}):", groups.len());
    for g in &groups {
        let members: Vec<String> = g["members"]
            .as_array()
            .map(|m| m.iter().map(text).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} view {}{}: {}",
            text(&g["name"]),
            text(&g["view_id"]),
            if g["closed"] == true { " (closed)" } else { "" },
            members.join(" ")
        );
    }
    let mut counters = Vec::new();
    nonzero("", &doc["counters"], &mut counters);
    nonzero("ring.", &ring["counters"], &mut counters);
    let _ = writeln!(out, "counters (not zero):");
    for line in counters {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// `name value` for every non-zero number under `v`, nested keys joined with dots.
fn nonzero(prefix: &str, v: &Value, out: &mut Vec<String>) {
    let Some(map) = v.as_object() else {
        return;
    };
    for (k, v) in map {
        match v {
            Value::Number(n) if n.as_f64().is_some_and(|x| x != 0.0) => {
                out.push(format!("{prefix}{k} {n}"));
            }
            Value::Object(_) => nonzero(&format!("{prefix}{k}."), v, out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_names_clients_groups_and_only_counters_that_moved() {
        let doc = json!({
            "daemon": "local", "profile": "default", "uptime_ms": 1500,
            "clients": [
                {"name": "#a#local", "transport": "unix", "groups": ["chat"], "queued_bytes": 0},
                {"name": "#me#local", "transport": "tcp", "groups": [], "queued_bytes": 0},
            ],
            "groups": [{"name": "chat", "view_id": "0.1", "closed": false, "members": ["#a#local"]}],
            "counters": {"connections": 2, "errors": 0, "errors_by_code": {"NotJoined": 1, "TooLarge": 0}},
            "ring": {"mode": "local"},
        });
        let text = summary(&without_client(doc, "#me#local"));
        assert!(
            text.contains("daemon local (profile default), up 1.5 s"),
            "{text}"
        );
        assert!(
            text.contains("clients (1):\n  #a#local over unix, in chat\n"),
            "{text}"
        );
        assert!(!text.contains("#me#local"), "{text}");
        assert!(text.contains("  chat view 0.1: #a#local\n"), "{text}");
        assert!(text.contains("  connections 2\n"), "{text}");
        assert!(text.contains("  errors_by_code.NotJoined 1\n"), "{text}");
        assert!(!text.contains("TooLarge"), "{text}");
        assert!(!text.contains("errors 0"), "{text}");
    }

    #[test]
    fn a_ring_lists_every_daemon_with_when_it_was_heard() {
        let doc = json!({
            "daemon": "a", "profile": "default", "uptime_ms": 10,
            "clients": [], "groups": [], "counters": {},
            "ring": {
                "mode": "ring", "membership": "operational", "stalled": false,
                "members": ["a"],
                "daemons": [
                    {"name": "a", "address": "127.0.0.1:1", "member": true, "last_heard_ms_ago": 0},
                    {"name": "b", "address": "127.0.0.1:2", "member": false, "last_heard_ms_ago": null},
                ],
                "counters": {"token_losses": 1},
            },
        });
        let text = summary(&doc);
        assert!(
            text.contains("daemons (2 configured, 1 in the ring; membership operational):"),
            "{text}"
        );
        assert!(
            text.contains("  a at 127.0.0.1:1: member, heard 0 ms ago\n"),
            "{text}"
        );
        assert!(
            text.contains("  b at 127.0.0.1:2: NOT a member, never heard\n"),
            "{text}"
        );
        assert!(text.contains("  ring.token_losses 1\n"), "{text}");
    }
}
