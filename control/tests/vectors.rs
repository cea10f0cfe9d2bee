//! Known-answer vectors for all five protocols: fixed seeds, fixed scenarios, and the
//! public values and group secrets they must produce, kept in `tests/vectors/<protocol>.json`
//! (format `conclave-kat-v1`, docs/keys.md). The `blinded_keys` entries are the trees'
//! blinded keys for TGDH and STR, and each protocol's public values otherwise: GDH's partial
//! keys `partial:<member>`, BD's `z:<member>`/`X:<member>`, CKD's blinded values. Any
//! change to the math, the tree shapes or the message order shows up as a byte difference.
//!
//! Regenerate (only after a deliberate change) with
//! `CONCLAVE_REGEN_VECTORS=1 cargo test -p conclave-control --test vectors`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use conclave_control::keys::bd::Bd;
use conclave_control::keys::ckd::Ckd;
use conclave_control::keys::gdh::Gdh;
use conclave_control::keys::modp::Modp2048;
use conclave_control::keys::str_tree::Str;
use conclave_control::keys::tgdh::{NodeView, Tgdh};
use conclave_control::keys::{
    Destination, DhGroup, Directory, Identity, KeyAgreement, MemberId, Ristretto255, View,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{Value, json};

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A named sequence of views; each view lists its members oldest first. Members not in
/// a view keep their state (so two disjoint views model a partition that carries on).
struct Scenario {
    name: &'static str,
    event_names: &'static [&'static str],
    views: &'static [&'static [&'static str]],
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "joins-to-5",
        event_names: &["create", "join", "join", "merge-2-new"],
        views: &[
            &["a"],
            &["a", "b"],
            &["a", "b", "c"],
            &["a", "b", "c", "d", "e"],
        ],
    },
    Scenario {
        name: "leave-partition-refresh",
        event_names: &["create", "leave", "partition", "refresh"],
        views: &[
            &["a", "b", "c", "d", "e"],
            &["a", "c", "d", "e"],
            &["a", "e"],
            &["a", "e"],
        ],
    },
    Scenario {
        name: "merge-3-and-2",
        event_names: &["create", "create-other", "merge"],
        views: &[&["a", "b", "c"], &["d", "e"], &["a", "b", "c", "d", "e"]],
    },
];

/// An instance whose public values the vectors record, as `{node, bk}` JSON entries.
trait Instance: KeyAgreement {
    fn snapshot(&self) -> Vec<Value>;
}

fn tree_entries(nodes: Vec<NodeView>) -> Vec<Value> {
    nodes
        .into_iter()
        .map(|n| {
            json!({
                "node": n.members.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","),
                "bk": n.blinded_key.as_deref().map(hex),
            })
        })
        .collect()
}

fn named_entries(values: Vec<(String, Vec<u8>)>) -> Vec<Value> {
    values
        .into_iter()
        .map(|(node, bk)| json!({ "node": node, "bk": hex(&bk) }))
        .collect()
}

impl<G: DhGroup> Instance for Tgdh<G> {
    fn snapshot(&self) -> Vec<Value> {
        tree_entries(Tgdh::snapshot(self))
    }
}

impl<G: DhGroup> Instance for Str<G> {
    fn snapshot(&self) -> Vec<Value> {
        tree_entries(Str::snapshot(self))
    }
}

impl<G: DhGroup> Instance for Gdh<G> {
    fn snapshot(&self) -> Vec<Value> {
        named_entries(self.public_values())
    }
}

impl<G: DhGroup> Instance for Bd<G> {
    fn snapshot(&self) -> Vec<Value> {
        named_entries(self.public_values())
    }
}

impl<G: DhGroup> Instance for Ckd<G> {
    fn snapshot(&self) -> Vec<Value> {
        named_entries(self.public_values())
    }
}

type Make = fn(Arc<Identity>, Directory) -> Box<dyn Instance>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Plays one scenario with seeded randomness and in-order delivery; records, after each
/// view, the oldest member's public values and the group secret all members agreed on.
fn play(make: Make, seed: u64, scenario: &Scenario) -> Value {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let ids: BTreeMap<MemberId, Arc<Identity>> = NAMES
        .iter()
        .map(|n| {
            let id = MemberId::new(*n);
            (id.clone(), Arc::new(Identity::generate(id, &mut rng)))
        })
        .collect();
    let dir = Directory::new(ids.iter().map(|(k, v)| (k.clone(), v.verifying_key())));
    let mut insts: BTreeMap<MemberId, Box<dyn Instance>> = BTreeMap::new();
    let mut views: BTreeMap<MemberId, View> = BTreeMap::new();
    let mut steps = Vec::new();
    for (i, members) in scenario.views.iter().enumerate() {
        let view = View::new(
            "kat",
            i as u64 + 1,
            members.iter().map(|m| MemberId::new(*m)),
        );
        let mut queue: VecDeque<(MemberId, MemberId, Vec<u8>)> = VecDeque::new();
        let route = |from: &MemberId,
                     sends: Vec<conclave_control::keys::Outgoing>,
                     queue: &mut VecDeque<_>,
                     view: &View| {
            for s in sends {
                match s.to {
                    Destination::Broadcast => {
                        for m in view.member_ids() {
                            queue.push_back((from.clone(), m.clone(), s.bytes.clone()));
                        }
                    }
                    Destination::Unicast(to) => queue.push_back((from.clone(), to, s.bytes)),
                }
            }
        };
        for m in view.member_ids() {
            let inst = insts
                .entry(m.clone())
                .or_insert_with(|| make(ids[m].clone(), dir.clone()));
            views.insert(m.clone(), view.clone());
            let out = inst.handle_view(&view, &mut rng).expect("valid view");
            route(m, out.sends, &mut queue, &view);
        }
        for _ in 0..10_000 {
            let Some((from, to, bytes)) = queue.pop_front() else {
                break;
            };
            let out = insts
                .get_mut(&to)
                .expect("receiver exists")
                .handle_message(&from, &bytes, &mut rng)
                .expect("message accepted");
            let to_view = views[&to].clone();
            route(&to, out.sends, &mut queue, &to_view);
        }
        assert!(queue.is_empty(), "run did not go quiet");
        let oldest = &insts[&view.members[0].id];
        let key = oldest.current_key().expect("agreed").clone();
        for m in view.member_ids() {
            assert_eq!(insts[m].current_key(), Some(&key), "{m} disagrees");
        }
        let tree = oldest.snapshot();
        steps.push(json!({
            "event": scenario.event_names[i],
            "epoch": view.epoch,
            "members": members,
            "blinded_keys": tree,
            "group_secret": hex(&key.secret),
        }));
    }
    json!({ "scenario": scenario.name, "steps": steps })
}

fn generate(protocol: &str, makers: &[(&str, Make)]) -> String {
    let mut cases = Vec::new();
    for (dh, make) in makers {
        for (i, scenario) in SCENARIOS.iter().enumerate() {
            // MODP is slow in debug builds: its vectors cover the first scenario only.
            if *dh != "ristretto255" && i > 0 {
                continue;
            }
            let seed = 1000 + i as u64;
            let mut case = play(*make, seed, scenario);
            case["dh_group"] = json!(dh);
            case["seed"] = json!(seed);
            cases.push(case);
        }
    }
    let doc = json!({
        "format": "conclave-kat-v1",
        "protocol": protocol,
        "rng": "ChaCha20Rng::seed_from_u64(seed); identities a..e drawn first, in order",
        "cases": cases,
    });
    serde_json::to_string_pretty(&doc).expect("json") + "\n"
}

fn check(file: &str, protocol: &str, makers: &[(&str, Make)]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors")
        .join(file);
    let fresh = generate(protocol, makers);
    if std::env::var_os("CONCLAVE_REGEN_VECTORS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, &fresh).expect("write vectors");
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate with CONCLAVE_REGEN_VECTORS=1)",
            path.display()
        )
    });
    if stored != fresh {
        let first_diff = stored
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{file} differs from the code's output from line {} on: {:?} vs {:?}",
            first_diff + 1,
            stored.lines().nth(first_diff),
            fresh.lines().nth(first_diff)
        );
    }
}

#[test]
fn tgdh_known_answers() {
    check(
        "tgdh.json",
        "tgdh",
        &[
            ("ristretto255", |i, d| {
                Box::new(Tgdh::new(Ristretto255, i, d))
            }),
            ("modp2048", |i, d| Box::new(Tgdh::new(Modp2048, i, d))),
        ],
    );
}

#[test]
fn str_known_answers() {
    check(
        "str.json",
        "str",
        &[
            ("ristretto255", |i, d| {
                Box::new(Str::new(Ristretto255, i, d))
            }),
            ("modp2048", |i, d| Box::new(Str::new(Modp2048, i, d))),
        ],
    );
}

#[test]
fn gdh_known_answers() {
    check(
        "gdh.json",
        "gdh",
        &[
            ("ristretto255", |i, d| {
                Box::new(Gdh::new(Ristretto255, i, d))
            }),
            ("modp2048", |i, d| Box::new(Gdh::new(Modp2048, i, d))),
        ],
    );
}

#[test]
fn bd_known_answers() {
    check(
        "bd.json",
        "bd",
        &[
            ("ristretto255", |i, d| Box::new(Bd::new(Ristretto255, i, d))),
            ("modp2048", |i, d| Box::new(Bd::new(Modp2048, i, d))),
        ],
    );
}

#[test]
fn ckd_known_answers() {
    check(
        "ckd.json",
        "ckd",
        &[
            ("ristretto255", |i, d| {
                Box::new(Ckd::new(Ristretto255, i, d))
            }),
            ("modp2048", |i, d| Box::new(Ckd::new(Modp2048, i, d))),
        ],
    );
}
