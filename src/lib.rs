//! Conclave client SDK.
#![forbid(unsafe_code)]
