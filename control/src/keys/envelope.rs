//! Signed, run-bound protocol messages, and the long-term identities that sign them.
//!
//! Every key-agreement message travels as an [`Envelope`]: protocol, group, epoch, sender
//! and a protocol-defined step tag and body, signed by the sender's Ed25519 key over all of
//! it. Binding the group and epoch into the signed bytes is what makes a message useless in
//! any other run: a replay into a later epoch or another group fails the epoch or group
//! check, and a forged or altered one fails the signature.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::{KeyError, MemberId, Protocol};

/// A member's long-term signing identity.
pub struct Identity {
    id: MemberId,
    signing: SigningKey,
}

impl Identity {
    /// Makes a fresh identity for `id`.
    pub fn generate(id: MemberId, rng: &mut dyn CryptoRngCore) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        Self::from_seed(id, *seed)
    }

    /// Rebuilds an identity from its 32-byte secret seed. The signing key wipes itself
    /// on drop; this copy of the seed is wiped here.
    pub fn from_seed(id: MemberId, seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        Self {
            id,
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Who this is.
    pub fn id(&self) -> &MemberId {
        &self.id
    }

    /// The public half, for others' [`Directory`].
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    fn sign(&self, bytes: &[u8]) -> Signature {
        self.signing.sign(bytes)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.id)
    }
}

/// The public keys of every member that may take part, shared by all instances of a
/// process.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    keys: Arc<HashMap<MemberId, VerifyingKey>>,
}

impl Directory {
    /// Builds a directory from (member, key) pairs.
    pub fn new(entries: impl IntoIterator<Item = (MemberId, VerifyingKey)>) -> Self {
        Self {
            keys: Arc::new(entries.into_iter().collect()),
        }
    }

    /// The key registered for `id`.
    pub fn get(&self, id: &MemberId) -> Option<&VerifyingKey> {
        self.keys.get(id)
    }
}

/// A decoded, verified protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The protocol it belongs to.
    pub protocol: Protocol,
    /// The group it belongs to.
    pub group: String,
    /// The run (view epoch) it belongs to.
    pub epoch: u64,
    /// Who signed it.
    pub sender: MemberId,
    /// Protocol-defined message kind.
    pub step: u8,
    /// Protocol-defined body.
    pub body: Vec<u8>,
}

const SIGNATURE_LEN: usize = 64;

impl Envelope {
    /// Encodes and signs a message; the sender is the identity's id.
    pub fn seal(
        identity: &Identity,
        protocol: Protocol,
        group: &str,
        epoch: u64,
        step: u8,
        body: &[u8],
    ) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.u8(protocol as u8);
        w.str(group);
        w.u64(epoch);
        w.str(identity.id().as_str());
        w.u8(step);
        w.bytes(body);
        let mut out = w.finish();
        let signature = identity.sign(&out);
        out.extend_from_slice(&signature.to_bytes());
        out
    }

    /// Decodes `bytes` and verifies the signature against the claimed sender's key in
    /// `directory`. Run checks (group, epoch, protocol, membership) are the caller's, who
    /// knows the current run.
    pub fn open(bytes: &[u8], directory: &Directory) -> Result<Envelope, KeyError> {
        if bytes.len() < SIGNATURE_LEN {
            return Err(KeyError::Malformed("shorter than a signature"));
        }
        let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
        let mut r = BodyReader::new(signed);
        let protocol_byte = r.u8()?;
        let protocol =
            Protocol::from_u8(protocol_byte).ok_or(KeyError::Malformed("unknown protocol"))?;
        let group = r.str()?.to_owned();
        let epoch = r.u64()?;
        let sender = MemberId::new(r.str()?);
        let step = r.u8()?;
        let body = r.bytes()?.to_vec();
        r.finish()?;
        let key = directory
            .get(&sender)
            .ok_or_else(|| KeyError::UnknownSender(sender.clone()))?;
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(signature);
        key.verify(signed, &Signature::from_bytes(&sig))
            .map_err(|_| KeyError::BadSignature(sender.clone()))?;
        Ok(Envelope {
            protocol,
            group,
            epoch,
            sender,
            step,
            body,
        })
    }

    /// Reads the run an encoded envelope claims (protocol, group, epoch, sender) without
    /// verifying anything or copying: enough to decide whether it is early, current or
    /// stale before the run that could check it exists. The caller must still
    /// [`Envelope::open`] it.
    pub fn peek_run(bytes: &[u8]) -> Result<(Protocol, &str, u64, &str), KeyError> {
        if bytes.len() < SIGNATURE_LEN {
            return Err(KeyError::Malformed("shorter than a signature"));
        }
        let mut r = BodyReader::new(&bytes[..bytes.len() - SIGNATURE_LEN]);
        let protocol = Protocol::from_u8(r.u8()?).ok_or(KeyError::Malformed("unknown protocol"))?;
        let group = r.str()?;
        let epoch = r.u64()?;
        let sender = r.str()?;
        Ok((protocol, group, epoch, sender))
    }

    /// Checks that this envelope belongs to the run (protocol, group, epoch) and came from
    /// the member the transport says sent it.
    pub fn check_run(
        &self,
        protocol: Protocol,
        group: &str,
        epoch: u64,
        transport_sender: &MemberId,
    ) -> Result<(), KeyError> {
        if self.protocol != protocol {
            return Err(KeyError::WrongProtocol {
                got: self.protocol as u8,
                expected: protocol as u8,
            });
        }
        if self.group != group {
            return Err(KeyError::WrongGroup {
                got: self.group.clone(),
                expected: group.to_owned(),
            });
        }
        if self.epoch != epoch {
            return Err(KeyError::StaleEpoch {
                got: self.epoch,
                current: epoch,
            });
        }
        if &self.sender != transport_sender {
            return Err(KeyError::UnknownSender(transport_sender.clone()));
        }
        Ok(())
    }
}

/// Appends fields to a protocol body: integers little-endian, byte strings with a `u32`
/// length, text with a `u16` length.
#[derive(Debug, Default)]
pub struct BodyWriter {
    out: Vec<u8>,
}

impl BodyWriter {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// A byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("field fits in u32");
        self.u32(len);
        self.out.extend_from_slice(v);
        self
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self, v: &str) -> &mut Self {
        let len = u16::try_from(v.len()).expect("string fits in u16");
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(v.as_bytes());
        self
    }

    /// The encoded body.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// Reads what [`BodyWriter`] wrote; every read is bounds-checked.
#[derive(Debug)]
pub struct BodyReader<'a> {
    buf: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.buf.len() < n {
            return Err(KeyError::Malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, KeyError> {
        Ok(self.take(1)?[0])
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, KeyError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, KeyError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], KeyError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, KeyError> {
        let b = self.take(2)?;
        let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        std::str::from_utf8(self.take(len)?).map_err(|_| KeyError::Malformed("not UTF-8"))
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), KeyError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(KeyError::Malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn setup() -> (Identity, Identity, Directory) {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let a = Identity::generate(MemberId::new("a"), &mut rng);
        let b = Identity::generate(MemberId::new("b"), &mut rng);
        let dir = Directory::new([
            (a.id().clone(), a.verifying_key()),
            (b.id().clone(), b.verifying_key()),
        ]);
        (a, b, dir)
    }

    #[test]
    fn seal_open_round_trip_and_run_binding() {
        let (a, _, dir) = setup();
        let bytes = Envelope::seal(&a, Protocol::Tgdh, "g", 4, 2, b"body");
        let env = Envelope::open(&bytes, &dir).expect("verifies");
        assert_eq!(env.body, b"body");
        assert_eq!(env.step, 2);
        env.check_run(Protocol::Tgdh, "g", 4, a.id())
            .expect("same run");
        assert!(matches!(
            env.check_run(Protocol::Tgdh, "g", 5, a.id()),
            Err(KeyError::StaleEpoch { got: 4, current: 5 })
        ));
        assert!(matches!(
            env.check_run(Protocol::Tgdh, "h", 4, a.id()),
            Err(KeyError::WrongGroup { .. })
        ));
        assert!(matches!(
            env.check_run(Protocol::Gdh, "g", 4, a.id()),
            Err(KeyError::WrongProtocol { .. })
        ));
    }

    #[test]
    fn tampering_and_impersonation_fail() {
        let (a, b, dir) = setup();
        let mut bytes = Envelope::seal(&a, Protocol::Bd, "g", 1, 0, b"xyz");
        let last_body_byte = bytes.len() - SIGNATURE_LEN - 1;
        bytes[last_body_byte] ^= 1;
        assert!(matches!(
            Envelope::open(&bytes, &dir),
            Err(KeyError::BadSignature(_))
        ));
        let bytes = Envelope::seal(&b, Protocol::Bd, "g", 1, 0, b"xyz");
        let env = Envelope::open(&bytes, &dir).expect("b's own message verifies");
        assert!(env.check_run(Protocol::Bd, "g", 1, a.id()).is_err());
        assert!(Envelope::open(&bytes[..10], &dir).is_err());
    }
}
