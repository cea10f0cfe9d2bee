//! Conclave's control plane: everything that decides, nothing that does I/O.
//!
//! The modules here are sans-IO state machines and codecs: they are fed events and the
//! current time and return what to send. No sockets, threads, clocks or global RNG, which
//! is what lets the deterministic simulator drive many daemons from one seed.
//!
//! - [`wire`]: the client protocol and naming rules, shared with the engine and the SDK.
//! - [`keys`]: group key agreement (TGDH, GDH, STR, BD, CKD) over a [`keys::DhGroup`].
#![forbid(unsafe_code)]

pub mod keys;
pub mod wire;
