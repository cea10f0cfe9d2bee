//! Gather: join messages with proc and fail sets, exchanged until every daemon of
//! `proc − fail` names the same sets; the entry points that start a run (token loss, joins,
//! foreign traffic, presence) live here too.

use std::collections::BTreeSet;

use super::wire::{DIGESTS, Join, Presence};
use super::{
    Commit, CommitToken, DIGEST_NAMES, Dropped, Finish, Gather, MemberEntry, Membership, Note,
    Phase,
};
use crate::core::ring::{DaemonIdx, Dest, RingId};
use crate::core::time::Instant;

impl Membership {
    /// Traffic of a ring this daemon is not running.
    pub(super) fn foreign(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        id: RingId,
    ) -> Result<(), Dropped> {
        let current_id = self.current.config().ring_id;
        let member = self.current.config().members.contains(&from);
        if member && self.installed && id.seq <= current_id.seq {
            return Err(Dropped::Stale);
        }
        match &mut self.phase {
            Phase::Operational => {
                self.stats.foreign_packets += 1;
                self.start_gather(now, &[from], "traffic of a foreign ring");
                Ok(())
            }
            Phase::Gather(g) => {
                if g.proc.contains(&from) || g.fail.contains(&from) {
                    return Err(Dropped::NotNow);
                }
                self.stats.foreign_packets += 1;
                g.proc.insert(from);
                g.consensus.clear();
                g.consensus.insert(self.cfg.me);
                g.commit_deadline = None;
                self.send_join(now);
                Ok(())
            }
            _ => Err(Dropped::NotNow),
        }
    }

    /// Records a daemon's run; `Ok(true)` when it restarted (a higher run than known), an
    /// error for a packet of an older run.
    pub(super) fn check_incarnation(
        &mut self,
        from: DaemonIdx,
        incarnation: u64,
    ) -> Result<bool, Dropped> {
        let Some(known) = self.incarnations.get_mut(usize::from(from.0)) else {
            return Err(Dropped::Sender);
        };
        if incarnation < *known {
            return Err(Dropped::Stale);
        }
        let restarted = *known != 0 && incarnation > *known;
        *known = incarnation;
        Ok(restarted)
    }

    /// A join message: starts or restarts a run where it must, then merges the sender's
    /// sets.
    pub(super) fn on_join(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        join: Join,
    ) -> Result<(), Dropped> {
        if join.sender != from || !join.proc.contains(&from) {
            return Err(Dropped::Sender);
        }
        let restarted = self.check_incarnation(from, join.incarnation)?;
        if let Some(i) = (0..DIGESTS).find(|&i| join.digests[i] != self.cfg.digests[i]) {
            self.stats.config_mismatches += 1;
            if self.stats.config_mismatches.is_power_of_two() {
                self.note(Note::ConfigMismatch {
                    daemon: from,
                    key: DIGEST_NAMES[i],
                });
            }
            return Err(Dropped::ConfigMismatch);
        }
        self.max_ring_seq = self.max_ring_seq.max(join.max_ring_seq);
        let current_id = self.current.config().ring_id;
        let member = self.current.config().members.contains(&from);
        if join.fail.contains(&self.cfg.me) && !matches!(self.phase, Phase::Gather(_)) {
            // Its sender has given up on this daemon for the run it is in; joining that run
            // would only fail the sender in return and re-form this ring, once per join.
            // Merge detection brings the two rings together once the sender's has formed.
            return Err(Dropped::NotNow);
        }
        match &self.phase {
            Phase::Operational => {
                if member && self.installed && join.ring_id.seq < current_id.seq && !restarted {
                    // Sent during the run that formed this ring, and delayed.
                    return Err(Dropped::Stale);
                }
                self.start_gather(now, &[from], "a join message");
            }
            Phase::Commit(Commit { token, .. }) => {
                Self::check_commit_join(token, &join, restarted)?;
                self.start_gather(now, &[from], "a join during commit");
            }
            Phase::Recovery(r) => {
                Self::check_commit_join(&r.token, &join, restarted)?;
                self.start_gather(now, &[from], "a join during recovery");
            }
            Phase::Gather(_) => {
                if restarted {
                    self.start_gather(now, &[from], "a restarted daemon");
                }
            }
        }
        self.gather_join(now, &join);
        Ok(())
    }

    /// A join reaching a daemon in commit or recovery restarts the run only if its sender
    /// is in the forming ring and has seen that ring's commit token (it gave up on it) or
    /// restarted; older joins belong to the gather that formed it.
    pub(super) fn check_commit_join(
        token: &CommitToken,
        join: &Join,
        restarted: bool,
    ) -> Result<(), Dropped> {
        let in_new = token.members.iter().any(|m| m.daemon == join.sender);
        if in_new && (restarted || join.max_ring_seq >= token.ring_id.seq) {
            Ok(())
        } else {
            Err(Dropped::NotNow)
        }
    }

    /// Gather's rule for a join: agree, ignore what adds nothing, or merge the sets and
    /// announce them.
    pub(super) fn gather_join(&mut self, now: Instant, join: &Join) {
        let me = self.cfg.me;
        let Phase::Gather(g) = &mut self.phase else {
            return;
        };
        let from = join.sender;
        if g.fail.contains(&from) {
            return;
        }
        g.heard.insert(from);
        let same = join.proc.iter().copied().eq(g.proc.iter().copied())
            && join.fail.iter().copied().eq(g.fail.iter().copied());
        if same {
            g.consensus.insert(from);
        } else {
            let covered = join.proc.iter().all(|d| g.proc.contains(d))
                && join.fail.iter().all(|d| g.fail.contains(d));
            if !covered {
                if join.fail.contains(&me) {
                    g.fail.insert(from);
                } else {
                    g.proc.extend(join.proc.iter().copied());
                    g.fail.extend(join.fail.iter().copied());
                }
                g.consensus.clear();
                g.consensus.insert(me);
                g.commit_deadline = None;
                self.send_join(now);
            }
        }
        self.check_consensus(now);
    }

    /// A ring announced by its representative: a daemon outside this ring, or a member in a
    /// newer ring, means a merge.
    pub(super) fn on_presence(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        p: Presence,
    ) -> Result<(), Dropped> {
        if p.sender != from {
            return Err(Dropped::Sender);
        }
        let restarted = self.check_incarnation(from, p.incarnation)?;
        let current_id = self.current.config().ring_id;
        if p.ring_id == current_id && !restarted {
            return Ok(());
        }
        let member = self.current.config().members.contains(&from);
        if member && p.ring_id.seq < current_id.seq && !restarted {
            return Err(Dropped::Stale);
        }
        if !matches!(self.phase, Phase::Operational) {
            // A gathering daemon's joins reach the sender, which then gathers too and
            // answers with joins of its own; letting every announcement reset this run
            // as well would keep large rings from ever agreeing.
            return Err(Dropped::NotNow);
        }
        self.foreign(now, from, p.ring_id)
    }

    /// Starts a membership run: the last installed ring stays the old configuration, its
    /// unsent messages wait for the next ring.
    pub(super) fn start_gather(&mut self, now: Instant, extra: &[DaemonIdx], why: &'static str) {
        let me = self.cfg.me;
        if let Phase::Recovery(r) = &self.phase
            && r.finish != Finish::Recovering
        {
            // Recovery is complete and the old configuration is being delivered, which
            // needs no other daemon: the trigger is acted on once the new ring is installed
            // (joins are re-sent, and the token is watched again).
            return;
        }
        let mut proc: BTreeSet<DaemonIdx> = match &self.phase {
            Phase::Gather(g) => g.proc.clone(),
            Phase::Commit(c) => c.basis.clone(),
            Phase::Recovery(r) => r.basis.clone(),
            Phase::Operational => self.current.config().members.iter().copied().collect(),
        };
        if matches!(self.phase, Phase::Operational) {
            for (service, bytes) in self.current.take_pending() {
                self.carry_bytes += bytes.len();
                self.carry.push_back((service, bytes));
            }
        }
        // Unordered messages of a ring that is never installed go with it.
        self.deferred.clear();
        if let Phase::Recovery(r) = &self.phase
            && let Some(n) = &r.new
        {
            self.retired.absorb(n.stats());
        }
        proc.extend(extra.iter().copied());
        proc.insert(me);
        proc.retain(|d| self.cfg.daemons.binary_search(d).is_ok());
        let mut consensus = BTreeSet::new();
        consensus.insert(me);
        self.phase = Phase::Gather(Gather {
            proc,
            fail: BTreeSet::new(),
            consensus,
            heard: BTreeSet::new(),
            rounds: 0,
            next_join: now,
            consensus_deadline: now + self.cfg.consensus_timeout,
            commit_deadline: None,
        });
        self.switch = None;
        self.stats.runs += 1;
        self.note(Note::RunStarted(why));
        self.send_join(now);
        self.check_consensus(now);
    }

    /// Multicasts this daemon's sets to every configured daemon (members of any ring may be
    /// gathering).
    pub(super) fn send_join(&mut self, now: Instant) {
        let Phase::Gather(g) = &mut self.phase else {
            return;
        };
        g.next_join = now + self.cfg.join_timeout;
        let join = Join {
            ring_id: self.current.config().ring_id,
            sender: self.cfg.me,
            incarnation: self.cfg.incarnation,
            max_ring_seq: self.max_ring_seq.max(self.current.config().ring_id.seq),
            digests: self.cfg.digests,
            proc: g.proc.iter().copied().collect(),
            fail: g.fail.iter().copied().collect(),
        };
        let mut b = self.buf_pool.pop().unwrap_or_default();
        join.encode(&mut b);
        self.out.push_back((Dest::Everyone, b));
        self.stats.joins_sent += 1;
    }

    /// Once every daemon of `proc − fail` has sent the same sets, the lowest one sends the
    /// commit token; the others wait for it, bounded.
    pub(super) fn check_consensus(&mut self, now: Instant) {
        let me = self.cfg.me;
        let Phase::Gather(g) = &mut self.phase else {
            return;
        };
        let members: Vec<DaemonIdx> = g.proc.difference(&g.fail).copied().collect();
        if !members.iter().all(|m| g.consensus.contains(m)) {
            return;
        }
        if members.first() != Some(&me) {
            g.commit_deadline
                .get_or_insert(now + self.cfg.ring.token_loss_timeout);
            return;
        }
        let basis = g.proc.clone();
        self.max_ring_seq = self
            .max_ring_seq
            .max(self.current.config().ring_id.seq)
            .saturating_add(1);
        let mut token = CommitToken {
            ring_id: RingId {
                representative: me,
                seq: self.max_ring_seq,
            },
            token_seq: 0,
            rotation: 1,
            members: members
                .iter()
                .map(|&daemon| MemberEntry {
                    daemon,
                    ..MemberEntry::default()
                })
                .collect(),
        };
        token.members[0] = self.my_entry();
        if members.len() == 1 {
            token.rotation = 2;
            self.enter_recovery(now, token, basis);
        } else {
            self.forward_commit(now, token, basis);
        }
    }
}
