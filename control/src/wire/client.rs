//! The client protocol: versioned, length-prefixed binary frames between a client and its
//! daemon (documented for humans in `docs/client-protocol.md`).
//!
//! Every frame is `len: u32 LE` (the byte count of what follows), `kind: u8`, then the
//! kind's body. Integers are little-endian; a string is `u16 len` + UTF-8 bytes; a payload
//! is `u32 len` + bytes; a group list is `u8 count` + that many strings. Decoding borrows
//! from the input buffer so the daemon's hot path copies nothing it does not forward.

use thiserror::Error;

use super::names::{self, NameError};

/// The protocol version this build speaks; a hello with another version is refused.
/// Version 2 added the client-chosen request id to Join, Leave, Multicast and
/// StatusRequest, echoed in the Error that answers one of them. Version 3 added the flush
/// round of Virtual Synchrony groups (FlushRequest, FlushOk): a version 2 client in such a
/// group would meet a frame kind it cannot read and never answer, so it is refused.
pub const PROTOCOL_VERSION: u16 = 3;

/// Longest reason text a daemon frame carries; longer ones (a reason quoting a client's
/// 60 KB group name) are cut at a character boundary rather than refused.
pub const MAX_REASON_LEN: usize = 1024;

/// Bytes that open every hello, so that a stray connection is refused at once.
pub const HELLO_MAGIC: [u8; 4] = *b"CNCL";

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default largest payload a client may send, 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// Most target groups one multicast may name (the count is one byte on the wire).
pub const MAX_TARGET_GROUPS: usize = 255;

/// Room a frame needs beyond its payload: kind, header fields and a full group list.
pub const FRAME_OVERHEAD_MAX: usize =
    1 + 64 + MAX_TARGET_GROUPS * (2 + names::MAX_GROUP_NAME_LEN) + 2 * (2 + 64);

/// The largest frame a daemon reads before the hello: kind, magic, version and a name
/// far longer than any allowed one (so a long name still gets `BadName`). A longer first
/// frame is garbage (an HTTP request's `GET ` reads as a length of 540 MB) and is
/// refused with `BadHello`.
pub const HELLO_FRAME_MAX: usize = 1 + 4 + 2 + 2 + 1024;

/// The largest frame (after the length prefix) allowed for a given maximum payload.
pub fn max_frame_len(max_payload: usize) -> usize {
    max_payload + FRAME_OVERHEAD_MAX
}

/// The six delivery services, weakest first (Spread's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Service {
    /// Best effort: may be lost or reordered.
    Unreliable = 0,
    /// Delivered once, in no particular order.
    Reliable = 1,
    /// Delivered in the order its sender sent it.
    Fifo = 2,
    /// Delivered after everything that causally precedes it.
    Causal = 3,
    /// One total order at every member.
    Agreed = 4,
    /// Total order, and delivered only once every daemon of the configuration holds it.
    Safe = 5,
}

impl Service {
    /// All services, weakest first.
    pub const ALL: [Service; 6] = [
        Service::Unreliable,
        Service::Reliable,
        Service::Fifo,
        Service::Causal,
        Service::Agreed,
        Service::Safe,
    ];

    /// Parses the wire byte.
    pub fn from_u8(value: u8) -> Result<Self, WireError> {
        Self::ALL
            .get(usize::from(value))
            .copied()
            .ok_or(WireError::UnknownService(value))
    }

    /// The lower-case name used by the CLI and config.
    pub fn name(self) -> &'static str {
        match self {
            Service::Unreliable => "unreliable",
            Service::Reliable => "reliable",
            Service::Fifo => "fifo",
            Service::Causal => "causal",
            Service::Agreed => "agreed",
            Service::Safe => "safe",
        }
    }

    /// Parses a lower-case name as the CLI writes it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// Why a group's membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MembershipReason {
    /// A client joined.
    Join = 0,
    /// A client left.
    Leave = 1,
    /// A client disconnected (or was disconnected) without leaving.
    Disconnect = 2,
    /// The daemon configuration changed (partition or merge).
    Network = 3,
}

impl MembershipReason {
    fn from_u8(value: u8) -> Result<Self, WireError> {
        Ok(match value {
            0 => Self::Join,
            1 => Self::Leave,
            2 => Self::Disconnect,
            3 => Self::Network,
            other => return Err(WireError::BadField("membership reason", u32::from(other))),
        })
    }
}

/// Whether a view is a regular configuration or the transitional one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ViewKind {
    /// The regular view: members who will exchange messages from now on.
    Regular = 0,
    /// The transitional view (EVS): members who moved together from the previous view.
    Transitional = 1,
}

impl ViewKind {
    fn from_u8(value: u8) -> Result<Self, WireError> {
        Ok(match value {
            0 => Self::Regular,
            1 => Self::Transitional,
            other => return Err(WireError::BadField("view kind", u32::from(other))),
        })
    }
}

/// A group view's identity; views of one group compare in installation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ViewId {
    /// The daemon configuration (ring) the view was installed in.
    pub epoch: u64,
    /// Counter of the group's membership changes within that configuration.
    pub seq: u64,
}

impl std::fmt::Display for ViewId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

/// Why the daemon refused a connection (sent in [`DaemonFrame::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RefuseCode {
    /// The first frame was not a well-formed hello.
    BadHello = 1,
    /// The hello named a protocol version this daemon does not speak.
    UnsupportedVersion = 2,
    /// The requested private name is malformed.
    BadName = 3,
    /// Another client of this daemon already holds the requested private name.
    DuplicateName = 4,
    /// The daemon is at its client limit.
    TooManyClients = 5,
    /// The access policy does not admit this client.
    NotPermitted = 6,
}

impl RefuseCode {
    fn from_u16(value: u16) -> Result<Self, WireError> {
        Ok(match value {
            1 => Self::BadHello,
            2 => Self::UnsupportedVersion,
            3 => Self::BadName,
            4 => Self::DuplicateName,
            5 => Self::TooManyClients,
            6 => Self::NotPermitted,
            other => return Err(WireError::BadField("refuse code", u32::from(other))),
        })
    }
}

/// Why the daemon rejected one request of a connected client (sent in
/// [`DaemonFrame::Error`]); the connection stays up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be decoded (the reason says how).
    MalformedFrame = 1,
    /// A group name is empty, too long or not printable.
    BadGroupName = 2,
    /// Leave of a group the client has not joined.
    NotJoined = 3,
    /// Join of a group the client has already joined.
    AlreadyJoined = 4,
    /// The payload exceeds the daemon's maximum.
    TooLarge = 5,
    /// The access policy forbids this request (e.g. send to a closed group).
    NotPermitted = 6,
    /// A multicast named a private name that no client holds.
    UnknownRecipient = 7,
    /// A frame kind a client may not send.
    UnexpectedFrame = 8,
    /// The client joined as many groups as the daemon allows.
    TooManyGroups = 9,
    /// A multicast reached nobody: none of its target groups has a member (nothing was
    /// delivered).
    NoRecipients = 10,
}

impl ErrorCode {
    /// The code of a `u16` read from the wire or an ordered event.
    pub fn from_u16(value: u16) -> Result<Self, WireError> {
        Ok(match value {
            1 => Self::MalformedFrame,
            2 => Self::BadGroupName,
            3 => Self::NotJoined,
            4 => Self::AlreadyJoined,
            5 => Self::TooLarge,
            6 => Self::NotPermitted,
            7 => Self::UnknownRecipient,
            8 => Self::UnexpectedFrame,
            9 => Self::TooManyGroups,
            10 => Self::NoRecipients,
            other => return Err(WireError::BadField("error code", u32::from(other))),
        })
    }
}

/// A decoding failure. The daemon answers each with an error frame and a counter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The frame's declared length exceeds the maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLong {
        /// Declared length.
        len: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The frame ended before a field did.
    #[error("frame truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    /// An unknown frame kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// An unknown service byte.
    #[error("unknown service {0}")]
    UnknownService(u8),
    /// A field holds a value outside its range.
    #[error("bad value {1} for {0}")]
    BadField(&'static str, u32),
    /// A string is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The hello lacks the magic bytes.
    #[error("hello does not start with the protocol magic")]
    BadMagic,
    /// A name breaks the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A multicast with no target group.
    #[error("multicast names no target group")]
    NoTargets,
}

/// Frame kind bytes. Client frames are below 0x80, daemon frames at or above.
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const JOIN: u8 = 0x02;
    pub const LEAVE: u8 = 0x03;
    pub const MULTICAST: u8 = 0x04;
    pub const DISCONNECT: u8 = 0x05;
    pub const STATUS_REQUEST: u8 = 0x06;
    pub const FLUSH_OK: u8 = 0x07;
    pub const WELCOME: u8 = 0x81;
    pub const REFUSED: u8 = 0x82;
    pub const DATA: u8 = 0x83;
    pub const MEMBERSHIP: u8 = 0x84;
    pub const ERROR: u8 = 0x85;
    pub const STATUS: u8 = 0x86;
    pub const GOODBYE: u8 = 0x87;
    pub const FLUSH_REQUEST: u8 = 0x88;
}

/// A list of group names as it lies on the wire; iterating it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupList<'a> {
    count: u8,
    /// The encoded strings (without the count byte), already validated as UTF-8.
    raw: &'a [u8],
}

impl<'a> GroupList<'a> {
    /// Number of names.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when the list names nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded bytes of the list, count byte excluded (for forwarding unchanged).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The names in wire order.
    pub fn iter(&self) -> GroupIter<'a> {
        GroupIter {
            rest: self.raw,
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for GroupList<'a> {
    type Item = &'a str;
    type IntoIter = GroupIter<'a>;
    fn into_iter(self) -> GroupIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`GroupList`].
#[derive(Debug, Clone)]
pub struct GroupIter<'a> {
    rest: &'a [u8],
    left: u8,
}

impl<'a> Iterator for GroupIter<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut reader = Reader::new(self.rest);
        // The list was validated when it was decoded, so neither read can fail.
        let name = reader.str("group").ok()?;
        self.rest = reader.rest();
        Some(name)
    }
}

/// A frame a client sends to its daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// First frame of every connection.
    Hello {
        /// The client's protocol version.
        version: u16,
        /// The private name the client asks for; empty lets the daemon pick one.
        name: &'a str,
    },
    /// Join a group by name (created on first join).
    Join {
        /// The client's id for this request, echoed in an Error that answers it.
        request: u32,
        /// The group.
        group: &'a str,
    },
    /// Leave a joined group.
    Leave {
        /// The client's id for this request, echoed in an Error that answers it.
        request: u32,
        /// The group.
        group: &'a str,
    },
    /// Send a message to one or more groups or private names.
    Multicast {
        /// The client's id for this request, echoed in an Error that answers it.
        request: u32,
        /// Delivery service.
        service: Service,
        /// Application-defined message type.
        msg_type: u16,
        /// Target groups (private names such as `#alice#d1` address one client).
        groups: GroupList<'a>,
        /// The message body.
        payload: &'a [u8],
    },
    /// Orderly goodbye; the daemon closes the connection after it.
    Disconnect,
    /// Ask for the daemon's status (clients, groups, counters) as JSON.
    StatusRequest {
        /// The client's id for this request, echoed in an Error that answers it.
        request: u32,
    },
    /// The answer to a FlushRequest: everything the client sent to the group in the
    /// flushed view is before this frame, and it sends nothing more to the group until
    /// the next view. Not a request: nothing answers it.
    FlushOk {
        /// The group.
        group: &'a str,
        /// The view id the FlushRequest named (a stale answer is ignored).
        view_id: ViewId,
    },
}

impl ClientFrame<'_> {
    /// The client's request id, for the frames that carry one.
    pub fn request(&self) -> Option<u32> {
        match self {
            ClientFrame::Join { request, .. }
            | ClientFrame::Leave { request, .. }
            | ClientFrame::Multicast { request, .. }
            | ClientFrame::StatusRequest { request } => Some(*request),
            ClientFrame::Hello { .. } | ClientFrame::Disconnect | ClientFrame::FlushOk { .. } => {
                None
            }
        }
    }
}

/// The request id of a client frame body that may not decode: read from the bytes after
/// the kind of a request kind, else 0. An Error answering a malformed request can still
/// name it when its id was readable.
pub fn request_id_of(body: &[u8]) -> u32 {
    match body {
        [
            kind::JOIN | kind::LEAVE | kind::MULTICAST | kind::STATUS_REQUEST,
            a,
            b,
            c,
            d,
            ..,
        ] => u32::from_le_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// A frame the daemon sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonFrame<'a> {
    /// The answer to a good hello.
    Welcome {
        /// The daemon's protocol version.
        version: u16,
        /// The client's unique private name (`#user#daemon`).
        private_name: &'a str,
        /// The daemon's name.
        daemon: &'a str,
        /// Largest payload the daemon accepts.
        max_payload: u32,
    },
    /// The answer to a bad hello; the daemon closes the connection after it.
    Refused {
        /// Why.
        code: RefuseCode,
        /// Human-readable detail.
        reason: &'a str,
    },
    /// A delivered message.
    Data {
        /// The sender's private name.
        sender: &'a str,
        /// The groups the sender addressed.
        groups: GroupList<'a>,
        /// The service it was sent with.
        service: Service,
        /// Application-defined message type.
        msg_type: u16,
        /// The message body.
        payload: &'a [u8],
    },
    /// A group membership notification.
    Membership {
        /// The group.
        group: &'a str,
        /// The view's id.
        view_id: ViewId,
        /// Regular or transitional.
        kind: ViewKind,
        /// Why it changed.
        reason: MembershipReason,
        /// Members who caused the change (joined, left, disconnected).
        changed: GroupList<'a>,
        /// All members of the new view, in a deterministic order.
        members: MemberList<'a>,
    },
    /// A request was rejected; the connection stays up.
    Error {
        /// The id of the request this answers (0 when none could be read).
        request: u32,
        /// Why.
        code: ErrorCode,
        /// Human-readable detail, naming the group or field at fault.
        reason: &'a str,
    },
    /// The daemon's status as a JSON document.
    Status {
        /// The JSON text.
        json: &'a str,
    },
    /// The daemon is closing this connection (shutdown, or the client fell behind).
    Goodbye {
        /// Why.
        reason: &'a str,
    },
    /// The membership of a Virtual Synchrony group is about to change: the client answers
    /// with FlushOk once it has sent what it means to send in the current view; the new
    /// view comes when every staying member has answered.
    FlushRequest {
        /// The group.
        group: &'a str,
        /// The view being flushed (the group's current view), echoed in FlushOk.
        view_id: ViewId,
        /// What the pending change is.
        reason: MembershipReason,
        /// Who the pending change is about (empty for a network change).
        changed: GroupList<'a>,
    },
}

/// A member list as it lies on the wire: `u16 count` + strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberList<'a> {
    count: u16,
    raw: &'a [u8],
}

impl<'a> MemberList<'a> {
    /// Number of members.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when the view is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The member names in view order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = self.raw;
        (0..self.count).map_while(move |_| {
            let mut reader = Reader::new(rest);
            let name = reader.str("member").ok()?;
            rest = reader.rest();
            Some(name)
        })
    }
}

/// Splits one frame off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, or the frame's body and
/// the number of bytes it used. The body still needs [`decode_client`] or
/// [`decode_daemon`]; splitting first lets a reader skip a bad frame and go on.
pub fn split_frame(buf: &[u8], max_frame: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max_frame {
        return Err(WireError::FrameTooLong {
            len,
            max: max_frame,
        });
    }
    if len == 0 {
        return Err(WireError::Truncated("frame kind"));
    }
    match buf.get(LEN_PREFIX..LEN_PREFIX + len) {
        Some(body) => Ok(Some((body, LEN_PREFIX + len))),
        None => Ok(None),
    }
}

/// Decodes the body of a client frame (as returned by [`split_frame`]).
pub fn decode_client(body: &[u8]) -> Result<ClientFrame<'_>, WireError> {
    let mut r = Reader::new(body);
    let frame = match r.u8("frame kind")? {
        kind::HELLO => {
            if r.bytes(4, "magic")? != HELLO_MAGIC {
                return Err(WireError::BadMagic);
            }
            let version = r.u16("version")?;
            let name = r.str("private name")?;
            ClientFrame::Hello { version, name }
        }
        kind::JOIN => ClientFrame::Join {
            request: r.u32("request id")?,
            group: r.str("group")?,
        },
        kind::LEAVE => ClientFrame::Leave {
            request: r.u32("request id")?,
            group: r.str("group")?,
        },
        kind::MULTICAST => {
            let request = r.u32("request id")?;
            let service = Service::from_u8(r.u8("service")?)?;
            let msg_type = r.u16("message type")?;
            let groups = r.group_list()?;
            if groups.is_empty() {
                return Err(WireError::NoTargets);
            }
            let payload = r.payload()?;
            ClientFrame::Multicast {
                request,
                service,
                msg_type,
                groups,
                payload,
            }
        }
        kind::DISCONNECT => ClientFrame::Disconnect,
        kind::STATUS_REQUEST => ClientFrame::StatusRequest {
            request: r.u32("request id")?,
        },
        kind::FLUSH_OK => ClientFrame::FlushOk {
            group: r.str("group")?,
            view_id: ViewId {
                epoch: r.u64("view epoch")?,
                seq: r.u64("view seq")?,
            },
        },
        other => return Err(WireError::UnknownKind(other)),
    };
    r.finish()?;
    Ok(frame)
}

/// Decodes the body of a daemon frame (as returned by [`split_frame`]).
pub fn decode_daemon(body: &[u8]) -> Result<DaemonFrame<'_>, WireError> {
    let mut r = Reader::new(body);
    let frame = match r.u8("frame kind")? {
        kind::WELCOME => DaemonFrame::Welcome {
            version: r.u16("version")?,
            private_name: r.str("private name")?,
            daemon: r.str("daemon name")?,
            max_payload: r.u32("max payload")?,
        },
        kind::REFUSED => DaemonFrame::Refused {
            code: RefuseCode::from_u16(r.u16("refuse code")?)?,
            reason: r.str("reason")?,
        },
        kind::DATA => {
            let sender = r.str("sender")?;
            let groups = r.group_list()?;
            let service = Service::from_u8(r.u8("service")?)?;
            let msg_type = r.u16("message type")?;
            let payload = r.payload()?;
            DaemonFrame::Data {
                sender,
                groups,
                service,
                msg_type,
                payload,
            }
        }
        kind::MEMBERSHIP => {
            let group = r.str("group")?;
            let view_id = ViewId {
                epoch: r.u64("view epoch")?,
                seq: r.u64("view seq")?,
            };
            let kind = ViewKind::from_u8(r.u8("view kind")?)?;
            let reason = MembershipReason::from_u8(r.u8("reason")?)?;
            let changed = r.group_list()?;
            let members = r.member_list()?;
            DaemonFrame::Membership {
                group,
                view_id,
                kind,
                reason,
                changed,
                members,
            }
        }
        kind::ERROR => DaemonFrame::Error {
            request: r.u32("request id")?,
            code: ErrorCode::from_u16(r.u16("error code")?)?,
            reason: r.str("reason")?,
        },
        kind::STATUS => DaemonFrame::Status {
            json: r.str_long("status json")?,
        },
        kind::GOODBYE => DaemonFrame::Goodbye {
            reason: r.str("reason")?,
        },
        kind::FLUSH_REQUEST => DaemonFrame::FlushRequest {
            group: r.str("group")?,
            view_id: ViewId {
                epoch: r.u64("view epoch")?,
                seq: r.u64("view seq")?,
            },
            reason: MembershipReason::from_u8(r.u8("reason")?)?,
            changed: r.group_list()?,
        },
        other => return Err(WireError::UnknownKind(other)),
    };
    r.finish()?;
    Ok(frame)
}

/// Appends encoded frames to a caller-owned buffer; nothing is allocated beyond its growth.
///
/// Each `encode_*` writes one whole frame, length prefix included. Strings longer than a
/// `u16` length and lists longer than their count byte are programmer errors (callers
/// validate names first), so they assert.
pub mod encode {
    use super::*;

    /// Starts a frame; returns the offset of its length prefix for [`end`].
    fn begin(out: &mut Vec<u8>, kind_byte: u8) -> usize {
        let at = out.len();
        out.extend_from_slice(&[0; LEN_PREFIX]);
        out.push(kind_byte);
        at
    }

    /// Patches the length prefix of the frame started at `at`.
    fn end(out: &mut [u8], at: usize) {
        let len = out.len() - at - LEN_PREFIX;
        let len = u32::try_from(len).expect("frame length fits in u32");
        out[at..at + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        let len = u16::try_from(s.len()).expect("string length fits in u16");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn put_payload(out: &mut Vec<u8>, payload: &[u8]) {
        let len = u32::try_from(payload.len()).expect("payload length fits in u32");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }

    fn put_names<'s>(out: &mut Vec<u8>, names: impl IntoIterator<Item = &'s str>) {
        let count_at = out.len();
        out.push(0);
        let mut count = 0usize;
        for name in names {
            put_str(out, name);
            count += 1;
        }
        out[count_at] = u8::try_from(count).expect("at most 255 names in a list");
    }

    /// `Hello`.
    pub fn hello(out: &mut Vec<u8>, version: u16, name: &str) {
        let at = begin(out, kind::HELLO);
        out.extend_from_slice(&HELLO_MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        put_str(out, name);
        end(out, at);
    }

    /// `Join`.
    pub fn join(out: &mut Vec<u8>, request: u32, group: &str) {
        let at = begin(out, kind::JOIN);
        out.extend_from_slice(&request.to_le_bytes());
        put_str(out, group);
        end(out, at);
    }

    /// `Leave`.
    pub fn leave(out: &mut Vec<u8>, request: u32, group: &str) {
        let at = begin(out, kind::LEAVE);
        out.extend_from_slice(&request.to_le_bytes());
        put_str(out, group);
        end(out, at);
    }

    /// `Multicast`.
    pub fn multicast<'s>(
        out: &mut Vec<u8>,
        request: u32,
        service: Service,
        msg_type: u16,
        groups: impl IntoIterator<Item = &'s str>,
        payload: &[u8],
    ) {
        let at = begin(out, kind::MULTICAST);
        out.extend_from_slice(&request.to_le_bytes());
        out.push(service as u8);
        out.extend_from_slice(&msg_type.to_le_bytes());
        put_names(out, groups);
        put_payload(out, payload);
        end(out, at);
    }

    /// `Disconnect`.
    pub fn disconnect(out: &mut Vec<u8>) {
        let at = begin(out, kind::DISCONNECT);
        end(out, at);
    }

    /// `StatusRequest`.
    pub fn status_request(out: &mut Vec<u8>, request: u32) {
        let at = begin(out, kind::STATUS_REQUEST);
        out.extend_from_slice(&request.to_le_bytes());
        end(out, at);
    }

    /// `Welcome`.
    pub fn welcome(out: &mut Vec<u8>, private_name: &str, daemon: &str, max_payload: u32) {
        let at = begin(out, kind::WELCOME);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        put_str(out, private_name);
        put_str(out, daemon);
        out.extend_from_slice(&max_payload.to_le_bytes());
        end(out, at);
    }

    /// `Refused`.
    pub fn refused(out: &mut Vec<u8>, code: RefuseCode, reason: &str) {
        let at = begin(out, kind::REFUSED);
        out.extend_from_slice(&(code as u16).to_le_bytes());
        put_str(out, clip(reason));
        end(out, at);
    }

    /// `reason` cut to [`MAX_REASON_LEN`] bytes at a character boundary.
    fn clip(reason: &str) -> &str {
        if reason.len() <= MAX_REASON_LEN {
            return reason;
        }
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        &reason[..end]
    }

    /// `Data`, forwarding a group list exactly as the sender encoded it.
    pub fn data(
        out: &mut Vec<u8>,
        sender: &str,
        groups: GroupList<'_>,
        service: Service,
        msg_type: u16,
        payload: &[u8],
    ) {
        let at = begin(out, kind::DATA);
        put_str(out, sender);
        out.push(groups.count);
        out.extend_from_slice(groups.raw);
        out.push(service as u8);
        out.extend_from_slice(&msg_type.to_le_bytes());
        put_payload(out, payload);
        end(out, at);
    }

    /// `Data` from a list of names.
    pub fn data_to<'s>(
        out: &mut Vec<u8>,
        sender: &str,
        groups: impl IntoIterator<Item = &'s str>,
        service: Service,
        msg_type: u16,
        payload: &[u8],
    ) {
        let at = begin(out, kind::DATA);
        put_str(out, sender);
        put_names(out, groups);
        out.push(service as u8);
        out.extend_from_slice(&msg_type.to_le_bytes());
        put_payload(out, payload);
        end(out, at);
    }

    /// `Membership`.
    #[allow(clippy::too_many_arguments)]
    pub fn membership<'s>(
        out: &mut Vec<u8>,
        group: &str,
        view_id: ViewId,
        view_kind: ViewKind,
        reason: MembershipReason,
        changed: impl IntoIterator<Item = &'s str>,
        members: impl IntoIterator<Item = &'s str>,
    ) {
        let at = begin(out, kind::MEMBERSHIP);
        put_str(out, group);
        out.extend_from_slice(&view_id.epoch.to_le_bytes());
        out.extend_from_slice(&view_id.seq.to_le_bytes());
        out.push(view_kind as u8);
        out.push(reason as u8);
        put_names(out, changed);
        let count_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let mut count = 0usize;
        for member in members {
            put_str(out, member);
            count += 1;
        }
        let count = u16::try_from(count).expect("at most 65535 members in a view");
        out[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
        end(out, at);
    }

    /// `Error` answering request `request` (0: none).
    pub fn error(out: &mut Vec<u8>, request: u32, code: ErrorCode, reason: &str) {
        let at = begin(out, kind::ERROR);
        out.extend_from_slice(&request.to_le_bytes());
        out.extend_from_slice(&(code as u16).to_le_bytes());
        put_str(out, clip(reason));
        end(out, at);
    }

    /// `Status` (the JSON may exceed 64 KiB, so its length is a `u32`).
    pub fn status(out: &mut Vec<u8>, json: &str) {
        let at = begin(out, kind::STATUS);
        put_payload(out, json.as_bytes());
        end(out, at);
    }

    /// `Goodbye`.
    pub fn goodbye(out: &mut Vec<u8>, reason: &str) {
        let at = begin(out, kind::GOODBYE);
        put_str(out, clip(reason));
        end(out, at);
    }

    /// `FlushOk`.
    pub fn flush_ok(out: &mut Vec<u8>, group: &str, view_id: ViewId) {
        let at = begin(out, kind::FLUSH_OK);
        put_str(out, group);
        out.extend_from_slice(&view_id.epoch.to_le_bytes());
        out.extend_from_slice(&view_id.seq.to_le_bytes());
        end(out, at);
    }

    /// `FlushRequest`.
    pub fn flush_request<'s>(
        out: &mut Vec<u8>,
        group: &str,
        view_id: ViewId,
        reason: MembershipReason,
        changed: impl IntoIterator<Item = &'s str>,
    ) {
        let at = begin(out, kind::FLUSH_REQUEST);
        put_str(out, group);
        out.extend_from_slice(&view_id.epoch.to_le_bytes());
        out.extend_from_slice(&view_id.seq.to_le_bytes());
        out.push(reason as u8);
        put_names(out, changed);
        end(out, at);
    }
}

/// A bounds-checked cursor over a frame body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let len = usize::from(self.u16(what)?);
        let b = self.bytes(len, what)?;
        std::str::from_utf8(b).map_err(|_| WireError::NotUtf8(what))
    }

    fn str_long(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let b = self.payload()?;
        std::str::from_utf8(b).map_err(|_| WireError::NotUtf8(what))
    }

    fn payload(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32("payload length")? as usize;
        self.bytes(len, "payload")
    }

    fn group_list(&mut self) -> Result<GroupList<'a>, WireError> {
        let count = self.u8("group count")?;
        let start = self.buf;
        for _ in 0..count {
            self.str("group")?;
        }
        let used = start.len() - self.buf.len();
        Ok(GroupList {
            count,
            raw: &start[..used],
        })
    }

    fn member_list(&mut self) -> Result<MemberList<'a>, WireError> {
        let count = self.u16("member count")?;
        let start = self.buf;
        for _ in 0..count {
            self.str("member")?;
        }
        let used = start.len() - self.buf.len();
        Ok(MemberList {
            count,
            raw: &start[..used],
        })
    }

    fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_client(buf: &[u8]) -> ClientFrame<'_> {
        let (body, used) = split_frame(buf, max_frame_len(DEFAULT_MAX_PAYLOAD))
            .expect("well-formed")
            .expect("whole frame");
        assert_eq!(used, buf.len());
        decode_client(body).expect("decodes")
    }

    fn one_daemon(buf: &[u8]) -> DaemonFrame<'_> {
        let (body, used) = split_frame(buf, max_frame_len(DEFAULT_MAX_PAYLOAD))
            .expect("well-formed")
            .expect("whole frame");
        assert_eq!(used, buf.len());
        decode_daemon(body).expect("decodes")
    }

    #[test]
    fn client_frames_round_trip() {
        let mut b = Vec::new();
        encode::hello(&mut b, PROTOCOL_VERSION, "alice");
        assert_eq!(
            one_client(&b),
            ClientFrame::Hello {
                version: 3,
                name: "alice"
            }
        );
        b.clear();
        encode::multicast(&mut b, 41, Service::Safe, 7, ["g1", "g2"], b"hi");
        assert_eq!(request_id_of(&b[LEN_PREFIX..]), 41);
        match one_client(&b) {
            ClientFrame::Multicast {
                request: 41,
                service,
                msg_type,
                groups,
                payload,
            } => {
                assert_eq!(service, Service::Safe);
                assert_eq!(msg_type, 7);
                assert_eq!(groups.iter().collect::<Vec<_>>(), ["g1", "g2"]);
                assert_eq!(payload, b"hi");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn daemon_frames_round_trip() {
        let mut b = Vec::new();
        encode::membership(
            &mut b,
            "g",
            ViewId { epoch: 3, seq: 9 },
            ViewKind::Regular,
            MembershipReason::Join,
            ["#b#d"],
            ["#a#d", "#b#d"],
        );
        match one_daemon(&b) {
            DaemonFrame::Membership {
                group,
                view_id,
                members,
                changed,
                ..
            } => {
                assert_eq!(group, "g");
                assert_eq!(view_id, ViewId { epoch: 3, seq: 9 });
                assert_eq!(members.iter().collect::<Vec<_>>(), ["#a#d", "#b#d"]);
                assert_eq!(changed.iter().collect::<Vec<_>>(), ["#b#d"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        b.clear();
        let mut src = Vec::new();
        encode::multicast(&mut src, 0, Service::Fifo, 1, ["x"], b"payload");
        let (body, _) = split_frame(&src, 1 << 20).unwrap().unwrap();
        let ClientFrame::Multicast { groups, .. } = decode_client(body).unwrap() else {
            panic!("not a multicast")
        };
        encode::data(&mut b, "#a#d", groups, Service::Fifo, 1, b"payload");
        match one_daemon(&b) {
            DaemonFrame::Data {
                sender,
                groups,
                payload,
                ..
            } => {
                assert_eq!(sender, "#a#d");
                assert_eq!(groups.iter().collect::<Vec<_>>(), ["x"]);
                assert_eq!(payload, b"payload");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn flush_frames_round_trip_and_truncations_are_errors() {
        let view = ViewId { epoch: 7, seq: 42 };
        let mut b = Vec::new();
        encode::flush_request(&mut b, "vs.g", view, MembershipReason::Join, ["#c#d"]);
        match one_daemon(&b) {
            DaemonFrame::FlushRequest {
                group,
                view_id,
                reason,
                changed,
            } => {
                assert_eq!(group, "vs.g");
                assert_eq!(view_id, view);
                assert_eq!(reason, MembershipReason::Join);
                assert_eq!(changed.iter().collect::<Vec<_>>(), ["#c#d"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let body = &b[LEN_PREFIX..];
        for cut in 1..body.len() {
            assert!(decode_daemon(&body[..cut]).is_err(), "body cut at {cut}");
        }
        // A reason byte out of range is refused, not guessed.
        let mut bad = body.to_vec();
        let reason_at = 1 + 2 + "vs.g".len() + 16;
        bad[reason_at] = 9;
        assert_eq!(
            decode_daemon(&bad),
            Err(WireError::BadField("membership reason", 9))
        );
        b.clear();
        encode::flush_ok(&mut b, "vs.g", view);
        let (body, used) = split_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(
            decode_client(body),
            Ok(ClientFrame::FlushOk {
                group: "vs.g",
                view_id: view
            })
        );
        assert_eq!(decode_client(body).map(|f| f.request()), Ok(None));
        for cut in 1..body.len() {
            assert!(decode_client(&body[..cut]).is_err(), "body cut at {cut}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert_eq!(decode_client(&trailing), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn partial_frames_wait_and_every_truncation_is_an_error() {
        let mut b = Vec::new();
        encode::multicast(&mut b, 0, Service::Agreed, 0, ["group"], b"0123456789");
        for cut in 0..b.len() {
            assert_eq!(split_frame(&b[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        let body = &b[LEN_PREFIX..];
        for cut in 0..body.len() {
            assert!(decode_client(&body[..cut]).is_err(), "body cut at {cut}");
        }
    }

    #[test]
    fn oversize_and_junk_are_refused() {
        let mut b = Vec::new();
        encode::multicast(&mut b, 0, Service::Agreed, 0, ["g"], &[0u8; 100]);
        assert!(matches!(
            split_frame(&b, 50),
            Err(WireError::FrameTooLong { .. })
        ));
        assert_eq!(decode_client(&[0x7f]), Err(WireError::UnknownKind(0x7f)));
        assert_eq!(
            decode_client(&[kind::HELLO, b'X', b'X', b'X', b'X', 1, 0, 0, 0]),
            Err(WireError::BadMagic)
        );
        let mut trailing = Vec::new();
        encode::join(&mut trailing, 0, "g");
        trailing.push(0);
        assert_eq!(
            decode_client(&trailing[LEN_PREFIX..]),
            Err(WireError::TrailingBytes(1))
        );
    }
}
