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
    pump_capture(rings, now, log, &mut Vec::new());
}

/// As [`pump`], also recording every datagram as (sender, destination, bytes).
fn pump_capture(
    rings: &mut [Ring],
    now: &mut Instant,
    log: &mut [Vec<Logged>],
    capture: &mut Vec<(u16, Dest, Vec<u8>)>,
) {
    let mut buf = Vec::new();
    for _ in 0..10_000 {
        let mut moved = false;
        for i in 0..rings.len() {
            while let Some(t) = rings[i].poll_transmit(*now, &mut buf) {
                moved = true;
                capture.push((i as u16, t.dest, buf.clone()));
                for j in 0..rings.len() {
                    let to_j = match t.dest {
                        Dest::All | Dest::Everyone => j != i,
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
    three_daemons(false);
}

#[test]
fn three_daemons_agree_on_one_order_accelerated() {
    three_daemons(true);
}

fn three_daemons(accelerated: bool) {
    let mut now = Instant::ZERO;
    let mut rings: Vec<Ring> = (0..3)
        .map(|i| {
            let mut c = cfg(i, 3);
            c.accelerated = accelerated;
            Ring::new(c, now).expect("config")
        })
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
    // RELIABLE/UNRELIABLE come out on receipt, so only the ordered services share one
    // sequence; all daemons still deliver the same set.
    let ordered = |l: &Vec<Logged>| -> Vec<Logged> {
        l.iter()
            .filter(|d| !matches!(d.2, Service::Reliable | Service::Unreliable))
            .cloned()
            .collect()
    };
    let sorted = |l: &Vec<Logged>| -> Vec<Logged> {
        let mut v = l.clone();
        v.sort();
        v
    };
    for l in &log {
        assert_eq!(l.len(), expected);
        assert!(ordered(l) == ordered(&log[0]), "ordered deliveries differ");
        assert!(sorted(l) == sorted(&log[0]), "delivered sets differ");
        let seqs: Vec<u64> = ordered(l).iter().map(|d| d.0).collect();
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]));
    }
    assert!(
        log.iter().any(|l| ordered(l).len() < l.len()),
        "no unordered service was exercised"
    );
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

/// Feeds one fuzz input to daemon 1 of a three-daemon ring the way the cargo-fuzz target
/// `ring_packet` does: the first byte picks the sender, the rest is the datagram.
fn fuzz_one(input: &[u8]) -> Result<(), PacketError> {
    let Some((&who, datagram)) = input.split_first() else {
        return Ok(());
    };
    let _ = wire::decode(datagram);
    let mut ring = Ring::new(cfg(1, 3), Instant::ZERO).expect("config");
    let result = ring.handle_datagram(Instant::ZERO, DaemonIdx(u16::from(who % 3)), datagram);
    let mut buf = Vec::new();
    while ring.poll_transmit(Instant::ZERO, &mut buf).is_some() {}
    while ring.poll_delivery().is_some() {}
    result
}

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus/ring_packet")
}

/// Three daemons' traffic with packed, fragmented and SAFE messages, as fuzz inputs
/// (sender byte + datagram) that daemon 1 accepts.
fn sample_inputs() -> Vec<(String, Vec<u8>)> {
    let mut now = Instant::ZERO;
    let mut rings: Vec<Ring> = (0..3)
        .map(|i| Ring::new(cfg(i, 3), now).expect("config"))
        .collect();
    let mut log = vec![Vec::new(); 3];
    let mut capture = Vec::new();
    for k in 0..6 {
        rings[0]
            .submit(Service::ALL[k], &message(0, k, 20 + 5 * k))
            .expect("submit");
    }
    rings[0]
        .submit(Service::Agreed, &message(0, 9, 1500))
        .expect("submit");
    rings[2]
        .submit(Service::Safe, &message(2, 1, 40))
        .expect("submit");
    rings[2]
        .submit(Service::Fifo, &message(2, 2, 700))
        .expect("submit");
    pump_capture(&mut rings, &mut now, &mut log, &mut capture);
    for k in 0..8 {
        rings[2]
            .submit(Service::Agreed, &message(2, 10 + k, 30))
            .expect("submit");
        now += Duration::from_millis(1);
        for r in rings.iter_mut() {
            r.handle_timeout(now);
        }
        pump_capture(&mut rings, &mut now, &mut log, &mut capture);
    }
    let mut out = Vec::new();
    let (mut tokens, mut data) = (0, 0);
    for (from, dest, bytes) in capture {
        let name = match (wire::decode(&bytes), dest) {
            (Ok(Packet::Token(_)), Dest::One(DaemonIdx(1))) if from == 0 && tokens < 5 => {
                tokens += 1;
                format!("token-{tokens}")
            }
            (Ok(Packet::Data(d)), Dest::All) if from != 1 && data < 10 => {
                data += 1;
                let frag = d.items().any(|i| !(i.first && i.last));
                let kind = match (d.count > 1, frag) {
                    (true, false) => "packed",
                    (true, true) => "packed-fragment",
                    (false, true) => "fragment",
                    (false, false) => "data",
                };
                format!("{kind}-{data}")
            }
            _ => continue,
        };
        let mut input = vec![from as u8];
        input.extend_from_slice(&bytes);
        out.push((name, input));
    }
    out
}

/// Regenerates the committed fuzz corpus: `cargo test -p conclave-engine -- --ignored
/// write_fuzz_corpus`.
#[test]
#[ignore = "writes tests/fuzz/corpus; run by hand when the packet format changes"]
fn write_fuzz_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, input) in sample_inputs() {
        std::fs::write(dir.join(name), input).expect("write corpus file");
    }
}

#[test]
fn sample_inputs_cover_every_packet_shape() {
    let names: Vec<String> = sample_inputs().into_iter().map(|(n, _)| n).collect();
    for kind in ["token", "packed", "fragment"] {
        assert!(
            names.iter().any(|n| n.starts_with(kind)),
            "{kind} missing: {names:?}"
        );
    }
    assert!(names.len() >= 12, "{names:?}");
}

/// The stable stand-in for cargo-fuzz: the committed corpus must be accepted, and
/// thousands of seeded mutations of it must be refused or accepted without a panic.
#[test]
fn fuzz_corpus_and_mutations() {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir())
        .expect("committed corpus")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("corpus file"))
        .collect();
    corpus.sort();
    assert!(corpus.len() >= 12, "corpus has {} inputs", corpus.len());
    for input in &corpus {
        assert_eq!(fuzz_one(input), Ok(()), "corpus input refused");
    }
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut refused = 0;
    for _ in 0..5000 {
        let mut input = corpus[rng.gen_range(0..corpus.len())].clone();
        for _ in 0..rng.gen_range(1..=4) {
            match rng.gen_range(0..4) {
                0 if input.len() > 1 => {
                    let at = rng.gen_range(0..input.len());
                    input[at] = rng.r#gen();
                }
                1 => input.truncate(rng.gen_range(0..=input.len())),
                2 => input.push(rng.r#gen()),
                _ => {
                    let at = rng.gen_range(0..=input.len());
                    input.insert(at, rng.r#gen());
                }
            }
        }
        if fuzz_one(&input).is_err() {
            refused += 1;
        }
    }
    // Mutations hit lengths, kinds and counts often enough that many must be refused.
    assert!(refused > 1000, "only {refused} of 5000 mutations refused");
}

#[test]
fn reliable_skips_a_gap_that_holds_back_agreed() {
    let mut a = Ring::new(cfg(0, 2), Instant::ZERO).expect("config");
    let mut b = Ring::new(cfg(1, 2), Instant::ZERO).expect("config");
    let now = Instant::ZERO;
    let mut buf = Vec::new();
    // Token a -> b -> a, so that a holds it with messages queued.
    a.poll_transmit(now, &mut buf).expect("token");
    b.handle_datagram(now, DaemonIdx(0), &buf)
        .expect("token at b");
    b.poll_transmit(now, &mut buf).expect("token back");
    a.submit(Service::Agreed, &[1; 400]).expect("submit");
    a.submit(Service::Reliable, &[2; 400]).expect("submit");
    a.handle_datagram(now, DaemonIdx(1), &buf)
        .expect("token at a");
    let mut sent = Vec::new();
    while let Some(t) = a.poll_transmit(now, &mut buf) {
        sent.push((t.dest, buf.clone()));
    }
    // Two data packets (one message each at max_datagram 512) and the token.
    assert_eq!(sent.len(), 3);
    // The first packet (AGREED) is lost; the RELIABLE one is delivered regardless.
    b.handle_datagram(now, DaemonIdx(0), &sent[1].1)
        .expect("data 2");
    let d = b
        .poll_delivery()
        .expect("reliable delivered across the gap");
    assert_eq!(
        (d.seq, d.service, d.payload),
        (2, Service::Reliable, &[2u8; 400][..])
    );
    assert!(b.poll_delivery().is_none());
    // Once the gap fills, AGREED comes out, and the RELIABLE message not again.
    b.handle_datagram(now, DaemonIdx(0), &sent[0].1)
        .expect("data 1");
    let d = b.poll_delivery().expect("agreed");
    assert_eq!((d.seq, d.service), (1, Service::Agreed));
    assert!(b.poll_delivery().is_none());
}

#[test]
fn tokens_and_data_beyond_the_horizon_are_refused() {
    let mut b = Ring::new(cfg(1, 2), Instant::ZERO).expect("config");
    let ring_id = b.config().ring_id;
    let mut buf = Vec::new();
    wire::Token {
        token_seq: 1,
        seq: u64::MAX,
        aru: u64::MAX,
        ..wire::Token::default()
    }
    .encode(ring_id, &mut buf);
    assert_eq!(
        b.handle_datagram(Instant::ZERO, DaemonIdx(0), &buf),
        Err(PacketError::TooFarAhead(u64::MAX))
    );
    wire::begin_data(&mut buf, ring_id, u64::MAX, DaemonIdx(0));
    wire::push_item(&mut buf, true, true, Service::Agreed, 1, b"x");
    assert_eq!(
        b.handle_datagram(Instant::ZERO, DaemonIdx(0), &buf),
        Err(PacketError::TooFarAhead(u64::MAX))
    );
    assert_eq!(b.stats().dropped_too_far, 2);
    // A token far ahead, but not absurdly, is a daemon that lost much: it must be taken.
    wire::Token {
        token_seq: 1,
        seq: 100_000,
        aru: 0,
        aru_id: Some(DaemonIdx(0)),
        ..wire::Token::default()
    }
    .encode(ring_id, &mut buf);
    assert_eq!(b.handle_datagram(Instant::ZERO, DaemonIdx(0), &buf), Ok(()));
    assert!(b.poll_delivery().is_none());
    assert_eq!(
        b.token_loss_deadline(),
        Some(Instant::ZERO + Duration::from_millis(500))
    );
}

#[test]
fn one_mebibyte_message_crosses_three_daemons() {
    let mut now = Instant::ZERO;
    let mut rings: Vec<Ring> = (0..3)
        .map(|i| {
            let c = RingConfig::new(DaemonIdx(i), (0..3).map(DaemonIdx).collect());
            Ring::new(c, now).expect("config")
        })
        .collect();
    let big = message(1, 7, 1024 * 1024);
    rings[1]
        .submit(Service::Safe, &big)
        .expect("1 MiB fits max_message");
    rings[1].submit(Service::Agreed, b"after").expect("submit");
    let mut log = vec![Vec::new(); 3];
    for _ in 0..6 {
        pump(&mut rings, &mut now, &mut log);
        now += Duration::from_millis(1);
        for r in rings.iter_mut() {
            r.handle_timeout(now);
        }
    }
    for l in &log {
        assert_eq!(l.len(), 2);
        assert!(l[0].3 == big, "reassembled message differs");
        assert_eq!(l[1].3, b"after");
    }
    assert!(rings[1].stats().data_sent >= 128);
}

#[test]
fn submit_with_writes_in_place_and_a_refusal_leaves_the_queue_alone() {
    let mut c = cfg(0, 2);
    c.max_message = 2000;
    c.max_pending_bytes = 2500;
    let mut rings = vec![
        Ring::new(c.clone(), Instant::ZERO).expect("config"),
        Ring::new(cfg(1, 2), Instant::ZERO).expect("config"),
    ];
    let r = &mut rings[0];
    // A fragmented message (over the 512-byte datagram) and a small one, written in place.
    r.submit_with(Service::Agreed, |b| {
        b.extend_from_slice(&message(0, 0, 1500))
    })
    .expect("first");
    r.submit_with(Service::Safe, |b| {
        assert!(b.is_empty(), "the buffer handed out is empty");
        b.extend_from_slice(&message(0, 1, 700));
    })
    .expect("second");
    // Too large, then over the byte budget: both refused, nothing queued.
    assert_eq!(
        r.submit_with(Service::Agreed, |b| b.resize(2001, 7)),
        Err(SubmitError::TooLarge {
            len: 2001,
            max: 2000
        })
    );
    assert_eq!(
        r.submit_with(Service::Agreed, |b| b.resize(400, 7)),
        Err(SubmitError::Backpressure)
    );
    assert_eq!(r.pending_messages(), 2);
    r.submit_with(Service::Agreed, |b| {
        b.extend_from_slice(&message(0, 2, 300))
    })
    .expect("fits exactly");
    let mut now = Instant::ZERO;
    let mut log = vec![Vec::new(), Vec::new()];
    // SAFE needs the token to come round again after the queue has emptied.
    for _ in 0..6 {
        pump(&mut rings, &mut now, &mut log);
        now += Duration::from_millis(1);
        for r in rings.iter_mut() {
            r.handle_timeout(now);
        }
    }
    let want = [
        (Service::Agreed, message(0, 0, 1500)),
        (Service::Safe, message(0, 1, 700)),
        (Service::Agreed, message(0, 2, 300)),
    ];
    for l in &log {
        let got: Vec<(Service, Vec<u8>)> = l.iter().map(|d| (d.2, d.3.clone())).collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "wrong messages delivered");
    }
    // Buffers of packed messages are reused: the queue is empty again and takes more.
    assert_eq!(rings[0].pending_messages(), 0);
    assert!(!rings[0].msg_pool.is_empty());
}
