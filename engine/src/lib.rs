//! Conclave's data plane and daemon runtime.
//!
//! - [`config`]: the daemon configuration file and tuning profiles.
//! - [`core`]: the sans-IO group table fed ordered events, and the sequencer seam.
//! - [`daemon`]: the runtime — client sessions over a mio event loop.
#![deny(unsafe_code)]

pub mod config;
pub mod core;
pub mod daemon;
