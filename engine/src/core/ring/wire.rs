//! The daemon-to-daemon packet format of the ring: data packets and the token.
//!
//! All integers are little-endian. Every packet starts with a 12-byte common header:
//!
//! ```text
//! 0  version u8 (= 1)   1  kind u8 (1 data, 2 token)
//! 2  ring representative u16   4  ring counter u64
//! ```
//!
//! A data packet goes on with `seq u64, origin u16, item count u16` (24 bytes in all)
//! and then `count` items, each `flags u8 (1 first, 2 last), service u8, len u16,
//! total u32` followed by `len` bytes. An item with both flags is a whole message
//! (`total == len`); otherwise it is one fragment of a message of `total` bytes, whose
//! fragments travel in the origin's consecutive packets. Many items pack one datagram.
//!
//! A token goes on with `token_seq u64, seq u64, aru u64, aru_id u16, fcc u32,
//! backlog u32, rtr count u16` (48 bytes) and `count` sequence numbers `u64`.
//!
//! Decoding checks the whole structure, so later stages never meet a malformed packet;
//! whether the ring id is current or the sender a member is for the [`Ring`](super::Ring).

use conclave_control::wire::client::Service;
use thiserror::Error;

use super::config::{DaemonIdx, RingId};

/// The packet format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Kind byte of a data packet.
pub const KIND_DATA: u8 = 1;
/// Kind byte of a token.
pub const KIND_TOKEN: u8 = 2;
/// Bytes of the header every packet starts with.
pub const COMMON_HEADER: usize = 12;
/// Bytes of a data packet's header, common header included.
pub const DATA_HEADER: usize = 24;
/// Offset of a data packet's sequence number.
pub const DATA_SEQ: usize = 12;
/// Offset of a data packet's origin daemon.
pub const DATA_ORIGIN: usize = 20;
/// Offset of a data packet's item count.
pub const DATA_COUNT: usize = 22;
/// Bytes of an item's header inside a data packet.
pub const ITEM_HEADER: usize = 8;
/// Bytes of a token without its retransmission-request list.
pub const TOKEN_HEADER: usize = 48;
/// Smallest `max_datagram` accepted: headers plus room for useful fragments.
pub const MIN_DATAGRAM: usize = 128;
/// Largest `max_datagram` accepted: the payload limit of a UDP datagram over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// Item flag: first fragment of a message.
pub const FLAG_FIRST: u8 = 1;
/// Item flag: last fragment of a message.
pub const FLAG_LAST: u8 = 2;

/// Why a datagram from another daemon was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// Shorter than its headers say.
    #[error("truncated packet")]
    Truncated,
    /// A version this code does not speak.
    #[error("unknown packet version {0}")]
    UnknownVersion(u8),
    /// A kind byte that is neither data nor token.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// An item's service byte names no service.
    #[error("unknown service {0}")]
    UnknownService(u8),
    /// Structurally wrong (the reason names the field).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Belongs to a ring that is not the current one.
    #[error("packet of ring {got:?}, not the current ring")]
    WrongRing {
        /// The ring id the packet carried.
        got: RingId,
    },
    /// Sent by, or naming as origin, a daemon that is not a member of the ring.
    #[error("packet from non-member daemon {0:?}")]
    UnknownSender(DaemonIdx),
    /// A token that did not come from this daemon's predecessor on the ring.
    #[error("token from {0:?}, which is not the predecessor")]
    NotFromPredecessor(DaemonIdx),
    /// A data packet so far beyond what this daemon holds that the flow-control bounds
    /// prove it bogus.
    #[error("data packet seq {0} beyond the flow-control horizon")]
    TooFarAhead(u64),
}

/// One decoded packet, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub enum Packet<'a> {
    /// Ordered application data.
    Data(DataPacket<'a>),
    /// The token.
    Token(TokenView<'a>),
}

/// A data packet: one ring sequence number, several items.
#[derive(Debug, Clone, Copy)]
pub struct DataPacket<'a> {
    /// The ring it belongs to.
    pub ring_id: RingId,
    /// Its place in the total order.
    pub seq: u64,
    /// The daemon that multicast it first.
    pub origin: DaemonIdx,
    /// How many items follow.
    pub count: u16,
    /// The encoded items (already checked).
    pub items: &'a [u8],
}

impl<'a> DataPacket<'a> {
    /// The packet's items in order.
    pub fn items(&self) -> Items<'a> {
        Items { rest: self.items }
    }
}

/// One message or fragment inside a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    /// First fragment (or whole message).
    pub first: bool,
    /// Last fragment (or whole message).
    pub last: bool,
    /// Delivery service of the message.
    pub service: Service,
    /// Length of the whole message.
    pub total: u32,
    /// This item's bytes.
    pub bytes: &'a [u8],
}

/// Iterator over already validated items.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Items<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        let (item, used) = parse_item(self.rest).ok()?;
        self.rest = &self.rest[used..];
        Some(item)
    }
}

/// A decoded token; the retransmission-request list stays in the datagram.
#[derive(Debug, Clone, Copy)]
pub struct TokenView<'a> {
    /// The ring it belongs to.
    pub ring_id: RingId,
    /// Raised on every hop, so duplicates and old copies are recognised.
    pub token_seq: u64,
    /// Highest sequence number assigned so far.
    pub seq: u64,
    /// All-received-up-to as lowered/raised along the ring.
    pub aru: u64,
    /// Who last lowered `aru` ([`DaemonIdx::NONE`] if nobody holds it down).
    pub aru_id: DaemonIdx,
    /// Data packets multicast during the last rotation.
    pub fcc: u32,
    /// Messages waiting to be sent, summed over the daemons, as of the last rotation.
    pub backlog: u32,
    rtr: &'a [u8],
}

impl TokenView<'_> {
    /// Sequence numbers some daemon asks to be retransmitted.
    pub fn rtr(&self) -> impl Iterator<Item = u64> + '_ {
        self.rtr
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    }

    /// How many retransmission requests the token carries.
    pub fn rtr_len(&self) -> usize {
        self.rtr.len() / 8
    }
}

/// The token as a daemon holds and rewrites it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Token {
    /// Raised on every hop.
    pub token_seq: u64,
    /// Highest sequence number assigned so far.
    pub seq: u64,
    /// All-received-up-to.
    pub aru: u64,
    /// Who last lowered `aru`, or `None`.
    pub aru_id: Option<DaemonIdx>,
    /// Data packets multicast during the last rotation.
    pub fcc: u32,
    /// Waiting messages summed over daemons.
    pub backlog: u32,
    /// Retransmission requests.
    pub rtr: Vec<u64>,
}

impl Token {
    /// Copies a decoded token into `self`, reusing the request list's allocation.
    pub fn load(&mut self, view: &TokenView<'_>) {
        self.token_seq = view.token_seq;
        self.seq = view.seq;
        self.aru = view.aru;
        self.aru_id = (view.aru_id != DaemonIdx::NONE).then_some(view.aru_id);
        self.fcc = view.fcc;
        self.backlog = view.backlog;
        self.rtr.clear();
        self.rtr.extend(view.rtr());
    }

    /// Writes the token as one datagram into `out` (cleared first).
    pub fn encode(&self, ring_id: RingId, out: &mut Vec<u8>) {
        out.clear();
        write_common(out, KIND_TOKEN, ring_id);
        out.extend_from_slice(&self.token_seq.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.aru.to_le_bytes());
        out.extend_from_slice(&self.aru_id.unwrap_or(DaemonIdx::NONE).0.to_le_bytes());
        out.extend_from_slice(&self.fcc.to_le_bytes());
        out.extend_from_slice(&self.backlog.to_le_bytes());
        let n = u16::try_from(self.rtr.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        for s in self.rtr.iter().take(usize::from(n)) {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
}

fn write_common(out: &mut Vec<u8>, kind: u8, ring_id: RingId) {
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&ring_id.representative.0.to_le_bytes());
    out.extend_from_slice(&ring_id.seq.to_le_bytes());
}

/// Starts a data packet in `out` (cleared first); add items with [`push_item`].
pub fn begin_data(out: &mut Vec<u8>, ring_id: RingId, seq: u64, origin: DaemonIdx) {
    out.clear();
    write_common(out, KIND_DATA, ring_id);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&origin.0.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
}

/// Appends one item to a packet begun with [`begin_data`]. The caller keeps the packet
/// within its datagram limit and `bytes.len()` within `u16`.
pub fn push_item(
    out: &mut Vec<u8>,
    first: bool,
    last: bool,
    service: Service,
    total: u32,
    bytes: &[u8],
) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    push_item_header(out, first, last, service, total, len);
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// Appends an item's header only; the caller appends exactly `len` bytes next (this lets
/// it copy a message straight out of a ring buffer in pieces).
pub fn push_item_header(
    out: &mut Vec<u8>,
    first: bool,
    last: bool,
    service: Service,
    total: u32,
    len: u16,
) {
    let flags = if first { FLAG_FIRST } else { 0 } | if last { FLAG_LAST } else { 0 };
    out.push(flags);
    out.push(service as u8);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    // Callers only push items after `begin_data`, which wrote the count field.
    let count = u16::from_le_bytes([out[DATA_COUNT], out[DATA_COUNT + 1]]).saturating_add(1);
    out[DATA_COUNT..DATA_COUNT + 2].copy_from_slice(&count.to_le_bytes());
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, PacketError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or(PacketError::Truncated)
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, PacketError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(PacketError::Truncated)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, PacketError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(PacketError::Truncated)
}

/// Parses the item at the start of `b`, returning it and the bytes it used.
pub fn parse_item(b: &[u8]) -> Result<(Item<'_>, usize), PacketError> {
    if b.len() < ITEM_HEADER {
        return Err(PacketError::Truncated);
    }
    let flags = b[0];
    if flags & !(FLAG_FIRST | FLAG_LAST) != 0 {
        return Err(PacketError::Malformed("item flags"));
    }
    let service = Service::from_u8(b[1]).map_err(|_| PacketError::UnknownService(b[1]))?;
    let len = usize::from(u16_at(b, 2)?);
    let total = u32_at(b, 4)?;
    let bytes = b
        .get(ITEM_HEADER..ITEM_HEADER + len)
        .ok_or(PacketError::Truncated)?;
    let first = flags & FLAG_FIRST != 0;
    let last = flags & FLAG_LAST != 0;
    if first && last {
        if total as usize != len {
            return Err(PacketError::Malformed("whole message length"));
        }
    } else if len == 0 || (len as u64) >= u64::from(total) {
        // A fragment carries part of its message, never nothing or all of it.
        return Err(PacketError::Malformed("fragment length"));
    }
    Ok((
        Item {
            first,
            last,
            service,
            total,
            bytes,
        },
        ITEM_HEADER + len,
    ))
}

/// The origin daemon of a stored (already checked) data packet.
pub fn origin_of(packet: &[u8]) -> DaemonIdx {
    DaemonIdx(u16::from_le_bytes([
        packet[DATA_ORIGIN],
        packet[DATA_ORIGIN + 1],
    ]))
}

/// Decodes and checks one datagram.
pub fn decode(b: &[u8]) -> Result<Packet<'_>, PacketError> {
    if b.is_empty() {
        return Err(PacketError::Truncated);
    }
    if b[0] != VERSION {
        return Err(PacketError::UnknownVersion(b[0]));
    }
    if b.len() < COMMON_HEADER {
        return Err(PacketError::Truncated);
    }
    let ring_id = RingId {
        representative: DaemonIdx(u16_at(b, 2)?),
        seq: u64_at(b, 4)?,
    };
    match b[1] {
        KIND_DATA => {
            let seq = u64_at(b, DATA_SEQ)?;
            let origin = DaemonIdx(u16_at(b, DATA_ORIGIN)?);
            let count = u16_at(b, DATA_COUNT)?;
            if seq == 0 {
                return Err(PacketError::Malformed("data seq 0"));
            }
            if count == 0 {
                return Err(PacketError::Malformed("no items"));
            }
            let items = &b[DATA_HEADER..];
            let mut rest = items;
            for _ in 0..count {
                let (_, used) = parse_item(rest)?;
                rest = &rest[used..];
            }
            if !rest.is_empty() {
                return Err(PacketError::Malformed("bytes after the last item"));
            }
            Ok(Packet::Data(DataPacket {
                ring_id,
                seq,
                origin,
                count,
                items,
            }))
        }
        KIND_TOKEN => {
            let token_seq = u64_at(b, 12)?;
            let seq = u64_at(b, 20)?;
            let aru = u64_at(b, 28)?;
            let aru_id = DaemonIdx(u16_at(b, 36)?);
            let fcc = u32_at(b, 38)?;
            let backlog = u32_at(b, 42)?;
            let n = usize::from(u16_at(b, 46)?);
            let rtr = b
                .get(TOKEN_HEADER..TOKEN_HEADER + 8 * n)
                .ok_or(PacketError::Truncated)?;
            if b.len() != TOKEN_HEADER + 8 * n {
                return Err(PacketError::Malformed("bytes after the token"));
            }
            if aru > seq {
                return Err(PacketError::Malformed("token aru above seq"));
            }
            let view = TokenView {
                ring_id,
                token_seq,
                seq,
                aru,
                aru_id,
                fcc,
                backlog,
                rtr,
            };
            if view.rtr().any(|s| s == 0 || s > seq) {
                return Err(PacketError::Malformed("retransmission request beyond seq"));
            }
            Ok(Packet::Token(view))
        }
        other => Err(PacketError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: RingId = RingId {
        representative: DaemonIdx(0),
        seq: 7,
    };

    #[test]
    fn data_round_trip() {
        let mut b = Vec::new();
        begin_data(&mut b, RING, 42, DaemonIdx(3));
        push_item(&mut b, true, true, Service::Agreed, 3, b"abc");
        push_item(&mut b, true, false, Service::Safe, 10, b"01234");
        let Ok(Packet::Data(p)) = decode(&b) else {
            panic!("not data: {:?}", decode(&b));
        };
        assert_eq!(
            (p.ring_id, p.seq, p.origin, p.count),
            (RING, 42, DaemonIdx(3), 2)
        );
        let items: Vec<_> = p.items().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].bytes, b"abc");
        assert_eq!(items[0].service, Service::Agreed);
        assert!(items[1].first && !items[1].last);
        assert_eq!(items[1].total, 10);
    }

    #[test]
    fn token_round_trip() {
        let t = Token {
            token_seq: 9,
            seq: 100,
            aru: 90,
            aru_id: Some(DaemonIdx(2)),
            fcc: 12,
            backlog: 5,
            rtr: vec![91, 95],
        };
        let mut b = Vec::new();
        t.encode(RING, &mut b);
        let Ok(Packet::Token(v)) = decode(&b) else {
            panic!("not a token");
        };
        let mut back = Token::default();
        back.load(&v);
        assert_eq!(back, t);
        assert_eq!(v.ring_id, RING);
    }

    #[test]
    fn rejects_bad_input() {
        let mut b = Vec::new();
        begin_data(&mut b, RING, 1, DaemonIdx(0));
        push_item(&mut b, true, true, Service::Fifo, 4, b"abcd");
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut v = b.clone();
        v[0] = 2;
        assert_eq!(decode(&v).unwrap_err(), PacketError::UnknownVersion(2));
        let mut v = b.clone();
        v[1] = 9;
        assert_eq!(decode(&v).unwrap_err(), PacketError::UnknownKind(9));
        let mut v = b.clone();
        v[DATA_HEADER + 1] = 6;
        assert_eq!(decode(&v).unwrap_err(), PacketError::UnknownService(6));
        let mut v = b.clone();
        v.push(0);
        assert!(matches!(decode(&v), Err(PacketError::Malformed(_))));
        let mut t = Vec::new();
        Token {
            seq: 5,
            aru: 6,
            ..Token::default()
        }
        .encode(RING, &mut t);
        assert!(matches!(decode(&t), Err(PacketError::Malformed(_))));
    }
}
