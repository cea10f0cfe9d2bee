//! White-box secrecy checks (test builds only). Every member's secrets are read after
//! every step it takes (`KeyAgreement::leak`) and kept, so the adversary is a member that
//! saved everything it ever held. It also holds every message ever published. From that
//! it tries, over ristretto255:
//!
//! * every key-derivation input it held, every symmetric key it held, every group element
//!   found anywhere in a published message (any 32-byte window that decodes), and every
//!   such element raised to every exponent it held;
//! * every AES-GCM ciphertext found in a message (CKD's `nonce ‖ sealed` fields), opened
//!   with every symmetric key it held under every run's associated data;
//!
//! each as the input of the group key derivation under each target run's context. A
//! departed member must not reach any key agreed after it left; a newcomer must not
//! reach any key agreed before it joined. The checks are shown to fail on an injected
//! key-reuse bug (`kdf::fault`): GDH's starter keeping its share, CKD's controller
//! keeping its secret, the others deriving from the previous run's DH value.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::Scalar;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::envelope::BodyWriter;
use super::kdf::{KeyContext, derive_group_key, fault};
use super::{
    Destination, DhGroup, Directory, Identity, KeyAgreement, Leak, Member, MemberId, Protocol,
    Ristretto255, View, new_protocol_instance,
};

/// Everything one member ever held.
#[derive(Default, Clone)]
struct Knowledge {
    scalars: BTreeSet<Vec<u8>>,
    ikms: BTreeSet<Vec<u8>>,
    keys: BTreeSet<[u8; 32]>,
}

impl Knowledge {
    fn absorb(&mut self, leak: Leak) {
        self.scalars.extend(leak.scalars);
        self.ikms.extend(leak.ikms);
        self.keys.extend(leak.keys);
    }
}

struct World {
    protocol: Protocol,
    identities: BTreeMap<MemberId, Arc<Identity>>,
    directory: Directory,
    insts: BTreeMap<MemberId, Box<dyn KeyAgreement>>,
    views: BTreeMap<MemberId, View>,
    queue: VecDeque<(MemberId, MemberId, Vec<u8>)>,
    rng: ChaCha20Rng,
    epoch: u64,
    knowledge: BTreeMap<MemberId, Knowledge>,
    /// Every message ever sent, with the epoch of its sender's view.
    published: Vec<(u64, Vec<u8>)>,
    /// Every agreed key with its view.
    agreed: Vec<(View, [u8; 32])>,
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

impl World {
    fn new(protocol: Protocol, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identities: BTreeMap<MemberId, Arc<Identity>> = NAMES
            .iter()
            .map(|n| {
                let id = MemberId::new(*n);
                (id.clone(), Arc::new(Identity::generate(id, &mut rng)))
            })
            .collect();
        let directory = Directory::new(
            identities
                .iter()
                .map(|(k, v)| (k.clone(), v.verifying_key())),
        );
        Self {
            protocol,
            identities,
            directory,
            insts: BTreeMap::new(),
            views: BTreeMap::new(),
            queue: VecDeque::new(),
            rng,
            epoch: 0,
            knowledge: BTreeMap::new(),
            published: Vec::new(),
            agreed: Vec::new(),
        }
    }

    fn after_step(&mut self, m: &MemberId, sends: Vec<super::Outgoing>) {
        let leak = self.insts[m].leak();
        self.knowledge.entry(m.clone()).or_default().absorb(leak);
        let view = self.views[m].clone();
        for s in sends {
            self.published.push((view.epoch, s.bytes.clone()));
            match s.to {
                Destination::Broadcast => {
                    for to in view.member_ids() {
                        self.queue
                            .push_back((m.clone(), to.clone(), s.bytes.clone()));
                    }
                }
                Destination::Unicast(to) => self.queue.push_back((m.clone(), to, s.bytes)),
            }
        }
    }

    /// Installs a view on `names` and runs it to the end; returns the view and, when all
    /// members agree, their key.
    fn run(&mut self, names: &[&str]) -> (View, Option<[u8; 32]>) {
        self.epoch += 1;
        let view = View {
            group: "g".into(),
            epoch: self.epoch,
            members: names
                .iter()
                .map(|n| Member::new(MemberId::new(*n), 0))
                .collect(),
        };
        let ids: Vec<MemberId> = view.member_ids().cloned().collect();
        for m in &ids {
            if !self.insts.contains_key(m) {
                let inst = new_protocol_instance(
                    self.protocol,
                    Ristretto255,
                    self.identities[m].clone(),
                    self.directory.clone(),
                );
                self.insts.insert(m.clone(), inst);
            }
            self.views.insert(m.clone(), view.clone());
            let out = self
                .insts
                .get_mut(m)
                .expect("made above")
                .handle_view(&view, &mut self.rng)
                .expect("view accepted");
            self.after_step(m, out.sends);
        }
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            let out = self
                .insts
                .get_mut(&to)
                .expect("member")
                .handle_message(&from, &bytes, &mut self.rng)
                .expect("message accepted");
            self.after_step(&to, out.sends);
        }
        let keys: BTreeSet<Option<[u8; 32]>> = ids
            .iter()
            .map(|m| {
                self.insts[m]
                    .current_key()
                    .filter(|k| k.epoch == view.epoch)
                    .map(|k| k.secret)
            })
            .collect();
        let key = match keys.into_iter().collect::<Vec<_>>()[..] {
            [Some(k)] => Some(k),
            _ => None,
        };
        if let Some(k) = key {
            self.agreed.push((view.clone(), k));
        }
        (view, key)
    }
}

fn context_key(protocol: Protocol, view: &View, ikm: &[u8]) -> [u8; 32] {
    let members: Vec<MemberId> = view.member_ids().cloned().collect();
    let incarnations: Vec<u64> = view.members.iter().map(|m| m.incarnation).collect();
    let context = KeyContext {
        protocol,
        dh_group: Ristretto255.name(),
        group: &view.group,
        epoch: view.epoch,
        members: &members,
        incarnations: &incarnations,
    };
    derive_group_key(&context, ikm).secret
}

/// Every group element in `messages`: each 32-byte window that decodes.
fn elements_in<'a>(messages: impl Iterator<Item = &'a Vec<u8>>) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for m in messages {
        for w in m.windows(32) {
            if Ristretto255.decode_element(w).is_ok() {
                out.insert(w.to_vec());
            }
        }
    }
    out
}

/// Every `u32 12 ‖ nonce ‖ u32 len ‖ sealed` field pair in `messages` (CKD's ciphertexts).
fn sealed_in<'a>(messages: impl Iterator<Item = &'a Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for m in messages {
        for i in 0..m.len().saturating_sub(4 + 12 + 4) {
            if m[i..i + 4] != 12u32.to_le_bytes() {
                continue;
            }
            let nonce = &m[i + 4..i + 16];
            let len_at = i + 16;
            let len =
                u32::from_le_bytes(m[len_at..len_at + 4].try_into().expect("4 bytes")) as usize;
            if len > 0 && len_at + 4 + len <= m.len() {
                out.push((nonce.to_vec(), m[len_at + 4..len_at + 4 + len].to_vec()));
            }
        }
    }
    out
}

/// Tries everything `k` allows against `targets` (view, key); returns what reached one.
fn attack(
    protocol: Protocol,
    k: &Knowledge,
    messages: &[Vec<u8>],
    targets: &[(View, [u8; 32])],
) -> Option<String> {
    for (view, key) in targets {
        if k.keys.contains(key) {
            return Some(format!("held the key of epoch {} itself", view.epoch));
        }
    }
    let mut candidates: Vec<(String, Vec<u8>)> = Vec::new();
    candidates.extend(
        k.ikms
            .iter()
            .map(|i| ("a derivation input it held".into(), i.clone())),
    );
    candidates.extend(
        k.keys
            .iter()
            .map(|i| ("a symmetric key it held".into(), i.to_vec())),
    );
    let scalars: Vec<Scalar> = k
        .scalars
        .iter()
        .filter_map(|s| {
            let bytes: [u8; 32] = s.as_slice().try_into().ok()?;
            Option::from(Scalar::from_canonical_bytes(bytes))
        })
        .collect();
    for e in elements_in(messages.iter()) {
        let point = Ristretto255.decode_element(&e).expect("decoded before");
        for s in &scalars {
            let shared = Ristretto255.exp(&point, s);
            candidates.push((
                "a published element to a held exponent".into(),
                Ristretto255.encode_element(&shared),
            ));
        }
        candidates.push(("a published element".into(), e));
    }
    for (nonce, sealed) in sealed_in(messages.iter()) {
        for key in &k.keys {
            let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
            for (view, _) in targets {
                for member in view.member_ids() {
                    let mut aad = BodyWriter::new();
                    aad.str("conclave ckd secret v1")
                        .str(&view.group)
                        .u64(view.epoch)
                        .str(member.as_str());
                    if let Ok(plain) = cipher.decrypt(
                        Nonce::from_slice(&nonce),
                        Payload {
                            msg: &sealed,
                            aad: &aad.finish(),
                        },
                    ) {
                        candidates.push(("a ciphertext opened with a held key".into(), plain));
                    }
                }
            }
        }
    }
    for (how, ikm) in &candidates {
        for (view, key) in targets {
            if context_key(protocol, view, ikm) == *key {
                return Some(format!("{how} gives the key of epoch {}", view.epoch));
            }
        }
    }
    None
}

/// a..d join one by one; `c` leaves (with the injected bug on for that run if `bug`);
/// then (without the bug) `e` joins. What can `c` reach of the keys after it left?
fn departed(protocol: Protocol, bug: bool) -> Option<String> {
    let mut w = World::new(protocol, 51);
    for k in 1..=4 {
        w.run(&NAMES[..k]);
    }
    let c = w.knowledge[&MemberId::new("c")].clone();
    let from = w.published.len();
    let cut = w.agreed.len();
    fault::set_key_reuse(bug);
    let (_, key) = w.run(&["a", "b", "d"]);
    fault::set_key_reuse(false);
    assert!(key.is_some(), "{protocol:?}: the remaining members agree");
    if !bug {
        // And a join after it: still out of reach.
        w.run(&["a", "b", "d", "e"]);
    }
    let after: Vec<Vec<u8>> = w.published[from..].iter().map(|(_, m)| m.clone()).collect();
    attack(protocol, &c, &after, &w.agreed[cut..])
}

/// a..c join one by one and refresh; `e` joins (with the injected bug on for that run if
/// `bug`). What can `e` reach of the keys before it came?
fn newcomer(protocol: Protocol, bug: bool) -> Option<String> {
    let mut w = World::new(protocol, 52);
    for k in 1..=3 {
        w.run(&NAMES[..k]);
    }
    w.run(&NAMES[..3]);
    let before = w.agreed.clone();
    fault::set_key_reuse(bug);
    w.run(&["a", "b", "c", "e"]);
    fault::set_key_reuse(false);
    let e = w.knowledge[&MemberId::new("e")].clone();
    let all: Vec<Vec<u8>> = w.published.iter().map(|(_, m)| m.clone()).collect();
    attack(protocol, &e, &all, &before)
}

#[test]
fn a_departed_member_reaches_no_later_key() {
    for protocol in Protocol::ALL {
        assert_eq!(departed(protocol, false), None, "{protocol:?}");
    }
}

#[test]
fn the_departed_check_catches_injected_key_reuse() {
    for protocol in Protocol::ALL {
        let found = departed(protocol, true);
        assert!(
            found.is_some(),
            "{protocol:?}: injected key reuse went unnoticed"
        );
    }
}

#[test]
fn a_newcomer_reaches_no_earlier_key() {
    for protocol in Protocol::ALL {
        assert_eq!(newcomer(protocol, false), None, "{protocol:?}");
    }
}

#[test]
fn the_newcomer_check_catches_injected_key_reuse() {
    // The injected bug reaches a newcomer where old key material is sent to it: GDH's
    // starter passing the old group element up to the newcomer, CKD's controller sending
    // it the old secret. (In BD and the tree protocols the bug makes the newcomer disagree
    // with the others rather than learn an old key.)
    for protocol in [Protocol::Gdh, Protocol::Ckd] {
        let found = newcomer(protocol, true);
        assert!(
            found.is_some(),
            "{protocol:?}: injected key reuse went unnoticed"
        );
    }
}
