//! Key agreement per membership event: the critical-path ("serial") time of a join and of
//! a leave, for every protocol over ristretto255 at 8, 32 and 128 members, and TGDH over
//! the 2048-bit MODP group at 128. Each iteration plays the event in the lock-step harness
//! (`keys::driver::Lockstep`) and reports the sum over rounds of the slowest member's
//! time; the inverse event that restores the group is not timed.
//!
//! `cargo bench -p conclave-benches --bench keys`
#![allow(missing_docs)] // criterion_group! expands to an undocumented public function.

use std::time::Duration;

use conclave_control::keys::driver::Lockstep;
use conclave_control::keys::modp::Modp2048;
use conclave_control::keys::{DhGroup, Protocol, Ristretto255};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// The thread's CPU clock: a preemption inside one member's step would otherwise add a
/// whole scheduler slice to the round's maximum (see conclave-tools' keys_bench).
fn clock() -> impl FnMut() -> Duration {
    || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
}

/// Serial time of `iters` joins of member `n - 1` into a group of `n - 1`.
fn joins<G: DhGroup>(protocol: Protocol, dh: G, n: usize, iters: u64) -> Duration {
    let mut h = Lockstep::new(protocol, dh, n, 1);
    let before: Vec<usize> = (0..n - 1).collect();
    let after: Vec<usize> = (0..n).collect();
    let mut c = clock();
    h.apply(&before, &mut c).expect("group forms");
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += h.apply(&after, &mut c).expect("join").serial;
        h.apply(&before, &mut c).expect("leave");
    }
    total
}

/// Serial time of `iters` leaves of a member from a group of `n`.
fn leaves<G: DhGroup>(protocol: Protocol, dh: G, n: usize, iters: u64) -> Duration {
    let mut h = Lockstep::new(protocol, dh, n, 2);
    let mut members: Vec<usize> = (0..n).collect();
    let mut c = clock();
    h.apply(&members, &mut c).expect("group forms");
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let victim = members.remove((i as usize * 5 + 1) % (n - 1));
        total += h.apply(&members, &mut c).expect("leave").serial;
        members.push(victim);
        h.apply(&members, &mut c).expect("rejoin");
    }
    total
}

fn bench_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys-ristretto255");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    for protocol in Protocol::ALL {
        for n in [8usize, 32, 128] {
            g.bench_with_input(
                BenchmarkId::new(format!("{}-join", protocol.name()), n),
                &n,
                |b, &n| b.iter_custom(|iters| joins(protocol, Ristretto255, n, iters)),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{}-leave", protocol.name()), n),
                &n,
                |b, &n| b.iter_custom(|iters| leaves(protocol, Ristretto255, n, iters)),
            );
        }
    }
    g.finish();
    let mut g = c.benchmark_group("keys-modp2048");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("tgdh-join/128", |b| {
        b.iter_custom(|iters| joins(Protocol::Tgdh, Modp2048, 128, iters))
    });
    g.bench_function("tgdh-leave/128", |b| {
        b.iter_custom(|iters| leaves(Protocol::Tgdh, Modp2048, 128, iters))
    });
    g.finish();
}

criterion_group!(benches, bench_keys);
criterion_main!(benches);
