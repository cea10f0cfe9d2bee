//! The Diffie-Hellman groups every key-agreement protocol runs over.

use std::fmt::Debug;

use curve25519_dalek::{RistrettoPoint, Scalar, constants::RISTRETTO_BASEPOINT_TABLE};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use super::KeyError;

/// A prime-order group in which Diffie-Hellman is hard.
///
/// Secrets are scalars (exponents); public values are elements (`g^k`). Protocols need
/// exponentiation of the generator and of arbitrary elements, inversion of exponents
/// (GDH factors out a member's contribution) and a map from an element to a scalar (a
/// TGDH parent's secret is derived from its children's shared element).
pub trait DhGroup: Clone + Send + Sync + Debug + 'static {
    /// A secret exponent; wiped on drop by its owner.
    type Scalar: Clone + Zeroize + Send + Sync + PartialEq;
    /// A group element. Most are public (blinded keys), but Diffie-Hellman results are
    /// secrets, so elements can be wiped (`Zeroizing<Element>` where they are).
    type Element: Clone + PartialEq + Eq + Send + Sync + Debug + Zeroize;

    /// Short name for tables and plots (`ristretto255`, `modp2048`, `modp3072`).
    fn name(&self) -> &'static str;

    /// A uniformly random non-zero exponent.
    fn random_scalar(&self, rng: &mut dyn CryptoRngCore) -> Self::Scalar;

    /// `g^k`.
    fn exp_generator(&self, k: &Self::Scalar) -> Self::Element;

    /// `base^k`, constant-time in `k`.
    fn exp(&self, base: &Self::Element, k: &Self::Scalar) -> Self::Element;

    /// `k^-1` modulo the group order.
    fn invert(&self, k: &Self::Scalar) -> Self::Scalar;

    /// `a * b` modulo the group order.
    fn mul_scalars(&self, a: &Self::Scalar, b: &Self::Scalar) -> Self::Scalar;

    /// The exponent `n` (a small public integer, e.g. a group size).
    fn scalar_from_u64(&self, n: u64) -> Self::Scalar;

    /// The group operation on two public elements: `a * b` (Burmester–Desmedt).
    fn mul_elements(&self, a: &Self::Element, b: &Self::Element) -> Self::Element;

    /// The inverse of a public element: `a^-1` (Burmester–Desmedt). Public data, so this
    /// need not be constant-time.
    fn invert_element(&self, a: &Self::Element) -> Self::Element;

    /// Maps an element to an exponent by hashing its encoding (TGDH's node secrets).
    fn element_to_scalar(&self, e: &Self::Element) -> Self::Scalar;

    /// Canonical encoding of an element.
    fn encode_element(&self, e: &Self::Element) -> Vec<u8>;

    /// Decodes and validates an element; the identity and non-members are refused.
    fn decode_element(&self, bytes: &[u8]) -> Result<Self::Element, KeyError>;

    /// A secret exponent's bytes, for the white-box secrecy tests only.
    #[cfg(test)]
    fn scalar_bytes(&self, k: &Self::Scalar) -> Vec<u8>;
}

/// ristretto255 over curve25519: the fast default group.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ristretto255;

impl DhGroup for Ristretto255 {
    type Scalar = Scalar;
    type Element = RistrettoPoint;

    fn name(&self) -> &'static str {
        "ristretto255"
    }

    fn random_scalar(&self, rng: &mut dyn CryptoRngCore) -> Scalar {
        loop {
            let mut wide = [0u8; 64];
            rng.fill_bytes(&mut wide);
            let k = Scalar::from_bytes_mod_order_wide(&wide);
            wide.zeroize();
            if k != Scalar::ZERO {
                return k;
            }
        }
    }

    fn exp_generator(&self, k: &Scalar) -> RistrettoPoint {
        k * RISTRETTO_BASEPOINT_TABLE
    }

    fn exp(&self, base: &RistrettoPoint, k: &Scalar) -> RistrettoPoint {
        base * k
    }

    fn invert(&self, k: &Scalar) -> Scalar {
        k.invert()
    }

    fn mul_scalars(&self, a: &Scalar, b: &Scalar) -> Scalar {
        a * b
    }

    fn scalar_from_u64(&self, n: u64) -> Scalar {
        Scalar::from(n)
    }

    fn mul_elements(&self, a: &RistrettoPoint, b: &RistrettoPoint) -> RistrettoPoint {
        // The curve group is written additively: the group operation is point addition.
        a + b
    }

    fn invert_element(&self, a: &RistrettoPoint) -> RistrettoPoint {
        -a
    }

    fn element_to_scalar(&self, e: &RistrettoPoint) -> Scalar {
        // `e` is a DH result (secret): the compressed copy, the digest and the wide buffer
        // all hold the node secret's material and are wiped.
        let mut compressed = e.compress().to_bytes();
        let mut digest = Sha512::new()
            .chain_update(b"conclave tgdh node secret v1")
            .chain_update(compressed)
            .finalize();
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&digest);
        let k = Scalar::from_bytes_mod_order_wide(&wide);
        compressed.zeroize();
        digest.as_mut_slice().zeroize();
        wide.zeroize();
        k
    }

    fn encode_element(&self, e: &RistrettoPoint) -> Vec<u8> {
        e.compress().as_bytes().to_vec()
    }

    #[cfg(test)]
    fn scalar_bytes(&self, k: &Scalar) -> Vec<u8> {
        k.to_bytes().to_vec()
    }

    fn decode_element(&self, bytes: &[u8]) -> Result<RistrettoPoint, KeyError> {
        let compressed = curve25519_dalek::ristretto::CompressedRistretto::from_slice(bytes)
            .map_err(|_| KeyError::BadElement)?;
        let point = compressed.decompress().ok_or(KeyError::BadElement)?;
        if point == RistrettoPoint::default() {
            return Err(KeyError::BadElement);
        }
        Ok(point)
    }
}
