//! The sans-IO core of a daemon: pure state machines fed `(event, now)`.
//!
//! Client requests become ordered [`Event`]s, a [`Sequencer`] puts them in one total order,
//! and the [`GroupTable`] applies them. In single-daemon mode the [`LocalSequencer`] orders
//! each event the moment it is submitted; across daemons the token [`ring`] carries the
//! encoded events to every daemon and hands them out once the token has ordered them.

pub mod event;
pub mod group_sync;
pub mod membership;
pub mod ring;
pub mod sequencer;
pub mod table;
pub mod time;

pub use event::{Event, EventError};
pub use sequencer::{LocalSequencer, Sequencer};
pub use table::{GroupInfo, GroupTable, LocalId, Outbox, TableConfig, TableStats};
