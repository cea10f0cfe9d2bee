//! The sans-IO core of a daemon: client requests become ordered [`Event`]s, a
//! [`Sequencer`] puts them in one total order, and the [`GroupTable`] applies them.
//!
//! In single-daemon mode the [`LocalSequencer`] orders each event the moment it is
//! submitted; the daemon ring will implement [`Sequencer`] by carrying the encoded events
//! to every daemon and applying them once the token has ordered them.

pub mod event;
pub mod sequencer;
pub mod table;

pub use event::{Event, EventError};
pub use sequencer::{LocalSequencer, Sequencer};
pub use table::{GroupInfo, GroupTable, LocalId, Outbox, TableConfig, TableStats};
