//! CKD: centralized key distribution (the Secure Spread papers' comparison protocol).
//!
//! The controller is the oldest member (first in the view). It shares a pairwise key with
//! every member, from a Diffie-Hellman exchange of signed blinded values (`g^r_c`,
//! `g^r_i`), and for every view it picks a fresh random group secret and sends it to each
//! member under that member's pairwise key (AES-256-GCM, associated data = group, epoch,
//! member).
//!
//! Pairwise keys live as long as both instances do, so a view only costs exponentiations
//! for the members the controller has no pairwise key with yet: nobody on a leave or a
//! refresh, the newcomers on a join or merge, everybody when the controller changes.
//! The controller asks for the blinded values it lacks (HELLO, naming those members),
//! collects them, then sends the secret (KEYS, carrying its own blinded value so a member
//! can derive the pairwise key whenever it first needs it). A controller forgets the
//! pairwise key of every member absent from a view, so a member that comes back (a fresh
//! instance with a fresh blinded value) is asked again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

use super::envelope::{BodyReader, BodyWriter};
use super::kdf::derive_group_key;
use super::support::{Counted, Run};
use super::{
    Destination, DhGroup, Directory, GroupKey, Identity, KeyAgreement, KeyError, MemberId,
    OpCounts, Output, Protocol, Validation, View,
};

const HELLO: u8 = 1;
const RESPONSE: u8 = 2;
const KEYS: u8 = 3;

const NONCE_LEN: usize = 12;

/// One member's CKD instance.
pub struct Ckd<G: DhGroup> {
    dh: Counted<G>,
    identity: Arc<Identity>,
    directory: Directory,
    /// This member's long-lived DH exponent and its blinded value, made on first need.
    exponent: Option<(G::Scalar, G::Element)>,
    /// As controller: pairwise keys with members.
    pairwise: HashMap<MemberId, Zeroizing<[u8; 32]>>,
    /// As controller: the members' blinded values (public), kept alongside `pairwise`.
    blinded: BTreeMap<MemberId, Vec<u8>>,
    /// As member: the pairwise key with a controller, for its blinded value's encoding.
    with_controller: Option<(MemberId, Vec<u8>, Zeroizing<[u8; 32]>)>,
    /// As controller: members whose blinded value is still awaited.
    awaiting: Vec<MemberId>,
    run: Option<Run>,
    key: Option<GroupKey>,
    in_progress: bool,
    /// Test builds: every key-derivation input this instance used (secrecy checks).
    #[cfg(test)]
    seen_ikms: Vec<Vec<u8>>,
}

impl<G: DhGroup> Drop for Ckd<G> {
    fn drop(&mut self) {
        if let Some((r, _)) = self.exponent.as_mut() {
            r.zeroize();
        }
    }
}

impl<G: DhGroup> std::fmt::Debug for Ckd<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public facts only: the exponent, the pairwise keys and the key stay out of logs.
        f.debug_struct("Ckd")
            .field("me", self.identity.id())
            .field("group", &self.dh.group.name())
            .field("epoch", &self.run.as_ref().map(|r| r.epoch))
            .field("pairwise_keys", &self.pairwise.len())
            .field("in_progress", &self.in_progress)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<G: DhGroup> Ckd<G> {
    /// A fresh instance for `identity`, verifying others with `directory`.
    pub fn new(group: G, identity: Arc<Identity>, directory: Directory) -> Self {
        Self {
            dh: Counted::new(group),
            identity,
            directory,
            exponent: None,
            pairwise: HashMap::new(),
            blinded: BTreeMap::new(),
            with_controller: None,
            awaiting: Vec::new(),
            run: None,
            key: None,
            in_progress: false,
            #[cfg(test)]
            seen_ikms: Vec::new(),
        }
    }

    /// Public values, for known-answer vectors: this member's blinded value
    /// (`blinded:<me>`), then, as controller, the members' blinded values it holds, or, as
    /// member, its controller's (`controller:<id>`).
    pub fn public_values(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        if let Some((_, b)) = &self.exponent {
            out.push((
                format!("blinded:{}", self.identity.id()),
                self.dh.group.encode_element(b),
            ));
        }
        for (m, b) in &self.blinded {
            out.push((format!("blinded:{m}"), b.clone()));
        }
        if let Some((c, b, _)) = &self.with_controller {
            out.push((format!("controller:{c}"), b.clone()));
        }
        out
    }

    /// This member's exponent (a self-wiping copy) and blinded value, made on first use.
    fn exponent(&mut self, rng: &mut dyn CryptoRngCore) -> (Zeroizing<G::Scalar>, G::Element) {
        if self.exponent.is_none() {
            let r = self.dh.group.random_scalar(rng);
            let blinded = self.dh.exp_generator(&r);
            self.exponent = Some((r, blinded));
        }
        let (r, blinded) = self.exponent.as_ref().expect("set above");
        (Zeroizing::new(r.clone()), blinded.clone())
    }

    /// The symmetric key of the pair (controller, member) from their DH element; both ends
    /// name the roles so the two directions never share a key by accident.
    fn derive_pairwise(
        &self,
        controller: &MemberId,
        member: &MemberId,
        shared: &G::Element,
    ) -> Zeroizing<[u8; 32]> {
        let mut encoded = Zeroizing::new(self.dh.group.encode_element(shared));
        let digest = Sha512::new()
            .chain_update(b"conclave ckd pairwise v1")
            .chain_update(self.dh.group.name().as_bytes())
            .chain_update((controller.as_str().len() as u16).to_le_bytes())
            .chain_update(controller.as_str().as_bytes())
            .chain_update((member.as_str().len() as u16).to_le_bytes())
            .chain_update(member.as_str().as_bytes())
            .chain_update(encoded.as_slice())
            .finalize();
        encoded.zeroize();
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&digest[..32]);
        key
    }

    fn associated_data(run: &Run, member: &MemberId) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.str("conclave ckd secret v1");
        w.str(&run.group);
        w.u64(run.epoch);
        w.str(member.as_str());
        w.finish()
    }

    /// The group key from the controller's random secret, bound to the run's context.
    fn group_key(&self, run: &Run, secret: &[u8; 32]) -> GroupKey {
        derive_group_key(
            &run.key_context(Protocol::Ckd, self.dh.group.name()),
            secret,
        )
    }

    /// As controller with every pairwise key: pick the secret and send it to everyone.
    fn distribute(&mut self, run: &Run, rng: &mut dyn CryptoRngCore) -> Output {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut_slice());
        // Test builds: the injected key-reuse bug sends the previous secret again.
        #[cfg(test)]
        if let Some(last) = self
            .seen_ikms
            .last()
            .filter(|_| super::kdf::fault::key_reuse())
        {
            secret.copy_from_slice(last);
        }
        #[cfg(test)]
        self.seen_ikms.push(secret.to_vec());
        let blinded = self
            .exponent
            .as_ref()
            .map(|(_, b)| b.clone())
            .expect("the controller made its exponent");
        let mut w = BodyWriter::new();
        w.bytes(&self.dh.group.encode_element(&blinded));
        w.u32(run.members.len() as u32 - 1);
        for member in run.members.iter().skip(1) {
            let key = self
                .pairwise
                .get(member)
                .expect("distribute runs once every pairwise key is known");
            let cipher = Aes256Gcm::new_from_slice(key.as_slice()).expect("32-byte key");
            let mut nonce = [0u8; NONCE_LEN];
            rng.fill_bytes(&mut nonce);
            let aad = Self::associated_data(run, member);
            let sealed = cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: secret.as_slice(),
                        aad: &aad,
                    },
                )
                .expect("AES-GCM encryption of 32 bytes cannot fail");
            w.str(member.as_str());
            w.bytes(&nonce);
            w.bytes(&sealed);
        }
        let mut out = Output::default();
        if run.members.len() > 1 {
            out.sends.push(self.dh.seal(
                &self.identity,
                Protocol::Ckd,
                run,
                KEYS,
                &w.finish(),
                Destination::Broadcast,
            ));
        }
        let key = self.group_key(run, &secret);
        self.key = Some(key.clone());
        self.in_progress = false;
        out.key = Some(key);
        out
    }

    fn on_hello(
        &mut self,
        run: &Run,
        body: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        let mut r = BodyReader::new(body);
        self.dh.group.decode_element(r.bytes()?)?;
        let count = r.u32()? as usize;
        if count > run.members.len() {
            return Err(KeyError::Malformed("too many names"));
        }
        let mut asked = false;
        for _ in 0..count {
            asked |= r.str()? == self.identity.id().as_str();
        }
        r.finish()?;
        if !asked {
            return Ok(Output::default());
        }
        let (_, blinded) = self.exponent(rng);
        let mut w = BodyWriter::new();
        w.bytes(&self.dh.group.encode_element(&blinded));
        let msg = self.dh.seal(
            &self.identity,
            Protocol::Ckd,
            run,
            RESPONSE,
            &w.finish(),
            Destination::Unicast(run.members[0].clone()),
        );
        Ok(Output {
            sends: vec![msg],
            key: None,
            ..Output::default()
        })
    }

    fn on_response(
        &mut self,
        run: &Run,
        from: &MemberId,
        body: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if !self.awaiting.contains(from) {
            return Err(KeyError::Invalid(Validation::BlindedValueNotAsked));
        }
        let mut r = BodyReader::new(body);
        let theirs = self.dh.group.decode_element(r.bytes()?)?;
        r.finish()?;
        let (mine, _) = self.exponent(rng);
        let shared = Zeroizing::new(self.dh.exp(&theirs, &mine));
        let key = self.derive_pairwise(self.identity.id(), from, &shared);
        self.pairwise.insert(from.clone(), key);
        self.blinded
            .insert(from.clone(), self.dh.group.encode_element(&theirs));
        self.awaiting.retain(|m| m != from);
        if self.awaiting.is_empty() {
            Ok(self.distribute(run, rng))
        } else {
            Ok(Output::default())
        }
    }

    fn on_keys(
        &mut self,
        run: &Run,
        body: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        let controller = run.members[0].clone();
        let me = self.identity.id().clone();
        let mut r = BodyReader::new(body);
        let blinded_bytes = r.bytes()?.to_vec();
        let count = r.u32()? as usize;
        if count + 1 != run.members.len() {
            return Err(KeyError::Invalid(Validation::SecretNotSentToAll));
        }
        let mut mine = None;
        for _ in 0..count {
            let name = r.str()?;
            let nonce = r.bytes()?;
            let sealed = r.bytes()?;
            if name == me.as_str() {
                mine = Some((nonce, sealed));
            }
        }
        r.finish()?;
        let (nonce, sealed) = mine.ok_or(KeyError::Invalid(Validation::NoSecretForMe))?;
        if nonce.len() != NONCE_LEN {
            return Err(KeyError::Malformed("nonce length"));
        }
        let cached = match &self.with_controller {
            Some((c, b, key)) if *c == controller && *b == blinded_bytes => Some(key.clone()),
            _ => None,
        };
        let fresh = cached.is_none();
        let pairwise = match cached {
            Some(key) => key,
            None => {
                let theirs = self.dh.group.decode_element(&blinded_bytes)?;
                let (r_me, _) = self.exponent(rng);
                let shared = Zeroizing::new(self.dh.exp(&theirs, &r_me));
                self.derive_pairwise(&controller, &me, &shared)
            }
        };
        let cipher = Aes256Gcm::new_from_slice(pairwise.as_slice()).expect("32-byte key");
        let aad = Self::associated_data(run, &me);
        let secret = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Invalid(Validation::SecretDoesNotDecrypt))?;
        let secret = Zeroizing::new(secret);
        let secret: &[u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed("secret length"))?;
        if fresh {
            self.with_controller = Some((controller, blinded_bytes, pairwise));
        }
        #[cfg(test)]
        self.seen_ikms.push(secret.to_vec());
        let key = self.group_key(run, secret);
        self.key = Some(key.clone());
        self.in_progress = false;
        Ok(Output {
            sends: Vec::new(),
            key: Some(key),
            ..Output::default()
        })
    }
}

impl<G: DhGroup> KeyAgreement for Ckd<G> {
    fn protocol(&self) -> Protocol {
        Protocol::Ckd
    }

    fn me(&self) -> &MemberId {
        self.identity.id()
    }

    fn dh_group(&self) -> &'static str {
        self.dh.group.name()
    }

    fn handle_view(
        &mut self,
        view: &View,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        let run = Run::start(self.run.as_ref(), view, self.identity.id())?;
        // Pairwise keys are kept only for members still in the same incarnation: a name
        // back in a new incarnation is a fresh process with a fresh blinded value, and a
        // secret sealed under its predecessor's pairwise key would not decrypt.
        let previous = self.run.take();
        let keep = |m: &MemberId| previous.as_ref().is_some_and(|p| run.same_member_in(p, m));
        self.pairwise.retain(|m, _| keep(m));
        self.blinded.retain(|m, _| keep(m));
        self.awaiting.clear();
        self.run = Some(run.clone());
        self.in_progress = true;
        if run.members[0] != *self.identity.id() {
            return Ok(Output::default());
        }
        let (_, blinded) = self.exponent(rng);
        self.awaiting = run
            .members
            .iter()
            .skip(1)
            .filter(|m| !self.pairwise.contains_key(*m))
            .cloned()
            .collect();
        if self.awaiting.is_empty() {
            return Ok(self.distribute(&run, rng));
        }
        let mut w = BodyWriter::new();
        w.bytes(&self.dh.group.encode_element(&blinded));
        w.u32(self.awaiting.len() as u32);
        for m in &self.awaiting {
            w.str(m.as_str());
        }
        let msg = self.dh.seal(
            &self.identity,
            Protocol::Ckd,
            &run,
            HELLO,
            &w.finish(),
            Destination::Broadcast,
        );
        Ok(Output {
            sends: vec![msg],
            key: None,
            ..Output::default()
        })
    }

    fn handle_message(
        &mut self,
        from: &MemberId,
        bytes: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if from == self.identity.id() {
            return Ok(Output::default());
        }
        let run = self
            .run
            .clone()
            .ok_or(KeyError::Invalid(Validation::NoView))?;
        let env = self
            .dh
            .open(bytes, from, Protocol::Ckd, &self.directory, &run)?;
        if !self.in_progress {
            return Err(KeyError::Invalid(Validation::RunComplete));
        }
        let controller = &run.members[0];
        let i_control = controller == self.identity.id();
        let out = match env.step {
            HELLO if !i_control && from == controller => self.on_hello(&run, &env.body, rng)?,
            RESPONSE if i_control => self.on_response(&run, from, &env.body, rng)?,
            KEYS if !i_control && from == controller => self.on_keys(&run, &env.body, rng)?,
            HELLO | RESPONSE | KEYS => {
                return Err(KeyError::Invalid(Validation::WrongRole));
            }
            _ => return Err(KeyError::Malformed("unknown step")),
        };
        if let Some(run) = self.run.as_mut() {
            run.mark(&env);
        }
        Ok(out)
    }

    fn current_key(&self) -> Option<&GroupKey> {
        self.key.as_ref()
    }

    fn in_progress(&self) -> bool {
        self.in_progress
    }

    fn op_counts(&self) -> OpCounts {
        self.dh.ops
    }

    #[cfg(test)]
    fn leak(&self) -> super::Leak {
        let mut keys: Vec<[u8; 32]> = self.pairwise.values().map(|k| **k).collect();
        keys.extend(self.with_controller.iter().map(|(_, _, k)| **k));
        keys.extend(self.key.iter().map(|k| k.secret));
        super::Leak {
            scalars: self
                .exponent
                .iter()
                .map(|(r, _)| self.dh.group.scalar_bytes(r))
                .collect(),
            ikms: self.seen_ikms.clone(),
            keys,
        }
    }
}
