//! MODP exponentiation: num-bigint's variable-time `modpow` against crypto-bigint's
//! constant-time Montgomery `pow`, at 2048 and 3072 bits, plus the group operations the
//! protocols call (the decision is recorded in docs/keys.md).

#![allow(missing_docs)] // criterion_group! expands to an undocumented public function.

use conclave_control::keys::DhGroup;
use conclave_control::keys::modp::{Modp2048, Modp3072};
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use num_bigint::BigUint;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn bench_group<G: DhGroup>(c: &mut Criterion, g: G, p_be: Vec<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let k = g.random_scalar(&mut rng);
    let base = g.exp_generator(&g.random_scalar(&mut rng));
    let base_bytes = g.encode_element(&base);
    let p = BigUint::from_bytes_be(&p_be);
    let base_big = BigUint::from_bytes_be(&base_bytes);
    // The same exponent as num-bigint sees it: recover it from g^k's exponent bytes by
    // drawing a fresh one of full width (the cost of modpow depends on width, not value).
    let mut k_bytes = vec![0u8; p_be.len()];
    rand::RngCore::fill_bytes(&mut rng, &mut k_bytes);
    k_bytes[0] &= 0x7f;
    let k_big = BigUint::from_bytes_be(&k_bytes) % &p;

    let name = g.name();
    c.bench_function(&format!("{name}/num-bigint modpow (variable-time)"), |b| {
        b.iter(|| black_box(&base_big).modpow(black_box(&k_big), &p))
    });
    c.bench_function(&format!("{name}/crypto-bigint pow (constant-time)"), |b| {
        b.iter(|| g.exp(black_box(&base), black_box(&k)))
    });
    c.bench_function(&format!("{name}/exp_generator"), |b| {
        b.iter(|| g.exp_generator(black_box(&k)))
    });
    c.bench_function(&format!("{name}/decode_element (Jacobi check)"), |b| {
        b.iter(|| g.decode_element(black_box(&base_bytes)))
    });
    c.bench_function(&format!("{name}/element_to_scalar"), |b| {
        b.iter(|| g.element_to_scalar(black_box(&base)))
    });
    c.bench_function(&format!("{name}/invert exponent"), |b| {
        b.iter(|| g.invert(black_box(&k)))
    });
}

fn modp(c: &mut Criterion) {
    let g = Modp2048;
    let p = g.encode_element(g.params().p());
    bench_group(c, g, p);
    let g = Modp3072;
    let p = g.encode_element(g.params().p());
    bench_group(c, g, p);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = modp
}
criterion_main!(benches);
