//! Ordering-core throughput: messages through the sans-IO Totem ring, in memory.
//!
//! `cargo bench -p conclave-benches --bench ring`. The network is a lossless in-memory
//! hand-off, so the figures are the CPU cost of ordering (packing, token handling,
//! delivery, reassembly), not of sockets.
// criterion_group! defines an undocumented function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use conclave_control::wire::client::Service;
use conclave_engine::core::ring::{DaemonIdx, Dest, Ring, RingConfig, wire};
use conclave_engine::core::time::Instant;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn rings(n: u16) -> Vec<Ring> {
    (0..n)
        .map(|i| {
            let cfg = RingConfig::new(DaemonIdx(i), (0..n).map(DaemonIdx).collect());
            Ring::new(cfg, Instant::ZERO).expect("valid config")
        })
        .collect()
}

/// Submits `count` messages of `size` bytes at daemon 0 and runs the ring until every
/// daemon delivered them all; returns the bytes delivered (kept from the optimiser).
fn run_ring(
    rings: &mut [Ring],
    now: &mut Instant,
    count: usize,
    size: usize,
    buf: &mut Vec<u8>,
) -> usize {
    let payload = vec![0xab; size];
    let n = rings.len();
    let mut submitted = 0;
    let mut delivered = vec![0usize; n];
    let mut bytes = 0;
    while delivered.iter().any(|&d| d < count) {
        while submitted < count && rings[0].submit(Service::Agreed, &payload).is_ok() {
            submitted += 1;
        }
        let mut moved = false;
        for i in 0..n {
            while let Some(t) = rings[i].poll_transmit(*now, buf) {
                moved = true;
                let from = DaemonIdx(i as u16);
                for (j, r) in rings.iter_mut().enumerate() {
                    let to_j = match t.dest {
                        Dest::All | Dest::Everyone => j != i,
                        Dest::One(d) => usize::from(d.0) == j,
                    };
                    if to_j {
                        let _ = r.handle_datagram(*now, from, buf);
                    }
                }
            }
            while let Some(d) = rings[i].poll_delivery() {
                bytes += d.payload.len();
                delivered[i] += 1;
            }
        }
        if !moved {
            *now += Duration::from_millis(1);
            for r in rings.iter_mut() {
                r.handle_timeout(*now);
            }
        }
    }
    bytes
}

fn ordering(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    let count = 2000;
    for &(n, size) in &[
        (1u16, 100usize),
        (3, 100),
        (3, 1000),
        (5, 100),
        (3, 64 * 1024),
    ] {
        let count = if size > 8192 { 50 } else { count };
        g.throughput(Throughput::Elements(count as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("{n}_daemons"), format!("{size}B")),
            &(n, size),
            |b, &(n, size)| {
                let mut rs = rings(n);
                let mut now = Instant::ZERO;
                let mut buf = Vec::with_capacity(65_536);
                b.iter(|| black_box(run_ring(&mut rs, &mut now, count, size, &mut buf)));
            },
        );
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let ring_id = conclave_engine::core::ring::RingId {
        representative: DaemonIdx(0),
        seq: 1,
    };
    let mut pkt = Vec::new();
    wire::begin_data(&mut pkt, ring_id, 1, DaemonIdx(0));
    for _ in 0..60 {
        wire::push_item(&mut pkt, true, true, Service::Agreed, 100, &[7; 100]);
    }
    let mut g = c.benchmark_group("ring_wire");
    g.throughput(Throughput::Bytes(pkt.len() as u64));
    g.bench_function("decode_packed_60x100B", |b| {
        b.iter(|| black_box(wire::decode(black_box(&pkt)).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, ordering, decode);
criterion_main!(benches);
