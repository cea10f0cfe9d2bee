//! Conclave's data plane and daemon runtime.
#![deny(unsafe_code)]

/// Batched UDP between daemons (io_uring and a sendmmsg/recvmmsg fallback).
#[allow(unsafe_code)]
pub mod io;
