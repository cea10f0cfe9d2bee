//! Opening and tuning the UDP socket both backends share.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::IoError;

/// Binds a blocking UDP socket (io_uring wants blocking sockets so that a receive with no
/// data parks in the kernel instead of failing with `EAGAIN`; the fallback switches it to
/// non-blocking) and asks for `buf_bytes` of send and receive buffer.
pub(crate) fn open(addr: SocketAddr, buf_bytes: usize) -> Result<UdpSocket, IoError> {
    let sock = UdpSocket::bind(addr).map_err(|source| IoError::Bind { addr, source })?;
    if buf_bytes > 0 {
        let want = libc::c_int::try_from(buf_bytes).unwrap_or(libc::c_int::MAX);
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            // The FORCE variants pass rmem_max/wmem_max but need CAP_NET_ADMIN; without
            // it the plain option still gets as much as the system allows.
            if set_int(&sock, force, want).is_err() {
                set_int(&sock, plain, want).map_err(IoError::Os)?;
            }
        }
    }
    Ok(sock)
}

fn set_int(sock: &UdpSocket, opt: libc::c_int, val: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the fd is a live socket owned by `sock`; the option value points at a
    // c_int on our stack whose size we pass, and the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
