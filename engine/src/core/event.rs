//! Ordered events: what a client's request becomes once it must be applied identically at
//! every daemon, and their compact binary form (the bytes the ring carries between daemons).
//!
//! Every event is `len: u32 LE` (bytes after the prefix), `tag: u8`, then the tag's body.
//! Strings are `u16 len` + UTF-8. A `Data` event carries its sender, then the client's
//! multicast frame exactly as the client protocol encodes it, so decoding reuses the
//! client codec's checks and the group list is forwarded without re-encoding.

use conclave_control::wire::client::{
    self, ClientFrame, GroupList, LEN_PREFIX, Service, WireError, decode_client, encode,
    split_frame,
};
use thiserror::Error;

/// An event in the total order of the daemons. Client names are private names
/// (`#user#daemon`), unique across the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A client connected (it may now join, send and be addressed by name).
    Connect {
        /// The client's private name.
        client: &'a str,
    },
    /// A client joins a group.
    Join {
        /// The client.
        client: &'a str,
        /// The group.
        group: &'a str,
    },
    /// A client leaves a group.
    Leave {
        /// The client.
        client: &'a str,
        /// The group.
        group: &'a str,
    },
    /// A client is gone (it left, failed, or was disconnected); it leaves all its groups.
    Disconnect {
        /// The client.
        client: &'a str,
    },
    /// A message to one or more groups or private names.
    Data {
        /// The sender's private name.
        sender: &'a str,
        /// The delivery service.
        service: Service,
        /// Application message type.
        msg_type: u16,
        /// Target groups and private names, as the client encoded them.
        groups: GroupList<'a>,
        /// The message body.
        payload: &'a [u8],
    },
    /// A request of the client that its daemon refused before ordering (a bad group
    /// name, a payload over the limit, a malformed frame). It is ordered anyway so that
    /// the Error answering it reaches the client after the effects of the client's earlier
    /// requests, as the protocol promises; it changes nothing.
    Reject {
        /// The client.
        client: &'a str,
        /// The error code sent to the client (`ErrorCode` as `u16`).
        code: u16,
        /// Why, as the client will read it.
        reason: &'a str,
    },
}

/// Why bytes are not an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// The bytes end before the event does.
    #[error("event truncated while reading {0}")]
    Truncated(&'static str),
    /// The tag byte names no event.
    #[error("unknown event tag {0}")]
    UnknownTag(u8),
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The embedded multicast frame is malformed.
    #[error("bad multicast in data event: {0}")]
    Multicast(#[from] WireError),
    /// Bytes left over inside the event.
    #[error("{0} trailing bytes inside the event")]
    TrailingBytes(usize),
}

mod tag {
    pub const CONNECT: u8 = 1;
    pub const JOIN: u8 = 2;
    pub const LEAVE: u8 = 3;
    pub const DISCONNECT: u8 = 4;
    pub const DATA: u8 = 5;
    pub const REJECT: u8 = 6;
}

/// A reason cut to the client protocol's limit at a character boundary, so that its
/// length always fits the `u16` of [`put_str`].
fn clip(reason: &str) -> &str {
    let mut end = reason.len().min(client::MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("names are validated to be short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], EventError> {
    if buf.len() < n {
        return Err(EventError::Truncated(what));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn take_str<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a str, EventError> {
    let len = take(buf, 2, what)?;
    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    std::str::from_utf8(take(buf, len, what)?).map_err(|_| EventError::NotUtf8(what))
}

impl<'a> Event<'a> {
    /// Appends the event's binary form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        match *self {
            Event::Connect { client } => {
                out.push(tag::CONNECT);
                put_str(out, client);
            }
            Event::Join { client, group } => {
                out.push(tag::JOIN);
                put_str(out, client);
                put_str(out, group);
            }
            Event::Leave { client, group } => {
                out.push(tag::LEAVE);
                put_str(out, client);
                put_str(out, group);
            }
            Event::Disconnect { client } => {
                out.push(tag::DISCONNECT);
                put_str(out, client);
            }
            Event::Data {
                sender,
                service,
                msg_type,
                groups,
                payload,
            } => {
                out.push(tag::DATA);
                put_str(out, sender);
                // The request id stays with the sender's daemon (answers are local).
                encode::multicast(out, 0, service, msg_type, groups, payload);
            }
            Event::Reject {
                client,
                code,
                reason,
            } => {
                out.push(tag::REJECT);
                put_str(out, client);
                out.extend_from_slice(&code.to_le_bytes());
                put_str(out, clip(reason));
            }
        }
        let len = u32::try_from(out.len() - at - LEN_PREFIX).expect("event fits in u32");
        out[at..at + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes one event from the front of `buf`; returns it and the bytes it used.
    pub fn decode(buf: &'a [u8]) -> Result<(Event<'a>, usize), EventError> {
        let mut rest = buf;
        let len = take(&mut rest, LEN_PREFIX, "event length")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let mut body = take(&mut rest, len, "event body")?;
        let event = match take(&mut body, 1, "event tag")?[0] {
            tag::CONNECT => Event::Connect {
                client: take_str(&mut body, "client")?,
            },
            tag::JOIN => Event::Join {
                client: take_str(&mut body, "client")?,
                group: take_str(&mut body, "group")?,
            },
            tag::LEAVE => Event::Leave {
                client: take_str(&mut body, "client")?,
                group: take_str(&mut body, "group")?,
            },
            tag::DISCONNECT => Event::Disconnect {
                client: take_str(&mut body, "client")?,
            },
            tag::DATA => {
                let sender = take_str(&mut body, "sender")?;
                let limit = body.len();
                let (frame, used) =
                    split_frame(body, limit)?.ok_or(EventError::Truncated("multicast"))?;
                body = &body[used..];
                match decode_client(frame)? {
                    ClientFrame::Multicast {
                        service,
                        msg_type,
                        groups,
                        payload,
                        ..
                    } => Event::Data {
                        sender,
                        service,
                        msg_type,
                        groups,
                        payload,
                    },
                    _ => return Err(EventError::Multicast(WireError::BadField("event frame", 0))),
                }
            }
            tag::REJECT => {
                let client = take_str(&mut body, "client")?;
                let code = take(&mut body, 2, "error code")?;
                Event::Reject {
                    client,
                    code: u16::from_le_bytes([code[0], code[1]]),
                    reason: take_str(&mut body, "reason")?,
                }
            }
            other => return Err(EventError::UnknownTag(other)),
        };
        if !body.is_empty() {
            return Err(EventError::TrailingBytes(body.len()));
        }
        Ok((event, LEN_PREFIX + len))
    }

    /// The client whose request this event is.
    pub fn origin(&self) -> &'a str {
        match *self {
            Event::Connect { client }
            | Event::Join { client, .. }
            | Event::Leave { client, .. }
            | Event::Disconnect { client }
            | Event::Reject { client, .. } => client,
            Event::Data { sender, .. } => sender,
        }
    }
}

/// Builds a [`GroupList`] from names, through the client codec (tests and tools only: the
/// daemon's hot path forwards the list it decoded).
pub fn group_list_bytes<'s>(names: impl IntoIterator<Item = &'s str>) -> Vec<u8> {
    let mut frame = Vec::new();
    encode::multicast(&mut frame, 0, Service::Reliable, 0, names, &[]);
    frame
}

/// Decodes the group list of a frame built by [`group_list_bytes`].
pub fn group_list_of(frame: &[u8]) -> Result<GroupList<'_>, WireError> {
    let limit = frame.len();
    let (body, _) = split_frame(frame, limit)?.ok_or(WireError::Truncated("frame"))?;
    match client::decode_client(body)? {
        ClientFrame::Multicast { groups, .. } => Ok(groups),
        _ => Err(WireError::BadField("frame", 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips_and_packs() {
        let list = group_list_bytes(["g1", "#b#d"]);
        let groups = group_list_of(&list).unwrap();
        let events = [
            Event::Connect { client: "#a#d" },
            Event::Reject {
                client: "#a#d",
                code: 2,
                reason: "bad group name",
            },
            Event::Join {
                client: "#a#d",
                group: "g1",
            },
            Event::Leave {
                client: "#a#d",
                group: "g1",
            },
            Event::Disconnect { client: "#a#d" },
            Event::Data {
                sender: "#a#d",
                service: Service::Safe,
                msg_type: 513,
                groups,
                payload: b"hello",
            },
        ];
        let mut packed = Vec::new();
        for e in &events {
            e.encode(&mut packed);
        }
        let mut rest = &packed[..];
        for e in &events {
            let (got, used) = Event::decode(rest).unwrap();
            assert_eq!(&got, e);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert_eq!(events[4].origin(), "#a#d");
    }

    #[test]
    fn every_truncation_and_junk_is_an_error() {
        let list = group_list_bytes(["g"]);
        let mut b = Vec::new();
        Event::Data {
            sender: "#a#d",
            service: Service::Agreed,
            msg_type: 1,
            groups: group_list_of(&list).unwrap(),
            payload: b"xyz",
        }
        .encode(&mut b);
        for cut in 0..b.len() {
            assert!(Event::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut junk = Vec::new();
        Event::Connect { client: "#a#d" }.encode(&mut junk);
        junk[LEN_PREFIX] = 99;
        assert_eq!(Event::decode(&junk), Err(EventError::UnknownTag(99)));
        let mut long = Vec::new();
        Event::Connect { client: "#a#d" }.encode(&mut long);
        long[0] += 1;
        long.push(7);
        assert_eq!(Event::decode(&long), Err(EventError::TrailingBytes(1)));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..256)) {
            let mut rest = &bytes[..];
            // Each step consumes at least the length prefix, so this ends.
            while let Ok((_, used)) = Event::decode(rest) {
                rest = &rest[used..];
            }
        }

        #[test]
        fn data_events_round_trip(
            sender in "#[a-z]{1,8}#[a-z]{1,8}",
            targets in proptest::collection::vec("[a-z]{1,32}", 1..5),
            msg_type in 0u16..,
            payload in proptest::collection::vec(0u8..=255, 0..512),
        ) {
            let list = group_list_bytes(targets.iter().map(String::as_str));
            let event = Event::Data {
                sender: &sender,
                service: Service::Causal,
                msg_type,
                groups: group_list_of(&list).unwrap(),
                payload: &payload,
            };
            let mut b = Vec::new();
            event.encode(&mut b);
            let (back, used) = Event::decode(&b).unwrap();
            proptest::prop_assert_eq!(used, b.len());
            proptest::prop_assert_eq!(back, event);
        }
    }
}
