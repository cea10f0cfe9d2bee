//! Ordered events: what a client's request becomes once it must be applied identically at
//! every daemon, and their compact binary form (the bytes the ring carries between daemons).
//!
//! Every event is `len: u32 LE` (bytes after the prefix), `tag: u8`, then the tag's body.
//! Strings are `u16 len` + UTF-8. A `Data` event carries its sender, then the client's
//! multicast frame exactly as the client protocol encodes it, so decoding reuses the
//! client codec's checks and the group list is forwarded without re-encoding. A `State`
//! event is `daemon: str`, `count: u32 LE`, then per client `name: str`,
//! `groups: u32 LE count` and that many `str`.

use conclave_control::wire::client::{
    self, ClientFrame, GroupList, LEN_PREFIX, Service, ViewId, WireError, decode_client, encode,
    split_frame,
};
use conclave_control::wire::names::{self, NameError};
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
    /// One daemon's part of the state exchange after a daemon configuration change that
    /// merged configurations or brought back a restarted daemon: its clients, each with
    /// its groups in join order (see `GroupTable::merge`). Not a client's request.
    State {
        /// The daemon whose clients these are.
        daemon: &'a str,
        /// Its clients (every one's private name ends in `daemon`), validated on decode.
        clients: ClientStates<'a>,
    },
    /// A member of a Virtual Synchrony group answered the flush of view `view` of
    /// `group`: what it sent to the group in that view is ordered before this. Ordered so
    /// every daemon counts the answers at the same point.
    FlushOk {
        /// The member.
        client: &'a str,
        /// The group.
        group: &'a str,
        /// The view the answer is for (a stale one is ignored).
        view: ViewId,
    },
}

/// The clients of a `State` event, as encoded: checked once when the event is decoded,
/// then read without copying. Only [`Event::decode`] makes one, so its names are always
/// well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStates<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> ClientStates<'a> {
    /// Number of clients.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the daemon has no clients.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The clients in encoded order, each with its groups.
    pub fn iter(&self) -> ClientStateIter<'a> {
        ClientStateIter {
            rest: self.raw,
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for ClientStates<'a> {
    type Item = (&'a str, StateGroups<'a>);
    type IntoIter = ClientStateIter<'a>;
    fn into_iter(self) -> ClientStateIter<'a> {
        self.iter()
    }
}

/// Iterator over [`ClientStates`]: (private name, groups in join order).
#[derive(Debug, Clone)]
pub struct ClientStateIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for ClientStateIter<'a> {
    type Item = (&'a str, StateGroups<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        // Decoding checked these bytes, so this cannot fail; ending early is the safe answer
        // if it ever did.
        take_client(&mut self.rest).ok()
    }
}

/// One client's groups in a `State` event, in join order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateGroups<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> StateGroups<'a> {
    /// Number of groups.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the client is in no group.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The group names in join order.
    pub fn iter(&self) -> StateGroupIter<'a> {
        StateGroupIter {
            rest: self.raw,
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for StateGroups<'a> {
    type Item = &'a str;
    type IntoIter = StateGroupIter<'a>;
    fn into_iter(self) -> StateGroupIter<'a> {
        self.iter()
    }
}

/// Iterator over [`StateGroups`].
#[derive(Debug, Clone)]
pub struct StateGroupIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for StateGroupIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        self.left = self.left.checked_sub(1)?;
        take_str(&mut self.rest, "group").ok()
    }
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
    /// A name in a `State` event breaks the naming rules.
    #[error("bad {0} name in state event: {1}")]
    BadName(&'static str, NameError),
    /// Client number `.0` (from 0) of a `State` event is not a private name of its daemon.
    #[error("client {0} of the state event is not a private name of its daemon")]
    ForeignClient(u32),
}

mod tag {
    pub const CONNECT: u8 = 1;
    pub const JOIN: u8 = 2;
    pub const LEAVE: u8 = 3;
    pub const DISCONNECT: u8 = 4;
    pub const DATA: u8 = 5;
    pub const STATE: u8 = 6;
    pub const REJECT: u8 = 7;
    pub const FLUSH_OK: u8 = 8;
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

fn take_u64(buf: &mut &[u8], what: &'static str) -> Result<u64, EventError> {
    let b = take(buf, 8, what)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_le_bytes(a))
}

fn take_u32(buf: &mut &[u8], what: &'static str) -> Result<u32, EventError> {
    let b = take(buf, 4, what)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads one client of a `State` event (name and groups), checking the layout only. Every
/// claimed name takes at least its 2-byte length, so a forged count fails as truncated
/// after at most a pass over the bytes, and nothing is allocated.
fn take_client<'a>(buf: &mut &'a [u8]) -> Result<(&'a str, StateGroups<'a>), EventError> {
    let name = take_str(buf, "client")?;
    let count = take_u32(buf, "group count")?;
    let start = *buf;
    for _ in 0..count {
        take_str(buf, "group")?;
    }
    let used = start.len() - buf.len();
    Ok((
        name,
        StateGroups {
            count,
            raw: &start[..used],
        },
    ))
}

/// Reads the body of a `State` event after its tag, checking every name: the daemon's, each
/// client's (a private name of that daemon) and each group's.
fn take_state<'a>(body: &mut &'a [u8]) -> Result<Event<'a>, EventError> {
    let daemon = take_str(body, "daemon")?;
    names::check_daemon(daemon).map_err(|e| EventError::BadName("daemon", e))?;
    let count = take_u32(body, "client count")?;
    let start = *body;
    for i in 0..count {
        let (name, groups) = take_client(body)?;
        if names::daemon_of(name) != Some(daemon) {
            return Err(EventError::ForeignClient(i));
        }
        for group in groups {
            names::check_group(group).map_err(|e| EventError::BadName("group", e))?;
        }
    }
    let used = start.len() - body.len();
    Ok(Event::State {
        daemon,
        clients: ClientStates {
            count,
            raw: &start[..used],
        },
    })
}

/// Appends a `State` event for `daemon` listing `clients`, each with its groups in join
/// order (what `GroupTable::state_of` sends). The caller gives names that pass the naming
/// rules, client names of `daemon`, or decoders refuse the event.
pub fn encode_state<'s, G>(
    out: &mut Vec<u8>,
    daemon: &str,
    clients: impl IntoIterator<Item = (&'s str, G)>,
) where
    G: IntoIterator<Item = &'s str>,
{
    let at = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(tag::STATE);
    put_str(out, daemon);
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    for (name, groups) in clients {
        put_str(out, name);
        let groups_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let mut n = 0u32;
        for group in groups {
            put_str(out, group);
            n += 1;
        }
        out[groups_at..groups_at + 4].copy_from_slice(&n.to_le_bytes());
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    let len = u32::try_from(out.len() - at - LEN_PREFIX).expect("event fits in u32");
    out[at..at + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
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
            Event::State { daemon, clients } => {
                out.push(tag::STATE);
                put_str(out, daemon);
                out.extend_from_slice(&clients.count.to_le_bytes());
                out.extend_from_slice(clients.raw);
            }
            Event::FlushOk {
                client,
                group,
                view,
            } => {
                out.push(tag::FLUSH_OK);
                put_str(out, client);
                put_str(out, group);
                out.extend_from_slice(&view.epoch.to_le_bytes());
                out.extend_from_slice(&view.seq.to_le_bytes());
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
            tag::STATE => take_state(&mut body)?,
            tag::FLUSH_OK => Event::FlushOk {
                client: take_str(&mut body, "client")?,
                group: take_str(&mut body, "group")?,
                view: ViewId {
                    epoch: take_u64(&mut body, "view epoch")?,
                    seq: take_u64(&mut body, "view seq")?,
                },
            },
            other => return Err(EventError::UnknownTag(other)),
        };
        if !body.is_empty() {
            return Err(EventError::TrailingBytes(body.len()));
        }
        Ok((event, LEN_PREFIX + len))
    }

    /// The client whose request this event is; for `State`, the daemon it describes.
    pub fn origin(&self) -> &'a str {
        match *self {
            Event::Connect { client }
            | Event::Join { client, .. }
            | Event::Leave { client, .. }
            | Event::Disconnect { client }
            | Event::Reject { client, .. }
            | Event::FlushOk { client, .. } => client,
            Event::Data { sender, .. } => sender,
            Event::State { daemon, .. } => daemon,
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
            Event::FlushOk {
                client: "#a#d",
                group: "vs",
                view: ViewId { epoch: 3, seq: 9 },
            },
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
        assert_eq!(events[5].origin(), "#a#d");
        let mut flush = Vec::new();
        events[5].encode(&mut flush);
        for cut in 0..flush.len() {
            assert!(Event::decode(&flush[..cut]).is_err(), "cut at {cut}");
        }
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

    /// `#a#d1` in g1 then g2, `#b#d1` in nothing.
    fn a_state() -> Vec<u8> {
        let mut b = Vec::new();
        encode_state(
            &mut b,
            "d1",
            [("#a#d1", vec!["g1", "g2"]), ("#b#d1", vec![])],
        );
        b
    }

    #[test]
    fn state_events_round_trip_with_clients_and_groups_in_order() {
        let b = a_state();
        let (event, used) = Event::decode(&b).unwrap();
        assert_eq!(used, b.len());
        let Event::State { daemon, clients } = event else {
            panic!("{event:?}");
        };
        assert_eq!(daemon, "d1");
        assert_eq!(clients.len(), 2);
        let listed: Vec<(&str, Vec<&str>)> = clients
            .iter()
            .map(|(n, g)| (n, g.iter().collect()))
            .collect();
        assert_eq!(listed, [("#a#d1", vec!["g1", "g2"]), ("#b#d1", vec![])]);
        assert_eq!(event.origin(), "d1");
        let mut again = Vec::new();
        event.encode(&mut again);
        assert_eq!(again, b, "re-encoding gives the same bytes");
        let mut empty = Vec::new();
        encode_state(&mut empty, "d9", std::iter::empty::<(&str, Vec<&str>)>());
        assert!(matches!(
            Event::decode(&empty),
            Ok((Event::State { daemon: "d9", clients }, _)) if clients.is_empty()
        ));
    }

    #[test]
    fn state_events_refuse_truncation_bad_names_and_foreign_clients() {
        let b = a_state();
        for cut in 0..b.len() {
            assert!(Event::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let decode_of = |daemon: &str, clients: &[(&str, Vec<&str>)]| {
            let mut b = Vec::new();
            encode_state(&mut b, daemon, clients.iter().map(|(n, g)| (*n, g.clone())));
            Event::decode(&b).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(decode_of("d1", &[("#a#d1", vec!["g"])]).is_ok());
        let foreign = decode_of("d1", &[("#a#d1", vec![]), ("#x#d2", vec![])]);
        assert_eq!(foreign, Err(EventError::ForeignClient(1).to_string()));
        assert!(
            decode_of("d1", &[("x", vec![])]).is_err(),
            "not a private name"
        );
        assert!(
            decode_of("d1", &[("#a#d1", vec!["a b"])]).is_err_and(|e| e.contains("bad group name"))
        );
        assert!(decode_of("", &[]).is_err_and(|e| e.contains("bad daemon name")));
        assert!(decode_of("d#1", &[]).is_err());
        // A forged count is refused as truncated once the bytes run out, without allocating
        // for it.
        let mut forged = Vec::new();
        encode_state(&mut forged, "d1", std::iter::empty::<(&str, Vec<&str>)>());
        let count_at = forged.len() - 4;
        forged[count_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Event::decode(&forged), Err(EventError::Truncated("client")));
        let mut groups_forged = a_state();
        let at = LEN_PREFIX + 1 + 2 + 2 + 4 + 2 + 5;
        groups_forged[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Event::decode(&groups_forged),
            Err(EventError::Truncated("group"))
        );
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

        #[test]
        fn state_events_round_trip(
            daemon in "[a-z]{1,20}",
            clients in proptest::collection::btree_map(
                "[a-z]{1,20}",
                proptest::collection::vec("[!-\"$-~]{1,32}", 0..6),
                0..8,
            ),
        ) {
            let named: Vec<(String, Vec<String>)> = clients
                .into_iter()
                .map(|(user, groups)| (names::private_name(&user, &daemon), groups))
                .collect();
            let mut b = Vec::new();
            encode_state(
                &mut b,
                &daemon,
                named.iter().map(|(n, g)| (n.as_str(), g.iter().map(String::as_str))),
            );
            let (back, used) = Event::decode(&b).unwrap();
            proptest::prop_assert_eq!(used, b.len());
            let Event::State { daemon: d, clients } = back else {
                return Err(proptest::test_runner::TestCaseError::fail("not a state event"));
            };
            proptest::prop_assert_eq!(d, daemon.as_str());
            let listed: Vec<(String, Vec<String>)> = clients
                .iter()
                .map(|(n, g)| (n.to_string(), g.iter().map(String::from).collect()))
                .collect();
            proptest::prop_assert_eq!(listed, named);
        }
    }
}
