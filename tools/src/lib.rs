//! Conclave tools: helpers shared by the `conclave` CLI and `conclave-bench`.
#![forbid(unsafe_code)]

pub mod bench_common;
pub mod demo;
pub mod flood;
pub mod keys_bench;
pub mod membership_bench;
pub mod netns;
pub mod ring_bench;
pub mod status_view;

use std::path::{Path, PathBuf};

/// The exit codes of `conclaved`, `conclave` and `conclave-bench`, one table for all three
/// (docs/exit-codes.md), so that scripts and service managers can tell failures apart.
pub mod exit {
    /// Success: the command did what was asked; `conclaved` stopped on SIGTERM/SIGINT;
    /// `conclave user` ended on `q`, end of input, or the daemon's shutdown goodbye.
    pub const OK: u8 = 0;
    /// The request failed: refused by the daemon, an error, a goodbye other than the
    /// daemon's shutdown, a flood that delivered or received nothing or not everything,
    /// an invalid configuration (`conclaved`), a failed benchmark run.
    pub const FAILED: u8 = 1;
    /// Usage: bad arguments or a bad daemon address (clap also exits 2).
    pub const USAGE: u8 = 2;
    /// Lost: `conclave` saw its daemon close the connection without a goodbye (it
    /// crashed or was killed) or could not reach it; `conclaved` could not start (socket
    /// busy, address in use) or failed while running.
    pub const LOST: u8 = 3;

    /// The table in one line, for each binary's `--help`.
    pub const HELP: &str = "Exit codes: 0 ok, 1 failed, 2 usage, 3 lost (daemon unreachable, gone without a \
         goodbye, or unable to start); see docs/exit-codes.md";
}

use conclave::{Address, DEFAULT_TCP, DEFAULT_UNIX_SOCKET};

/// The daemon address the CLI uses when none is given: the default Unix socket when its
/// file exists, else the default TCP endpoint.
pub fn default_address() -> Address {
    if Path::new(DEFAULT_UNIX_SOCKET).exists() {
        Address::Unix(PathBuf::from(DEFAULT_UNIX_SOCKET))
    } else {
        Address::Tcp(DEFAULT_TCP.to_owned())
    }
}

/// Parses `--daemon`, or picks [`default_address`].
pub fn address_or_default(arg: Option<&str>) -> Result<Address, conclave::Error> {
    match arg {
        Some(s) => s.parse(),
        None => Ok(default_address()),
    }
}

/// A sibling binary of the running one (same target directory), e.g. `conclaved`.
pub fn sibling_binary(name: &str) -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| std::io::Error::other("the executable has no directory"))?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found (build it: cargo build --release -p conclave-tools)",
                path.display()
            ),
        ))
    }
}
