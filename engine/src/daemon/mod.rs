//! Daemon runtime (in progress).
