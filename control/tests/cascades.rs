//! Randomized cascades and properties of every key-agreement protocol, played through the
//! public [`KeyAgreement`] interface by the seeded driver in `keys::driver`.
//!
//! The default run keeps to ristretto255 and a few seeds (a few dozen interrupted runs)
//! per protocol so that `cargo test` stays short in debug builds on a small, shared
//! machine; `CONCLAVE_CASCADES=N` plays N seeds of 25 events per protocol instead, e.g.
//! `CONCLAVE_CASCADES=400 cargo test --release -p conclave-control --test cascades` for
//! thousands of cascades per protocol, and the `#[ignore]`d test does that by default.

use std::collections::VecDeque;
use std::sync::Arc;

use conclave_control::keys::driver::{Config, member_id, play, play_with, universe};
use conclave_control::keys::{
    Destination, KeyAgreement, KeyError, MemberId, Protocol, Ristretto255, View, new_instance,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn cascades_per_protocol(default: u64) -> u64 {
    std::env::var("CONCLAVE_CASCADES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn play_many(protocol: Protocol, seeds: u64, steps: usize) -> usize {
    let mut cascades = 0;
    let mut stale = 0;
    for seed in 0..seeds {
        let report = play(protocol, Ristretto255, seed, steps)
            .unwrap_or_else(|v| panic!("{} seed {seed}: {v}", protocol.name()));
        assert_eq!(report.events, steps);
        assert!(report.keys_checked > 0);
        cascades += report.cascades;
        stale += report.stale_refused;
    }
    // The driver must actually interrupt runs, or the cascade rule goes untested.
    assert!(cascades > 0, "{}: no cascade was played", protocol.name());
    assert!(
        stale > 0,
        "{}: no stale message was delivered",
        protocol.name()
    );
    eprintln!(
        "{}: {seeds} seeds x {steps} events, {cascades} cascades, {stale} stale messages refused",
        protocol.name()
    );
    cascades
}

#[test]
fn gdh_cascades() {
    play_many(Protocol::Gdh, cascades_per_protocol(2), 14);
}

#[test]
fn bd_cascades() {
    play_many(Protocol::Bd, cascades_per_protocol(2), 14);
}

#[test]
fn ckd_cascades() {
    play_many(Protocol::Ckd, cascades_per_protocol(2), 14);
}

#[test]
fn tgdh_cascades() {
    play_many(Protocol::Tgdh, cascades_per_protocol(2), 14);
}

#[test]
fn str_cascades() {
    play_many(Protocol::Str, cascades_per_protocol(2), 14);
}

/// Thousands of cascades per protocol; slow in debug builds, so run on demand (in
/// release): `cargo test --release -p conclave-control --test cascades -- --ignored`.
#[test]
#[ignore]
fn thousands_of_cascades_per_protocol() {
    for protocol in Protocol::ALL {
        let cascades = play_many(protocol, cascades_per_protocol(300), 25);
        assert!(cascades >= 1000, "{}: only {cascades}", protocol.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any seed, universe and cascade rate: the properties hold at every quiet point.
    #[test]
    fn any_schedule_agrees(
        protocol in prop::sample::select(Protocol::ALL.to_vec()),
        seed in any::<u64>(),
        universe in 2usize..9,
        cascade_percent in 0u32..90,
    ) {
        let config = Config { universe, steps: 10, cascade_percent };
        let report = play_with(protocol, Ristretto255, seed, &config);
        prop_assert!(report.is_ok(), "{} seed {seed}: {:?}", protocol.name(), report);
    }
}

/// A hand-driven group for the message-level checks: a global FIFO of (from, to, bytes).
struct Manual {
    members: Vec<Box<dyn KeyAgreement>>,
    queue: VecDeque<(MemberId, MemberId, Vec<u8>)>,
    rng: ChaCha20Rng,
}

impl Manual {
    fn new(protocol: Protocol, n: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(99);
        let (identities, directory) = universe(n, &mut rng);
        let members = identities
            .into_iter()
            .map(|id| new_instance(protocol, Ristretto255, Arc::clone(&id), directory.clone()))
            .collect();
        Self {
            members,
            queue: VecDeque::new(),
            rng,
        }
    }

    fn index(&self, id: &MemberId) -> usize {
        self.members
            .iter()
            .position(|m| m.me() == id)
            .expect("known member")
    }

    fn route(&mut self, from: &MemberId, sends: Vec<conclave_control::keys::Outgoing>) {
        for send in sends {
            match send.to {
                Destination::Broadcast => {
                    for m in &self.members {
                        if m.me() != from {
                            self.queue.push_back((
                                from.clone(),
                                m.me().clone(),
                                send.bytes.clone(),
                            ));
                        }
                    }
                }
                Destination::Unicast(to) => self.queue.push_back((from.clone(), to, send.bytes)),
            }
        }
    }

    fn view(&mut self, epoch: u64) {
        let view = View::new("g", epoch, self.members.iter().map(|m| m.me().clone()));
        for k in 0..self.members.len() {
            let out = self.members[k]
                .handle_view(&view, &mut self.rng)
                .expect("valid view");
            let from = self.members[k].me().clone();
            self.route(&from, out.sends);
        }
    }

    fn deliver_all(&mut self) -> Vec<(MemberId, MemberId, Vec<u8>)> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let Some((from, to, bytes)) = self.queue.pop_front() else {
                break;
            };
            let k = self.index(&to);
            let out = self.members[k]
                .handle_message(&from, &bytes, &mut self.rng)
                .expect("current message applies");
            self.route(&to, out.sends);
            seen.push((from, to, bytes));
        }
        seen
    }

    fn keys(&self) -> Vec<[u8; 32]> {
        self.members
            .iter()
            .map(|m| m.current_key().expect("run complete").secret)
            .collect()
    }
}

/// Tampered, forged, misattributed, replayed and stale messages are refused with the
/// right error and change nothing: the run still completes with one key.
#[test]
fn bad_messages_are_refused_and_change_nothing() {
    for protocol in Protocol::ALL {
        let mut g = Manual::new(protocol, 4);
        g.view(1);
        let first = g.deliver_all();
        let old_key = g.keys()[0];
        assert!(
            g.keys().iter().all(|k| *k == old_key),
            "{}",
            protocol.name()
        );
        g.view(2);
        let (from, to, bytes) = g.queue.pop_front().expect("a refresh sends something");
        let k = g.index(&to);
        let name = protocol.name();
        let mut rng = ChaCha20Rng::seed_from_u64(5);

        let mut tampered = bytes.clone();
        let at = tampered.len() - 65;
        tampered[at] ^= 0x40;
        let err = g.members[k].handle_message(&from, &tampered, &mut rng);
        assert!(
            matches!(
                err,
                Err(KeyError::BadSignature(_)) | Err(KeyError::Malformed(_))
            ),
            "{name}: {err:?}"
        );

        let other = g
            .members
            .iter()
            .map(|m| m.me().clone())
            .find(|m| *m != from && *m != to)
            .expect("4 members");
        let err = g.members[k].handle_message(&other, &bytes, &mut rng);
        assert!(
            matches!(err, Err(KeyError::UnknownSender(_))),
            "{name}: {err:?}"
        );

        let outsider = member_id(77);
        let err = g.members[k].handle_message(&outsider, &bytes, &mut rng);
        assert!(err.is_err(), "{name}: outsider accepted");

        // A message of the finished run, replayed into the new one.
        let (old_from, old_to, old_bytes) = first
            .into_iter()
            .find(|(f, _, _)| *f != to)
            .expect("messages");
        let ko = g.index(&old_to);
        let err = g.members[ko].handle_message(&old_from, &old_bytes, &mut rng);
        assert!(
            matches!(err, Err(KeyError::StaleEpoch { got: 1, current: 2 })),
            "{name}: {err:?}"
        );

        // The genuine message still applies, and a replay of it is a duplicate.
        let out = g.members[k]
            .handle_message(&from, &bytes, &mut g.rng)
            .expect("genuine message applies after the refusals");
        g.route(&to, out.sends);
        let err = g.members[k].handle_message(&from, &bytes, &mut rng);
        assert!(
            matches!(err, Err(KeyError::Duplicate(_)) | Err(KeyError::Invalid(_))),
            "{name}: replay gave {err:?}"
        );
        g.deliver_all();
        let keys = g.keys();
        assert!(keys.iter().all(|k| *k == keys[0]), "{name}: keys differ");
        assert_ne!(keys[0], old_key, "{name}: refresh kept the key");
    }
}

/// A member's own broadcast coming back is ignored.
#[test]
fn own_broadcast_is_ignored() {
    for protocol in [Protocol::Gdh, Protocol::Bd, Protocol::Ckd] {
        let mut g = Manual::new(protocol, 3);
        g.view(1);
        let sent: Vec<_> = g.queue.iter().cloned().collect();
        let (from, _, bytes) = sent.first().cloned().expect("something sent");
        let k = g.index(&from);
        let out = g.members[k]
            .handle_message(&from, &bytes, &mut ChaCha20Rng::seed_from_u64(1))
            .expect("ignored, not refused");
        assert!(out.sends.is_empty() && out.key.is_none());
        g.deliver_all();
        let keys = g.keys();
        assert!(keys.iter().all(|k| *k == keys[0]));
    }
}
