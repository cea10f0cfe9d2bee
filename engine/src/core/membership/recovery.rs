//! Recovery: old-ring packets re-sent through the new ring's order until daemons that
//! move together hold the same ones, then the markers that end it.

use std::collections::BTreeSet;

use conclave_control::wire::client::Service;

use super::wire::{CommitToken, MemberEntry};
use super::{Finish, Membership, Phase, Recovery, TAG_MARKER, TAG_PACKET, ring_config};
use crate::core::ring::{DaemonIdx, Ring, RingId, SubmitError};
use crate::core::time::Instant;

impl Membership {
    /// The complete token is here: compute what to re-send and start (or await) the ring.
    pub(super) fn enter_recovery(
        &mut self,
        now: Instant,
        mut token: CommitToken,
        basis: BTreeSet<DaemonIdx>,
    ) {
        let me = self.cfg.me;
        let old = self.current.config().ring_id;
        let group: Vec<MemberEntry> = token
            .members
            .iter()
            .filter(|m| m.old_ring == old && m.filled)
            .copied()
            .collect();
        let low = group.iter().map(|m| m.my_aru).min().unwrap_or(0);
        let high = group.iter().map(|m| m.high_seq).max().unwrap_or(0);
        let safe = group.iter().map(|m| m.safe_through).max().unwrap_or(0);
        let trans: Vec<DaemonIdx> = group.iter().map(|m| m.daemon).collect();
        debug_assert!(trans.contains(&me), "a member always moves with itself");
        let last = high.min(self.current.high_seq());
        token.token_seq += 1;
        self.last_commit = Some((token.ring_id, token.token_seq));
        let rep = token.ring_id.representative == me;
        let single = token.members.len() == 1;
        if !single {
            self.send_commit(&token);
        }
        let retransmit = self.cfg.ring.token_retransmit_timeout;
        self.phase = Phase::Recovery(Box::new(Recovery {
            token,
            basis,
            new: None,
            trans,
            group,
            safe,
            cursor: low + 1,
            last,
            marker_sent: false,
            markers: BTreeSet::new(),
            finish: Finish::Recovering,
            resend_at: (!single).then(|| now + retransmit),
            deadline: now + self.cfg.ring.token_loss_timeout,
        }));
        if !rep || single {
            self.start_new_ring(now);
        }
    }

    /// Creates this daemon's part of the new ring and starts re-sending.
    pub(super) fn start_new_ring(&mut self, now: Instant) {
        let me = self.cfg.me;
        let Phase::Recovery(r) = &mut self.phase else {
            return;
        };
        let members: Vec<DaemonIdx> = r.token.members.iter().map(|m| m.daemon).collect();
        let rc = ring_config(&self.cfg.ring, me, members, r.token.ring_id);
        match Ring::new(rc, now) {
            Ok(ring) => r.new = Some(ring),
            Err(e) => {
                // The template was validated at start; members come from a checked token.
                debug_assert!(false, "new ring refused: {e}");
                self.start_gather(now, &[], "a ring that could not start");
                return;
            }
        }
        self.pump_recovery();
    }

    /// Submits this daemon's share of old-ring packets, then its marker, as far as the new
    /// ring's send queue allows; then takes what the new ring delivered.
    pub(super) fn pump_recovery(&mut self) {
        let me = self.cfg.me;
        let Phase::Recovery(r) = &mut self.phase else {
            return;
        };
        let Some(new) = r.new.as_mut() else {
            return;
        };
        while r.cursor <= r.last {
            let seq = r.cursor;
            // The lowest member surely holding it re-sends it; if none surely does, every
            // member that holds it does (duplicates are dropped on arrival).
            let sure = r.group.iter().find(|m| m.my_aru >= seq).map(|m| m.daemon);
            let mine = sure.is_none_or(|d| d == me);
            if mine && let Some(p) = self.current.held_packet(seq) {
                let submitted = new.submit_with(Service::Agreed, |b| {
                    b.push(TAG_PACKET);
                    b.extend_from_slice(p);
                });
                match submitted {
                    Ok(()) => self.stats.recovery_sent += 1,
                    // The queue drains as the ring orders it (a ring of one, in the drain
                    // below): continue from here next time.
                    Err(SubmitError::Backpressure) => break,
                    Err(SubmitError::TooLarge { .. }) => {
                        debug_assert!(false, "an old packet always fits a message");
                    }
                }
            }
            r.cursor += 1;
        }
        if !r.marker_sent && r.cursor > r.last {
            let marker = [TAG_MARKER, me.0.to_le_bytes()[0], me.0.to_le_bytes()[1]];
            if new.submit(Service::Agreed, &marker).is_ok() {
                r.marker_sent = true;
            }
        }
        self.drain_recovery();
    }

    /// Takes the new ring's deliveries while recovery lasts: old packets and markers.
    pub(super) fn drain_recovery(&mut self) {
        let Phase::Recovery(r) = &mut self.phase else {
            return;
        };
        if r.finish != Finish::Recovering {
            return;
        }
        let Some(new) = r.new.as_mut() else {
            return;
        };
        while let Some(d) = new.poll_delivery() {
            if matches!(d.service, Service::Reliable | Service::Unreliable) {
                // A message some member sent once it had installed the new ring, delivered
                // on receipt: it belongs to the new configuration.
                self.deferred
                    .push_back((d.seq, d.origin, d.service, d.payload.to_vec()));
                continue;
            }
            match d.payload.split_first() {
                Some((&TAG_PACKET, packet)) => {
                    // Packets of other old rings (members that do not move with us) are
                    // refused as another ring's; only ours fill holes.
                    if self.current.accept_recovered(packet).is_ok() {
                        self.stats.recovered += 1;
                    }
                }
                Some((&TAG_MARKER, idx)) if idx.len() == 2 => {
                    r.markers
                        .insert(DaemonIdx(u16::from_le_bytes([idx[0], idx[1]])));
                    if r.markers.len() == r.token.members.len() {
                        r.finish = Finish::Regular;
                        self.current.raise_safe_through(r.safe);
                        return;
                    }
                }
                _ => {
                    debug_assert!(false, "unknown recovery message");
                }
            }
        }
    }
}

/// The old ring of a recovery group (every entry names the same one).
pub(super) fn old_ring_of(group: &[MemberEntry]) -> RingId {
    group.first().map(|m| m.old_ring).unwrap_or(RingId {
        representative: DaemonIdx::NONE,
        seq: 0,
    })
}
