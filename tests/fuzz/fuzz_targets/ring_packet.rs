//! Arbitrary bytes into the ring's packet decoder and into `Ring::handle_datagram`.
//!
//! Input layout (the committed corpus follows it): the first byte picks the sending daemon
//! (modulo 3), the rest is one datagram delivered to daemon 1 of a three-daemon ring.
//! Run: `cd tests/fuzz && cargo +nightly fuzz run ring_packet corpus/ring_packet`.
#![no_main]

use conclave_engine::core::ring::{DaemonIdx, Ring, RingConfig, wire};
use conclave_engine::core::time::Instant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&who, datagram)) = input.split_first() else {
        return;
    };
    let _ = wire::decode(datagram);
    let mut cfg = RingConfig::new(DaemonIdx(1), (0..3).map(DaemonIdx).collect());
    cfg.max_datagram = 512;
    let Ok(mut ring) = Ring::new(cfg, Instant::ZERO) else {
        return;
    };
    let _ = ring.handle_datagram(Instant::ZERO, DaemonIdx(u16::from(who % 3)), datagram);
    let mut buf = Vec::new();
    while ring.poll_transmit(Instant::ZERO, &mut buf).is_some() {}
    while ring.poll_delivery().is_some() {}
});
