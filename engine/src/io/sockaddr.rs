//! Socket addresses to and from the kernel's byte layout.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Room for any address we use: `sockaddr_in6` is the larger of the two families.
pub(crate) const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Writes `addr` in `sockaddr_in`/`sockaddr_in6` layout into `out`, returning its length.
pub(crate) fn encode(addr: SocketAddr, out: &mut [u8; NAME_LEN]) -> libc::socklen_t {
    *out = [0; NAME_LEN];
    match addr {
        SocketAddr::V4(a) => {
            out[0..2].copy_from_slice(&(libc::AF_INET as libc::sa_family_t).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            out[0..2].copy_from_slice(&(libc::AF_INET6 as libc::sa_family_t).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&a.ip().octets());
            out[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            NAME_LEN as libc::socklen_t
        }
    }
}

/// Reads an address the kernel wrote; `None` for a family we do not speak or a short name.
pub(crate) fn decode(name: &[u8]) -> Option<SocketAddr> {
    let family = libc::sa_family_t::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        let cases: [SocketAddr; 3] = [
            "127.0.0.1:4803".parse().unwrap(),
            "10.1.2.3:1".parse().unwrap(),
            "[fe80::1:2]:65535".parse().unwrap(),
        ];
        for addr in cases {
            let mut raw = [0u8; NAME_LEN];
            let len = encode(addr, &mut raw) as usize;
            assert_eq!(decode(&raw[..len]), Some(addr));
        }
    }

    #[test]
    fn rejects_unknown_family_and_short_names() {
        let mut raw = [0u8; NAME_LEN];
        raw[0..2].copy_from_slice(&(libc::AF_UNIX as libc::sa_family_t).to_ne_bytes());
        assert_eq!(decode(&raw), None);
        encode("127.0.0.1:9".parse().unwrap(), &mut raw);
        assert_eq!(decode(&raw[..6]), None);
    }
}
