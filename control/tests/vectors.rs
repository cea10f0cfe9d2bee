//! Known-answer vectors for all five protocols: fixed seeds, fixed scenarios, and the
//! public values and group secrets they must produce, kept in `tests/vectors/<protocol>.json`
//! (format `conclave-kat-v2`, docs/keys.md). The `blinded_keys` entries are the trees'
//! blinded keys for TGDH and STR, and each protocol's public values otherwise: GDH's partial
//! keys `partial:<member>`, BD's `z:<member>`/`X:<member>`, CKD's blinded values. Each step
//! also lists the private inputs every member drew and the exact bytes of every message,
//! so another implementation can replay it. Any change to the math, the key derivation,
//! the tree shapes, the message encoding or the message order shows up as a byte
//! difference.
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
use rand_core::{CryptoRng, RngCore};
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

/// The seeded generator, recording every byte a member draws from it: the private inputs
/// of each step (shares, leaf secrets, nonces), so another implementation can replay a
/// step without reproducing ChaCha20 or this crate's order of draws.
struct Tape<'a> {
    rng: &'a mut ChaCha20Rng,
    drawn: Vec<u8>,
}

impl<'a> Tape<'a> {
    fn new(rng: &'a mut ChaCha20Rng) -> Self {
        Self {
            rng,
            drawn: Vec::new(),
        }
    }
}

impl RngCore for Tape<'_> {
    fn next_u32(&mut self) -> u32 {
        let v = self.rng.next_u32();
        self.drawn.extend_from_slice(&v.to_le_bytes());
        v
    }

    fn next_u64(&mut self) -> u64 {
        let v = self.rng.next_u64();
        self.drawn.extend_from_slice(&v.to_le_bytes());
        v
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.rng.fill_bytes(dest);
        self.drawn.extend_from_slice(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Tape<'_> {}

/// One scenario's run, step by step: what each member was handed, what it drew and what
/// it sent, every message with its exact bytes.
#[derive(Default)]
struct Trace {
    messages: Vec<Value>,
    calls: Vec<Value>,
}

impl Trace {
    /// Records `sends` from `from`; returns their message numbers.
    fn record(
        &mut self,
        from: &MemberId,
        sends: &[conclave_control::keys::Outgoing],
    ) -> Vec<usize> {
        sends
            .iter()
            .map(|s| {
                let to = match &s.to {
                    Destination::Broadcast => "*".to_owned(),
                    Destination::Unicast(m) => m.as_str().to_owned(),
                };
                self.messages.push(json!({
                    "n": self.messages.len(),
                    "from": from.as_str(),
                    "to": to,
                    "bytes": hex(&s.bytes),
                }));
                self.messages.len() - 1
            })
            .collect()
    }
}

/// Plays one scenario with seeded randomness and in-order delivery; records, after each
/// view, the oldest member's public values and the group secret all members agreed on,
/// and the full trace of the step (private inputs drawn and exact message bytes).
fn play(make: Make, seed: u64, scenario: &Scenario) -> Value {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut identities = Vec::new();
    let ids: BTreeMap<MemberId, Arc<Identity>> = NAMES
        .iter()
        .map(|n| {
            let id = MemberId::new(*n);
            let mut tape = Tape::new(&mut rng);
            let identity = Identity::generate(id.clone(), &mut tape);
            identities.push(json!({ "member": n, "ed25519_seed": hex(&tape.drawn) }));
            (id, Arc::new(identity))
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
        let mut trace = Trace::default();
        // In flight: (message number, from, to, bytes).
        let mut queue: VecDeque<(usize, MemberId, MemberId, Vec<u8>)> = VecDeque::new();
        let route = |from: &MemberId,
                     sends: Vec<conclave_control::keys::Outgoing>,
                     numbers: Vec<usize>,
                     queue: &mut VecDeque<_>,
                     view: &View| {
            for (s, n) in sends.into_iter().zip(numbers) {
                match s.to {
                    Destination::Broadcast => {
                        for m in view.member_ids() {
                            queue.push_back((n, from.clone(), m.clone(), s.bytes.clone()));
                        }
                    }
                    Destination::Unicast(to) => queue.push_back((n, from.clone(), to, s.bytes)),
                }
            }
        };
        for m in view.member_ids() {
            let inst = insts
                .entry(m.clone())
                .or_insert_with(|| make(ids[m].clone(), dir.clone()));
            views.insert(m.clone(), view.clone());
            let mut tape = Tape::new(&mut rng);
            let out = inst.handle_view(&view, &mut tape).expect("valid view");
            let drawn = std::mem::take(&mut tape.drawn);
            let numbers = trace.record(m, &out.sends);
            trace.calls.push(json!({
                "member": m.as_str(),
                "input": "view",
                "random": hex(&drawn),
                "sent": numbers,
            }));
            route(m, out.sends, numbers, &mut queue, &view);
        }
        for _ in 0..10_000 {
            let Some((n, from, to, bytes)) = queue.pop_front() else {
                break;
            };
            let mut tape = Tape::new(&mut rng);
            let out = insts
                .get_mut(&to)
                .expect("receiver exists")
                .handle_message(&from, &bytes, &mut tape)
                .expect("message accepted");
            let drawn = std::mem::take(&mut tape.drawn);
            let numbers = trace.record(&to, &out.sends);
            if from != to {
                trace.calls.push(json!({
                    "member": to.as_str(),
                    "input": format!("message {n}"),
                    "random": hex(&drawn),
                    "sent": numbers,
                }));
            }
            let to_view = views[&to].clone();
            route(&to, out.sends, numbers, &mut queue, &to_view);
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
            "calls": trace.calls,
            "messages": trace.messages,
        }));
    }
    json!({ "scenario": scenario.name, "identities": identities, "steps": steps })
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
        "format": "conclave-kat-v2",
        "protocol": protocol,
        "rng": "ChaCha20Rng::seed_from_u64(seed); identities a..e drawn first, in order; every step lists, per call (a view, or message n delivered), the exact bytes the member drew (ristretto255 scalars: from_bytes_mod_order_wide of 64 bytes, redrawn if zero; MODP: crypto-bigint random_mod of q; CKD also draws 32-byte secrets and 12-byte nonces) and the numbers of the messages it sent",
        "key_derivation": "group_secret = HKDF-SHA256(salt = 'conclave group key v2', ikm = encoded DH element (CKD: the 32-byte secret), info = KeyContext::transcript: str 'conclave key context v1', u8 protocol, str dh_group, str group, u64 epoch, u32 count, then per member str name, u64 incarnation; u64 little-endian, str = u16 length + UTF-8)",
        "messages": "bytes = signed envelope: u8 protocol, str group, u64 epoch, str sender, u8 step, u32 length + body, then a 64-byte Ed25519 signature over all of it; to '*' = broadcast",
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

/// The vectors are checkable without this crate's protocol code: for every
/// ristretto255 BD step, each member's secret `r` is rebuilt from the bytes it drew (the
/// first 64 of its view call), the group element `g^(r1 r2 + r2 r3 + … + rn r1)` (plain DH
/// for two, `g^r` alone) from those, and the group secret from the documented
/// derivation (HKDF-SHA256 over the length-prefixed context), written out here again.
#[test]
fn bd_vectors_recompute_from_private_inputs() {
    use curve25519_dalek::Scalar;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
    use hmac::{Hmac, Mac};

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }
    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("key");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    fn str16(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/bd.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("bd.json")).expect("json");
    let mut checked = 0;
    for case in doc["cases"].as_array().expect("cases") {
        if case["dh_group"] != "ristretto255" {
            continue;
        }
        for step in case["steps"].as_array().expect("steps") {
            let members: Vec<&str> = step["members"]
                .as_array()
                .expect("members")
                .iter()
                .map(|m| m.as_str().expect("name"))
                .collect();
            let r: Vec<Scalar> = members
                .iter()
                .map(|m| {
                    let call = step["calls"]
                        .as_array()
                        .expect("calls")
                        .iter()
                        .find(|c| c["member"] == *m && c["input"] == "view")
                        .expect("view call");
                    let drawn = unhex(call["random"].as_str().expect("hex"));
                    let wide: [u8; 64] = drawn[..64].try_into().expect("64 bytes");
                    Scalar::from_bytes_mod_order_wide(&wide)
                })
                .collect();
            let n = r.len();
            let exponent = match n {
                1 => r[0],
                2 => r[0] * r[1],
                _ => (0..n).map(|i| r[i] * r[(i + 1) % n]).sum(),
            };
            let element = (RISTRETTO_BASEPOINT_POINT * exponent).compress();
            let mut info = Vec::new();
            str16(&mut info, "conclave key context v1");
            info.push(4); // Protocol::Bd
            str16(&mut info, "ristretto255");
            str16(&mut info, "kat");
            info.extend_from_slice(&step["epoch"].as_u64().expect("epoch").to_le_bytes());
            info.extend_from_slice(&(n as u32).to_le_bytes());
            for m in &members {
                str16(&mut info, m);
                info.extend_from_slice(&0u64.to_le_bytes());
            }
            let prk = hmac(b"conclave group key v2", element.as_bytes());
            info.push(1);
            let secret = hmac(&prk, &info);
            assert_eq!(
                hex(&secret),
                step["group_secret"].as_str().expect("hex"),
                "{} epoch {}",
                case["scenario"],
                step["epoch"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} steps checked");
}
