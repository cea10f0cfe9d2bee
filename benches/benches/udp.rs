//! Datagrams per second between two `UdpIo` sockets on 127.0.0.1, per backend, datagram
//! size and batch size (`batch` = most datagrams per send or receive system call).
//!
//! Both sockets are driven from one thread, in rounds of `ROUND` datagrams: queue them on
//! the sender (flushed every `batch`), then poll the receiver until all arrived. On
//! loopback the kernel does the receiving work inside the sender's system call, so the
//! figure is the whole cost per datagram on one core, and it does not depend on how two
//! threads get scheduled on a busy machine. A receiver that stalls for `STALL` counts the
//! missing datagrams as lost (reported; none are expected).
//!
//! Run: `cargo bench -p conclave-benches --bench udp`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conclave_engine::io::{Backend, BackendChoice, IoOptions, UdpIo};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};

/// Datagrams per round: a few batches, far below what the socket buffer holds.
const ROUND: u64 = 128;
/// A receiver making no progress this long means datagrams were lost.
const STALL: Duration = Duration::from_millis(200);

fn options(backend: BackendChoice, batch: usize, size: usize) -> IoOptions {
    IoOptions {
        backend,
        batch,
        buf_size: size,
        ring_entries: 256,
        sock_buf_bytes: 4 << 20,
        uring_multishot: true,
    }
}

/// Moves `n` datagrams of `size` bytes from `tx` to `rx` and returns the time it took.
fn transfer(tx: &mut UdpIo, rx: &mut UdpIo, to: SocketAddr, size: usize, n: u64) -> Duration {
    let payload = vec![0xA5u8; size];
    let (mut sent, mut got, mut lost) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while sent < n {
        let round = ROUND.min(n - sent);
        for _ in 0..round {
            tx.push_send(to, &payload).expect("send");
        }
        tx.flush().expect("flush");
        sent += round;
        let mut since = Instant::now();
        while got + lost < sent {
            let out = rx
                .submit_and_poll(Some(Duration::ZERO), |_, p| {
                    std::hint::black_box(p);
                })
                .expect("receive");
            got += out.received as u64;
            if out.received > 0 {
                since = Instant::now();
            } else if since.elapsed() > STALL {
                lost = sent - got;
            }
        }
    }
    let elapsed = start.elapsed();
    if lost > 0 {
        eprintln!("warning: {lost} of {n} datagrams lost");
    }
    elapsed
}

fn bench_udp(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp_loopback");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, choice) in [
        ("uring", BackendChoice::Uring),
        ("mmsg", BackendChoice::Fallback),
    ] {
        for size in [100usize, 1400, 8192] {
            for batch in [1usize, 32] {
                let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
                let mut tx = match UdpIo::bind(any, options(choice, batch, size)) {
                    Ok(io) => io,
                    Err(e) => {
                        eprintln!("skipping {name}: {e}");
                        continue;
                    }
                };
                let mut rx = UdpIo::bind(any, options(choice, batch, size)).expect("bind");
                assert_eq!(tx.backend() == Backend::Uring, name == "uring");
                let to = rx.local_addr();
                group.throughput(Throughput::Elements(1));
                group.bench_function(
                    BenchmarkId::new(format!("{name}/{size}B"), format!("batch{batch}")),
                    |b| b.iter_custom(|iters| transfer(&mut tx, &mut rx, to, size, iters)),
                );
            }
        }
    }
    group.finish();
}

mod entry {
    // The macro makes a public function; inside a private module it needs no docs.
    criterion::criterion_group!(benches, super::bench_udp);
}
criterion_main!(entry::benches);
