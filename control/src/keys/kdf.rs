//! Key derivation: the group key is bound to its whole context, not only to the
//! Diffie-Hellman value (or CKD's random secret) the protocol agreed on.
//!
//! `key = HKDF-SHA256(salt = "conclave group key v2", ikm = the agreed secret's encoding,
//! info = transcript)`, where the transcript is the length-prefixed encoding of the
//! protocol, the DH group, the group name, the epoch (view id) and the view's members
//! with their incarnations, oldest first. Two runs that differ in any of these derive
//! unrelated keys even from the same DH value: a value carried over by a bug, a member
//! list two components disagree on, or a run of another protocol over the same shares.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::envelope::BodyWriter;
use super::{GroupKey, MemberId, Protocol};

type HmacSha256 = Hmac<Sha256>;

/// The HKDF salt of the group key (its domain separation from every other hash here).
const GROUP_KEY_SALT: &[u8] = b"conclave group key v2";

/// Everything a group key is bound to besides the agreed secret.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    /// The protocol that agreed on the secret.
    pub protocol: Protocol,
    /// The DH group's name (`DhGroup::name`).
    pub dh_group: &'a str,
    /// The group's name.
    pub group: &'a str,
    /// The run's epoch (view id).
    pub epoch: u64,
    /// The view's member names, oldest first.
    pub members: &'a [MemberId],
    /// `incarnations[i]` is the incarnation of `members[i]`.
    pub incarnations: &'a [u64],
}

impl KeyContext<'_> {
    /// The transcript: every field length-prefixed, so no two contexts encode alike.
    pub fn transcript(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.str("conclave key context v1");
        w.u8(self.protocol as u8);
        w.str(self.dh_group);
        w.str(self.group);
        w.u64(self.epoch);
        w.u32(self.members.len() as u32);
        for (i, m) in self.members.iter().enumerate() {
            w.str(m.as_str());
            w.u64(self.incarnations.get(i).copied().unwrap_or(0));
        }
        w.finish()
    }
}

/// HMAC-SHA256 of `parts` (concatenated) under `key`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HKDF-SHA256 (RFC 5869) for one 32-byte output block: extract, then expand with `info`.
pub(crate) fn hkdf_32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut prk = hmac(salt, &[ikm]);
    let okm = hmac(&prk, &[info, &[1u8]]);
    prk.zeroize();
    okm
}

/// The group key of `context` from the secret the protocol agreed on (`ikm`: the encoded
/// DH element, or CKD's random secret).
pub fn derive_group_key(context: &KeyContext<'_>, ikm: &[u8]) -> GroupKey {
    GroupKey {
        epoch: context.epoch,
        secret: hkdf_32(GROUP_KEY_SALT, ikm, &context.transcript()),
    }
}

/// [`derive_group_key`] from an element's encoding, which is wiped afterwards.
pub(crate) fn derive_from_encoding(context: &KeyContext<'_>, encoded: Vec<u8>) -> GroupKey {
    let encoded = Zeroizing::new(encoded);
    derive_group_key(context, &encoded)
}

/// Test-only fault injection for the white-box secrecy checks (`keys::secrecy`): while
/// set on a thread, every protocol run on it makes a key-reuse mistake (GDH's starter
/// keeps its share, CKD's controller keeps its secret, the others derive the new key from
/// their previous run's DH value). Never compiled into the product.
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;

    thread_local! {
        static KEY_REUSE: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns the injected key-reuse bug on or off for this thread.
    pub(crate) fn set_key_reuse(on: bool) {
        KEY_REUSE.with(|c| c.set(on));
    }

    /// Whether the injected key-reuse bug is on.
    pub(crate) fn key_reuse() -> bool {
        KEY_REUSE.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 appendix A.1 (SHA-256, 42-byte output; the first 32 bytes are one block).
    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let okm = hkdf_32(&salt, &ikm, &info);
        let expected = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf";
        let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn every_context_field_changes_the_key() {
        let members = [MemberId::new("a"), MemberId::new("b")];
        let base = KeyContext {
            protocol: Protocol::Tgdh,
            dh_group: "ristretto255",
            group: "g",
            epoch: 7,
            members: &members,
            incarnations: &[0, 0],
        };
        let ikm = [9u8; 32];
        let key = derive_group_key(&base, &ikm).secret;
        let swapped = [MemberId::new("b"), MemberId::new("a")];
        let fewer = [MemberId::new("a")];
        let variants = [
            KeyContext {
                protocol: Protocol::Str,
                ..base
            },
            KeyContext {
                dh_group: "modp2048",
                ..base
            },
            KeyContext { group: "h", ..base },
            KeyContext { epoch: 8, ..base },
            KeyContext {
                members: &swapped,
                ..base
            },
            KeyContext {
                members: &fewer,
                incarnations: &[0],
                ..base
            },
            KeyContext {
                incarnations: &[0, 1],
                ..base
            },
        ];
        for v in variants {
            assert_ne!(derive_group_key(&v, &ikm).secret, key, "{v:?}");
        }
        assert_ne!(derive_group_key(&base, &[8u8; 32]).secret, key);
        assert_eq!(derive_group_key(&base, &ikm).secret, key);
    }
}
