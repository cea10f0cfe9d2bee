//! Stateful mutation test of the membership core: sequences of datagrams (captured from a
//! real run of three daemons, then mutated or forged), clock steps and submissions, fed to
//! one daemon. Nothing may panic, and what input can grow stays within its bounds. The
//! stable stand-in for a cargo-fuzz target (no nightly toolchain here); each sequence is
//! one execution.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{MAX_NOTES, Membership, MembershipConfig};
use crate::core::ring::{DaemonIdx, Dest, RingConfig};
use crate::core::time::Instant;
use conclave_control::wire::client::Service;

fn config(me: u16) -> MembershipConfig {
    let all: Vec<DaemonIdx> = (0..3).map(DaemonIdx).collect();
    let mut rc = RingConfig::new(DaemonIdx(me), all.clone());
    rc.max_datagram = 600;
    rc.max_pending_messages = 32;
    rc.token_loss_timeout = Duration::from_millis(40);
    rc.token_retransmit_timeout = Duration::from_millis(4);
    MembershipConfig::new(DaemonIdx(me), all, rc)
}

/// Every datagram three daemons exchange while forming a ring, ordering some messages,
/// losing one daemon and re-forming: (sender, bytes).
fn capture() -> Vec<(u16, Vec<u8>)> {
    let mut cores: Vec<Membership> = (0..3)
        .map(|i| Membership::new(config(i), Instant::ZERO).expect("config"))
        .collect();
    let mut captured = Vec::new();
    let mut queue: Vec<(u16, u16, Vec<u8>)> = Vec::new();
    let mut now = Instant::ZERO;
    for step in 0..4000u32 {
        now += Duration::from_micros(200);
        let alive = if step > 2500 { 2 } else { 3 };
        for (i, core) in cores.iter_mut().enumerate().take(alive) {
            if step % 50 == 0 {
                let _ = core.submit(Service::Agreed, format!("m{step}").as_bytes());
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            let mut buf = Vec::new();
            while let Some(dest) = core.poll_transmit(now, &mut buf) {
                let to: Vec<u16> = match dest {
                    Dest::One(d) => vec![d.0],
                    Dest::All | Dest::Everyone => (0..3).filter(|&j| j != i as u16).collect(),
                };
                for t in to {
                    queue.push((i as u16, t, buf.clone()));
                }
            }
            while core.poll_event().is_some() {}
        }
        for (from, to, bytes) in queue.drain(..) {
            if usize::from(to) < alive {
                let _ = cores[usize::from(to)].handle_datagram(now, DaemonIdx(from), &bytes);
            }
            captured.push((from, bytes));
        }
    }
    captured
}

fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    match rng.gen_range(0..5) {
        0 => {
            let at = rng.gen_range(0..bytes.len().max(1));
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << rng.gen_range(0..8);
            }
        }
        1 => bytes.truncate(rng.gen_range(0..bytes.len().max(1))),
        // A large value written over one field.
        2 if bytes.len() >= 8 => {
            let at = rng.gen_range(0..bytes.len() - 7);
            let v: u64 = match rng.gen_range(0..3) {
                0 => u64::MAX,
                1 => 1 << rng.gen_range(10..63),
                _ => rng.r#gen(),
            };
            bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        3 => bytes.extend((0..rng.gen_range(1..64)).map(|_| rng.r#gen::<u8>())),
        _ => {}
    }
}

#[test]
fn sequences_of_captured_mutated_and_forged_datagrams() {
    let corpus = capture();
    assert!(corpus.len() > 500, "captured {} datagrams", corpus.len());
    let kinds: std::collections::BTreeSet<u8> = corpus
        .iter()
        .filter_map(|(_, b)| b.get(1).copied())
        .collect();
    assert!(
        kinds.is_superset(&[1, 2, 3, 4, 5].into()),
        "kinds captured: {kinds:?}"
    );
    let sequences: u64 = std::env::var("CONCLAVE_MEMBERSHIP_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = StdRng::seed_from_u64(0x6d65_6d62);
    let mut steps = 0u64;
    for _ in 0..sequences {
        let mut core = Membership::new(config(1), Instant::ZERO).expect("config");
        let mut now = Instant::ZERO;
        for _ in 0..rng.gen_range(10..400) {
            steps += 1;
            match rng.gen_range(0..10) {
                0 => now += Duration::from_micros(rng.gen_range(0..100_000)),
                1 => {
                    let _ = core.submit(Service::Safe, &[7; 40]);
                }
                _ => {
                    let (from, mut bytes) = corpus[rng.gen_range(0..corpus.len())].clone();
                    if rng.gen_bool(0.5) {
                        mutate(&mut rng, &mut bytes);
                    }
                    // Sometimes claimed from another daemon (or a stranger).
                    let from = if rng.gen_bool(0.1) {
                        rng.gen_range(0..5)
                    } else {
                        from
                    };
                    let _ = core.handle_datagram(now, DaemonIdx(from), &bytes);
                }
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            let mut buf = Vec::new();
            let mut sent = 0;
            while core.poll_transmit(now, &mut buf).is_some() {
                sent += 1;
                assert!(sent < 100_000, "unbounded output");
            }
            while core.poll_event().is_some() {}
            assert!(core.waiting() <= 32, "wait queue beyond its bound");
            assert!(core.notes.len() <= MAX_NOTES);
        }
    }
    eprintln!("membership mutation test: {sequences} sequences, {steps} steps");
}
