//! Commit: the representative's token goes round twice, collecting every member's
//! old-ring state on the first rotation and handing the complete set to all on the second.

use std::collections::BTreeSet;

use super::wire::{CommitToken, MemberEntry};
use super::{Commit, Dropped, Membership, Phase};
use crate::core::ring::{DaemonIdx, Dest};
use crate::core::time::Instant;

impl Membership {
    /// A commit token: fill this daemon's entry (first rotation), enter recovery (second),
    /// or, at the representative, start the new ring when the second rotation is back.
    pub(super) fn on_commit(
        &mut self,
        now: Instant,
        from: DaemonIdx,
        mut token: CommitToken,
    ) -> Result<(), Dropped> {
        let me = self.cfg.me;
        let Some(my_pos) = token.members.iter().position(|m| m.daemon == me) else {
            return Err(Dropped::NotNow);
        };
        let n = token.members.len();
        let pred = token.members[(my_pos + n - 1) % n].daemon;
        if from != pred {
            return Err(Dropped::Sender);
        }
        if self
            .last_commit
            .is_some_and(|(id, seq)| id == token.ring_id && token.token_seq <= seq)
        {
            return Err(Dropped::Stale);
        }
        let rep = token.ring_id.representative == me;
        let all_filled = token.members.iter().all(|m| m.filled);
        match &mut self.phase {
            Phase::Gather(g) => {
                // The token proves that its representative saw every member agree on these
                // sets; this daemon need only hold the same ones (it may not have counted the
                // representative's own join yet, which is not re-sent once it commits).
                let members: Vec<DaemonIdx> = g.proc.difference(&g.fail).copied().collect();
                let same = token
                    .members
                    .iter()
                    .map(|m| m.daemon)
                    .eq(members.iter().copied());
                if token.rotation != 1 || token.members[my_pos].filled || !same || rep {
                    return Err(Dropped::NotNow);
                }
                let basis = g.proc.clone();
                self.max_ring_seq = self.max_ring_seq.max(token.ring_id.seq);
                token.members[my_pos] = self.my_entry();
                self.forward_commit(now, token, basis);
                Ok(())
            }
            Phase::Commit(c) => {
                if token.ring_id != c.token.ring_id || !all_filled {
                    return Err(Dropped::NotNow);
                }
                if rep && token.rotation == 1 {
                    token.rotation = 2;
                } else if rep || token.rotation != 2 {
                    return Err(Dropped::NotNow);
                }
                let basis = std::mem::take(&mut c.basis);
                self.enter_recovery(now, token, basis);
                Ok(())
            }
            Phase::Recovery(r) => {
                if !rep
                    || r.new.is_some()
                    || token.ring_id != r.token.ring_id
                    || token.rotation != 2
                {
                    return Err(Dropped::NotNow);
                }
                self.last_commit = Some((token.ring_id, token.token_seq));
                r.resend_at = None;
                self.start_new_ring(now);
                Ok(())
            }
            Phase::Operational => Err(Dropped::NotNow),
        }
    }

    /// This daemon's entry: its old ring's state as the ring reports it.
    pub(super) fn my_entry(&self) -> MemberEntry {
        let s = self.current.state();
        MemberEntry {
            daemon: self.cfg.me,
            incarnation: self.cfg.incarnation,
            old_ring: s.ring_id,
            my_aru: s.my_aru,
            high_seq: s.high_seq,
            safe_through: s.safe_through,
            delivered_through: s.delivered_through,
            filled: true,
        }
    }

    /// Fills nothing more: sends `token` on (one hop further) and waits in Commit.
    pub(super) fn forward_commit(
        &mut self,
        now: Instant,
        mut token: CommitToken,
        basis: BTreeSet<DaemonIdx>,
    ) {
        token.token_seq += 1;
        self.last_commit = Some((token.ring_id, token.token_seq));
        self.send_commit(&token);
        let loss = self.cfg.ring.token_loss_timeout;
        self.phase = Phase::Commit(Commit {
            token,
            basis,
            resend_at: now + self.cfg.ring.token_retransmit_timeout,
            deadline: now + loss,
        });
    }

    /// Sends the token to this daemon's successor in the forming ring.
    pub(super) fn send_commit(&mut self, token: &CommitToken) {
        let me = self.cfg.me;
        let n = token.members.len();
        let pos = token
            .members
            .iter()
            .position(|m| m.daemon == me)
            .unwrap_or(0);
        let succ = token.members[(pos + 1) % n].daemon;
        if succ == me {
            return;
        }
        let mut b = self.buf_pool.pop().unwrap_or_default();
        token.encode(&mut b);
        self.out.push_back((Dest::One(succ), b));
        self.stats.commits_sent += 1;
    }
}
