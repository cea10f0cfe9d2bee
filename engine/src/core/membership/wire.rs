//! The membership packets: join messages, the commit token and merge-detection presence.
//!
//! They share the ring's 12-byte common header (version, kind, ring id; see
//! [`ring::wire`](crate::core::ring::wire)) so that one decoder tells every daemon packet
//! apart. All integers are little-endian.
//!
//! ```text
//! join      sender u16, incarnation u64, max ring seq u64, 4 config digests u64,
//!           proc count u16, fail count u16, proc u16 x n, fail u16 x n, auth
//! commit    token_seq u64, rotation u8, member count u16, then per member:
//!           daemon u16, incarnation u64, old ring rep u16, old ring seq u64, my_aru u64,
//!           high_seq u64, safe_through u64, delivered_through u64, filled u8; then auth
//! presence  sender u16, incarnation u64, then auth
//! ```
//!
//! The ring id of a join or presence is the sender's current configuration; that of a
//! commit token is the configuration it forms.
//!
//! `auth` is `len u16` and `len` bytes: empty until daemons have signature keys. The field
//! is there so that joins and commit tokens can be signed without a format change; the
//! receiver's check is [`Membership::handle_datagram`](super::Membership::handle_datagram)'s
//! first step (today it only accepts the empty field).

use thiserror::Error;

use crate::core::ring::wire::{COMMON_HEADER, KIND_DATA, KIND_TOKEN, VERSION};
use crate::core::ring::{DaemonIdx, RingId};

/// Kind byte of a join message.
pub const KIND_JOIN: u8 = 3;
/// Kind byte of a commit token.
pub const KIND_COMMIT: u8 = 4;
/// Kind byte of a presence (merge-detection) message.
pub const KIND_PRESENCE: u8 = 5;

/// Bytes of one member's entry in a commit token.
const ENTRY: usize = 2 + 8 + 2 + 8 + 8 + 8 + 8 + 8 + 1;
/// Most daemons a set or a commit token may name (the configuration's daemon limit).
pub const MAX_MEMBERS: usize = 1024;
/// Digests of the configuration keys that must agree across daemons.
pub const DIGESTS: usize = 4;

/// Why a membership packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MembershipError {
    /// Shorter than its fields say.
    #[error("truncated membership packet")]
    Truncated,
    /// Structurally wrong (the reason names the field).
    #[error("malformed membership packet: {0}")]
    Malformed(&'static str),
    /// An authentication field this daemon cannot check (no keys configured).
    #[error("membership packet carries authentication this daemon cannot check")]
    Unauthenticated,
}

/// What kind of daemon packet a datagram is, from its common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Ring traffic (data or token) of the given ring.
    Ring(RingId),
    /// A join message.
    Join,
    /// A commit token.
    Commit,
    /// A presence message.
    Presence,
}

/// Reads the kind (and, for ring traffic, the ring id) of a daemon packet.
pub fn kind_of(b: &[u8]) -> Option<PacketKind> {
    if b.len() < COMMON_HEADER || b[0] != VERSION {
        return None;
    }
    Some(match b[1] {
        KIND_DATA | KIND_TOKEN => PacketKind::Ring(ring_id_at(b)),
        KIND_JOIN => PacketKind::Join,
        KIND_COMMIT => PacketKind::Commit,
        KIND_PRESENCE => PacketKind::Presence,
        _ => return None,
    })
}

fn ring_id_at(b: &[u8]) -> RingId {
    RingId {
        representative: DaemonIdx(u16::from_le_bytes([b[2], b[3]])),
        seq: u64::from_le_bytes(b[4..12].try_into().unwrap_or([0; 8])),
    }
}

fn header(out: &mut Vec<u8>, kind: u8, ring: RingId) {
    out.clear();
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&ring.representative.0.to_le_bytes());
    out.extend_from_slice(&ring.seq.to_le_bytes());
}

/// Reads fields in order, failing on the first that runs past the end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], MembershipError> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or(MembershipError::Truncated)?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, MembershipError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, MembershipError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u64(&mut self) -> Result<u64, MembershipError> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }
    fn set(&mut self, n: usize) -> Result<Vec<DaemonIdx>, MembershipError> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(DaemonIdx(self.u16()?));
        }
        let sorted = v.windows(2).all(|w| w[0] < w[1]);
        if !sorted || v.contains(&DaemonIdx::NONE) {
            return Err(MembershipError::Malformed(
                "daemon set not sorted and distinct",
            ));
        }
        Ok(v)
    }
    /// The trailing authentication field, which must end the packet.
    fn auth(&mut self) -> Result<(), MembershipError> {
        let len = usize::from(self.u16()?);
        self.take(len)?;
        if self.at != self.b.len() {
            return Err(MembershipError::Malformed("bytes after the packet"));
        }
        if len != 0 {
            return Err(MembershipError::Unauthenticated);
        }
        Ok(())
    }
}

fn put_set(out: &mut Vec<u8>, set: &[DaemonIdx]) {
    for d in set {
        out.extend_from_slice(&d.0.to_le_bytes());
    }
}

fn put_auth(out: &mut Vec<u8>) {
    out.extend_from_slice(&0u16.to_le_bytes());
}

/// A join message: the sender's view of who is alive (`proc`) and who failed (`fail`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The sender's current configuration.
    pub ring_id: RingId,
    /// The sender.
    pub sender: DaemonIdx,
    /// The sender's run (raised on every start).
    pub incarnation: u64,
    /// Highest ring sequence number the sender has seen or used.
    pub max_ring_seq: u64,
    /// Digests of the configuration keys that must agree.
    pub digests: [u64; DIGESTS],
    /// Daemons the sender believes alive or wants in the next ring (sorted).
    pub proc: Vec<DaemonIdx>,
    /// Daemons the sender has given up on (sorted).
    pub fail: Vec<DaemonIdx>,
}

impl Join {
    /// Writes the join as one datagram into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        header(out, KIND_JOIN, self.ring_id);
        out.extend_from_slice(&self.sender.0.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.extend_from_slice(&self.max_ring_seq.to_le_bytes());
        for d in self.digests {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let np = u16::try_from(self.proc.len()).unwrap_or(u16::MAX);
        let nf = u16::try_from(self.fail.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&np.to_le_bytes());
        out.extend_from_slice(&nf.to_le_bytes());
        put_set(out, &self.proc);
        put_set(out, &self.fail);
        put_auth(out);
    }

    /// Decodes a join datagram.
    pub fn decode(b: &[u8]) -> Result<Join, MembershipError> {
        if kind_of(b) != Some(PacketKind::Join) {
            return Err(MembershipError::Malformed("not a join"));
        }
        let ring_id = ring_id_at(b);
        let mut r = Reader {
            b,
            at: COMMON_HEADER,
        };
        let sender = DaemonIdx(r.u16()?);
        let incarnation = r.u64()?;
        let max_ring_seq = r.u64()?;
        let mut digests = [0u64; DIGESTS];
        for d in &mut digests {
            *d = r.u64()?;
        }
        let np = usize::from(r.u16()?);
        let nf = usize::from(r.u16()?);
        if np > MAX_MEMBERS || nf > MAX_MEMBERS {
            return Err(MembershipError::Malformed("daemon set too large"));
        }
        let proc = r.set(np)?;
        let fail = r.set(nf)?;
        r.auth()?;
        Ok(Join {
            ring_id,
            sender,
            incarnation,
            max_ring_seq,
            digests,
            proc,
            fail,
        })
    }
}

/// One member's entry in the commit token: its identity and its old ring's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberEntry {
    /// The member.
    pub daemon: DaemonIdx,
    /// Its run.
    pub incarnation: u64,
    /// The configuration it comes from.
    pub old_ring: RingId,
    /// It holds every packet of the old ring up to here.
    pub my_aru: u64,
    /// Highest sequence number it saw in the old ring.
    pub high_seq: u64,
    /// It knows every old member held every packet up to here.
    pub safe_through: u64,
    /// It delivered every packet up to here.
    pub delivered_through: u64,
    /// The member has written its entry.
    pub filled: bool,
}

/// The commit token: forms ring `ring_id` of `members`, collecting their old-ring states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitToken {
    /// The ring it forms.
    pub ring_id: RingId,
    /// Raised on every hop, so old copies are recognised.
    pub token_seq: u64,
    /// 1 while it collects entries, 2 while it hands the complete set to every member.
    pub rotation: u8,
    /// One entry per member, in ring order (sorted by daemon).
    pub members: Vec<MemberEntry>,
}

impl CommitToken {
    /// Writes the token as one datagram into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        header(out, KIND_COMMIT, self.ring_id);
        out.extend_from_slice(&self.token_seq.to_le_bytes());
        out.push(self.rotation);
        let n = u16::try_from(self.members.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        for m in &self.members {
            out.extend_from_slice(&m.daemon.0.to_le_bytes());
            out.extend_from_slice(&m.incarnation.to_le_bytes());
            out.extend_from_slice(&m.old_ring.representative.0.to_le_bytes());
            out.extend_from_slice(&m.old_ring.seq.to_le_bytes());
            out.extend_from_slice(&m.my_aru.to_le_bytes());
            out.extend_from_slice(&m.high_seq.to_le_bytes());
            out.extend_from_slice(&m.safe_through.to_le_bytes());
            out.extend_from_slice(&m.delivered_through.to_le_bytes());
            out.push(u8::from(m.filled));
        }
        put_auth(out);
    }

    /// Decodes a commit token datagram.
    pub fn decode(b: &[u8]) -> Result<CommitToken, MembershipError> {
        if kind_of(b) != Some(PacketKind::Commit) {
            return Err(MembershipError::Malformed("not a commit token"));
        }
        let ring_id = ring_id_at(b);
        let mut r = Reader {
            b,
            at: COMMON_HEADER,
        };
        let token_seq = r.u64()?;
        let rotation = r.u8()?;
        if !(1..=2).contains(&rotation) {
            return Err(MembershipError::Malformed("commit rotation"));
        }
        let n = usize::from(r.u16()?);
        if n == 0 || n > MAX_MEMBERS || b.len() < COMMON_HEADER + 11 + n * ENTRY {
            return Err(MembershipError::Malformed("commit member count"));
        }
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let daemon = DaemonIdx(r.u16()?);
            let incarnation = r.u64()?;
            let old_ring = RingId {
                representative: DaemonIdx(r.u16()?),
                seq: r.u64()?,
            };
            let my_aru = r.u64()?;
            let high_seq = r.u64()?;
            let safe_through = r.u64()?;
            let delivered_through = r.u64()?;
            let filled = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(MembershipError::Malformed("commit entry flag")),
            };
            if filled && (my_aru > high_seq || safe_through > my_aru) {
                return Err(MembershipError::Malformed("commit entry sequence numbers"));
            }
            members.push(MemberEntry {
                daemon,
                incarnation,
                old_ring,
                my_aru,
                high_seq,
                safe_through,
                delivered_through,
                filled,
            });
        }
        let sorted = members.windows(2).all(|w| w[0].daemon < w[1].daemon);
        if !sorted || !members.iter().any(|m| m.daemon == ring_id.representative) {
            return Err(MembershipError::Malformed("commit members"));
        }
        r.auth()?;
        Ok(CommitToken {
            ring_id,
            token_seq,
            rotation,
            members,
        })
    }
}

/// Merge detection: "daemon `sender` (run `incarnation`) is in ring `ring_id`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// The sender's configuration.
    pub ring_id: RingId,
    /// The sender.
    pub sender: DaemonIdx,
    /// Its run.
    pub incarnation: u64,
}

impl Presence {
    /// Writes the message as one datagram into `out` (cleared first).
    pub fn encode(&self, out: &mut Vec<u8>) {
        header(out, KIND_PRESENCE, self.ring_id);
        out.extend_from_slice(&self.sender.0.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        put_auth(out);
    }

    /// Decodes a presence datagram.
    pub fn decode(b: &[u8]) -> Result<Presence, MembershipError> {
        if kind_of(b) != Some(PacketKind::Presence) {
            return Err(MembershipError::Malformed("not a presence message"));
        }
        let ring_id = ring_id_at(b);
        let mut r = Reader {
            b,
            at: COMMON_HEADER,
        };
        let sender = DaemonIdx(r.u16()?);
        let incarnation = r.u64()?;
        r.auth()?;
        Ok(Presence {
            ring_id,
            sender,
            incarnation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: RingId = RingId {
        representative: DaemonIdx(1),
        seq: 9,
    };

    #[test]
    fn round_trips_and_refuses_every_truncation() {
        let join = Join {
            ring_id: RING,
            sender: DaemonIdx(2),
            incarnation: 7,
            max_ring_seq: 12,
            digests: [1, 2, 3, 4],
            proc: vec![DaemonIdx(0), DaemonIdx(2), DaemonIdx(5)],
            fail: vec![DaemonIdx(5)],
        };
        let mut b = Vec::new();
        join.encode(&mut b);
        assert_eq!(Join::decode(&b), Ok(join));
        for cut in 0..b.len() {
            assert!(Join::decode(&b[..cut]).is_err(), "join cut at {cut}");
        }

        let token = CommitToken {
            ring_id: RING,
            token_seq: 3,
            rotation: 2,
            members: vec![
                MemberEntry {
                    daemon: DaemonIdx(1),
                    incarnation: 4,
                    old_ring: RingId {
                        representative: DaemonIdx(0),
                        seq: 8,
                    },
                    my_aru: 10,
                    high_seq: 14,
                    safe_through: 9,
                    delivered_through: 10,
                    filled: true,
                },
                MemberEntry {
                    daemon: DaemonIdx(3),
                    ..MemberEntry::default()
                },
            ],
        };
        token.encode(&mut b);
        assert_eq!(CommitToken::decode(&b), Ok(token));
        for cut in 0..b.len() {
            assert!(
                CommitToken::decode(&b[..cut]).is_err(),
                "commit cut at {cut}"
            );
        }

        let p = Presence {
            ring_id: RING,
            sender: DaemonIdx(4),
            incarnation: 2,
        };
        p.encode(&mut b);
        assert_eq!(Presence::decode(&b), Ok(p));
        for cut in 0..b.len() {
            assert!(
                Presence::decode(&b[..cut]).is_err(),
                "presence cut at {cut}"
            );
        }
    }

    #[test]
    fn refuses_bad_fields() {
        let mut b = Vec::new();
        Join {
            ring_id: RING,
            sender: DaemonIdx(2),
            incarnation: 1,
            max_ring_seq: 1,
            digests: [0; DIGESTS],
            proc: vec![DaemonIdx(3), DaemonIdx(2)],
            fail: vec![],
        }
        .encode(&mut b);
        assert!(matches!(
            Join::decode(&b),
            Err(MembershipError::Malformed(_))
        ));
        Presence {
            ring_id: RING,
            sender: DaemonIdx(0),
            incarnation: 1,
        }
        .encode(&mut b);
        let n = b.len();
        b[n - 2] = 1;
        b.push(0xaa);
        assert_eq!(Presence::decode(&b), Err(MembershipError::Unauthenticated));
    }
}
