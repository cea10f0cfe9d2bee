//! Burmester–Desmedt: every view is two broadcast rounds by every member, whatever the
//! event, so there is no state to carry between runs and nothing for a cascade to leave
//! half-done.
//!
//! Member i (members in view order, indices mod n) picks a fresh `r_i` per run and
//! broadcasts `z_i = g^r_i`; once it has every `z` it broadcasts
//! `X_i = (z_{i+1} / z_{i-1})^r_i`; once it has every `X` it computes
//! `K = z_{i-1}^(n·r_i) · X_i^(n-1) · X_{i+1}^(n-2) ⋯ X_{i+n-2}`, which equals
//! `g^(r_1 r_2 + r_2 r_3 + … + r_n r_1)` for every member. Three exponentiations per
//! member; the small powers of the `X` are done as running products (`2n` group
//! operations), not exponentiations.
//!
//! Two members degenerate (`X_i` would be the identity): they stop after the first round
//! with plain Diffie-Hellman, `g^(r_1 r_2)`. A member alone takes `g^r`.

use std::sync::Arc;

use rand_core::CryptoRngCore;
use zeroize::{Zeroize, Zeroizing};

use super::envelope::{BodyReader, BodyWriter};
use super::kdf::derive_from_encoding;
use super::support::{Counted, Run};
use super::{
    Destination, DhGroup, Directory, GroupKey, Identity, KeyAgreement, KeyError, MemberId,
    OpCounts, Output, Protocol, Validation, View,
};

const ROUND1: u8 = 1;
const ROUND2: u8 = 2;

/// The values of one run, indexed by view position.
struct Rounds<G: DhGroup> {
    r: G::Scalar,
    z: Vec<Option<G::Element>>,
    x: Vec<Option<G::Element>>,
    sent_x: bool,
}

/// One member's Burmester–Desmedt instance.
pub struct Bd<G: DhGroup> {
    dh: Counted<G>,
    identity: Arc<Identity>,
    directory: Directory,
    run: Option<Run>,
    rounds: Option<Rounds<G>>,
    public: Vec<(String, Vec<u8>)>,
    key: Option<GroupKey>,
    in_progress: bool,
    /// Test builds: every key-derivation input this instance used (secrecy checks).
    #[cfg(test)]
    seen_ikms: Vec<Vec<u8>>,
}

impl<G: DhGroup> Drop for Bd<G> {
    fn drop(&mut self) {
        if let Some(rounds) = self.rounds.as_mut() {
            rounds.r.zeroize();
        }
    }
}

impl<G: DhGroup> std::fmt::Debug for Bd<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public facts only: the run's exponent and the key stay out of logs.
        f.debug_struct("Bd")
            .field("me", self.identity.id())
            .field("group", &self.dh.group.name())
            .field("epoch", &self.run.as_ref().map(|r| r.epoch))
            .field("in_progress", &self.in_progress)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<G: DhGroup> Bd<G> {
    /// A fresh instance for `identity`, verifying others with `directory`.
    pub fn new(group: G, identity: Arc<Identity>, directory: Directory) -> Self {
        Self {
            dh: Counted::new(group),
            identity,
            directory,
            run: None,
            rounds: None,
            public: Vec::new(),
            key: None,
            in_progress: false,
            #[cfg(test)]
            seen_ikms: Vec::new(),
        }
    }

    /// The public values of the last completed run, for known-answer vectors:
    /// `z:<member>` then `X:<member>`, in view order.
    pub fn public_values(&self) -> Vec<(String, Vec<u8>)> {
        self.public.clone()
    }

    fn element_body(&self, e: &G::Element) -> Vec<u8> {
        let mut w = BodyWriter::new();
        w.bytes(&self.dh.group.encode_element(e));
        w.finish()
    }

    fn complete(&mut self, run: &Run, key_element: &G::Element) -> GroupKey {
        let encoded = self.dh.group.encode_element(key_element);
        // Test builds: the injected key-reuse bug derives from the previous run's value.
        #[cfg(test)]
        let encoded = match self.seen_ikms.last() {
            Some(last) if super::kdf::fault::key_reuse() => last.clone(),
            _ => encoded,
        };
        #[cfg(test)]
        self.seen_ikms.push(encoded.clone());
        let key = derive_from_encoding(
            &run.key_context(Protocol::Bd, self.dh.group.name()),
            encoded,
        );
        self.public.clear();
        if let (Some(rounds), Some(run)) = (self.rounds.as_ref(), self.run.as_ref()) {
            for (tag, values) in [("z", &rounds.z), ("X", &rounds.x)] {
                for (m, v) in run.members.iter().zip(values) {
                    if let Some(v) = v {
                        self.public
                            .push((format!("{tag}:{m}"), self.dh.group.encode_element(v)));
                    }
                }
            }
        }
        if let Some(rounds) = self.rounds.as_mut() {
            rounds.r.zeroize();
        }
        self.rounds = None;
        self.key = Some(key.clone());
        self.in_progress = false;
        key
    }

    /// Does whatever the values received so far allow: send `X_i`, or finish.
    fn advance(&mut self, run: &Run) -> Output {
        let n = run.members.len();
        let i = run
            .position(self.identity.id())
            .expect("this member is in its run");
        let mut out = Output::default();
        let Some(rounds) = self.rounds.as_ref() else {
            return out;
        };
        if rounds.z.iter().any(Option::is_none) {
            return out;
        }
        if n == 2 {
            let other = rounds.z[1 - i].clone().expect("checked above");
            let r = Zeroizing::new(rounds.r.clone());
            let shared = Zeroizing::new(self.dh.exp(&other, &r));
            out.key = Some(self.complete(run, &shared));
            return out;
        }
        let prev = rounds.z[(i + n - 1) % n].clone().expect("checked above");
        if !rounds.sent_x {
            let next = rounds.z[(i + 1) % n].clone().expect("checked above");
            let r = Zeroizing::new(rounds.r.clone());
            let ratio = self
                .dh
                .group
                .mul_elements(&next, &self.dh.group.invert_element(&prev));
            let x = self.dh.exp(&ratio, &r);
            let body = self.element_body(&x);
            out.sends.push(self.dh.seal(
                &self.identity,
                Protocol::Bd,
                run,
                ROUND2,
                &body,
                Destination::Broadcast,
            ));
            let rounds = self.rounds.as_mut().expect("checked above");
            rounds.x[i] = Some(x);
            rounds.sent_x = true;
        }
        let rounds = self.rounds.as_ref().expect("checked above");
        if rounds.x.iter().any(Option::is_none) {
            return out;
        }
        let xs: Vec<G::Element> = rounds.x.iter().flatten().cloned().collect();
        let exponent = Zeroizing::new(
            self.dh
                .group
                .mul_scalars(&rounds.r, &self.dh.group.scalar_from_u64(n as u64)),
        );
        // The running product ends as the group secret: wiped when dropped.
        let mut acc = Zeroizing::new(self.dh.exp(&prev, &exponent));
        // Σ_{j=0}^{n-2} (n-1-j)·X_{i+j} as a sum of the prefix products X_i⋯X_{i+k}.
        let mut prefix = xs[i].clone();
        *acc = self.dh.group.mul_elements(&acc, &prefix);
        for j in 1..n - 1 {
            prefix = self.dh.group.mul_elements(&prefix, &xs[(i + j) % n]);
            *acc = self.dh.group.mul_elements(&acc, &prefix);
        }
        out.key = Some(self.complete(run, &acc));
        out
    }
}

impl<G: DhGroup> KeyAgreement for Bd<G> {
    fn protocol(&self) -> Protocol {
        Protocol::Bd
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
        let n = run.members.len();
        let i = run
            .position(self.identity.id())
            .expect("Run::start checked membership");
        if let Some(old) = self.rounds.as_mut() {
            old.r.zeroize();
        }
        let r = self.dh.group.random_scalar(rng);
        let z = self.dh.exp_generator(&r);
        self.run = Some(run.clone());
        self.in_progress = true;
        if n == 1 {
            self.rounds = Some(Rounds {
                r,
                z: Vec::new(),
                x: Vec::new(),
                sent_x: true,
            });
            return Ok(Output {
                sends: Vec::new(),
                key: Some(self.complete(&run, &z)),
                ..Output::default()
            });
        }
        let body = self.element_body(&z);
        let msg = self.dh.seal(
            &self.identity,
            Protocol::Bd,
            &run,
            ROUND1,
            &body,
            Destination::Broadcast,
        );
        let mut zs = vec![None; n];
        zs[i] = Some(z);
        self.rounds = Some(Rounds {
            r,
            z: zs,
            x: vec![None; n],
            sent_x: false,
        });
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
        _rng: &mut dyn CryptoRngCore,
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
            .open(bytes, from, Protocol::Bd, &self.directory, &run)?;
        if self.rounds.is_none() || !self.in_progress {
            return Err(KeyError::Invalid(Validation::RunComplete));
        }
        let n = run.members.len();
        if env.step == ROUND2 && n <= 2 {
            return Err(KeyError::Invalid(Validation::NoSecondRoundForTwo));
        }
        let mut r = BodyReader::new(&env.body);
        let value = self.dh.group.decode_element(r.bytes()?)?;
        r.finish()?;
        let j = run
            .position(&env.sender)
            .expect("open checked the sender is a member");
        let rounds = self.rounds.as_mut().expect("checked above");
        match env.step {
            ROUND1 => rounds.z[j] = Some(value),
            ROUND2 => rounds.x[j] = Some(value),
            _ => return Err(KeyError::Malformed("unknown step")),
        }
        if let Some(run) = self.run.as_mut() {
            run.mark(&env);
        }
        Ok(self.advance(&run))
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
                .rounds
                .iter()
                .map(|r| self.dh.group.scalar_bytes(&r.r))
                .collect(),
            ikms: self.seen_ikms.clone(),
            keys: self.key.iter().map(|k| k.secret).collect(),
        }
    }
}
