//! Key confirmation and early messages (`keys::session`): an honest run reports its key
//! only after every member confirmed it; a member that derived another key is named in a
//! typed error and nobody reports the run's key; messages of a later epoch are held, within
//! a configurable bound, until their view.

mod support;

use std::sync::Arc;

use conclave_control::keys::session::Session;
use conclave_control::keys::{
    Directory, GroupKey, Identity, KeyAgreement, KeyError, MemberId, OpCounts, Output, Protocol,
    Ristretto255, View, new_protocol_instance,
};
use rand_core::CryptoRngCore;
use support::{Net, id};

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// A protocol instance whose derived key has one bit flipped: a member that computed a
/// different key than the others (a bug or a fault), seen from outside.
#[derive(Debug)]
struct Corrupted(Box<dyn KeyAgreement>);

impl Corrupted {
    fn corrupt(mut out: Output) -> Output {
        if let Some(key) = out.key.as_mut() {
            key.secret[0] ^= 1;
        }
        out
    }
}

impl KeyAgreement for Corrupted {
    fn protocol(&self) -> Protocol {
        self.0.protocol()
    }
    fn me(&self) -> &MemberId {
        self.0.me()
    }
    fn dh_group(&self) -> &'static str {
        self.0.dh_group()
    }
    fn handle_view(
        &mut self,
        view: &View,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        self.0.handle_view(view, rng).map(Self::corrupt)
    }
    fn handle_message(
        &mut self,
        from: &MemberId,
        bytes: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        self.0.handle_message(from, bytes, rng).map(Self::corrupt)
    }
    fn current_key(&self) -> Option<&GroupKey> {
        self.0.current_key()
    }
    fn in_progress(&self) -> bool {
        self.0.in_progress()
    }
    fn op_counts(&self) -> OpCounts {
        self.0.op_counts()
    }
}

#[test]
fn honest_runs_confirm_in_every_protocol() {
    for protocol in Protocol::ALL {
        let mut net = Net::new(protocol, &NAMES, 31);
        for k in 1..=NAMES.len() {
            let view = net.view(&NAMES[..k]).expect("view");
            // Before any message, nobody has a confirmed key for a group of several.
            if k > 1 {
                assert!(net.insts.values().all(|i| i.in_progress()), "{protocol:?}");
            }
            net.settle().expect("honest run");
            let key = net.common_key(&NAMES[..k]).expect("confirmed");
            assert_eq!(key.epoch, view.epoch);
        }
    }
}

#[test]
fn a_member_with_another_key_is_named_and_no_key_is_reported() {
    for protocol in Protocol::ALL {
        let make = move |identity: Arc<Identity>, directory: Directory| -> Box<dyn KeyAgreement> {
            let inner = new_protocol_instance(protocol, Ristretto255, identity, directory);
            if inner.me().as_str() == "c" {
                Box::new(Session::new(Box::new(Corrupted(inner))))
            } else {
                Box::new(Session::new(inner))
            }
        };
        let mut net = Net::with(Box::new(make), &NAMES, 32);
        net.view(&["a", "b"]).expect("view");
        net.settle().expect("honest pair");
        net.common_key(&["a", "b"]).expect("a and b confirm");
        let view = net.view(&NAMES).expect("view with c");
        let mut failures = Vec::new();
        while let Some((_, to, verdict)) = net.step() {
            if let Err(e) = verdict {
                failures.push((to, e));
            }
        }
        // Everyone detects the mismatch: the honest members name c, c names the others.
        for (to, e) in &failures {
            match e {
                KeyError::ConfirmationFailed {
                    group,
                    epoch,
                    member,
                } => {
                    assert_eq!((group.as_str(), *epoch), ("g", view.epoch));
                    if to.as_str() != "c" {
                        assert_eq!(member.as_str(), "c", "{protocol:?}");
                    }
                }
                other => panic!("{protocol:?}: {to} refused with {other}"),
            }
        }
        for m in NAMES {
            assert!(
                failures.iter().any(|(to, _)| to.as_str() == m),
                "{protocol:?}: {m} did not detect the mismatch"
            );
            let inst = &net.insts[&id(m)];
            assert!(inst.in_progress(), "{protocol:?}: {m} reported a key");
            assert_ne!(inst.current_key().map(|k| k.epoch), Some(view.epoch));
        }
    }
}

#[test]
fn early_messages_are_held_until_their_view() {
    // The late member is an old one (b) or the newcomer (d, which has no view at all yet).
    for late in ["b", "d"] {
        for protocol in Protocol::ALL {
            let mut net = Net::new(protocol, &NAMES, 33);
            net.view(&NAMES[..3]).expect("view");
            net.settle().expect("run");
            let old = net.common_key(&NAMES[..3]).expect("agreed");
            // The next view reaches the others first; everything they send `late` is early.
            net.epoch += 1;
            let view = View::new("g", net.epoch, NAMES.iter().map(|n| id(n)));
            let others: Vec<MemberId> = NAMES
                .iter()
                .filter(|n| **n != late)
                .map(|n| id(n))
                .collect();
            net.spawn(late);
            net.install_at(&view, &others).expect("view at the others");
            let mut held = 0;
            while let Some((from, to, verdict)) = net.step() {
                verdict.unwrap_or_else(|e| panic!("{protocol:?}: {to} refused {from}: {e}"));
                held += usize::from(to.as_str() == late);
            }
            assert!(held > 0, "{protocol:?}: nothing reached {late} early");
            let expected = (late == "b").then_some(&old);
            assert_eq!(net.insts[&id(late)].current_key(), expected, "{protocol:?}");
            // Now `late` gets the view: the held messages are handled, the run completes.
            let refused = net.install_at(&view, &[id(late)]).expect("late view");
            assert!(refused.is_empty(), "{protocol:?}: {refused:?}");
            net.settle().expect("rest of the run");
            let key = net.common_key(&NAMES).expect("agreed after the late view");
            assert_ne!(key, old);
        }
    }
}

#[test]
fn early_messages_beyond_the_bound_are_refused_and_stale_ones_stay_stale() {
    let mut net = Net::with(
        Box::new(|i, d| {
            Box::new(Session::with_future_limit(
                new_protocol_instance(Protocol::Bd, Ristretto255, i, d),
                2,
            ))
        }),
        &NAMES,
        34,
    );
    net.view(&NAMES).expect("view");
    net.settle().expect("run");
    // Three messages of epoch 2 (each member's first BD round) reach a before its view.
    let view2 = View::new("g", 2, NAMES.iter().map(|n| id(n)));
    let mut early = Vec::new();
    for m in ["b", "c", "d"] {
        let out = net
            .insts
            .get_mut(&id(m))
            .expect("m")
            .handle_view(&view2, &mut net.rng)
            .expect("view");
        early.extend(out.sends.into_iter().map(|s| (id(m), s.bytes)));
    }
    let a = net.insts.get_mut(&id("a")).expect("a");
    let mut rng = rand::rngs::OsRng;
    assert!(a.handle_message(&early[0].0, &early[0].1, &mut rng).is_ok());
    assert!(a.handle_message(&early[1].0, &early[1].1, &mut rng).is_ok());
    assert_eq!(
        a.handle_message(&early[2].0, &early[2].1, &mut rng).err(),
        Some(KeyError::FutureBufferFull { limit: 2 })
    );
    // After a moves on to epoch 3, an epoch-2 message is stale, not held.
    let view3 = View::new("g", 3, NAMES.iter().map(|n| id(n)));
    let out = a.handle_view(&view3, &mut rng).expect("view 3");
    assert_eq!(
        out.refused.len(),
        2,
        "the two held epoch-2 messages are now stale"
    );
    assert!(matches!(
        a.handle_message(&early[2].0, &early[2].1, &mut rng),
        Err(KeyError::StaleEpoch { got: 2, current: 3 })
    ));
}
