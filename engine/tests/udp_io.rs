//! UdpIo on 127.0.0.1 over both backends: contents, bursts, cross-backend traffic,
//! forced fallback, truncation, buffer exhaustion, and sleeping on the wait fd with mio.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conclave_engine::io::{Backend, BackendChoice, IoError, IoOptions, UdpIo};

const LOOPBACK: &str = "127.0.0.1:0";

fn opts(backend: BackendChoice) -> IoOptions {
    IoOptions {
        backend,
        batch: 32,
        buf_size: 65536,
        ring_entries: 64,
        sock_buf_bytes: 4 << 20,
        uring_multishot: true,
    }
}

/// The three receive paths under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mmsg,
    /// io_uring, multishot RecvMsg over the provided-buffer ring.
    Uring,
    /// io_uring, one plain RecvMsg per pooled buffer.
    UringSingle,
}

fn kind_opts(k: Kind) -> IoOptions {
    match k {
        Kind::Mmsg => opts(BackendChoice::Fallback),
        Kind::Uring => opts(BackendChoice::Uring),
        Kind::UringSingle => IoOptions {
            uring_multishot: false,
            ..opts(BackendChoice::Uring)
        },
    }
}

/// Every kind io_uring allows here.
fn kinds() -> Vec<Kind> {
    if uring_here() {
        vec![Kind::Mmsg, Kind::Uring, Kind::UringSingle]
    } else {
        vec![Kind::Mmsg]
    }
}

fn bind(o: IoOptions) -> UdpIo {
    UdpIo::bind(LOOPBACK.parse().unwrap(), o).expect("bind on loopback")
}

/// Whether io_uring can be had here. When it cannot, this also checks that `Auto` fell
/// back and said why, so a test that then skips its io_uring half has still checked
/// something real.
fn uring_here() -> bool {
    match UdpIo::bind(LOOPBACK.parse().unwrap(), opts(BackendChoice::Uring)) {
        Ok(io) => {
            assert_eq!(io.backend(), Backend::Uring);
            let auto = bind(opts(BackendChoice::Auto));
            if std::env::var(conclave_engine::io::DISABLE_ENV).as_deref() == Ok("off") {
                assert_eq!(auto.backend(), Backend::Mmsg);
            } else {
                assert_eq!(auto.backend(), Backend::Uring);
                assert!(auto.fallback_reason().is_none());
            }
            true
        }
        Err(IoError::UringUnavailable(why)) => {
            eprintln!("io_uring refused on this machine: {why}");
            let auto = bind(opts(BackendChoice::Auto));
            assert_eq!(auto.backend(), Backend::Mmsg);
            assert!(auto.fallback_reason().is_some());
            false
        }
        Err(e) => panic!("unexpected bind error: {e}"),
    }
}

/// Sender/receiver pairs to run: every combination io_uring allows here.
fn pairs() -> Vec<(Kind, Kind)> {
    let mut v = vec![(Kind::Mmsg, Kind::Mmsg)];
    if uring_here() {
        v.extend([
            (Kind::Uring, Kind::Uring),
            (Kind::Uring, Kind::Mmsg),
            (Kind::Mmsg, Kind::Uring),
            (Kind::UringSingle, Kind::UringSingle),
            (Kind::Uring, Kind::UringSingle),
            (Kind::UringSingle, Kind::Mmsg),
        ]);
    }
    v
}

fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect();
    if len >= 4 {
        d[..4].copy_from_slice(&seq.to_le_bytes());
    }
    d
}

/// Polls `io` until `want` datagrams arrived or 5 s passed; returns them.
fn collect(io: &mut UdpIo, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(5);
    while got.len() < want && Instant::now() < end {
        io.submit_and_poll(Some(Duration::from_millis(20)), |from, p| {
            got.push((from, p.to_vec()))
        })
        .expect("poll");
    }
    got
}

#[test]
fn auto_picks_uring_or_reports_why_not() {
    let here = uring_here();
    let switched_off = std::env::var(conclave_engine::io::DISABLE_ENV).as_deref() == Ok("off");
    let auto = bind(opts(BackendChoice::Auto));
    assert_eq!(auto.backend() == Backend::Uring, here && !switched_off);
}

/// Runs in a child process (see below) with io_uring switched off by the environment.
#[test]
#[ignore = "run by auto_falls_back_when_io_uring_is_switched_off in a child process"]
fn child_auto_with_io_uring_switched_off() {
    assert_eq!(
        std::env::var(conclave_engine::io::DISABLE_ENV).as_deref(),
        Ok("off"),
        "only meaningful in the child process that the parent test starts"
    );
    let mut a = bind(opts(BackendChoice::Auto));
    let mut b = bind(opts(BackendChoice::Auto));
    assert_eq!(a.backend(), Backend::Mmsg);
    let why = a.fallback_reason().expect("a reason for the fallback");
    assert!(why.contains(conclave_engine::io::DISABLE_ENV), "{why}");
    a.push_send(b.local_addr(), b"via fallback").unwrap();
    a.flush().unwrap();
    assert_eq!(
        collect(&mut b, 1),
        vec![(a.local_addr(), b"via fallback".to_vec())]
    );
}

#[test]
fn auto_falls_back_when_io_uring_is_switched_off() {
    // The switch is process-wide, so the check runs in a child process of this binary
    // rather than changing the environment under the other tests.
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "child_auto_with_io_uring_switched_off",
            "--ignored",
        ])
        .env(conclave_engine::io::DISABLE_ENV, "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child did not run the check:\n{text}"
    );
}

#[test]
fn forced_fallback_is_honoured_and_works() {
    let mut a = bind(opts(BackendChoice::Fallback));
    let mut b = bind(opts(BackendChoice::Fallback));
    assert_eq!(a.backend(), Backend::Mmsg);
    assert!(a.fallback_reason().is_none(), "forced, not refused");
    a.push_send(b.local_addr(), b"hello").unwrap();
    a.submit_and_poll(Some(Duration::ZERO), |_, _| {}).unwrap();
    let got = collect(&mut b, 1);
    assert_eq!(got, vec![(a.local_addr(), b"hello".to_vec())]);
}

#[test]
fn ping_pong_all_sizes_all_backend_pairs() {
    for (ka, kb) in pairs() {
        let mut a = bind(kind_opts(ka));
        let mut b = bind(kind_opts(kb));
        let (aa, ba) = (a.local_addr(), b.local_addr());
        let mut seq = 0u32;
        for size in [1usize, 1400, 8000, 65000] {
            for _ in 0..25 {
                seq += 1;
                let d = payload(seq, size);
                a.push_send(ba, &d).unwrap();
                a.submit_and_poll(Some(Duration::ZERO), |_, _| panic!("nothing sent to a yet"))
                    .unwrap();
                let got = collect(&mut b, 1);
                assert_eq!(got.len(), 1, "{ka:?}->{kb:?} size {size}: ping lost");
                assert_eq!(got[0].0, aa);
                assert!(got[0].1 == d, "{ka:?}->{kb:?} size {size}: ping corrupted");
                // Echo through the in-place fill path.
                b.push_send_with(aa, size, |buf| buf.copy_from_slice(&got[0].1))
                    .unwrap();
                b.flush().unwrap();
                let back = collect(&mut a, 1);
                assert_eq!(back.len(), 1, "{kb:?}->{ka:?} size {size}: pong lost");
                assert_eq!(back[0].0, ba);
                assert!(back[0].1 == d, "{kb:?}->{ka:?} size {size}: pong corrupted");
            }
        }
        assert_eq!(a.stats().sent, u64::from(seq));
        assert_eq!(b.stats().received, u64::from(seq));
        assert_eq!(a.stats().received, u64::from(seq));
        assert_eq!(a.stats().send_errors + b.stats().send_errors, 0);
    }
}

#[test]
fn burst_of_thousands_arrives_whole() {
    const TOTAL: u32 = 6000;
    for (ka, kb) in pairs() {
        let mut a = bind(kind_opts(ka));
        let mut b = bind(kind_opts(kb));
        let to = b.local_addr();
        let mut seen = vec![false; TOTAL as usize];
        let mut count = 0usize;
        let end = Instant::now() + Duration::from_secs(20);
        let mut next = 0u32;
        while (count < TOTAL as usize) && Instant::now() < end {
            // Stay at most 256 ahead of the receiver, so that its socket buffer never
            // overflows and a loss would be a bug, not congestion.
            while next < TOTAL && next as usize - count < 256 {
                a.push_send(to, &payload(next, 1000)).unwrap();
                next += 1;
            }
            a.submit_and_poll(Some(Duration::ZERO), |_, _| {}).unwrap();
            b.submit_and_poll(Some(Duration::from_millis(10)), |_, p| {
                let seq = u32::from_le_bytes(p[..4].try_into().unwrap());
                assert!(
                    p == payload(seq, 1000).as_slice(),
                    "corrupted datagram {seq}"
                );
                assert!(!seen[seq as usize], "datagram {seq} delivered twice");
                seen[seq as usize] = true;
                count += 1;
            })
            .unwrap();
        }
        assert_eq!(count, TOTAL as usize, "{ka:?}->{kb:?}: lost datagrams");
        assert!(
            a.stats().syscalls < u64::from(TOTAL),
            "sends were not batched"
        );
    }
}

#[test]
fn oversized_datagrams_are_counted_and_dropped() {
    for kb in kinds() {
        let mut a = bind(opts(BackendChoice::Fallback));
        let mut b = bind(IoOptions {
            buf_size: 1000,
            ..kind_opts(kb)
        });
        let to = b.local_addr();
        a.push_send(to, &payload(1, 1001)).unwrap();
        a.push_send(to, &payload(2, 1000)).unwrap();
        a.push_send(to, &payload(3, 60000)).unwrap();
        a.push_send(to, &payload(4, 10)).unwrap();
        a.flush().unwrap();
        let got = collect(&mut b, 2);
        assert_eq!(got.len(), 2, "{kb:?}");
        assert!(got[0].1 == payload(2, 1000));
        assert!(got[1].1 == payload(4, 10));
        // Bounded extra look for anything that should not be there.
        let extra = b
            .submit_and_poll(Some(Duration::from_millis(50)), |_, _| {})
            .unwrap();
        assert_eq!(extra.received, 0);
        assert_eq!(b.stats().truncated, 2, "{kb:?}");
        assert_eq!(b.stats().received, 2);
    }
}

#[test]
fn sending_more_than_buf_size_is_an_error() {
    for k in kinds() {
        let mut a = bind(IoOptions {
            buf_size: 512,
            ..kind_opts(k)
        });
        let err = a
            .push_send("127.0.0.1:9".parse().unwrap(), &[0; 513])
            .unwrap_err();
        assert!(
            matches!(err, IoError::TooLarge { len: 513, max: 512 }),
            "{err}"
        );
        assert_eq!(a.queued_sends(), 0);
    }
}

#[test]
fn uring_receive_path_follows_the_option() {
    if !uring_here() {
        return;
    }
    // This kernel (6.x) has multishot RecvMsg, so the default takes it.
    assert_eq!(bind(kind_opts(Kind::Uring)).uring_multishot(), Some(true));
    assert_eq!(
        bind(kind_opts(Kind::UringSingle)).uring_multishot(),
        Some(false)
    );
    assert_eq!(bind(kind_opts(Kind::Mmsg)).uring_multishot(), None);
}

#[test]
fn uring_survives_receive_pool_exhaustion_and_send_slot_reuse() {
    for kind in kinds() {
        if kind == Kind::Mmsg {
            continue;
        }
        pool_exhaustion(kind);
    }
}

fn pool_exhaustion(kind: Kind) {
    // 4 receive buffers and 4 send slots: 200 datagrams force the multishot receive to run
    // dry and be re-armed (or the single-shot buffers to cycle 50 times), and push_send to
    // wait for slots to come back.
    let small = IoOptions {
        ring_entries: 4,
        batch: 32,
        ..kind_opts(kind)
    };
    let mut a = bind(small.clone());
    let mut b = bind(small);
    let to = b.local_addr();
    for seq in 0..200u32 {
        a.push_send(to, &payload(seq, 200)).unwrap();
    }
    a.flush().unwrap();
    let got = collect(&mut b, 200);
    assert_eq!(got.len(), 200);
    for (seq, (_, p)) in got.iter().enumerate() {
        assert!(
            *p == payload(seq as u32, 200),
            "datagram {seq} wrong or out of order"
        );
    }
    if kind == Kind::Uring {
        assert!(b.stats().recv_no_buffers >= 1, "{:?}", b.stats());
    }
    let end = Instant::now() + Duration::from_secs(5);
    while a.stats().sent < 200 && Instant::now() < end {
        a.submit_and_poll(Some(Duration::from_millis(5)), |_, _| {})
            .unwrap();
    }
    assert_eq!(a.stats().sent, 200);
}

#[test]
fn worker_sleeps_on_wait_fd_with_mio() {
    for (ka, kb) in pairs() {
        let mut a = bind(kind_opts(ka));
        let mut b = bind(kind_opts(kb));
        let mut poll = mio::Poll::new().unwrap();
        let fd = b.wait_fd();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(7),
                mio::Interest::READABLE,
            )
            .unwrap();
        let mut events = mio::Events::with_capacity(8);
        for round in 0..3u32 {
            // Nothing pending: the worker loop drains, then sleeps.
            let idle = b.submit_and_poll(Some(Duration::ZERO), |_, _| {}).unwrap();
            assert_eq!(idle.received, 0);
            a.push_send(b.local_addr(), &payload(round, 64)).unwrap();
            a.flush().unwrap();
            let mut woke = false;
            let end = Instant::now() + Duration::from_secs(5);
            while !woke && Instant::now() < end {
                match poll.poll(&mut events, Some(Duration::from_millis(100))) {
                    Ok(()) => woke = events.iter().any(|e| e.token() == mio::Token(7)),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("poll: {e}"),
                }
            }
            assert!(woke, "{ka:?}->{kb:?}: wait fd never turned readable");
            let got = collect(&mut b, 1);
            assert_eq!(got.len(), 1);
            assert!(got[0].1 == payload(round, 64));
        }
    }
}

#[test]
fn blocking_wait_returns_with_the_datagram_or_empty_on_timeout() {
    for (ka, kb) in pairs() {
        let mut a = bind(kind_opts(ka));
        let mut b = bind(kind_opts(kb));
        let none = b
            .submit_and_poll(Some(Duration::from_millis(30)), |_, _| {})
            .unwrap();
        assert_eq!(none.received, 0);
        let to = b.local_addr();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a.push_send(to, b"late").unwrap();
            a.flush().unwrap();
            a
        });
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(5);
        while got.is_empty() && Instant::now() < end {
            b.submit_and_poll(Some(Duration::from_secs(5)), |_, p| got.push(p.to_vec()))
                .unwrap();
        }
        assert_eq!(got, vec![b"late".to_vec()]);
        drop(sender.join().unwrap());
    }
}

#[test]
fn drop_with_sends_in_flight_and_receive_armed() {
    for (ka, kb) in pairs() {
        let a = {
            let mut a = bind(kind_opts(ka));
            let b = bind(kind_opts(kb));
            for seq in 0..100 {
                a.push_send(b.local_addr(), &payload(seq, 1400)).unwrap();
            }
            drop(b);
            a
        };
        // Dropping with queued, submitted and unreaped sends must neither hang nor crash.
        drop(a);
    }
}

#[test]
fn uring_worker_cycle_is_one_system_call() {
    if !uring_here() {
        return;
    }
    let mut a = bind(kind_opts(Kind::Uring));
    let mut b = bind(kind_opts(Kind::Uring));
    let to = b.local_addr();
    // Let a's first cycle settle (it reaps nothing yet, but keeps the count honest).
    a.submit_and_poll(Some(Duration::ZERO), |_, _| {}).unwrap();

    // Ten sends queued (below `batch`) cost nothing until the cycle's one io_uring_enter.
    let before = a.stats().syscalls;
    for seq in 0..10 {
        a.push_send(to, &payload(seq, 300)).unwrap();
    }
    assert_eq!(a.stats().syscalls, before, "queuing made a system call");
    a.submit_and_poll(Some(Duration::ZERO), |_, _| {}).unwrap();
    assert_eq!(a.stats().syscalls, before + 1);

    // The receiver wakes on its fd and gets what has arrived in one call as well.
    let mut poll = mio::Poll::new().unwrap();
    let fd = b.wait_fd();
    poll.registry()
        .register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(1),
            mio::Interest::READABLE,
        )
        .unwrap();
    let mut events = mio::Events::with_capacity(4);
    let end = Instant::now() + Duration::from_secs(5);
    let mut total = 0;
    while total < 10 && Instant::now() < end {
        // Interrupted (a signal) only means: look again.
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
        }
        let before = b.stats().syscalls;
        let out = b.submit_and_poll(Some(Duration::ZERO), |_, _| {}).unwrap();
        assert_eq!(
            b.stats().syscalls,
            before + 1,
            "a receive cycle took more than one call"
        );
        total += out.received;
    }
    assert_eq!(total, 10);
}

#[test]
fn created_on_a_thread_that_exits_then_used_on_another() {
    for (ka, kb) in pairs() {
        // As a daemon would: set up on one thread, hand to a worker, setup thread ends.
        let (mut a, mut b) = std::thread::spawn(move || (bind(kind_opts(ka)), bind(kind_opts(kb))))
            .join()
            .unwrap();
        for seq in 0..50 {
            a.push_send(b.local_addr(), &payload(seq, 500)).unwrap();
        }
        a.flush().unwrap();
        let got = collect(&mut b, 50);
        assert_eq!(got.len(), 50, "{ka:?}->{kb:?}");
        for (seq, (_, p)) in got.iter().enumerate() {
            assert!(
                *p == payload(seq as u32, 500),
                "{ka:?}->{kb:?}: datagram {seq}"
            );
        }
        assert_eq!(b.stats().recv_errors, 0);
    }
}

/// Multicasts (and single sends between them) from a sender whose pool holds fewer slots
/// than a few multicasts need, so every buffer is reused many times: a buffer handed back
/// before all of its sends had completed would show up as a wrong payload somewhere.
fn multicast_with_reuse(kind: Kind) {
    let small = IoOptions {
        ring_entries: 4,
        batch: 4,
        ..kind_opts(kind)
    };
    let mut a = bind(small);
    let mut rx: Vec<UdpIo> = (0..3).map(|_| bind(kind_opts(kind))).collect();
    let dests: Vec<SocketAddr> = rx.iter().map(|r| r.local_addr()).collect();
    const ROUNDS: u32 = 150;
    let mut fills = 0;
    for seq in 0..ROUNDS {
        let len = 100 + (seq as usize * 37) % 1400;
        let p = payload(seq, len);
        if seq % 5 == 4 {
            // A single send to the middle receiver only.
            a.push_send_with(dests[1], len, |buf| buf.copy_from_slice(&p))
                .unwrap();
        } else {
            a.push_multicast_with(&dests, len, |buf| {
                fills += 1;
                buf.copy_from_slice(&p)
            })
            .unwrap();
        }
    }
    a.flush().unwrap();
    let multicasts = (0..ROUNDS).filter(|s| s % 5 != 4).count();
    assert_eq!(fills, multicasts, "fill runs once per multicast");
    for (r, io) in rx.iter_mut().enumerate() {
        let want: Vec<u32> = (0..ROUNDS).filter(|s| r == 1 || s % 5 != 4).collect();
        let got = collect(io, want.len());
        assert_eq!(got.len(), want.len(), "{kind:?} receiver {r}");
        for ((from, p), &seq) in got.iter().zip(&want) {
            assert_eq!(*from, a.local_addr());
            let len = 100 + (seq as usize * 37) % 1400;
            assert!(
                *p == payload(seq, len),
                "{kind:?} receiver {r}: datagram {seq} wrong or out of order"
            );
        }
    }
    let total = (multicasts * 3 + (ROUNDS as usize - multicasts)) as u64;
    let end = Instant::now() + Duration::from_secs(5);
    while a.stats().sent < total && Instant::now() < end {
        a.submit_and_poll(Some(Duration::from_millis(5)), |_, _| {})
            .unwrap();
    }
    assert_eq!(a.stats().sent, total, "{kind:?}");
    assert_eq!(a.stats().send_errors, 0);
}

#[test]
fn multicast_reaches_every_destination_and_buffers_come_back() {
    for kind in kinds() {
        multicast_with_reuse(kind);
    }
}

#[test]
fn multicast_wider_than_the_pool_and_edge_cases() {
    for kind in kinds() {
        // 4 slots (io_uring) or a batch of 4 (fallback) for 6 destinations: split in
        // two, every destination still gets the datagram once.
        let mut a = bind(IoOptions {
            ring_entries: 4,
            batch: 4,
            ..kind_opts(kind)
        });
        let mut rx: Vec<UdpIo> = (0..6).map(|_| bind(kind_opts(kind))).collect();
        let dests: Vec<SocketAddr> = rx.iter().map(|r| r.local_addr()).collect();
        let mut fills = 0;
        for seq in 0..3u32 {
            a.push_multicast_with(&dests, 900, |buf| {
                fills += 1;
                buf.copy_from_slice(&payload(seq, 900))
            })
            .unwrap();
        }
        assert_eq!(fills, 3);
        // No destination: nothing written, nothing sent.
        a.push_multicast_with(&[], 10, |_| panic!("fill called without destinations"))
            .unwrap();
        assert!(matches!(
            a.push_multicast(&dests, &vec![0; 65537]),
            Err(IoError::TooLarge { .. })
        ));
        a.flush().unwrap();
        for (r, io) in rx.iter_mut().enumerate() {
            let got = collect(io, 3);
            let want: Vec<Vec<u8>> = (0..3).map(|s| payload(s, 900)).collect();
            let got: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
            assert_eq!(got, want, "{kind:?} receiver {r}");
        }
    }
}
