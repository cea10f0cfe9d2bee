//! Conclave's data plane and daemon runtime.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod io;
