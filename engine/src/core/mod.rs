//! Sans-IO cores of the data plane: pure state machines fed `(event, now)`.

pub mod ring;
pub mod time;
