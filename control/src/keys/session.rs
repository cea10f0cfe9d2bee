//! A member's key-agreement session: a protocol instance plus what every protocol needs
//! around it once real members drive it.
//!
//! * **Key confirmation.** When the protocol derives its key, the session does not report
//!   it yet. It broadcasts a confirmation: an HMAC-SHA256, under a confirmation key
//!   derived from the protocol's key, of the SHA-256 of the run's transcript (protocol,
//!   DH group, group, epoch, members with incarnations: the key's context, see
//!   [`super::kdf`]) and the sender's name and incarnation. Only when every other member's confirmation matches
//!   is the key reported, and the reported key is itself derived from the protocol's
//!   key under another label, so the confirmation tags say nothing about it. A
//!   confirmation that does not match is [`KeyError::ConfirmationFailed`], naming the run
//!   and the member; the run then never reports a key (the layer above starts a new one).
//!   Confirmations are not Ed25519-signed: the MAC proves knowledge of the key, which is
//!   what confirmation is for, and one signature verification per member per run would
//!   cost more than the whole TGDH run at large sizes. A member holding the key could
//!   forge another member's confirmation; that is an insider, who has the key anyway.
//! * **Early messages.** A message of a later epoch than this member's current view (the
//!   view reached its sender first) is held, not refused as stale, and handled when that
//!   view arrives; at most `future_limit` are held, beyond that a new one is refused with
//!   [`KeyError::FutureBufferFull`]. Messages of earlier epochs are refused as stale.

use std::collections::HashMap;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::envelope::{BodyReader, BodyWriter};
use super::kdf::{KeyContext, hmac};
use super::{
    Destination, Envelope, GroupKey, KeyAgreement, KeyError, MemberId, OpCounts, Outgoing, Output,
    Protocol, Validation, View,
};

/// How many early messages a session holds unless told otherwise.
pub const DEFAULT_FUTURE_LIMIT: usize = 1024;

/// First bytes of a confirmation message. An envelope starts with a protocol byte (1 to
/// 5), so the two never collide.
const CONFIRM_MAGIC: &[u8; 4] = b"CNF\x01";

const CONFIRM_KEY_LABEL: &[u8] = b"conclave key confirmation v1";
const APPLICATION_KEY_LABEL: &[u8] = b"conclave application key v1";

/// The current view and what every confirmation of its run is checked against, computed
/// once per view (a run at 128 members checks 127 confirmations).
struct Current {
    /// The run's group name.
    group: String,
    /// The run's epoch.
    epoch: u64,
    /// How many members the view has.
    size: usize,
    /// SHA-256 of the run's transcript (the key's context, `KeyContext::transcript`).
    transcript_digest: [u8; 32],
    /// Each member's position in the view and incarnation.
    index: HashMap<MemberId, (usize, u64)>,
}

impl Current {
    fn new(view: &View, protocol: Protocol, dh_group: &str) -> Self {
        let members: Vec<MemberId> = view.member_ids().cloned().collect();
        let incarnations: Vec<u64> = view.members.iter().map(|m| m.incarnation).collect();
        let transcript = KeyContext {
            protocol,
            dh_group,
            group: &view.group,
            epoch: view.epoch,
            members: &members,
            incarnations: &incarnations,
        }
        .transcript();
        let index = members
            .into_iter()
            .zip(incarnations)
            .enumerate()
            .map(|(i, (m, inc))| (m, (i, inc)))
            .collect();
        Self {
            group: view.group.clone(),
            epoch: view.epoch,
            size: view.members.len(),
            transcript_digest: Sha256::digest(&transcript).into(),
            index,
        }
    }
}

/// The confirmation state of the current run.
#[derive(Default)]
struct Confirming {
    /// The protocol's key, once derived.
    master: Option<Zeroizing<[u8; 32]>>,
    /// HMAC-SHA256 keyed with the confirmation key derived from it, cloned for every
    /// tag: keying once saves two of the five SHA-256 blocks per tag, which matters at 127
    /// tags per member per run. (The hmac crate cannot wipe this state; it only
    /// authenticates confirmations, and it is dropped with the run.)
    confirm_mac: Option<HmacSha256>,
    /// `confirmed[i]`: member `i` of the view sent a matching confirmation.
    confirmed: Vec<bool>,
    /// How many entries of `confirmed` are set.
    count: usize,
    /// Confirmations that came before this member's key: checked when it is derived.
    early: Vec<(MemberId, [u8; 32])>,
    /// A confirmation did not match: the run never reports a key.
    failed: bool,
}

/// A protocol instance with key confirmation and early-message buffering (module docs).
pub struct Session {
    inner: Box<dyn KeyAgreement>,
    future_limit: usize,
    current: Option<Arc<Current>>,
    /// Messages of later epochs than the current view's, in arrival order.
    future: Vec<(MemberId, Vec<u8>)>,
    confirming: Confirming,
    key: Option<GroupKey>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner instance's Debug is redacted; the session's keys are not shown at all.
        f.debug_struct("Session")
            .field("inner", &self.inner)
            .field("epoch", &self.current.as_ref().map(|c| c.epoch))
            .field("held_early", &self.future.len())
            .field("confirmed", &self.confirming.count)
            .field("failed", &self.confirming.failed)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A confirmation message, borrowed from its bytes.
struct Confirmation<'a> {
    protocol: u8,
    group: &'a str,
    epoch: u64,
    sender: &'a str,
    incarnation: u64,
    tag: [u8; 32],
}

impl<'a> Confirmation<'a> {
    fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.u8(self.protocol)
            .str(self.group)
            .u64(self.epoch)
            .str(self.sender)
            .u64(self.incarnation)
            .bytes(&self.tag);
        let mut out = CONFIRM_MAGIC.to_vec();
        out.extend_from_slice(&w.finish());
        out
    }

    fn decode(bytes: &'a [u8]) -> Result<Self, KeyError> {
        let body = bytes
            .strip_prefix(CONFIRM_MAGIC)
            .ok_or(KeyError::Malformed("not a confirmation"))?;
        let mut r = BodyReader::new(body);
        let protocol = r.u8()?;
        let group = r.str()?;
        let epoch = r.u64()?;
        let sender = r.str()?;
        let incarnation = r.u64()?;
        let tag: [u8; 32] = r
            .bytes()?
            .try_into()
            .map_err(|_| KeyError::Malformed("confirmation tag length"))?;
        r.finish()?;
        Ok(Self {
            protocol,
            group,
            epoch,
            sender,
            incarnation,
            tag,
        })
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The tag `member` (in `incarnation`) sends for the run whose transcript digest is
/// `digest`, under the confirmation key `confirm_mac` is keyed with.
fn tag(confirm_mac: &HmacSha256, digest: &[u8; 32], member: &str, incarnation: u64) -> [u8; 32] {
    let mut mac = confirm_mac.clone();
    mac.update(b"confirm");
    mac.update(digest);
    mac.update(&(member.len() as u16).to_le_bytes());
    mac.update(member.as_bytes());
    mac.update(&incarnation.to_le_bytes());
    mac.finalize().into_bytes().into()
}

impl Session {
    /// Wraps `inner` with the default early-message bound.
    pub fn new(inner: Box<dyn KeyAgreement>) -> Self {
        Self::with_future_limit(inner, DEFAULT_FUTURE_LIMIT)
    }

    /// Wraps `inner`, holding at most `future_limit` messages of later epochs.
    pub fn with_future_limit(inner: Box<dyn KeyAgreement>, future_limit: usize) -> Self {
        Self {
            inner,
            future_limit,
            current: None,
            future: Vec::new(),
            confirming: Confirming::default(),
            key: None,
        }
    }

    /// The protocol instance inside.
    pub fn inner(&self) -> &dyn KeyAgreement {
        self.inner.as_ref()
    }

    /// How many early messages are held.
    pub fn held_early(&self) -> usize {
        self.future.len()
    }

    /// Checks one confirmation against the derived key (which must be known).
    fn check_tag(
        &mut self,
        cur: &Current,
        member: &str,
        tag_got: &[u8; 32],
    ) -> Result<(), KeyError> {
        use subtle::ConstantTimeEq;
        let confirm_mac = self
            .confirming
            .confirm_mac
            .as_ref()
            .ok_or(KeyError::Invalid(Validation::ConfirmationBeforeKey))?;
        let &(position, incarnation) = cur
            .index
            .get(member)
            .ok_or_else(|| KeyError::UnknownSender(MemberId::new(member)))?;
        let expected = tag(confirm_mac, &cur.transcript_digest, member, incarnation);
        if bool::from(expected.ct_eq(tag_got)) {
            if !self.confirming.confirmed[position] {
                self.confirming.confirmed[position] = true;
                self.confirming.count += 1;
            }
            Ok(())
        } else {
            self.confirming.failed = true;
            Err(KeyError::ConfirmationFailed {
                group: cur.group.clone(),
                epoch: cur.epoch,
                member: MemberId::new(member),
            })
        }
    }

    /// Reports the key once every other member confirmed it.
    fn maybe_complete(&mut self, cur: &Current, out: &mut Output) {
        let epoch = cur.epoch;
        if self.confirming.failed || self.key.as_ref().is_some_and(|k| k.epoch == epoch) {
            return;
        }
        let Some(master) = self.confirming.master.as_ref() else {
            return;
        };
        if self.confirming.count + 1 < cur.size {
            return;
        }
        let key = GroupKey {
            epoch,
            secret: hmac(master.as_slice(), &[APPLICATION_KEY_LABEL]),
        };
        self.key = Some(key.clone());
        out.key = Some(key);
    }

    /// Takes the protocol's key out of `out` (it is not reported before confirmation),
    /// sends this member's confirmation and checks the confirmations already received.
    fn absorb(&mut self, cur: &Current, mut out: Output) -> Output {
        let Some(inner_key) = out.key.take() else {
            return out;
        };
        if inner_key.epoch != cur.epoch || self.confirming.master.is_some() {
            return out;
        }
        let master = Zeroizing::new(inner_key.secret);
        let confirm_key = Zeroizing::new(hmac(master.as_slice(), &[CONFIRM_KEY_LABEL]));
        let confirm_mac = <HmacSha256 as Mac>::new_from_slice(confirm_key.as_slice())
            .expect("HMAC takes any key length");
        let me = self.inner.me().clone();
        let incarnation = cur.index.get(&me).map_or(0, |&(_, i)| i);
        let my_tag = tag(
            &confirm_mac,
            &cur.transcript_digest,
            me.as_str(),
            incarnation,
        );
        self.confirming.master = Some(master);
        self.confirming.confirm_mac = Some(confirm_mac);
        if cur.size > 1 {
            let confirmation = Confirmation {
                protocol: self.inner.protocol() as u8,
                group: &cur.group,
                epoch: cur.epoch,
                sender: me.as_str(),
                incarnation,
                tag: my_tag,
            };
            out.sends.push(Outgoing {
                to: Destination::Broadcast,
                bytes: confirmation.encode(),
            });
        }
        for (member, early_tag) in std::mem::take(&mut self.confirming.early) {
            if let Err(e) = self.check_tag(cur, member.as_str(), &early_tag) {
                out.refused.push((member, e));
            }
        }
        self.maybe_complete(cur, &mut out);
        out
    }

    /// The epoch a message claims, and whether it is a confirmation.
    fn claimed_epoch(bytes: &[u8]) -> Result<(u64, bool), KeyError> {
        if bytes.starts_with(CONFIRM_MAGIC) {
            Ok((Confirmation::decode(bytes)?.epoch, true))
        } else {
            Ok((Envelope::peek_run(bytes)?.2, false))
        }
    }

    /// A message of the current run.
    fn handle_current(
        &mut self,
        cur: &Current,
        from: &MemberId,
        bytes: &[u8],
        confirm: bool,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if !confirm {
            let out = self.inner.handle_message(from, bytes, rng)?;
            return Ok(self.absorb(cur, out));
        }
        let c = Confirmation::decode(bytes)?;
        if c.protocol != self.inner.protocol() as u8 {
            return Err(KeyError::WrongProtocol {
                got: c.protocol,
                expected: self.inner.protocol() as u8,
            });
        }
        if c.group != cur.group {
            return Err(KeyError::WrongGroup {
                got: c.group.to_owned(),
                expected: cur.group.clone(),
            });
        }
        let known = cur.index.get(from).copied();
        if c.sender != from.as_str() || known.map(|(_, i)| i) != Some(c.incarnation) {
            return Err(KeyError::UnknownSender(from.clone()));
        }
        let position = known.map_or(0, |(p, _)| p);
        if self
            .confirming
            .confirmed
            .get(position)
            .copied()
            .unwrap_or(false)
            || self.confirming.early.iter().any(|(m, _)| m == from)
        {
            return Err(KeyError::Duplicate(from.clone()));
        }
        let mut out = Output::default();
        if self.confirming.master.is_none() {
            self.confirming.early.push((from.clone(), c.tag));
            return Ok(out);
        }
        self.check_tag(cur, from.as_str(), &c.tag)?;
        self.maybe_complete(cur, &mut out);
        Ok(out)
    }
}

impl KeyAgreement for Session {
    fn protocol(&self) -> Protocol {
        self.inner.protocol()
    }

    fn me(&self) -> &MemberId {
        self.inner.me()
    }

    fn dh_group(&self) -> &'static str {
        self.inner.dh_group()
    }

    fn handle_view(
        &mut self,
        view: &View,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        let out = self.inner.handle_view(view, rng)?;
        let cur = Arc::new(Current::new(
            view,
            self.inner.protocol(),
            self.inner.dh_group(),
        ));
        self.current = Some(cur.clone());
        self.confirming = Confirming {
            confirmed: vec![false; view.members.len()],
            ..Confirming::default()
        };
        let mut out = self.absorb(&cur, out);
        // Early messages: this view's are handled now, older ones are stale, later ones
        // stay held.
        for (from, bytes) in std::mem::take(&mut self.future) {
            let claimed = Self::claimed_epoch(&bytes);
            match claimed {
                Ok((epoch, _)) if epoch > view.epoch => self.future.push((from, bytes)),
                Ok((epoch, confirm)) if epoch == view.epoch => {
                    match self.handle_current(&cur, &from, &bytes, confirm, rng) {
                        Ok(more) => {
                            out.sends.extend(more.sends);
                            out.key = out.key.or(more.key);
                            out.refused.extend(more.refused);
                            out.refresh_needed = out.refresh_needed.or(more.refresh_needed);
                        }
                        Err(e) => out.refused.push((from, e)),
                    }
                }
                Ok((epoch, _)) => out.refused.push((
                    from,
                    KeyError::StaleEpoch {
                        got: epoch,
                        current: view.epoch,
                    },
                )),
                Err(e) => out.refused.push((from, e)),
            }
        }
        Ok(out)
    }

    fn handle_message(
        &mut self,
        from: &MemberId,
        bytes: &[u8],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if from == self.inner.me() {
            return Ok(Output::default());
        }
        let (epoch, confirm) = Self::claimed_epoch(bytes)?;
        let current = self.current.as_ref().map(|c| c.epoch);
        if current.is_none_or(|c| epoch > c) {
            if self.future.len() >= self.future_limit {
                return Err(KeyError::FutureBufferFull {
                    limit: self.future_limit,
                });
            }
            self.future.push((from.clone(), bytes.to_vec()));
            return Ok(Output::default());
        }
        let cur = self.current.clone().expect("current epoch known");
        if epoch < cur.epoch {
            return Err(KeyError::StaleEpoch {
                got: epoch,
                current: cur.epoch,
            });
        }
        self.handle_current(&cur, from, bytes, confirm, rng)
    }

    fn current_key(&self) -> Option<&GroupKey> {
        self.key.as_ref()
    }

    fn in_progress(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| self.key.as_ref().is_none_or(|k| k.epoch != c.epoch))
    }

    fn op_counts(&self) -> OpCounts {
        self.inner.op_counts()
    }

    #[cfg(test)]
    fn leak(&self) -> super::Leak {
        let mut leak = self.inner.leak();
        leak.keys.extend(self.confirming.master.iter().map(|m| **m));
        leak.keys.extend(self.key.iter().map(|k| k.secret));
        leak
    }
}
