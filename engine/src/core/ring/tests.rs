//! Unit tests of the ring over a tiny lossless in-test network (the simulator covers loss).

use std::time::Duration;

use super::*;

fn cfg(me: u16, n: u16) -> RingConfig {
    let mut c = RingConfig::new(DaemonIdx(me), (0..n).map(DaemonIdx).collect());
    c.max_datagram = 512;
    c
}

/// One delivery as the tests record it: seq, origin, service, payload.
type Logged = (u64, u16, Service, Vec<u8>);

/// Runs `rings` to quiescence on a lossless network; returns each ring's deliveries.
fn pump(rings: &mut [Ring], now: &mut Instant, log: &mut [Vec<Logged>]) {
    let mut buf = Vec::new();
    for _ in 0..10_000 {
        let mut moved = false;
        for i in 0..rings.len() {
            while let Some(t) = rings[i].poll_transmit(*now, &mut buf) {
                moved = true;
                for j in 0..rings.len() {
                    let to_j = match t.dest {
                        Dest::All => j != i,
                        Dest::One(d) => usize::from(d.0) == j,
                    };
                    if to_j {
                        let from = rings[i].config().me;
                        rings[j]
                            .handle_datagram(*now, from, &buf)
                            .expect("valid packet");
                    }
                }
            }
            while let Some(d) = rings[i].poll_delivery() {
                log[i].push((d.seq, d.origin.0, d.service, d.payload.to_vec()));
            }
        }
        if !moved {
            // Nothing in flight: let held tokens go.
            let next = rings.iter().filter_map(Ring::poll_timeout).min();
            match next {
                Some(t) if rings.iter().any(|r| r.pending_messages() > 0) => {
                    *now = (*now).max(t);
                    for r in rings.iter_mut() {
                        r.handle_timeout(*now);
                    }
                }
                _ => return,
            }
        }
    }
    panic!("ring did not settle");
}

fn message(origin: u16, k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ (k as u8) ^ (origin as u8).wrapping_mul(31))
        .collect()
}

#[test]
fn single_daemon_delivers_in_order_including_fragments() {
    let mut r = Ring::new(cfg(0, 1), Instant::ZERO).expect("config");
    let sizes = [0usize, 10, 600, 3000, 5, 511, 1024 * 5];
    for (k, &len) in sizes.iter().enumerate() {
        let svc = Service::ALL[k % 6];
        r.submit(svc, &message(0, k, len)).expect("submit");
    }
    let mut buf = Vec::new();
    assert_eq!(r.poll_transmit(Instant::ZERO, &mut buf), None);
    let mut got = Vec::new();
    while let Some(d) = r.poll_delivery() {
        got.push((d.service, d.payload.to_vec()));
    }
    assert_eq!(got.len(), sizes.len());
    for (k, (svc, p)) in got.iter().enumerate() {
        assert_eq!(*svc, Service::ALL[k % 6]);
        assert_eq!(*p, message(0, k, sizes[k]), "message {k}");
    }
    assert_eq!(r.stats().messages_delivered, sizes.len() as u64);
    // Everything delivered in a ring of one is collected.
    assert!(r.store.slots.is_empty());
}

#[test]
fn three_daemons_agree_on_one_order() {
    let mut now = Instant::ZERO;
    let mut rings: Vec<Ring> = (0..3)
        .map(|i| Ring::new(cfg(i, 3), now).expect("config"))
        .collect();
    let mut log = vec![Vec::new(); 3];
    let mut expected = 0;
    for round in 0..5 {
        for (i, r) in rings.iter_mut().enumerate() {
            for k in 0..7 {
                let len = [3, 100, 900, 2500][(k + round) % 4];
                let svc = Service::ALL[(k + i) % 6];
                r.submit(svc, &message(i as u16, round * 10 + k, len))
                    .expect("submit");
                expected += 1;
            }
        }
        pump(&mut rings, &mut now, &mut log);
        now += Duration::from_millis(1);
    }
    // Make the last SAFE messages safe: a few more rotations of an idle token.
    for _ in 0..4 {
        now += Duration::from_millis(1);
        for r in rings.iter_mut() {
            r.handle_timeout(now);
        }
        pump(&mut rings, &mut now, &mut log);
    }
    assert_eq!(log[0].len(), expected);
    assert_eq!(log[0], log[1]);
    assert_eq!(log[0], log[2]);
    let seqs: Vec<u64> = log[0].iter().map(|d| d.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]));
    for r in &rings {
        assert_eq!(r.stats().dropped_malformed, 0);
        assert!(r.stats().data_sent > 0);
    }
}

#[test]
fn bad_datagrams_are_dropped_and_counted() {
    let mut a = Ring::new(cfg(0, 2), Instant::ZERO).expect("config");
    let mut b = Ring::new(cfg(1, 2), Instant::ZERO).expect("config");
    let mut tok = Vec::new();
    let t = a
        .poll_transmit(Instant::ZERO, &mut tok)
        .expect("first token");
    assert_eq!(t.dest, Dest::One(DaemonIdx(1)));

    let now = Instant::ZERO;
    assert_eq!(
        b.handle_datagram(now, DaemonIdx(0), &tok[..10]),
        Err(PacketError::Truncated)
    );
    let mut v = tok.clone();
    v[0] = 77;
    assert_eq!(
        b.handle_datagram(now, DaemonIdx(0), &v),
        Err(PacketError::UnknownVersion(77))
    );
    let mut v = tok.clone();
    v[4] = 99;
    assert!(matches!(
        b.handle_datagram(now, DaemonIdx(0), &v),
        Err(PacketError::WrongRing { .. })
    ));
    assert_eq!(
        b.handle_datagram(now, DaemonIdx(5), &tok),
        Err(PacketError::UnknownSender(DaemonIdx(5)))
    );
    let s = b.stats();
    assert_eq!(
        (
            s.dropped_truncated,
            s.dropped_version,
            s.dropped_wrong_ring,
            s.dropped_sender
        ),
        (1, 1, 1, 1)
    );
    // The real token still works, once.
    assert_eq!(b.handle_datagram(now, DaemonIdx(0), &tok), Ok(()));
    assert_eq!(b.handle_datagram(now, DaemonIdx(0), &tok), Ok(()));
    assert_eq!(b.stats().tokens_received, 1);
    assert_eq!(b.stats().duplicate_tokens, 1);
}

#[test]
fn backpressure_and_size_limit() {
    let mut c = cfg(0, 2);
    c.max_pending_messages = 2;
    c.max_message = 100;
    let mut r = Ring::new(c, Instant::ZERO).expect("config");
    assert_eq!(
        r.submit(Service::Agreed, &[0; 101]),
        Err(SubmitError::TooLarge { len: 101, max: 100 })
    );
    r.submit(Service::Agreed, b"a").expect("first");
    r.submit(Service::Agreed, b"b").expect("second");
    assert_eq!(
        r.submit(Service::Agreed, b"c"),
        Err(SubmitError::Backpressure)
    );
    assert_eq!(r.stats().messages_refused, 1);
}

#[test]
fn lost_token_is_retransmitted() {
    let mut a = Ring::new(cfg(0, 2), Instant::ZERO).expect("config");
    let mut buf = Vec::new();
    assert!(a.poll_transmit(Instant::ZERO, &mut buf).is_some());
    assert_eq!(a.poll_transmit(Instant::ZERO, &mut buf), None);
    let due = a.poll_timeout().expect("token timer armed");
    a.handle_timeout(due);
    let t = a.poll_transmit(due, &mut buf).expect("token resent");
    assert_eq!(t.dest, Dest::One(DaemonIdx(1)));
    assert_eq!(a.stats().token_retransmits, 1);
}
