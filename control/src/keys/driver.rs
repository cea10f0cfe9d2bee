//! Drivers that play key-agreement instances against each other without a network:
//! the seeded randomized cascade driver ([`play`]) that tests and benches use to check
//! the protocols under membership churn, and the lock-step harness ([`Lockstep`]) that
//! measures one event round by round.
//!
//! The cascade driver plays the delivery model the group communication layer gives:
//! within a view, messages are reliable and FIFO per (sender, receiver) pair, but the
//! queues of different senders interleave at random; every member of a component gets the
//! same views in the same order; a view can arrive while the previous run's messages are
//! still in flight, and those messages are then delivered late (after the new view), where
//! they must be refused as [`KeyError::StaleEpoch`]. At every quiet point (nothing in
//! flight) it checks that every member of each component holds the same key for the
//! component's last epoch, that this key differs from every key agreed before, and that
//! the members who left cannot produce it, even when their saved state is fed the new
//! run's broadcasts under a view that pretends they are still members. (That check is
//! black-box and mostly exercises message rejection; the white-box checks of
//! `keys::secrecy`, in test builds, try every secret a departed member held against
//! every published value.) Members may also restart: same name, new incarnation, no
//! view in between; the old instance then counts as departed. A member that
//! joins is a fresh instance that receives only the messages of runs from its first view
//! on, and every key it ever holds is checked to be new.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use super::{
    Destination, DhGroup, Directory, Identity, KeyAgreement, KeyError, Member, MemberId, OpCounts,
    Output, Protocol, View, new_instance,
};

/// The group name every driven instance serves.
pub const GROUP: &str = "cascade";

/// A broken property, with enough context to replay it (the seed is the caller's).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    /// A member refused a view the driver built by the rules.
    #[error("step {step}: {member} refused view {epoch}: {error}")]
    ViewRefused {
        /// Event number.
        step: usize,
        /// Member.
        member: MemberId,
        /// View epoch.
        epoch: u64,
        /// What it said.
        error: KeyError,
    },
    /// A current-run message was refused.
    #[error("step {step}: {member} refused a current message from {from}: {error}")]
    MessageRefused {
        /// Event number.
        step: usize,
        /// Receiver.
        member: MemberId,
        /// Sender.
        from: MemberId,
        /// What it said.
        error: KeyError,
    },
    /// A message of an abandoned run was accepted or refused for the wrong reason.
    #[error("step {step}: {member} answered a stale message from {from} with {outcome}")]
    StaleNotRejected {
        /// Event number.
        step: usize,
        /// Receiver.
        member: MemberId,
        /// Sender.
        from: MemberId,
        /// What happened instead of `StaleEpoch`.
        outcome: String,
    },
    /// A member sent to someone outside its view.
    #[error("step {step}: {from} sent to {to}, who is not in its view")]
    BadDestination {
        /// Event number.
        step: usize,
        /// Sender.
        from: MemberId,
        /// Addressee.
        to: MemberId,
    },
    /// Nothing in flight, yet a member has no key for its view.
    #[error("step {step}: {member} has no key for epoch {epoch} at a quiet point")]
    Stalled {
        /// Event number.
        step: usize,
        /// Member.
        member: MemberId,
        /// The component's epoch.
        epoch: u64,
    },
    /// Two members of one component hold different keys.
    #[error("step {step}: members of epoch {epoch} disagree on the key")]
    KeysDiffer {
        /// Event number.
        step: usize,
        /// The component's epoch.
        epoch: u64,
    },
    /// A key equal to an earlier one.
    #[error("step {step}: the key of epoch {epoch} was agreed before")]
    KeyReused {
        /// Event number.
        step: usize,
        /// The component's epoch.
        epoch: u64,
    },
    /// A member who left produced the component's new key.
    #[error("step {step}: departed {member} obtained the key of epoch {epoch}")]
    DepartedLearnedKey {
        /// Event number.
        step: usize,
        /// The departed member.
        member: MemberId,
        /// The component's epoch.
        epoch: u64,
    },
    /// A member reported that it cannot complete its run (`Output::refresh_needed`).
    #[error("step {step}: {member} cannot complete the run of epoch {epoch}")]
    RefreshNeeded {
        /// Event number.
        step: usize,
        /// The member.
        member: MemberId,
        /// The run's epoch.
        epoch: u64,
    },
    /// The run did not settle within the delivery bound.
    #[error("step {step}: no quiet point after {deliveries} deliveries")]
    NoProgress {
        /// Event number.
        step: usize,
        /// Deliveries made.
        deliveries: u64,
    },
}

/// What one [`play`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Membership events played.
    pub events: usize,
    /// Views installed (a partition installs two).
    pub views: usize,
    /// Events that arrived while a run was still in progress.
    pub cascades: usize,
    /// Messages delivered in their run.
    pub delivered: u64,
    /// Late messages of abandoned runs, all refused as stale.
    pub stale_refused: u64,
    /// Component keys checked at quiet points.
    pub keys_checked: usize,
    /// Largest component seen.
    pub largest: usize,
    /// Counts by event kind: join, leave, merge, partition, refresh, churn, form, restart
    /// (a member comes back under its name in a new incarnation, with no view between).
    pub kinds: [usize; 8],
}

/// Shape of a randomized play.
#[derive(Debug, Clone)]
pub struct Config {
    /// Members available (ids `m000`, `m001`, …).
    pub universe: usize,
    /// Membership events to play.
    pub steps: usize,
    /// Chance, in percent, that an event is played while the previous run is in flight.
    pub cascade_percent: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            universe: 10,
            steps: 30,
            cascade_percent: 35,
        }
    }
}

/// Ids and long-term keys of a universe of `n` members, from `rng`.
pub fn universe(n: usize, rng: &mut ChaCha20Rng) -> (Vec<Arc<Identity>>, Directory) {
    let identities: Vec<Arc<Identity>> = (0..n)
        .map(|i| Arc::new(Identity::generate(member_id(i), rng)))
        .collect();
    let directory = Directory::new(
        identities
            .iter()
            .map(|id| (id.id().clone(), id.verifying_key())),
    );
    (identities, directory)
}

/// The id of universe member `i`.
pub fn member_id(i: usize) -> MemberId {
    MemberId::new(format!("m{i:03}"))
}

struct Component {
    members: Vec<MemberId>,
    epoch: u64,
    checked: bool,
    departed: Vec<MemberId>,
    broadcasts: Vec<(MemberId, Vec<u8>)>,
}

struct Message {
    from: MemberId,
    to: MemberId,
    bytes: Vec<u8>,
}

struct Cascade<G: DhGroup> {
    protocol: Protocol,
    dh: G,
    rng: ChaCha20Rng,
    identities: Vec<Arc<Identity>>,
    directory: Directory,
    instances: HashMap<MemberId, Box<dyn KeyAgreement>>,
    /// Each name's current incarnation: bumped whenever a fresh instance takes the name.
    incarnations: HashMap<MemberId, u64>,
    /// Instances of members that left (or restarted), with the incarnation they had.
    departed: HashMap<MemberId, (Box<dyn KeyAgreement>, u64)>,
    components: Vec<Component>,
    queues: BTreeMap<(MemberId, MemberId), VecDeque<Vec<u8>>>,
    late: Vec<Message>,
    epoch: u64,
    seen_keys: HashSet<[u8; 32]>,
    report: Report,
    step: usize,
}

/// Plays `steps` random membership events for `protocol` over `dh` from `seed`, with the
/// default universe and cascade rate, checking the properties at every quiet point.
pub fn play<G: DhGroup>(
    protocol: Protocol,
    dh: G,
    seed: u64,
    steps: usize,
) -> Result<Report, Violation> {
    play_with(
        protocol,
        dh,
        seed,
        &Config {
            steps,
            ..Config::default()
        },
    )
}

/// [`play`] with an explicit [`Config`].
pub fn play_with<G: DhGroup>(
    protocol: Protocol,
    dh: G,
    seed: u64,
    config: &Config,
) -> Result<Report, Violation> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (identities, directory) = universe(config.universe.max(2), &mut rng);
    let mut c = Cascade {
        protocol,
        dh,
        rng,
        identities,
        directory,
        instances: HashMap::new(),
        incarnations: HashMap::new(),
        departed: HashMap::new(),
        components: Vec::new(),
        queues: BTreeMap::new(),
        late: Vec::new(),
        epoch: 0,
        seen_keys: HashSet::new(),
        report: Report::default(),
        step: 0,
    };
    for step in 0..config.steps {
        c.step = step;
        c.event()?;
        c.report.events += 1;
        let cascade = c.rng.gen_range(0..100) < config.cascade_percent && step + 1 < config.steps;
        if cascade && c.in_flight() > 0 {
            // Deliver only part of the run, then let the next event interrupt it.
            let budget = c.rng.gen_range(0..c.in_flight());
            c.deliver(Some(budget as u64))?;
            if c.in_flight() > 0 {
                c.report.cascades += 1;
                continue;
            }
        }
        c.deliver(None)?;
        c.check()?;
    }
    c.deliver(None)?;
    c.check()?;
    Ok(c.report)
}

impl<G: DhGroup> Cascade<G> {
    fn free(&self) -> Vec<usize> {
        (0..self.identities.len())
            .filter(|i| !self.instances.contains_key(&member_id(*i)))
            .collect()
    }

    fn in_flight(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum::<usize>() + self.late.len()
    }

    fn fresh_instance(&mut self, i: usize) -> MemberId {
        let id = member_id(i);
        let instance = new_instance(
            self.protocol,
            self.dh.clone(),
            self.identities[i].clone(),
            self.directory.clone(),
        );
        self.instances.insert(id.clone(), instance);
        self.incarnations
            .entry(id.clone())
            .and_modify(|i| *i += 1)
            .or_insert(0);
        id
    }

    /// A view of `members` in their current incarnations.
    fn view_of(&self, epoch: u64, members: &[MemberId]) -> View {
        View {
            group: GROUP.to_owned(),
            epoch,
            members: members
                .iter()
                .map(|m| Member::new(m.clone(), self.incarnations.get(m).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Picks and plays one event that the current components allow.
    fn event(&mut self) -> Result<(), Violation> {
        let free = self.free();
        if self.components.is_empty() {
            return self.form(&free);
        }
        loop {
            let kind = self.rng.gen_range(0..8usize);
            let ci = self.rng.gen_range(0..self.components.len());
            let size = self.components[ci].members.len();
            match kind {
                0 if !free.is_empty() => {
                    let count = self.rng.gen_range(1..=free.len().min(3));
                    let mut picked = free.clone();
                    picked.shuffle(&mut self.rng);
                    let mut members = self.components[ci].members.clone();
                    for i in picked.into_iter().take(count) {
                        members.push(self.fresh_instance(i));
                    }
                    self.report.kinds[0] += 1;
                    return self.replace(vec![ci], vec![members]);
                }
                1 if size >= 2 => {
                    let count = self.rng.gen_range(1..=(size - 1).min(3));
                    let mut members = self.components[ci].members.clone();
                    let mut leaving = members.clone();
                    leaving.shuffle(&mut self.rng);
                    leaving.truncate(count);
                    members.retain(|m| !leaving.contains(m));
                    self.report.kinds[1] += 1;
                    return self.replace(vec![ci], vec![members]);
                }
                2 if self.components.len() >= 2 => {
                    let mut other = self.rng.gen_range(0..self.components.len() - 1);
                    if other >= ci {
                        other += 1;
                    }
                    let mut members = self.components[ci].members.clone();
                    members.extend(self.components[other].members.iter().cloned());
                    self.report.kinds[2] += 1;
                    return self.replace(vec![ci, other], vec![members]);
                }
                3 if size >= 2 => {
                    let members = self.components[ci].members.clone();
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    for m in members {
                        if self.rng.gen_bool(0.5) {
                            a.push(m);
                        } else {
                            b.push(m);
                        }
                    }
                    if a.is_empty() {
                        a.push(b.pop().expect("size >= 2"));
                    } else if b.is_empty() {
                        b.push(a.pop().expect("size >= 2"));
                    }
                    self.report.kinds[3] += 1;
                    return self.replace(vec![ci], vec![a, b]);
                }
                4 => {
                    let members = self.components[ci].members.clone();
                    self.report.kinds[4] += 1;
                    return self.replace(vec![ci], vec![members]);
                }
                5 if size >= 2 && !free.is_empty() => {
                    let mut members = self.components[ci].members.clone();
                    let out = self.rng.gen_range(0..members.len());
                    members.remove(out);
                    let i = free[self.rng.gen_range(0..free.len())];
                    members.push(self.fresh_instance(i));
                    self.report.kinds[5] += 1;
                    return self.replace(vec![ci], vec![members]);
                }
                6 if free.len() >= 2 => {
                    self.report.kinds[6] += 1;
                    return self.form(&free);
                }
                7 => {
                    // A member's process restarts and is back before any view without
                    // it: same name, new incarnation, newest member. Its old instance
                    // (with every secret it held) is kept as a departed member.
                    let mut members = self.components[ci].members.clone();
                    let at = self.rng.gen_range(0..members.len());
                    let name = members.remove(at);
                    if let Some(old) = self.instances.remove(&name) {
                        let incarnation = self.incarnations.get(&name).copied().unwrap_or(0);
                        self.departed.insert(name.clone(), (old, incarnation));
                    }
                    let index = self
                        .identities
                        .iter()
                        .position(|i| *i.id() == name)
                        .expect("members come from the universe");
                    members.push(self.fresh_instance(index));
                    self.report.kinds[7] += 1;
                    return self.replace_restarted(vec![ci], vec![members], vec![name]);
                }
                _ => {}
            }
        }
    }

    /// A new group of free members, all fresh instances.
    fn form(&mut self, free: &[usize]) -> Result<(), Violation> {
        let mut picked = free.to_vec();
        picked.shuffle(&mut self.rng);
        let count = self.rng.gen_range(1..=picked.len().min(4));
        let members: Vec<MemberId> = picked
            .into_iter()
            .take(count)
            .map(|i| self.fresh_instance(i))
            .collect();
        self.replace(Vec::new(), vec![members])
    }

    /// Ends components `old` and installs a view for each of `new`.
    fn replace(&mut self, old: Vec<usize>, new: Vec<Vec<MemberId>>) -> Result<(), Violation> {
        self.replace_restarted(old, new, Vec::new())
    }

    /// [`Self::replace`] where the members `restarted` are back in a new incarnation (their
    /// previous one counts as departed).
    fn replace_restarted(
        &mut self,
        old: Vec<usize>,
        new: Vec<Vec<MemberId>>,
        restarted: Vec<MemberId>,
    ) -> Result<(), Violation> {
        let mut old = old;
        old.sort_unstable();
        let mut ended = Vec::new();
        for ci in old.into_iter().rev() {
            ended.push(self.components.remove(ci));
        }
        let staying: HashSet<&MemberId> = new.iter().flatten().collect();
        let mut departed = restarted;
        for component in &ended {
            for m in &component.members {
                if !staying.contains(m) {
                    departed.push(m.clone());
                }
            }
        }
        // The abandoned runs' messages: late for members that stay, gone for the others.
        let affected: HashSet<MemberId> = ended
            .iter()
            .flat_map(|c| c.members.iter().cloned())
            .collect();
        let keys: Vec<(MemberId, MemberId)> = self
            .queues
            .keys()
            .filter(|(_, to)| affected.contains(to))
            .cloned()
            .collect();
        for key in keys {
            let queue = self.queues.remove(&key).expect("listed above");
            if staying.contains(&key.1) {
                self.late.extend(queue.into_iter().map(|bytes| Message {
                    from: key.0.clone(),
                    to: key.1.clone(),
                    bytes,
                }));
            }
        }
        self.late.retain(|m| !departed.contains(&m.to));
        for m in &departed {
            // A restarted member's old instance was set aside already; the name's live
            // instance is its new incarnation.
            if staying.contains(m) {
                continue;
            }
            if let Some(instance) = self.instances.remove(m) {
                let incarnation = self.incarnations.get(m).copied().unwrap_or(0);
                self.departed.insert(m.clone(), (instance, incarnation));
            }
        }
        for members in new {
            self.epoch += 1;
            let view = self.view_of(self.epoch, &members);
            self.report.views += 1;
            self.report.largest = self.report.largest.max(members.len());
            let mut component = Component {
                members: members.clone(),
                epoch: self.epoch,
                checked: false,
                departed: departed.clone(),
                broadcasts: Vec::new(),
            };
            let mut order = members.clone();
            order.shuffle(&mut self.rng);
            let mut outputs = Vec::new();
            for m in order {
                let instance = self.instances.get_mut(&m).expect("members have instances");
                let out = instance
                    .handle_view(&view, &mut self.rng)
                    .map_err(|error| Violation::ViewRefused {
                        step: self.step,
                        member: m.clone(),
                        epoch: view.epoch,
                        error,
                    })?;
                outputs.push((m, out));
            }
            for (m, out) in outputs {
                self.enqueue(&mut component, &m, out)?;
            }
            self.components.push(component);
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        component: &mut Component,
        from: &MemberId,
        out: Output,
    ) -> Result<(), Violation> {
        // In an honest schedule nothing is refused on the side and no run gets stuck.
        if let Some((about, error)) = out.refused.into_iter().next() {
            return Err(Violation::MessageRefused {
                step: self.step,
                member: from.clone(),
                from: about,
                error,
            });
        }
        if let Some(signal) = out.refresh_needed {
            return Err(Violation::RefreshNeeded {
                step: self.step,
                member: from.clone(),
                epoch: signal.epoch,
            });
        }
        for send in out.sends {
            match send.to {
                Destination::Broadcast => {
                    component
                        .broadcasts
                        .push((from.clone(), send.bytes.clone()));
                    for to in &component.members {
                        self.queues
                            .entry((from.clone(), to.clone()))
                            .or_default()
                            .push_back(send.bytes.clone());
                    }
                }
                Destination::Unicast(to) => {
                    if !component.members.contains(&to) {
                        return Err(Violation::BadDestination {
                            step: self.step,
                            from: from.clone(),
                            to,
                        });
                    }
                    self.queues
                        .entry((from.clone(), to))
                        .or_default()
                        .push_back(send.bytes);
                }
            }
        }
        Ok(())
    }

    /// Delivers up to `budget` messages (all of them when `None`), picking at random among
    /// the non-empty per-pair queues and the late pool.
    fn deliver(&mut self, budget: Option<u64>) -> Result<(), Violation> {
        const BOUND: u64 = 2_000_000;
        let mut done = 0u64;
        while self.in_flight() > 0 && budget.is_none_or(|b| done < b) {
            if done >= BOUND {
                return Err(Violation::NoProgress {
                    step: self.step,
                    deliveries: done,
                });
            }
            done += 1;
            let queued: usize = self.queues.len();
            let pick = self.rng.gen_range(0..queued + self.late.len());
            if pick >= queued {
                let m = self.late.swap_remove(pick - queued);
                self.deliver_late(m)?;
                continue;
            }
            let key = self
                .queues
                .keys()
                .nth(pick)
                .cloned()
                .expect("index within the map");
            let queue = self.queues.get_mut(&key).expect("key listed");
            let bytes = queue.pop_front().expect("queues in the map are non-empty");
            if queue.is_empty() {
                self.queues.remove(&key);
            }
            self.deliver_current(Message {
                from: key.0,
                to: key.1,
                bytes,
            })?;
        }
        Ok(())
    }

    fn deliver_late(&mut self, m: Message) -> Result<(), Violation> {
        let Some(instance) = self.instances.get_mut(&m.to) else {
            return Ok(());
        };
        match instance.handle_message(&m.from, &m.bytes, &mut self.rng) {
            Err(KeyError::StaleEpoch { .. }) => {
                self.report.stale_refused += 1;
                Ok(())
            }
            // A member's own broadcast is ignored before any check, whatever its epoch.
            Ok(out) if m.from == m.to && out.sends.is_empty() && out.key.is_none() => Ok(()),
            other => Err(Violation::StaleNotRejected {
                step: self.step,
                member: m.to,
                from: m.from,
                outcome: format!("{other:?}"),
            }),
        }
    }

    fn deliver_current(&mut self, m: Message) -> Result<(), Violation> {
        let instance = self
            .instances
            .get_mut(&m.to)
            .expect("queues of departed members are dropped");
        let out = instance
            .handle_message(&m.from, &m.bytes, &mut self.rng)
            .map_err(|error| Violation::MessageRefused {
                step: self.step,
                member: m.to.clone(),
                from: m.from.clone(),
                error,
            })?;
        self.report.delivered += 1;
        let ci = self
            .components
            .iter()
            .position(|c| c.members.contains(&m.to))
            .expect("a live member is in a component");
        let mut component = self.components.remove(ci);
        let result = self.enqueue(&mut component, &m.to, out);
        self.components.insert(ci, component);
        result
    }

    /// The quiet-point checks, for every component whose key was not checked yet.
    fn check(&mut self) -> Result<(), Violation> {
        for ci in 0..self.components.len() {
            if self.components[ci].checked {
                continue;
            }
            let epoch = self.components[ci].epoch;
            let mut key: Option<[u8; 32]> = None;
            for m in &self.components[ci].members {
                let instance = &self.instances[m];
                let held = instance
                    .current_key()
                    .filter(|k| k.epoch == epoch && !instance.in_progress())
                    .ok_or_else(|| Violation::Stalled {
                        step: self.step,
                        member: m.clone(),
                        epoch,
                    })?;
                match key {
                    None => key = Some(held.secret),
                    Some(k) if k != held.secret => {
                        return Err(Violation::KeysDiffer {
                            step: self.step,
                            epoch,
                        });
                    }
                    Some(_) => {}
                }
            }
            let key = key.expect("components are never empty");
            if !self.seen_keys.insert(key) {
                return Err(Violation::KeyReused {
                    step: self.step,
                    epoch,
                });
            }
            let departed = std::mem::take(&mut self.components[ci].departed);
            let broadcasts = std::mem::take(&mut self.components[ci].broadcasts);
            let members = self.components[ci].members.clone();
            for d in departed {
                // The departed member pretends it is still in the group: it takes a view of
                // the new epoch with itself added, so the new run's broadcasts pass the
                // run checks and reach its protocol state (its saved secrets). Whatever it
                // computes from them must not be the new key. A restarted member's old
                // instance pretends to be its name's old life: its entry is replaced.
                let mut view = self.view_of(epoch, &members);
                let Some((instance, incarnation)) = self.departed.get_mut(&d) else {
                    continue;
                };
                view.members.retain(|m| m.id != d);
                view.members.push(Member::new(d.clone(), *incarnation));
                let mut learned = instance.current_key().is_some_and(|k| k.secret == key);
                if let Ok(out) = instance.handle_view(&view, &mut self.rng) {
                    learned |= out.key.is_some_and(|k| k.secret == key);
                }
                for (from, bytes) in &broadcasts {
                    if let Ok(out) = instance.handle_message(from, bytes, &mut self.rng) {
                        learned |= out.key.is_some_and(|k| k.secret == key);
                    }
                }
                learned |= instance.current_key().is_some_and(|k| k.secret == key);
                if learned {
                    return Err(Violation::DepartedLearnedKey {
                        step: self.step,
                        member: d,
                        epoch,
                    });
                }
            }
            self.components[ci].checked = true;
            self.report.keys_checked += 1;
        }
        Ok(())
    }
}

/// What one event cost, measured by [`Lockstep::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCost {
    /// Communication rounds (a round: every member handles what the previous one sent).
    pub rounds: usize,
    /// Critical path: the sum over rounds of the slowest member's time in that round.
    pub serial: Duration,
    /// CPU time of all members together.
    pub total: Duration,
    /// Exponentiations on the critical path (sum over rounds of the round's maximum).
    pub serial_exponentiations: u64,
    /// All operations of all members.
    pub total_ops: OpCounts,
    /// Each member's operations for this event, in view order.
    pub per_member: Vec<(MemberId, OpCounts)>,
    /// Messages sent (a broadcast counts once).
    pub messages: usize,
    /// The slowest member's time in each round (their sum is `serial`).
    pub round_serial: Vec<Duration>,
}

/// Plays events one at a time, round by round, timing each member's work: the harness of
/// the cost checks and the benchmarks. Each event must complete (every member ends with
/// the same key), there are no cascades.
pub struct Lockstep {
    identities: Vec<Arc<Identity>>,
    directory: Directory,
    factory: Box<dyn Fn(Arc<Identity>, Directory) -> Box<dyn KeyAgreement>>,
    instances: Vec<Box<dyn KeyAgreement>>,
    epoch: u64,
    rng: ChaCha20Rng,
}

fn sub(a: OpCounts, b: OpCounts) -> OpCounts {
    OpCounts {
        exponentiations: a.exponentiations - b.exponentiations,
        signatures: a.signatures - b.signatures,
        verifications: a.verifications - b.verifications,
    }
}

fn add(a: &mut OpCounts, b: OpCounts) {
    a.exponentiations += b.exponentiations;
    a.signatures += b.signatures;
    a.verifications += b.verifications;
}

impl Lockstep {
    /// A harness for `protocol` over `dh` with a universe of `universe` possible members.
    pub fn new<G: DhGroup>(protocol: Protocol, dh: G, universe_size: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (identities, directory) = universe(universe_size, &mut rng);
        Self {
            identities,
            directory,
            factory: Box::new(move |identity, directory| {
                new_instance(protocol, dh.clone(), identity, directory)
            }),
            instances: Vec::new(),
            epoch: 0,
            rng,
        }
    }

    /// The current members, in view order.
    pub fn members(&self) -> Vec<MemberId> {
        self.instances.iter().map(|i| i.me().clone()).collect()
    }

    /// The key every member holds now.
    pub fn key(&self) -> Option<[u8; 32]> {
        self.instances
            .first()
            .and_then(|i| i.current_key())
            .map(|k| k.secret)
    }

    /// Installs a view of universe members `members` (indices, oldest first) and plays
    /// the run to completion. Members new to the group get fresh instances; members not
    /// named leave. `clock` reads a monotonic clock (the harness itself keeps none).
    pub fn apply(
        &mut self,
        members: &[usize],
        clock: &mut dyn FnMut() -> Duration,
    ) -> Result<EventCost, Violation> {
        let ids: Vec<MemberId> = members.iter().map(|i| member_id(*i)).collect();
        let mut old: HashMap<MemberId, Box<dyn KeyAgreement>> = self
            .instances
            .drain(..)
            .map(|i| (i.me().clone(), i))
            .collect();
        for (idx, id) in members.iter().zip(&ids) {
            let instance = old.remove(id).unwrap_or_else(|| {
                (self.factory)(self.identities[*idx].clone(), self.directory.clone())
            });
            self.instances.push(instance);
        }
        self.epoch += 1;
        let view = View::new(GROUP, self.epoch, ids.iter().cloned());
        let before: Vec<OpCounts> = self.instances.iter().map(|i| i.op_counts()).collect();
        let mut cost = EventCost::default();
        let mut inbox: Vec<Vec<(MemberId, Vec<u8>)>> = vec![Vec::new(); ids.len()];
        let mut round_times = vec![Duration::ZERO; ids.len()];
        let mut round_exps = vec![0u64; ids.len()];
        let mut outputs: Vec<(usize, Output)> = Vec::new();
        for (k, instance) in self.instances.iter_mut().enumerate() {
            let exps = instance.op_counts().exponentiations;
            let t0 = clock();
            let out = instance
                .handle_view(&view, &mut self.rng)
                .map_err(|error| Violation::ViewRefused {
                    step: 0,
                    member: ids[k].clone(),
                    epoch: view.epoch,
                    error,
                })?;
            round_times[k] += clock() - t0;
            round_exps[k] += instance.op_counts().exponentiations - exps;
            outputs.push((k, out));
        }
        const MAX_ROUNDS: usize = 10_000;
        loop {
            cost.rounds += 1;
            let slowest = round_times.iter().max().copied().unwrap_or_default();
            cost.serial += slowest;
            cost.round_serial.push(slowest);
            cost.total += round_times.iter().sum::<Duration>();
            cost.serial_exponentiations += round_exps.iter().max().copied().unwrap_or_default();
            for (k, out) in outputs.drain(..) {
                for send in out.sends {
                    cost.messages += 1;
                    match send.to {
                        Destination::Broadcast => {
                            for (j, inbox) in inbox.iter_mut().enumerate() {
                                if j != k {
                                    inbox.push((ids[k].clone(), send.bytes.clone()));
                                }
                            }
                        }
                        Destination::Unicast(to) => {
                            let j = ids.iter().position(|m| *m == to).ok_or_else(|| {
                                Violation::BadDestination {
                                    step: 0,
                                    from: ids[k].clone(),
                                    to: to.clone(),
                                }
                            })?;
                            inbox[j].push((ids[k].clone(), send.bytes));
                        }
                    }
                }
            }
            if inbox.iter().all(Vec::is_empty) || cost.rounds >= MAX_ROUNDS {
                break;
            }
            round_times.iter_mut().for_each(|t| *t = Duration::ZERO);
            round_exps.iter_mut().for_each(|e| *e = 0);
            for (k, instance) in self.instances.iter_mut().enumerate() {
                for (from, bytes) in std::mem::take(&mut inbox[k]) {
                    let exps = instance.op_counts().exponentiations;
                    let t0 = clock();
                    let out = instance
                        .handle_message(&from, &bytes, &mut self.rng)
                        .map_err(|error| Violation::MessageRefused {
                            step: cost.rounds,
                            member: ids[k].clone(),
                            from: from.clone(),
                            error,
                        })?;
                    round_times[k] += clock() - t0;
                    round_exps[k] += instance.op_counts().exponentiations - exps;
                    outputs.push((k, out));
                }
            }
        }
        let mut key = None;
        for (k, instance) in self.instances.iter().enumerate() {
            let held = instance
                .current_key()
                .filter(|key| key.epoch == view.epoch && !instance.in_progress())
                .ok_or_else(|| Violation::Stalled {
                    step: 0,
                    member: ids[k].clone(),
                    epoch: view.epoch,
                })?;
            if key.is_some_and(|k| k != held.secret) {
                return Err(Violation::KeysDiffer {
                    step: 0,
                    epoch: view.epoch,
                });
            }
            key = Some(held.secret);
            let spent = sub(instance.op_counts(), before[k]);
            add(&mut cost.total_ops, spent);
            cost.per_member.push((ids[k].clone(), spent));
        }
        Ok(cost)
    }
}
