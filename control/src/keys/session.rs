//! A member's key-agreement session: a protocol instance plus what every protocol needs
//! around it once real members drive it.
//!
//! * **Key confirmation.** When the protocol derives its key, the session does not report
//!   it yet. It broadcasts a confirmation: an HMAC-SHA256, under a confirmation key
//!   derived from the protocol's key, of the run's transcript (protocol, DH group, group,
//!   epoch, members with incarnations: the key's context, see [`super::kdf`]) and the
//!   sender's name and incarnation. Only when every other member's confirmation matches
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

use std::collections::HashSet;

use rand_core::CryptoRngCore;
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

/// The confirmation state of the current run.
#[derive(Default)]
struct Confirming {
    /// The protocol's key, once derived.
    master: Option<Zeroizing<[u8; 32]>>,
    /// Members whose confirmation matched.
    confirmed: HashSet<MemberId>,
    /// Confirmations that came before this member's key: checked when it is derived.
    early: Vec<(MemberId, [u8; 32])>,
    /// A confirmation did not match: the run never reports a key.
    failed: bool,
}

/// A protocol instance with key confirmation and early-message buffering (module docs).
pub struct Session {
    inner: Box<dyn KeyAgreement>,
    future_limit: usize,
    view: Option<View>,
    /// Messages of later epochs than `view`'s, in arrival order.
    future: Vec<(MemberId, Vec<u8>)>,
    confirming: Confirming,
    key: Option<GroupKey>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner instance's Debug is redacted; the master key is not shown at all.
        f.debug_struct("Session")
            .field("inner", &self.inner)
            .field("epoch", &self.view.as_ref().map(|v| v.epoch))
            .field("held_early", &self.future.len())
            .field("confirmed", &self.confirming.confirmed.len())
            .field("failed", &self.confirming.failed)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A decoded confirmation message.
struct Confirmation {
    protocol: u8,
    group: String,
    epoch: u64,
    sender: MemberId,
    incarnation: u64,
    tag: [u8; 32],
}

impl Confirmation {
    fn encode(&self) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.u8(self.protocol)
            .str(&self.group)
            .u64(self.epoch)
            .str(self.sender.as_str())
            .u64(self.incarnation)
            .bytes(&self.tag);
        let mut out = CONFIRM_MAGIC.to_vec();
        out.extend_from_slice(&w.finish());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        let body = bytes
            .strip_prefix(CONFIRM_MAGIC)
            .ok_or(KeyError::Malformed("not a confirmation"))?;
        let mut r = BodyReader::new(body);
        let protocol = r.u8()?;
        let group = r.str()?.to_owned();
        let epoch = r.u64()?;
        let sender = MemberId::new(r.str()?);
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
            view: None,
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

    fn transcript(&self, view: &View) -> Vec<u8> {
        let members: Vec<MemberId> = view.member_ids().cloned().collect();
        let incarnations: Vec<u64> = view.members.iter().map(|m| m.incarnation).collect();
        KeyContext {
            protocol: self.inner.protocol(),
            dh_group: self.inner.dh_group(),
            group: &view.group,
            epoch: view.epoch,
            members: &members,
            incarnations: &incarnations,
        }
        .transcript()
    }

    /// The confirmation tag `member` (in `incarnation`) must send for `master` in `view`.
    fn tag(&self, master: &[u8; 32], view: &View, member: &MemberId, incarnation: u64) -> [u8; 32] {
        let confirm_key = Zeroizing::new(hmac(master, &[CONFIRM_KEY_LABEL]));
        let mut who = BodyWriter::new();
        who.str(member.as_str()).u64(incarnation);
        hmac(
            confirm_key.as_slice(),
            &[b"confirm", &self.transcript(view), &who.finish()],
        )
    }

    /// Checks one confirmation against the derived key (which must be known).
    fn check_tag(
        &mut self,
        view: &View,
        member: &MemberId,
        tag: &[u8; 32],
    ) -> Result<(), KeyError> {
        use subtle::ConstantTimeEq;
        let master = self
            .confirming
            .master
            .as_ref()
            .ok_or(KeyError::Invalid(Validation::ConfirmationBeforeKey))?;
        let incarnation = view
            .incarnation_of(member)
            .ok_or_else(|| KeyError::UnknownSender(member.clone()))?;
        let expected = self.tag(master, view, member, incarnation);
        if bool::from(expected.ct_eq(tag)) {
            self.confirming.confirmed.insert(member.clone());
            Ok(())
        } else {
            self.confirming.failed = true;
            Err(KeyError::ConfirmationFailed {
                group: view.group.clone(),
                epoch: view.epoch,
                member: member.clone(),
            })
        }
    }

    /// Reports the key once every other member confirmed it.
    fn maybe_complete(&mut self, view: &View, out: &mut Output) {
        if self.confirming.failed || self.key.as_ref().is_some_and(|k| k.epoch == view.epoch) {
            return;
        }
        let Some(master) = self.confirming.master.as_ref() else {
            return;
        };
        if self.confirming.confirmed.len() + 1 < view.members.len() {
            return;
        }
        let key = GroupKey {
            epoch: view.epoch,
            secret: hmac(master.as_slice(), &[APPLICATION_KEY_LABEL]),
        };
        self.key = Some(key.clone());
        out.key = Some(key);
    }

    /// Takes the protocol's key out of `out` (it is not reported before confirmation),
    /// sends this member's confirmation and checks the confirmations already received.
    fn absorb(&mut self, view: &View, mut out: Output) -> Output {
        let Some(inner_key) = out.key.take() else {
            return out;
        };
        if inner_key.epoch != view.epoch || self.confirming.master.is_some() {
            return out;
        }
        let master = Zeroizing::new(inner_key.secret);
        let me = self.inner.me().clone();
        let incarnation = view.incarnation_of(&me).unwrap_or(0);
        let tag = self.tag(&master, view, &me, incarnation);
        self.confirming.master = Some(master);
        if view.members.len() > 1 {
            let confirmation = Confirmation {
                protocol: self.inner.protocol() as u8,
                group: view.group.clone(),
                epoch: view.epoch,
                sender: me,
                incarnation,
                tag,
            };
            out.sends.push(Outgoing {
                to: Destination::Broadcast,
                bytes: confirmation.encode(),
            });
        }
        for (member, tag) in std::mem::take(&mut self.confirming.early) {
            if let Err(e) = self.check_tag(view, &member, &tag) {
                out.refused.push((member, e));
            }
        }
        self.maybe_complete(view, &mut out);
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
        view: &View,
        from: &MemberId,
        bytes: &[u8],
        confirm: bool,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if !confirm {
            let out = self.inner.handle_message(from, bytes, rng)?;
            return Ok(self.absorb(view, out));
        }
        let c = Confirmation::decode(bytes)?;
        if c.protocol != self.inner.protocol() as u8 {
            return Err(KeyError::WrongProtocol {
                got: c.protocol,
                expected: self.inner.protocol() as u8,
            });
        }
        if c.group != view.group {
            return Err(KeyError::WrongGroup {
                got: c.group,
                expected: view.group.clone(),
            });
        }
        if &c.sender != from || view.incarnation_of(from) != Some(c.incarnation) {
            return Err(KeyError::UnknownSender(from.clone()));
        }
        if self.confirming.confirmed.contains(from)
            || self.confirming.early.iter().any(|(m, _)| m == from)
        {
            return Err(KeyError::Duplicate(from.clone()));
        }
        let mut out = Output::default();
        if self.confirming.master.is_none() {
            self.confirming.early.push((from.clone(), c.tag));
            return Ok(out);
        }
        self.check_tag(view, from, &c.tag)?;
        self.maybe_complete(view, &mut out);
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
        self.view = Some(view.clone());
        self.confirming = Confirming::default();
        let mut out = self.absorb(view, out);
        // Early messages: this view's are handled now, older ones are stale, later ones
        // stay held.
        for (from, bytes) in std::mem::take(&mut self.future) {
            let claimed = Self::claimed_epoch(&bytes);
            match claimed {
                Ok((epoch, _)) if epoch > view.epoch => self.future.push((from, bytes)),
                Ok((epoch, confirm)) if epoch == view.epoch => {
                    match self.handle_current(view, &from, &bytes, confirm, rng) {
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
        let current = self.view.as_ref().map(|v| v.epoch);
        if current.is_none_or(|c| epoch > c) {
            if self.future.len() >= self.future_limit {
                return Err(KeyError::FutureBufferFull {
                    limit: self.future_limit,
                });
            }
            self.future.push((from.clone(), bytes.to_vec()));
            return Ok(Output::default());
        }
        let view = self.view.clone().expect("current epoch known");
        if epoch < view.epoch {
            return Err(KeyError::StaleEpoch {
                got: epoch,
                current: view.epoch,
            });
        }
        self.handle_current(&view, from, bytes, confirm, rng)
    }

    fn current_key(&self) -> Option<&GroupKey> {
        self.key.as_ref()
    }

    fn in_progress(&self) -> bool {
        self.view
            .as_ref()
            .is_some_and(|v| self.key.as_ref().is_none_or(|k| k.epoch != v.epoch))
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
