//! MODP Diffie-Hellman groups of RFC 3526 (2048-bit group 14, 3072-bit group 15).
//!
//! Both primes are safe primes `p = 2q + 1`; generator 2 generates the subgroup of
//! quadratic residues, of prime order `q`. Secret exponents live in `[1, q-1]`; elements
//! are the quadratic residues in `[2, p-2]`.
//!
//! Every exponentiation by a secret uses crypto-bigint's Montgomery `pow`, whose sequence
//! of operations and memory accesses does not depend on the exponent's value (fixed 4-bit
//! windows over all exponent bits, constant-time table selection). num-bigint's `modpow`
//! is faster but branches on the exponent's bits, so it is only used on public data (the
//! residue check of received elements uses a Jacobi symbol instead, which is cheaper than
//! an exponentiation). See docs/keys.md for the measurement that led to this choice.

use std::sync::OnceLock;

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{NonZero, RandomMod, Uint};
use num_bigint::BigUint;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};

use super::KeyError;
use super::dh::DhGroup;

/// RFC 3526 §3, the 2048-bit MODP group (group 14).
const P2048_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// RFC 3526 §4, the 3072-bit MODP group (group 15).
const P3072_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64",
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7",
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6B",
    "F12FFA06D98A0864D87602733EC86A64521F2B18177B200C",
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB31",
    "43DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
);

const L2048: usize = 2048 / 64;
const L3072: usize = 3072 / 64;

/// Precomputed constants of one MODP group: Montgomery parameters for arithmetic modulo
/// `p` (elements) and modulo `q` (exponents), and the same numbers as num-bigint values
/// for the public-data checks.
#[derive(Debug)]
pub struct ModpParams<const LIMBS: usize> {
    name: &'static str,
    p: Uint<LIMBS>,
    q: Uint<LIMBS>,
    p_mont: DynResidueParams<LIMBS>,
    q_mont: DynResidueParams<LIMBS>,
    /// `2^(64*LIMBS) mod q`, to fold the high half of a wide hash.
    r_mod_q: DynResidue<LIMBS>,
    generator: DynResidue<LIMBS>,
    /// `g^(j·16^i)` in Montgomery form at `[16·i + j]`, built on first use: a fixed-base
    /// exponentiation is then one multiplication per 4-bit window of the exponent.
    comb: OnceLock<Vec<Uint<LIMBS>>>,
    p_big: BigUint,
}

impl<const LIMBS: usize> ModpParams<LIMBS> {
    fn new(name: &'static str, p_hex: &str) -> Self {
        let p = Uint::<LIMBS>::from_be_hex(p_hex);
        let q = p.shr_vartime(1);
        let p_mont = DynResidueParams::new(&p);
        let q_mont = DynResidueParams::new(&q);
        let r_mod_q = DynResidue::new(DynResidue::one(q_mont).as_montgomery(), q_mont);
        let generator = DynResidue::new(&Uint::from_u8(2), p_mont);
        let p_big = BigUint::from_bytes_be(&uint_to_be(&p));
        Self {
            name,
            p,
            q,
            p_mont,
            q_mont,
            r_mod_q,
            generator,
            comb: OnceLock::new(),
            p_big,
        }
    }

    /// The prime modulus `p`.
    pub fn p(&self) -> &Uint<LIMBS> {
        &self.p
    }

    /// The subgroup order `q = (p-1)/2`.
    pub fn q(&self) -> &Uint<LIMBS> {
        &self.q
    }

    /// Width of an encoded element in bytes.
    pub const fn element_len(&self) -> usize {
        LIMBS * 8
    }

    fn random_scalar(&self, rng: &mut dyn CryptoRngCore) -> Uint<LIMBS> {
        let modulus = Option::<NonZero<Uint<LIMBS>>>::from(NonZero::new(self.q))
            .expect("q is non-zero by construction");
        loop {
            let k = Uint::random_mod(&mut DynRng(&mut *rng), &modulus);
            if k != Uint::ZERO {
                return k;
            }
        }
    }

    fn exp(&self, base: &DynResidue<LIMBS>, k: &Uint<LIMBS>) -> Uint<LIMBS> {
        base.pow(k).retrieve()
    }

    fn comb(&self) -> &[Uint<LIMBS>] {
        self.comb.get_or_init(|| {
            let windows = LIMBS * 16;
            let mut table = Vec::with_capacity(windows * 16);
            let mut base = self.generator;
            for _ in 0..windows {
                let mut acc = DynResidue::one(self.p_mont);
                for _ in 0..16 {
                    table.push(*acc.as_montgomery());
                    acc = acc.mul(&base);
                }
                // acc = base^16: the next window's base.
                base = acc;
            }
            table
        })
    }

    /// `g^k` with the precomputed table: for each 4-bit window of `k`, every entry of
    /// the window's row is scanned and the matching one kept by constant-time select,
    /// then multiplied in; the work and memory accesses do not depend on `k`.
    fn exp_generator(&self, k: &Uint<LIMBS>) -> Uint<LIMBS> {
        use crypto_bigint::subtle::{ConditionallySelectable, ConstantTimeEq};
        let table = self.comb();
        let mut acc = DynResidue::one(self.p_mont);
        for (w, word) in k.as_words().iter().enumerate() {
            for nib in 0..16 {
                let digit = ((word >> (4 * nib)) & 0xf) as u8;
                let row = &table[(w * 16 + nib) * 16..][..16];
                let mut pick = row[0];
                for (j, entry) in row.iter().enumerate().skip(1) {
                    pick.conditional_assign(entry, (j as u8).ct_eq(&digit));
                }
                acc = acc.mul(&DynResidue::from_montgomery(pick, self.p_mont));
            }
        }
        acc.retrieve()
    }

    fn exp_element(&self, base: &Uint<LIMBS>, k: &Uint<LIMBS>) -> Uint<LIMBS> {
        self.exp(&DynResidue::new(base, self.p_mont), k)
    }

    fn invert_scalar(&self, k: &Uint<LIMBS>) -> Uint<LIMBS> {
        let (inv, ok) = DynResidue::new(k, self.q_mont).invert();
        // Exponents are drawn from [1, q-1] and q is prime, so every one is invertible.
        assert!(bool::from(ok), "exponent not invertible modulo a prime");
        inv.retrieve()
    }

    fn mul_scalars(&self, a: &Uint<LIMBS>, b: &Uint<LIMBS>) -> Uint<LIMBS> {
        DynResidue::new(a, self.q_mont)
            .mul(&DynResidue::new(b, self.q_mont))
            .retrieve()
    }

    /// Hashes `bytes` (under `domain`) to twice the width of `q` and reduces modulo `q`:
    /// the double width makes the bias of the reduction negligible, and the reduction is a
    /// Montgomery multiply-add, constant-time in the (secret) hash value.
    fn hash_to_scalar(&self, domain: &[u8], bytes: &[u8]) -> Uint<LIMBS> {
        let mut wide = vec![0u8; 2 * LIMBS * 8];
        for (i, chunk) in wide.chunks_mut(64).enumerate() {
            let mut digest = Sha512::new()
                .chain_update(domain)
                .chain_update(self.name.as_bytes())
                .chain_update((i as u32).to_le_bytes())
                .chain_update(bytes)
                .finalize();
            chunk.copy_from_slice(&digest[..chunk.len()]);
            // The digest is the secret scalar's material.
            zeroize::Zeroize::zeroize(digest.as_mut_slice());
        }
        let hi = Uint::<LIMBS>::from_be_slice(&wide[..LIMBS * 8]);
        let lo = Uint::<LIMBS>::from_be_slice(&wide[LIMBS * 8..]);
        zeroize::Zeroize::zeroize(&mut wide);
        let hi = DynResidue::new(&hi, self.q_mont);
        let lo = DynResidue::new(&lo, self.q_mont);
        hi.mul(&self.r_mod_q).add(&lo).retrieve()
    }

    fn encode(&self, e: &Uint<LIMBS>) -> Vec<u8> {
        uint_to_be(e)
    }

    /// Decodes and validates a public element: exact width, in `[2, p-2]`, and a quadratic
    /// residue (so in the order-`q` subgroup). Variable-time: the input is public.
    fn decode(&self, bytes: &[u8]) -> Result<Uint<LIMBS>, KeyError> {
        if bytes.len() != LIMBS * 8 {
            return Err(KeyError::BadElement);
        }
        let x = BigUint::from_bytes_be(bytes);
        let two = BigUint::from(2u8);
        if x < two || x > &self.p_big - &two {
            return Err(KeyError::BadElement);
        }
        if jacobi(&x, &self.p_big) != 1 {
            return Err(KeyError::BadElement);
        }
        Ok(Uint::from_be_slice(bytes))
    }

    fn mul_elements(&self, a: &Uint<LIMBS>, b: &Uint<LIMBS>) -> Uint<LIMBS> {
        DynResidue::new(a, self.p_mont)
            .mul(&DynResidue::new(b, self.p_mont))
            .retrieve()
    }

    fn invert_element(&self, a: &Uint<LIMBS>) -> Uint<LIMBS> {
        let (inv, ok) = DynResidue::new(a, self.p_mont).invert();
        // Elements are validated to lie in [2, p-2], all units modulo the prime p.
        assert!(bool::from(ok), "element not invertible modulo a prime");
        inv.retrieve()
    }
}

/// Lends a `dyn` generator to APIs that want a sized one.
struct DynRng<'a>(&'a mut dyn CryptoRngCore);

impl rand_core::RngCore for DynRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl rand_core::CryptoRng for DynRng<'_> {}

/// Big-endian bytes of `x`, always `8 * LIMBS` long (fixed width, no secret-dependent length).
fn uint_to_be<const LIMBS: usize>(x: &Uint<LIMBS>) -> Vec<u8> {
    x.as_words()
        .iter()
        .rev()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// The Jacobi symbol `(a/n)` for odd `n`, by the binary algorithm (public data only).
fn jacobi(a: &BigUint, n: &BigUint) -> i8 {
    let zero = BigUint::from(0u8);
    let mut a = a % n;
    let mut n = n.clone();
    let mut t: i8 = 1;
    while a != zero {
        let tz = a.trailing_zeros().unwrap_or(0);
        if tz > 0 {
            a >>= tz;
            let n_mod_8 = low_bits(&n, 7);
            if tz % 2 == 1 && (n_mod_8 == 3 || n_mod_8 == 5) {
                t = -t;
            }
        }
        std::mem::swap(&mut a, &mut n);
        let a4 = low_bits(&a, 3);
        let n4 = low_bits(&n, 3);
        if a4 == 3 && n4 == 3 {
            t = -t;
        }
        a %= &n;
    }
    if n == BigUint::from(1u8) { t } else { 0 }
}

fn low_bits(x: &BigUint, mask: u64) -> u64 {
    x.iter_u64_digits().next().unwrap_or(0) & mask
}

fn params2048() -> &'static ModpParams<L2048> {
    static PARAMS: OnceLock<ModpParams<L2048>> = OnceLock::new();
    PARAMS.get_or_init(|| ModpParams::new("modp2048", P2048_HEX))
}

fn params3072() -> &'static ModpParams<L3072> {
    static PARAMS: OnceLock<ModpParams<L3072>> = OnceLock::new();
    PARAMS.get_or_init(|| ModpParams::new("modp3072", P3072_HEX))
}

macro_rules! modp_group {
    ($(#[$doc:meta])* $ty:ident, $limbs:ident, $params:ident, $name:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $ty;

        impl $ty {
            /// The group's constants.
            pub fn params(&self) -> &'static ModpParams<$limbs> {
                $params()
            }
        }

        impl DhGroup for $ty {
            type Scalar = Uint<$limbs>;
            type Element = Uint<$limbs>;

            fn name(&self) -> &'static str {
                $name
            }

            fn random_scalar(&self, rng: &mut dyn CryptoRngCore) -> Self::Scalar {
                $params().random_scalar(rng)
            }

            fn exp_generator(&self, k: &Self::Scalar) -> Self::Element {
                $params().exp_generator(k)
            }

            fn exp(&self, base: &Self::Element, k: &Self::Scalar) -> Self::Element {
                $params().exp_element(base, k)
            }

            fn invert(&self, k: &Self::Scalar) -> Self::Scalar {
                $params().invert_scalar(k)
            }

            fn mul_scalars(&self, a: &Self::Scalar, b: &Self::Scalar) -> Self::Scalar {
                $params().mul_scalars(a, b)
            }

            fn scalar_from_u64(&self, n: u64) -> Self::Scalar {
                // Every u64 is below q, so no reduction is needed.
                Uint::from_u64(n)
            }

            fn mul_elements(&self, a: &Self::Element, b: &Self::Element) -> Self::Element {
                $params().mul_elements(a, b)
            }

            fn invert_element(&self, a: &Self::Element) -> Self::Element {
                $params().invert_element(a)
            }

            fn element_to_scalar(&self, e: &Self::Element) -> Self::Scalar {
                let params = $params();
                // The element is a secret (a DH value); its encoding is wiped after hashing.
                let encoded = zeroize::Zeroizing::new(params.encode(e));
                params.hash_to_scalar(b"conclave tgdh node secret v1", &encoded)
            }

            fn encode_element(&self, e: &Self::Element) -> Vec<u8> {
                $params().encode(e)
            }

            fn decode_element(&self, bytes: &[u8]) -> Result<Self::Element, KeyError> {
                $params().decode(bytes)
            }

            #[cfg(test)]
            fn scalar_bytes(&self, k: &Self::Scalar) -> Vec<u8> {
                uint_to_be(k)
            }
        }

    };
}

modp_group!(
    /// RFC 3526 group 14: 2048-bit safe prime, generator 2, exponents modulo `q`.
    Modp2048,
    L2048,
    params2048,
    "modp2048"
);

modp_group!(
    /// RFC 3526 group 15: 3072-bit safe prime, generator 2, exponents modulo `q`.
    Modp3072,
    L3072,
    params3072,
    "modp3072"
);

#[cfg(test)]
mod tests {
    use num_bigint::BigUint;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn big<const L: usize>(x: &Uint<L>) -> BigUint {
        BigUint::from_bytes_be(&uint_to_be(x))
    }

    /// Miller-Rabin with fixed bases: catches a mistyped constant with overwhelming odds.
    fn probably_prime(n: &BigUint) -> bool {
        let one = BigUint::from(1u8);
        let n1 = n - &one;
        let s = n1.trailing_zeros().expect("n > 1");
        let d = &n1 >> s;
        for base in [2u32, 3, 5, 7, 11, 13, 17, 19] {
            let mut x = BigUint::from(base).modpow(&d, n);
            if x == one || x == n1 {
                continue;
            }
            let mut witness = true;
            for _ in 1..s {
                x = x.modpow(&BigUint::from(2u8), n);
                if x == n1 {
                    witness = false;
                    break;
                }
            }
            if witness {
                return false;
            }
        }
        true
    }

    #[test]
    fn constants_are_safe_primes() {
        for (p, q) in [
            (big(params2048().p()), big(params2048().q())),
            (big(params3072().p()), big(params3072().q())),
        ] {
            assert!(probably_prime(&p));
            assert!(probably_prime(&q));
            assert_eq!(&q * 2u8 + 1u8, p);
        }
        assert_eq!(big(params2048().p()).bits(), 2048);
        assert_eq!(big(params3072().p()).bits(), 3072);
    }

    fn dh_commutes<G: DhGroup>(g: G, seed: u64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let a = g.random_scalar(&mut rng);
        let b = g.random_scalar(&mut rng);
        let ga = g.exp_generator(&a);
        let gb = g.exp_generator(&b);
        assert_ne!(ga, gb);
        assert_eq!(g.exp(&ga, &b), g.exp(&gb, &a));
        // Exponent arithmetic modulo q: (g^a)^(b * b^-1) = g^a.
        let binv = g.invert(&b);
        assert_eq!(g.exp(&g.exp(&ga, &b), &binv), ga);
        assert_eq!(g.exp_generator(&g.mul_scalars(&a, &b)), g.exp(&ga, &b));
        let enc = g.encode_element(&ga);
        assert_eq!(g.decode_element(&enc).expect("valid element"), ga);
        let s1 = g.element_to_scalar(&ga);
        assert!(s1 == g.element_to_scalar(&ga));
        assert!(s1 != g.element_to_scalar(&gb));
    }

    #[test]
    fn modp2048_dh_commutes_and_round_trips() {
        dh_commutes(Modp2048, 1);
    }

    #[test]
    fn modp3072_dh_commutes_and_round_trips() {
        dh_commutes(Modp3072, 2);
    }

    #[test]
    fn ristretto_dh_commutes() {
        dh_commutes(crate::keys::Ristretto255, 3);
    }

    #[test]
    fn out_of_range_and_non_residues_are_refused() {
        let g = Modp2048;
        let params = g.params();
        let len = params.element_len();
        let p = big(params.p());
        let enc = |x: &BigUint| {
            let mut v = x.to_bytes_be();
            let mut out = vec![0u8; len - v.len()];
            out.append(&mut v);
            out
        };
        let one = BigUint::from(1u8);
        for bad in [
            BigUint::from(0u8),
            one.clone(),
            &p - &one,
            p.clone(),
            &p + &one,
        ] {
            let bytes = if bad.bits() as usize > len * 8 {
                vec![0xff; len]
            } else {
                enc(&bad)
            };
            assert_eq!(g.decode_element(&bytes), Err(KeyError::BadElement));
        }
        // Wrong width.
        assert_eq!(g.decode_element(&[4u8; 10]), Err(KeyError::BadElement));
        // 4 is a square, so a member; p-4 is not (p = 7 mod 8 makes -1 a non-residue).
        assert!(g.decode_element(&enc(&BigUint::from(4u8))).is_ok());
        assert_eq!(
            g.decode_element(&enc(&(&p - 4u8))),
            Err(KeyError::BadElement)
        );
    }

    #[test]
    fn jacobi_agrees_with_euler_criterion() {
        let g = Modp2048;
        let p = big(g.params().p());
        let q = big(g.params().q());
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        for _ in 0..20 {
            let mut bytes = [0u8; 256];
            rand_core::RngCore::fill_bytes(&mut rng, &mut bytes);
            let x = BigUint::from_bytes_be(&bytes) % &p;
            let euler = x.modpow(&q, &p);
            let expected = if euler == BigUint::from(1u8) { 1 } else { -1 };
            assert_eq!(jacobi(&x, &p), expected);
        }
    }

    #[test]
    fn fixed_base_table_agrees_with_plain_exponentiation() {
        let g = Modp2048;
        let p = big(g.params().p());
        let q = big(g.params().q());
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let mut exps: Vec<BigUint> = vec![BigUint::from(1u8), BigUint::from(16u8), &q - 1u8];
        for _ in 0..3 {
            exps.push(big(&g.random_scalar(&mut rng)));
        }
        for e in exps {
            let mut bytes = e.to_bytes_be();
            let mut k = vec![0u8; 256 - bytes.len()];
            k.append(&mut bytes);
            let k = Uint::from_be_slice(&k);
            assert_eq!(big(&g.exp_generator(&k)), BigUint::from(2u8).modpow(&e, &p));
        }
        let g3 = Modp3072;
        let k = g3.random_scalar(&mut rng);
        let two = Uint::from_u8(2);
        assert_eq!(g3.exp_generator(&k), g3.exp(&two, &k));
    }

    #[test]
    fn inverse_is_correct_modulo_q() {
        let g = Modp2048;
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let q = big(g.params().q());
        for _ in 0..5 {
            let k = g.random_scalar(&mut rng);
            let kinv = g.invert(&k);
            assert_eq!((big(&k) * big(&kinv)) % &q, BigUint::from(1u8));
            let x = g.random_scalar(&mut rng);
            assert_eq!(big(&g.mul_scalars(&k, &x)), (big(&k) * big(&x)) % &q);
        }
    }

    #[test]
    fn element_helpers_match_num_bigint() {
        let g = Modp2048;
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let p = big(g.params().p());
        let a = g.exp_generator(&g.random_scalar(&mut rng));
        let b = g.exp_generator(&g.random_scalar(&mut rng));
        assert_eq!(big(&g.mul_elements(&a, &b)), (big(&a) * big(&b)) % &p);
        assert_eq!(
            (big(&g.invert_element(&a)) * big(&a)) % &p,
            BigUint::from(1u8)
        );
        // Constant-time pow agrees with num-bigint's variable-time modpow.
        let k = g.random_scalar(&mut rng);
        assert_eq!(big(&g.exp(&a, &k)), big(&a).modpow(&big(&k), &p));
    }
}
