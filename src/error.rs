//! The SDK's error type.

use conclave_control::wire::client::{RefuseCode, WireError};
use conclave_control::wire::names::NameError;
use thiserror::Error;

/// Everything that can go wrong talking to a daemon.
#[derive(Debug, Error)]
pub enum Error {
    /// The daemon refused the connection (bad hello, duplicate name, ...).
    #[error("refused by daemon ({code:?}): {reason}")]
    Refused {
        /// The daemon's refusal code.
        code: RefuseCode,
        /// Its human-readable reason.
        reason: String,
    },
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon sent bytes that do not decode.
    #[error("protocol error: {0}")]
    Protocol(#[from] WireError),
    /// The daemon sent a well-formed frame that makes no sense at this point.
    #[error("unexpected frame from daemon: {0}")]
    Unexpected(&'static str),
    /// The connection is closed; the reason is the daemon's goodbye if it sent one.
    #[error("connection closed: {reason}")]
    Closed {
        /// Why.
        reason: String,
    },
    /// A payload exceeds the daemon's maximum (announced in its welcome).
    #[error("payload of {len} bytes exceeds the daemon's maximum of {max}")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A group or private name breaks the naming rules.
    #[error("bad name {name:?}: {source}")]
    BadName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        source: NameError,
    },
    /// A private name that is not of the form `#user#daemon`.
    #[error("bad private name {0:?}: expected #user#daemon")]
    BadPrivateName(String),
    /// A multicast with no target, or more than the wire allows.
    #[error("a multicast names 1..={max} targets, not {count}")]
    BadTargetCount {
        /// Targets given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An address string that is neither `unix:PATH`, a path, nor `host:port`.
    #[error("bad daemon address {0:?}: expected unix:/path, /path or host:port")]
    BadAddress(String),
    /// The daemon did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A multicast names a Virtual Synchrony group this client has answered a flush
    /// request for: it may send to it again once the group's next view arrives.
    #[error("group {group:?} is flushing: sends wait for its next view")]
    Flushing {
        /// The group.
        group: String,
    },
    /// `flush_ok` for a group with no flush request waiting for an answer.
    #[error("no flush request of group {group:?} waits for an answer")]
    NoFlushRequest {
        /// The group.
        group: String,
    },
}

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
