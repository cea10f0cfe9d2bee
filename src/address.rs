//! Where a daemon listens.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// The default Unix socket of a daemon run with the embedded configuration.
pub const DEFAULT_UNIX_SOCKET: &str = "/tmp/conclave-4803.sock";

/// The default TCP address of a daemon run with the embedded configuration.
pub const DEFAULT_TCP: &str = "127.0.0.1:4803";

/// A daemon's client endpoint.
///
/// Parsed from `unix:/path`, a string holding a `/` (a path), or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix-domain stream socket.
    Unix(PathBuf),
    /// A TCP endpoint, kept as written so that host names resolve at connect time.
    Tcp(String),
}

impl Address {
    /// The TCP endpoint resolved to socket addresses.
    pub(crate) fn resolve_tcp(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
        Ok(host_port.to_socket_addrs()?.collect())
    }

    /// The transport's short name (`unix` or `tcp`), as the CLI and benchmarks print it.
    pub fn transport(&self) -> &'static str {
        match self {
            Address::Unix(_) => "unix",
            Address::Tcp(_) => "tcp",
        }
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::BadAddress(s.to_owned()));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let s_trim = s.strip_prefix("tcp:").unwrap_or(s);
        if s_trim.contains('/') || s_trim.starts_with('.') {
            return Ok(Address::Unix(PathBuf::from(s_trim)));
        }
        match s_trim.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(s_trim.to_owned()))
            }
            _ => Err(Error::BadAddress(s.to_owned())),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(hp) => f.write_str(hp),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr.to_string())
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Self {
        Address::Unix(path)
    }
}

impl From<&std::path::Path> for Address {
    fn from(path: &std::path::Path) -> Self {
        Address::Unix(path.to_owned())
    }
}

/// Anything that names a daemon: an [`Address`], a string to parse, a socket address or a path.
pub trait IntoAddress {
    /// Converts, failing on a malformed string.
    fn into_address(self) -> Result<Address, Error>;
}

impl IntoAddress for Address {
    fn into_address(self) -> Result<Address, Error> {
        Ok(self)
    }
}

impl IntoAddress for &Address {
    fn into_address(self) -> Result<Address, Error> {
        Ok(self.clone())
    }
}

impl IntoAddress for &str {
    fn into_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

impl IntoAddress for &String {
    fn into_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

impl IntoAddress for String {
    fn into_address(self) -> Result<Address, Error> {
        self.parse()
    }
}

impl IntoAddress for SocketAddr {
    fn into_address(self) -> Result<Address, Error> {
        Ok(self.into())
    }
}

impl IntoAddress for &std::path::Path {
    fn into_address(self) -> Result<Address, Error> {
        Ok(self.into())
    }
}

impl IntoAddress for PathBuf {
    fn into_address(self) -> Result<Address, Error> {
        Ok(self.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "/tmp/x.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "127.0.0.1:4803".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:4803".into())
        );
        assert_eq!(
            "tcp:localhost:1".parse::<Address>().unwrap(),
            Address::Tcp("localhost:1".into())
        );
        for bad in ["", "unix:", "host", "host:", ":80", "host:99999", "host:x"] {
            assert!(
                matches!(bad.parse::<Address>(), Err(Error::BadAddress(_))),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/tmp/a.sock", "127.0.0.1:9"] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }
}
