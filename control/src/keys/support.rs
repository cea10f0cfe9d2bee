//! Plumbing shared by the GDH, BD and CKD instances: operation counting around the
//! [`DhGroup`] calls, view validation, and the checks every incoming message passes
//! before a protocol looks at it.

use super::{
    Destination, DhGroup, Directory, Envelope, Identity, KeyError, MemberId, OpCounts, Outgoing,
    Protocol, View,
};
use std::collections::HashSet;

/// A [`DhGroup`] plus the counters of what was done with it; every exponentiation,
/// signature and verification of an instance goes through here so the cost tables are
/// exact rather than estimated.
#[derive(Debug)]
pub(crate) struct Counted<G: DhGroup> {
    pub(crate) group: G,
    pub(crate) ops: OpCounts,
}

impl<G: DhGroup> Counted<G> {
    pub(crate) fn new(group: G) -> Self {
        Self {
            group,
            ops: OpCounts::default(),
        }
    }

    pub(crate) fn exp_generator(&mut self, k: &G::Scalar) -> G::Element {
        self.ops.exponentiations += 1;
        self.group.exp_generator(k)
    }

    pub(crate) fn exp(&mut self, base: &G::Element, k: &G::Scalar) -> G::Element {
        self.ops.exponentiations += 1;
        self.group.exp(base, k)
    }

    /// Seals a message, counting the signature.
    pub(crate) fn seal(
        &mut self,
        identity: &Identity,
        protocol: Protocol,
        run: &Run,
        step: u8,
        body: &[u8],
        to: Destination,
    ) -> Outgoing {
        self.ops.signatures += 1;
        Outgoing {
            to,
            bytes: Envelope::seal(identity, protocol, &run.group, run.epoch, step, body),
        }
    }

    /// Opens a message and checks it belongs to `run`, came from a member of it, and is
    /// not a replay of a step already applied. Counts the verification (when the
    /// signature is checked at all).
    pub(crate) fn open(
        &mut self,
        bytes: &[u8],
        from: &MemberId,
        protocol: Protocol,
        directory: &Directory,
        run: &Run,
    ) -> Result<Envelope, KeyError> {
        self.ops.verifications += 1;
        let env = Envelope::open(bytes, directory)?;
        env.check_run(protocol, &run.group, run.epoch, from)?;
        if !run.members.contains(&env.sender) {
            return Err(KeyError::UnknownSender(env.sender));
        }
        if run.applied.contains(&(env.sender.clone(), env.step)) {
            return Err(KeyError::Duplicate(env.sender));
        }
        Ok(env)
    }
}

/// The run an instance is in: the view it serves and which (sender, step) messages it
/// has already applied.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) group: String,
    pub(crate) epoch: u64,
    pub(crate) members: Vec<MemberId>,
    pub(crate) applied: HashSet<(MemberId, u8)>,
}

impl Run {
    /// Checks `view` may follow `previous` for member `me` and makes the run for it.
    pub(crate) fn start(
        previous: Option<&Run>,
        view: &View,
        me: &MemberId,
    ) -> Result<Run, KeyError> {
        if !view.members.contains(me) {
            return Err(KeyError::BadView("this member is not in the view"));
        }
        let distinct: HashSet<&MemberId> = view.members.iter().collect();
        if distinct.len() != view.members.len() {
            return Err(KeyError::BadView("duplicate members"));
        }
        if let Some(prev) = previous {
            if view.epoch <= prev.epoch {
                return Err(KeyError::BadView("epoch not increasing"));
            }
            if view.group != prev.group {
                return Err(KeyError::BadView("group name changed"));
            }
        }
        Ok(Run {
            group: view.group.clone(),
            epoch: view.epoch,
            members: view.members.clone(),
            applied: HashSet::new(),
        })
    }

    /// Records that a message was applied, so a replay of it is refused.
    pub(crate) fn mark(&mut self, env: &Envelope) {
        self.applied.insert((env.sender.clone(), env.step));
    }

    /// The index of `id` in the view.
    pub(crate) fn position(&self, id: &MemberId) -> Option<usize> {
        self.members.iter().position(|m| m == id)
    }
}
