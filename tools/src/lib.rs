//! Conclave tools: shared helpers of the binaries.
#![forbid(unsafe_code)]

pub mod keys_bench;
