//! Wire types shared by the engine and the client SDK.

pub mod client;
pub mod names;
