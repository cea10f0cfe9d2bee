//! Conclave's data plane and daemon runtime.
//!
//! - [`config`]: the daemon configuration file and tuning profiles.
//! - [`core`]: the sans-IO cores: group table, sequencer seam, token-ring ordering.
//! - [`daemon`]: the runtime — client sessions over a mio event loop.
//! - [`io`]: batched UDP between daemons (io_uring, with a sendmmsg fallback); the one
//!   module allowed `unsafe`.
#![deny(unsafe_code)]

pub mod config;
pub mod core;
pub mod daemon;
#[allow(unsafe_code)]
pub mod io;
