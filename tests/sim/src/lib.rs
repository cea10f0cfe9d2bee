//! Deterministic simulator of Conclave daemons.
#![forbid(unsafe_code)]
