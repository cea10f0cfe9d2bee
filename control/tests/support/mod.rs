//! A small lossless network of key-agreement instances shared by the integration tests:
//! views are handed to every listed member, messages are delivered from one FIFO queue.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use conclave_control::keys::{
    Destination, Directory, GroupKey, Identity, KeyAgreement, KeyError, Member, MemberId, Output,
    Protocol, Ristretto255, View, new_instance,
};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Makes an instance for an identity.
pub type Make = Box<dyn Fn(Arc<Identity>, Directory) -> Box<dyn KeyAgreement>>;

/// The id of `name`.
pub fn id(name: &str) -> MemberId {
    MemberId::new(name)
}

/// Instances, their identities and the messages in flight.
pub struct Net {
    pub make: Make,
    pub identities: BTreeMap<MemberId, Arc<Identity>>,
    pub directory: Directory,
    pub insts: BTreeMap<MemberId, Box<dyn KeyAgreement>>,
    pub queue: VecDeque<(MemberId, MemberId, Vec<u8>)>,
    pub views: BTreeMap<MemberId, View>,
    /// Each name's current incarnation (bumped by [`Net::restart`]).
    pub incarnations: BTreeMap<MemberId, u64>,
    pub rng: ChaCha20Rng,
    pub epoch: u64,
}

impl Net {
    /// A network of `protocol` over ristretto255 for members `names`.
    pub fn new(protocol: Protocol, names: &[&str], seed: u64) -> Self {
        Self::with(
            Box::new(move |i, d| new_instance(protocol, Ristretto255, i, d)),
            names,
            seed,
        )
    }

    /// A network whose instances `make` builds.
    pub fn with(make: Make, names: &[&str], seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identities: BTreeMap<MemberId, Arc<Identity>> = names
            .iter()
            .map(|n| (id(n), Arc::new(Identity::generate(id(n), &mut rng))))
            .collect();
        let directory = Directory::new(
            identities
                .iter()
                .map(|(k, v)| (k.clone(), v.verifying_key())),
        );
        Self {
            make,
            identities,
            directory,
            insts: BTreeMap::new(),
            queue: VecDeque::new(),
            views: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            rng,
            epoch: 0,
        }
    }

    /// Makes `name`'s instance now if it has none (a process that is up before its first
    /// view, so messages can reach it).
    pub fn spawn(&mut self, name: &str) {
        if !self.insts.contains_key(&id(name)) {
            let inst = (self.make)(self.identities[&id(name)].clone(), self.directory.clone());
            self.insts.insert(id(name), inst);
        }
    }

    /// Replaces `name`'s instance by a fresh one in the next incarnation (a process that
    /// restarted); returns the old instance with everything it knew.
    pub fn restart(&mut self, name: &str) -> Option<Box<dyn KeyAgreement>> {
        let inst = (self.make)(self.identities[&id(name)].clone(), self.directory.clone());
        *self.incarnations.entry(id(name)).or_insert(0) += 1;
        self.insts.insert(id(name), inst)
    }

    pub fn route(&mut self, from: &MemberId, out: Output) {
        let Some(view) = self.views.get(from).cloned() else {
            // A member without a view yet only holds what it gets.
            assert!(out.sends.is_empty(), "{from} sent before its first view");
            return;
        };
        for send in out.sends {
            match send.to {
                Destination::Broadcast => {
                    for m in view.member_ids() {
                        self.queue
                            .push_back((from.clone(), m.clone(), send.bytes.clone()));
                    }
                }
                Destination::Unicast(to) => self.queue.push_back((from.clone(), to, send.bytes)),
            }
        }
    }

    /// Installs `view` at its members (making instances for new names).
    pub fn install(&mut self, view: View) -> Result<(), KeyError> {
        let all: Vec<MemberId> = view.member_ids().cloned().collect();
        self.install_at(&view, &all).map(|_| ())
    }

    /// Installs `view` at `at` only (a view that reaches some members first); returns what
    /// each of them reported as refused on the side.
    pub fn install_at(
        &mut self,
        view: &View,
        at: &[MemberId],
    ) -> Result<Vec<(MemberId, KeyError)>, KeyError> {
        let mut refused = Vec::new();
        for m in view.member_ids().filter(|m| at.contains(m)) {
            if !self.insts.contains_key(m) {
                let inst = (self.make)(self.identities[m].clone(), self.directory.clone());
                self.insts.insert(m.clone(), inst);
            }
            self.views.insert(m.clone(), view.clone());
            let out = self
                .insts
                .get_mut(m)
                .expect("made above")
                .handle_view(view, &mut self.rng)?;
            refused.extend(out.refused.iter().cloned());
            self.route(m, out);
        }
        Ok(refused)
    }

    /// Installs the next view on `names` (oldest first).
    pub fn view(&mut self, names: &[&str]) -> Result<View, KeyError> {
        self.epoch += 1;
        let view = View {
            group: "g".into(),
            epoch: self.epoch,
            members: names
                .iter()
                .map(|n| {
                    let incarnation = self.incarnations.get(&id(n)).copied().unwrap_or(0);
                    Member::new(id(n), incarnation)
                })
                .collect(),
        };
        self.install(view.clone())?;
        Ok(view)
    }

    /// Delivers one message; `None` when nothing is in flight.
    pub fn step(&mut self) -> Option<(MemberId, MemberId, Result<(), KeyError>)> {
        let (from, to, bytes) = self.queue.pop_front()?;
        let Some(inst) = self.insts.get_mut(&to) else {
            return Some((from, to, Ok(())));
        };
        let verdict = match inst.handle_message(&from, &bytes, &mut self.rng) {
            Ok(out) => {
                self.route(&to, out);
                Ok(())
            }
            Err(e) => Err(e),
        };
        Some((from, to, verdict))
    }

    /// Delivers everything; the first refusal is returned.
    pub fn settle(&mut self) -> Result<(), KeyError> {
        for _ in 0..1_000_000 {
            match self.step() {
                None => return Ok(()),
                Some((_, _, Ok(()))) => {}
                Some((_, _, Err(e))) => return Err(e),
            }
        }
        panic!("network did not go quiet");
    }

    /// The key every listed member holds for its current view, or why not.
    pub fn common_key(&self, names: &[&str]) -> Result<GroupKey, String> {
        let first = self.insts[&id(names[0])]
            .current_key()
            .cloned()
            .ok_or_else(|| format!("{} has no key", names[0]))?;
        for n in names {
            let inst = &self.insts[&id(n)];
            if inst.in_progress() {
                return Err(format!("{n} still in progress"));
            }
            if inst.current_key() != Some(&first) {
                return Err(format!("{n} disagrees"));
            }
        }
        if first.epoch != self.views[&id(names[0])].epoch {
            return Err("key of an older epoch".into());
        }
        Ok(first)
    }
}
