//! Conclave's data plane and daemon runtime.
#![deny(unsafe_code)]

pub mod core;
