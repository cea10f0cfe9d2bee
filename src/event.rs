//! What a client receives, as owned values.

use conclave_control::wire::client::{
    DaemonFrame, ErrorCode, MembershipReason, Service, ViewId, ViewKind,
};

use crate::error::Error;

/// One thing the daemon told this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message delivered to one or more groups this client is in (or to its private name).
    Data {
        /// The sender's private name.
        sender: String,
        /// The targets the sender addressed.
        groups: Vec<String>,
        /// The service it was sent with.
        service: Service,
        /// Application-defined type.
        msg_type: u16,
        /// The body.
        payload: Vec<u8>,
    },
    /// A group's view changed.
    Membership {
        /// The group.
        group: String,
        /// The new view's id; strictly increasing per group.
        view_id: ViewId,
        /// Regular or transitional.
        kind: ViewKind,
        /// Why it changed.
        reason: MembershipReason,
        /// The members who caused the change.
        changed: Vec<String>,
        /// Every member of the new view, in the daemon's deterministic order.
        members: Vec<String>,
    },
    /// The daemon rejected one request; the connection stays up.
    Error {
        /// The id of the request it answers ([`crate::Connection::last_request`] right
        /// after queueing it); 0 when the daemon could not read one.
        request: u32,
        /// Why.
        code: ErrorCode,
        /// Detail naming the group or field at fault.
        reason: String,
    },
    /// An unsolicited status document (normally consumed by `status()`).
    Status {
        /// The JSON text.
        json: String,
    },
    /// The daemon is closing the connection; nothing follows.
    Goodbye {
        /// Why.
        reason: String,
    },
    /// A Virtual Synchrony group's membership is about to change: send what must still be
    /// delivered in the current view, then answer with `flush_ok(group)` (or let the
    /// connection's automatic mode answer: then this is already answered). The new view
    /// follows once every staying member has answered.
    FlushRequest {
        /// The group.
        group: String,
        /// The view being flushed (the group's current view).
        view_id: ViewId,
        /// The pending change: join, leave, disconnect or network.
        reason: MembershipReason,
        /// Who the pending change is about (empty for a network change).
        changed: Vec<String>,
    },
}

impl Event {
    /// Converts a decoded daemon frame; hello-phase frames are out of place after the welcome.
    pub fn from_frame(frame: &DaemonFrame<'_>) -> Result<Event, Error> {
        Ok(match *frame {
            DaemonFrame::Data {
                sender,
                groups,
                service,
                msg_type,
                payload,
            } => Event::Data {
                sender: sender.to_owned(),
                groups: groups.iter().map(str::to_owned).collect(),
                service,
                msg_type,
                payload: payload.to_vec(),
            },
            DaemonFrame::Membership {
                group,
                view_id,
                kind,
                reason,
                changed,
                members,
            } => Event::Membership {
                group: group.to_owned(),
                view_id,
                kind,
                reason,
                changed: changed.iter().map(str::to_owned).collect(),
                members: members.iter().map(str::to_owned).collect(),
            },
            DaemonFrame::Error {
                request,
                code,
                reason,
            } => Event::Error {
                request,
                code,
                reason: reason.to_owned(),
            },
            DaemonFrame::Status { json } => Event::Status {
                json: json.to_owned(),
            },
            DaemonFrame::Goodbye { reason } => Event::Goodbye {
                reason: reason.to_owned(),
            },
            DaemonFrame::FlushRequest {
                group,
                view_id,
                reason,
                changed,
            } => Event::FlushRequest {
                group: group.to_owned(),
                view_id,
                reason,
                changed: changed.iter().map(str::to_owned).collect(),
            },
            DaemonFrame::Welcome { .. } => return Err(Error::Unexpected("welcome after hello")),
            DaemonFrame::Refused { .. } => return Err(Error::Unexpected("refused after welcome")),
        })
    }
}
