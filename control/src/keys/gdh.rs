//! GDH / Cliques (the IKA/AKA protocols of the Secure Spread paper, §4).
//!
//! The group secret is `g^(N1·…·Nn)`, `Ni` member i's private share. The *partial key*
//! of member i is the secret with `Ni` left out, so `partial_i^Ni` is the secret. The
//! newest member is the controller and holds everyone's partial keys.
//!
//! Every view is handled by one rule, which covers the paper's operations:
//! * The *starter* is the newest member, in this view, of the component that holds the
//!   view's oldest member (the members that were together in the previous view). It
//!   refreshes its share.
//! * If the starter completed the previous view's run it holds the last partial-key set.
//!   With no new members (leave, partition, refresh) it re-keys alone: every partial is
//!   raised to `N'/N` and broadcast (§4.3, §4.4: `n` exponentiations). With new members
//!   (join, merge) it sends the partial secret with its new share to the first new member,
//!   the upflow runs through the new members, the last one broadcasts it, every member
//!   factors its share out and returns it, and the last new member, now controller,
//!   broadcasts the new set (§4.1/§4.2).
//! * If the starter's set is not current (a cascade abandoned the previous run, or the
//!   group is new) the upflow runs through every other member instead: the initial key
//!   agreement (IKA.2) with the same messages.
//!
//! Only the starter changes its share; every other member keeps its share for as long as
//! its instance lives. That is what makes an abandoned run harmless: a set that some
//! member completed is consistent with every share still in use, and a starter that did
//! not complete the previous run falls back to the full upflow.
//!
//! Messages name the upflow chain, so members of another component (which cannot know
//! which members were together before the merge) just follow it.
//!
//! The controller of every run is the view's last member, and only it may send FACTOR
//! REQUEST and FINAL ([`KeyError::NotController`] otherwise): every member can check that
//! without knowing who was together before. The chain is built to end there: when the
//! starter is itself the last member (newcomers placed before it, or a full upflow it
//! starts), it starts the upflow *without* its new share (from its partial key, or from
//! `g`) and puts itself at the end of the chain, adding its share as controller.

use std::sync::Arc;

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, Zeroizing};

use super::envelope::{BodyReader, BodyWriter};
use super::kdf::derive_from_encoding;
use super::support::{Counted, Run};
use super::{
    Destination, DhGroup, Directory, GroupKey, Identity, KeyAgreement, KeyError, MemberId,
    OpCounts, Outgoing, Output, Protocol, Validation, View,
};

/// Envelope step of an upflow message (partial secret passed along the chain).
pub const UPFLOW: u8 = 1;
/// Envelope step of the controller's broadcast of the partial secret to factor out from.
pub const FACTOR_REQUEST: u8 = 2;
/// Envelope step of a member's factored-out value, to the controller.
pub const FACTOR: u8 = 3;
/// Envelope step of the controller's broadcast of the new partial-key set.
pub const FINAL: u8 = 4;

/// The partial-key set a member last saw completed: encoded elements, decoded lazily (only
/// a starter needs the others' entries).
#[derive(Debug, Clone)]
struct PartialSet {
    epoch: u64,
    entries: Vec<(MemberId, Vec<u8>)>,
}

enum Phase<G: DhGroup> {
    /// Nothing to do until a message arrives (or the run is complete).
    Waiting,
    /// This member is the controller: it broadcast the partial secret and collects the
    /// members' factored-out values.
    Collecting {
        partial: G::Element,
        got: Vec<(MemberId, G::Element)>,
    },
}

/// One member's GDH (Cliques) instance.
pub struct Gdh<G: DhGroup> {
    dh: Counted<G>,
    identity: Arc<Identity>,
    directory: Directory,
    share: Option<G::Scalar>,
    run: Option<Run>,
    phase: Phase<G>,
    set: Option<PartialSet>,
    key: Option<GroupKey>,
    in_progress: bool,
    /// Test builds: every key-derivation input this instance used (secrecy checks).
    #[cfg(test)]
    seen_ikms: Vec<Vec<u8>>,
}

impl<G: DhGroup> Drop for Gdh<G> {
    fn drop(&mut self) {
        if let Some(share) = self.share.as_mut() {
            share.zeroize();
        }
    }
}

impl<G: DhGroup> std::fmt::Debug for Gdh<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public facts only: the share and the key stay out of logs.
        f.debug_struct("Gdh")
            .field("me", self.identity.id())
            .field("group", &self.dh.group.name())
            .field("epoch", &self.run.as_ref().map(|r| r.epoch))
            .field("in_progress", &self.in_progress)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<G: DhGroup> Gdh<G> {
    /// A fresh instance for `identity`, verifying others with `directory`.
    pub fn new(group: G, identity: Arc<Identity>, directory: Directory) -> Self {
        Self {
            dh: Counted::new(group),
            identity,
            directory,
            share: None,
            run: None,
            phase: Phase::Waiting,
            set: None,
            key: None,
            in_progress: false,
            #[cfg(test)]
            seen_ikms: Vec::new(),
        }
    }

    /// The public values of the last completed run, for known-answer vectors: every
    /// member's partial key (`partial:<member>`), in view order.
    pub fn public_values(&self) -> Vec<(String, Vec<u8>)> {
        self.set
            .iter()
            .flat_map(|set| set.entries.iter())
            .map(|(m, bytes)| (format!("partial:{m}"), bytes.clone()))
            .collect()
    }

    fn me_id(&self) -> MemberId {
        self.identity.id().clone()
    }

    fn run_clone(&self) -> Result<Run, KeyError> {
        self.run
            .clone()
            .ok_or(KeyError::Invalid(Validation::NoView))
    }

    /// A copy of the share that wipes itself when dropped.
    fn share(&self) -> Zeroizing<G::Scalar> {
        Zeroizing::new(
            self.share
                .clone()
                .expect("a share is chosen on the first view"),
        )
    }

    fn set_share(&mut self, new: G::Scalar) {
        if let Some(old) = self.share.as_mut() {
            old.zeroize();
        }
        self.share = Some(new);
    }

    fn finish(&mut self, key_element: &G::Element, set: PartialSet) -> GroupKey {
        let run = self.run.as_ref().expect("a run completes inside its view");
        let encoded = self.dh.group.encode_element(key_element);
        #[cfg(test)]
        self.seen_ikms.push(encoded.clone());
        let key = derive_from_encoding(
            &run.key_context(Protocol::Gdh, self.dh.group.name()),
            encoded,
        );
        self.set = Some(set);
        self.key = Some(key.clone());
        self.in_progress = false;
        self.phase = Phase::Waiting;
        key
    }

    /// The previous set, decoded, if it is from the run of the view just before this one
    /// (so this member completed it) and covers `needed`. `None` sends the starter to
    /// the full upflow.
    fn usable_set(
        &self,
        previous_epoch: Option<u64>,
        needed: &[MemberId],
    ) -> Option<Vec<(MemberId, G::Element)>> {
        let set = self.set.as_ref()?;
        if Some(set.epoch) != previous_epoch {
            return None;
        }
        let mut out = Vec::with_capacity(needed.len());
        for id in needed {
            let (_, bytes) = set.entries.iter().find(|(m, _)| m == id)?;
            out.push((id.clone(), self.dh.group.decode_element(bytes).ok()?));
        }
        Some(out)
    }

    fn seal(&mut self, run: &Run, step: u8, body: &[u8], to: Destination) -> Outgoing {
        self.dh
            .seal(&self.identity, Protocol::Gdh, run, step, body, to)
    }

    fn final_message(&mut self, run: &Run, entries: &[(MemberId, Vec<u8>)]) -> Outgoing {
        let mut w = BodyWriter::new();
        w.u32(entries.len() as u32);
        for (id, bytes) in entries {
            w.str(id.as_str());
            w.bytes(bytes);
        }
        self.seal(run, FINAL, &w.finish(), Destination::Broadcast)
    }

    fn upflow_message(
        &mut self,
        run: &Run,
        chain: &[MemberId],
        next: usize,
        partial: &G::Element,
    ) -> Outgoing {
        let mut w = BodyWriter::new();
        w.u32(chain.len() as u32);
        for id in chain {
            w.str(id.as_str());
        }
        w.bytes(&self.dh.group.encode_element(partial));
        self.seal(
            run,
            UPFLOW,
            &w.finish(),
            Destination::Unicast(chain[next].clone()),
        )
    }

    /// The last member of the upflow: broadcast the partial secret for factoring out.
    fn become_controller(&mut self, run: &Run, partial: G::Element) -> Output {
        let mut w = BodyWriter::new();
        w.bytes(&self.dh.group.encode_element(&partial));
        let msg = self.seal(run, FACTOR_REQUEST, &w.finish(), Destination::Broadcast);
        self.phase = Phase::Collecting {
            partial,
            got: Vec::new(),
        };
        Output {
            sends: vec![msg],
            key: None,
            ..Output::default()
        }
    }

    /// Every factored-out value is in: add this member's share to each and broadcast.
    fn complete_as_controller(
        &mut self,
        run: &Run,
        partial: G::Element,
        got: Vec<(MemberId, G::Element)>,
    ) -> Output {
        let share = self.share();
        let me = self.me_id();
        let mut entries = Vec::with_capacity(run.members.len());
        for id in &run.members {
            if *id == me {
                entries.push((id.clone(), self.dh.group.encode_element(&partial)));
            } else {
                let (_, v) = got
                    .iter()
                    .find(|(m, _)| m == id)
                    .expect("every member answered before completion");
                let p = self.dh.exp(v, &share);
                entries.push((id.clone(), self.dh.group.encode_element(&p)));
            }
        }
        let key_element = Zeroizing::new(self.dh.exp(&partial, &share));
        let msg = self.final_message(run, &entries);
        let key = self.finish(
            &key_element,
            PartialSet {
                epoch: run.epoch,
                entries,
            },
        );
        Output {
            sends: vec![msg],
            key: Some(key),
            ..Output::default()
        }
    }

    /// This member starts the run (see the module comment for who does).
    fn start(
        &mut self,
        run: &Run,
        group_before: &[MemberId],
        previous_epoch: Option<u64>,
        rng: &mut dyn CryptoRngCore,
    ) -> Output {
        let me = self.me_id();
        let old_share = self.share();
        let new_share = Zeroizing::new(self.dh.group.random_scalar(rng));
        // Test builds: the injected key-reuse bug keeps the old share.
        #[cfg(test)]
        let new_share = if super::kdf::fault::key_reuse() {
            old_share.clone()
        } else {
            new_share
        };
        let newcomers: Vec<MemberId> = run
            .members
            .iter()
            .filter(|m| !group_before.contains(m))
            .cloned()
            .collect();
        let set = self.usable_set(previous_epoch, group_before);
        let Some(set) = set else {
            // Full upflow through everybody else, from g^N' (or from g, when this member
            // is the last one and so ends the chain as controller).
            let mut chain: Vec<MemberId> =
                run.members.iter().filter(|m| **m != me).cloned().collect();
            let last = run.members.last() == Some(&me);
            let partial = if last && !chain.is_empty() {
                chain.push(me.clone());
                let one = self.dh.group.scalar_from_u64(1);
                self.dh.group.exp_generator(&one)
            } else {
                self.dh.exp_generator(&new_share)
            };
            self.set_share((*new_share).clone());
            if chain.is_empty() {
                let one = self.dh.group.scalar_from_u64(1);
                let generator = self.dh.group.exp_generator(&one);
                let entries = vec![(me, self.dh.group.encode_element(&generator))];
                let key = self.finish(
                    &partial,
                    PartialSet {
                        epoch: run.epoch,
                        entries,
                    },
                );
                return Output {
                    sends: Vec::new(),
                    key: Some(key),
                    ..Output::default()
                };
            }
            let msg = self.upflow_message(run, &chain, 0, &partial);
            return Output {
                sends: vec![msg],
                key: None,
                ..Output::default()
            };
        };
        let mine = set
            .iter()
            .find(|(m, _)| *m == me)
            .map(|(_, e)| e.clone())
            .expect("the starter is in its own group");
        if newcomers.is_empty() {
            // Leave, partition or refresh: re-key alone (§4.3).
            let inverse = Zeroizing::new(self.dh.group.invert(&old_share));
            let ratio = Zeroizing::new(self.dh.group.mul_scalars(&new_share, &inverse));
            let mut entries = Vec::with_capacity(run.members.len());
            for id in &run.members {
                let (_, p) = set
                    .iter()
                    .find(|(m, _)| m == id)
                    .expect("set covers the group");
                let p = if *id == me {
                    p.clone()
                } else {
                    self.dh.exp(p, &ratio)
                };
                entries.push((id.clone(), self.dh.group.encode_element(&p)));
            }
            let key_element = Zeroizing::new(self.dh.exp(&mine, &new_share));
            self.set_share((*new_share).clone());
            let msg = self.final_message(run, &entries);
            let key = self.finish(
                &key_element,
                PartialSet {
                    epoch: run.epoch,
                    entries,
                },
            );
            return Output {
                sends: vec![msg],
                key: Some(key),
                ..Output::default()
            };
        }
        // Join or merge: the partial secret with the new share goes up the newcomers. When
        // this member is the view's last (the newcomers are placed before it), it goes
        // without the new share and comes back here, the controller.
        let mut chain = newcomers;
        let partial = if run.members.last() == Some(&me) {
            chain.push(me.clone());
            mine
        } else {
            self.dh.exp(&mine, &new_share)
        };
        self.set_share((*new_share).clone());
        let msg = self.upflow_message(run, &chain, 0, &partial);
        Output {
            sends: vec![msg],
            key: None,
            ..Output::default()
        }
    }

    fn on_upflow(&mut self, run: &Run, from: &MemberId, body: &[u8]) -> Result<Output, KeyError> {
        let mut r = BodyReader::new(body);
        let count = r.u32()? as usize;
        if count == 0 || count > run.members.len() {
            return Err(KeyError::Malformed("bad chain length"));
        }
        let mut chain = Vec::with_capacity(count);
        for _ in 0..count {
            let id = MemberId::new(r.str()?);
            if !run.members.contains(&id) || chain.contains(&id) {
                return Err(KeyError::Invalid(Validation::ChainNotInView));
            }
            chain.push(id);
        }
        let partial = self.dh.group.decode_element(r.bytes()?)?;
        r.finish()?;
        let me = self.me_id();
        let pos = chain
            .iter()
            .position(|m| *m == me)
            .ok_or(KeyError::Invalid(Validation::UpflowNotForMe))?;
        if chain.last() != run.members.last() {
            return Err(KeyError::Invalid(Validation::ChainNotEndingAtController));
        }
        // The first hop comes from the starter: outside the chain, or at its end when the
        // starter is the controller itself.
        let expected_sender_ok = if pos == 0 {
            !chain[..chain.len() - 1].contains(from)
        } else {
            chain[pos - 1] == *from
        };
        if !expected_sender_ok {
            return Err(KeyError::Invalid(Validation::UpflowWrongSender));
        }
        if !matches!(self.phase, Phase::Waiting) {
            return Err(KeyError::Invalid(Validation::UpflowWhileCollecting));
        }
        if pos + 1 == chain.len() {
            return Ok(self.become_controller(run, partial));
        }
        let share = self.share();
        let next = self.dh.exp(&partial, &share);
        Ok(Output {
            sends: vec![self.upflow_message(run, &chain, pos + 1, &next)],
            key: None,
            ..Output::default()
        })
    }

    /// Refuses a controller's message (FACTOR REQUEST, FINAL) from anyone else.
    fn check_controller(run: &Run, from: &MemberId) -> Result<(), KeyError> {
        let controller = run.members.last().ok_or(KeyError::BadView("empty view"))?;
        if from == controller {
            Ok(())
        } else {
            Err(KeyError::NotController {
                sender: from.clone(),
                controller: controller.clone(),
                epoch: run.epoch,
            })
        }
    }

    fn on_factor_request(
        &mut self,
        run: &Run,
        from: &MemberId,
        body: &[u8],
    ) -> Result<Output, KeyError> {
        Self::check_controller(run, from)?;
        let mut r = BodyReader::new(body);
        let partial = self.dh.group.decode_element(r.bytes()?)?;
        r.finish()?;
        if run.applied.iter().any(|(_, step)| *step == FACTOR_REQUEST) {
            return Err(KeyError::Invalid(Validation::SecondFactorRequest));
        }
        if !matches!(self.phase, Phase::Waiting) {
            return Err(KeyError::Invalid(Validation::FactorRequestToController));
        }
        let inverse = Zeroizing::new(self.dh.group.invert(&self.share()));
        let value = self.dh.exp(&partial, &inverse);
        let mut w = BodyWriter::new();
        w.bytes(&self.dh.group.encode_element(&value));
        Ok(Output {
            sends: vec![self.seal(run, FACTOR, &w.finish(), Destination::Unicast(from.clone()))],
            key: None,
            ..Output::default()
        })
    }

    fn on_factor(&mut self, run: &Run, from: &MemberId, body: &[u8]) -> Result<Output, KeyError> {
        let mut r = BodyReader::new(body);
        let value = self.dh.group.decode_element(r.bytes()?)?;
        r.finish()?;
        let Phase::Collecting { got, .. } = &mut self.phase else {
            return Err(KeyError::Invalid(Validation::FactorToNonController));
        };
        got.push((from.clone(), value));
        if got.len() + 1 < run.members.len() {
            return Ok(Output::default());
        }
        let Phase::Collecting { partial, got } = std::mem::replace(&mut self.phase, Phase::Waiting)
        else {
            unreachable!("checked above");
        };
        Ok(self.complete_as_controller(run, partial, got))
    }

    fn on_final(&mut self, run: &Run, from: &MemberId, body: &[u8]) -> Result<Output, KeyError> {
        Self::check_controller(run, from)?;
        if !matches!(self.phase, Phase::Waiting) || !self.in_progress {
            return Err(KeyError::Invalid(Validation::FinalUnexpected));
        }
        let mut r = BodyReader::new(body);
        let count = r.u32()? as usize;
        if count != run.members.len() {
            return Err(KeyError::Invalid(Validation::FinalNotCoveringView));
        }
        let mut entries = Vec::with_capacity(count);
        for expected in &run.members {
            let id = MemberId::new(r.str()?);
            if id != *expected {
                return Err(KeyError::Invalid(Validation::FinalOutOfOrder));
            }
            entries.push((id, r.bytes()?.to_vec()));
        }
        r.finish()?;
        let me = self.me_id();
        let (_, mine) = entries
            .iter()
            .find(|(m, _)| *m == me)
            .expect("view contains me");
        let mine = self.dh.group.decode_element(mine)?;
        let key_element = Zeroizing::new(self.dh.exp(&mine, &self.share()));
        let key = self.finish(
            &key_element,
            PartialSet {
                epoch: run.epoch,
                entries,
            },
        );
        Ok(Output {
            sends: Vec::new(),
            key: Some(key),
            ..Output::default()
        })
    }
}

impl<G: DhGroup> KeyAgreement for Gdh<G> {
    fn protocol(&self) -> Protocol {
        Protocol::Gdh
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
        let me = self.me_id();
        let run = Run::start(self.run.as_ref(), view, &me)?;
        // The members that were together in the previous view: this member's component.
        // A name back in a new incarnation is not one of them: its predecessor's share is
        // gone with it, so it must join like any newcomer.
        let (group_before, previous_epoch): (Vec<MemberId>, Option<u64>) = match &self.run {
            Some(prev) => (
                run.members
                    .iter()
                    .filter(|m| run.same_member_in(prev, m))
                    .cloned()
                    .collect(),
                Some(prev.epoch),
            ),
            None => (vec![me.clone()], None),
        };
        if self.share.is_none() {
            let share = self.dh.group.random_scalar(rng);
            self.share = Some(share);
        }
        let starter = if group_before.contains(&run.members[0]) {
            run.members
                .iter()
                .rev()
                .find(|m| group_before.contains(m))
                .cloned()
        } else {
            None
        };
        self.run = Some(run.clone());
        self.phase = Phase::Waiting;
        self.in_progress = true;
        if starter.as_ref() == Some(&me) {
            Ok(self.start(&run, &group_before, previous_epoch, rng))
        } else {
            Ok(Output::default())
        }
    }

    fn handle_message(
        &mut self,
        from: &MemberId,
        bytes: &[u8],
        _rng: &mut dyn CryptoRngCore,
    ) -> Result<Output, KeyError> {
        if from == self.identity.id() {
            return Ok(Output::default());
        }
        let run = self.run_clone()?;
        let env = self
            .dh
            .open(bytes, from, Protocol::Gdh, &self.directory, &run)?;
        let out = match env.step {
            UPFLOW => self.on_upflow(&run, from, &env.body)?,
            FACTOR_REQUEST => self.on_factor_request(&run, from, &env.body)?,
            FACTOR => self.on_factor(&run, from, &env.body)?,
            FINAL => self.on_final(&run, from, &env.body)?,
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
        super::Leak {
            scalars: self
                .share
                .iter()
                .map(|s| self.dh.group.scalar_bytes(s))
                .collect(),
            ikms: self.seen_ikms.clone(),
            keys: self.key.iter().map(|k| k.secret).collect(),
        }
    }
}
