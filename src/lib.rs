//! Conclave client SDK: connect to a `conclaved` daemon, join groups, multicast, receive.
//!
//! A client connects over a Unix socket (local) or TCP, gets a unique private name
//! (`#user#daemon`), joins groups by name, multicasts to one or many groups (or to a
//! private name) with one of six services, and receives messages and membership
//! notifications with strictly increasing view ids.
//!
//! ```no_run
//! use std::time::Duration;
//! use conclave::{Connection, Event, Service};
//!
//! # fn main() -> conclave::Result<()> {
//! let mut conn = Connection::connect_as("unix:/tmp/conclave-4803.sock", "alice")?;
//! conn.join("chat")?;
//! conn.multicast(Service::Agreed, &["chat"], 0, b"hello")?;
//! while let Some(event) = conn.receive(Duration::from_secs(1))? {
//!     match event {
//!         Event::Data { sender, payload, .. } => {
//!             println!("{sender}: {}", String::from_utf8_lossy(&payload))
//!         }
//!         Event::Membership { group, view_id, members, .. } => {
//!             println!("{group} view {view_id}: {members:?}")
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! println!("{}", conn.status()?);
//! conn.disconnect()?;
//! # Ok(())
//! # }
//! ```
//!
//! For throughput, queue many messages with [`Connection::multicast_buffered`] and
//! [`Connection::flush`] once, and read with [`Connection::receive_frames`], which hands
//! out every frame of one large read borrowed, without allocating. With the `tokio`
//! feature, [`tokio::Connection`] offers the same operations as `async fn`s.
//!
//! In a group the daemons' configuration marks for Virtual Synchrony (`[groups] vs`), a
//! membership change first brings [`Event::FlushRequest`]: send what belongs in the
//! current view, then call [`Connection::flush_ok`] (or let
//! [`Connection::set_auto_flush_ok`] answer); sends to the group then fail with
//! [`Error::Flushing`] until its next view arrives (docs/client-protocol.md).
#![forbid(unsafe_code)]

pub mod address;
pub mod blocking;
pub mod error;
pub mod event;
pub mod session;

#[cfg(feature = "tokio")]
#[path = "async_tokio.rs"]
pub mod tokio;

pub use address::{Address, DEFAULT_TCP, DEFAULT_UNIX_SOCKET, IntoAddress};
pub use blocking::Connection;
pub use error::{Error, Result};
pub use event::Event;

#[cfg(feature = "tokio")]
pub use crate::tokio::AsyncConnection;

pub use conclave_control::wire::client::{
    DaemonFrame, ErrorCode, MembershipReason, RefuseCode, Service, ViewId, ViewKind, WireError,
};
