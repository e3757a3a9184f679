//! Keeps the kernel's switch for UDP receive offload (GRO) on IPv6 sockets on while the worker
//! has executors.
//!
//! Every QUIC endpoint (`quinn-udp`) learns whether the kernel supports GRO by setting
//! `UDP_GRO` on a throwaway IPv6 socket, so every actor's executor does it once. Linux counts
//! the IPv6 sockets with GRO on in a static key: the count going from 0 to 1, and back to 0
//! when the throwaway socket closes, rewrites kernel code on every CPU. On this project's VM
//! that took about 2 ms for each throwaway socket, with no other such socket open, against
//! 8 µs with one held open: most of an actor creation once its process is started ahead. The
//! worker holds one such socket, bound to nothing but an ephemeral loopback port and never
//! read, so the count never drops to 0 while its executors start.

use std::net::{Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd;

/// An IPv6 UDP socket with `UDP_GRO` on, held open while this lives.
pub(crate) struct GroSwitch {
    /// Never read: only held, since closing it could turn the switch off.
    _socket: UdpSocket,
}

impl GroSwitch {
    /// Opens the socket; `None` (logged) where the machine has no IPv6 or no GRO, where there
    /// is nothing to keep on.
    pub(crate) fn hold() -> Option<Self> {
        let socket = match UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("no IPv6 UDP socket to keep GRO on with: {e}");
                return None;
            }
        };
        let on: libc::c_int = 1;
        // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes from a live `c_int`, on a
        // socket this function owns.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            tracing::debug!(
                "cannot turn UDP GRO on: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(GroSwitch { _socket: socket })
    }

    /// Whether the held socket has `UDP_GRO` on, as the kernel reports it.
    #[cfg(test)]
    fn is_on(&self) -> bool {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `getsockopt` writes at most `len` bytes into a live `c_int` and updates
        // `len`, on a socket this value owns.
        let got = unsafe {
            libc::getsockopt(
                self._socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        got == 0 && value != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_socket_has_gro_on() {
        // Machines without IPv6 have nothing to hold; this one (and CI) has it.
        let switch = GroSwitch::hold().expect("an IPv6 UDP socket with GRO on");
        assert!(switch.is_on());
    }
}
