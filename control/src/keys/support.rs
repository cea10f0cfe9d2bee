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
    /// `incarnations[i]` is the incarnation of `members[i]`.
    pub(crate) incarnations: Vec<u64>,
    pub(crate) applied: HashSet<(MemberId, u8)>,
}

/// The checks every protocol makes of a new view for member `me`, given the previous one:
/// `me` present once, no name twice, the epoch increasing, the group unchanged, and `me`
/// still in the incarnation it had (an instance is one life of its member; a restarted
/// process gets a fresh instance).
pub(crate) fn check_view(
    previous: Option<(&str, u64, Option<u64>)>,
    view: &View,
    me: &MemberId,
) -> Result<(), KeyError> {
    let Some(my_incarnation) = view.incarnation_of(me) else {
        return Err(KeyError::BadView("this member is not in the view"));
    };
    let distinct: HashSet<&MemberId> = view.member_ids().collect();
    if distinct.len() != view.members.len() {
        return Err(KeyError::BadView("duplicate members"));
    }
    if let Some((group, epoch, incarnation)) = previous {
        if view.epoch <= epoch {
            return Err(KeyError::BadView("epoch not increasing"));
        }
        if view.group != group {
            return Err(KeyError::BadView("group name changed"));
        }
        if incarnation.is_some_and(|i| i != my_incarnation) {
            return Err(KeyError::BadView("this member's incarnation changed"));
        }
    }
    Ok(())
}

impl Run {
    /// Checks `view` may follow `previous` for member `me` and makes the run for it.
    pub(crate) fn start(
        previous: Option<&Run>,
        view: &View,
        me: &MemberId,
    ) -> Result<Run, KeyError> {
        check_view(
            previous.map(|p| (p.group.as_str(), p.epoch, p.incarnation_of(me))),
            view,
            me,
        )?;
        Ok(Run {
            group: view.group.clone(),
            epoch: view.epoch,
            members: view.member_ids().cloned().collect(),
            incarnations: view.members.iter().map(|m| m.incarnation).collect(),
            applied: HashSet::new(),
        })
    }

    /// The context the run's group key is bound to.
    pub(crate) fn key_context<'a>(
        &'a self,
        protocol: Protocol,
        dh_group: &'a str,
    ) -> super::kdf::KeyContext<'a> {
        super::kdf::KeyContext {
            protocol,
            dh_group,
            group: &self.group,
            epoch: self.epoch,
            members: &self.members,
            incarnations: &self.incarnations,
        }
    }

    /// The incarnation of `id` in this run.
    pub(crate) fn incarnation_of(&self, id: &MemberId) -> Option<u64> {
        self.position(id).map(|i| self.incarnations[i])
    }

    /// Whether `id` is a member of this run in the same incarnation as in `other`: the
    /// member carried over from one run to the next (a name that came back in a new
    /// incarnation is a newcomer).
    pub(crate) fn same_member_in(&self, other: &Run, id: &MemberId) -> bool {
        match (self.incarnation_of(id), other.incarnation_of(id)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
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
