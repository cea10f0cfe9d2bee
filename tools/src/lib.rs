//! Conclave tools: helpers shared by the `conclave` CLI and `conclave-bench`.
#![forbid(unsafe_code)]

pub mod bench_common;
pub mod demo;
pub mod flood;
pub mod keys_bench;
pub mod membership_bench;
pub mod netns;
pub mod ring_bench;

use std::path::{Path, PathBuf};

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
