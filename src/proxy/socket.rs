//! The two socket operations the request deadlines need and the standard library does
//! not offer on a descriptor it does not own: shutting a socket down under its owner,
//! and reading how much of what was written to it the peer has not yet acknowledged.
//!
//! This is the one module with `unsafe` in the proxy. Both calls act on a descriptor
//! another part of the process owns (pingora holds the connections), so each first
//! checks that the descriptor still names the socket it was handed for ([`Socket`]: the
//! same local and peer address, which no other open socket can share), and the
//! deadline table calls them under the lock that the socket's owner takes to disarm
//! the deadline.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;

/// A socket named by its descriptor and the addresses it had when it was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub fd: RawFd,
    /// Its local address, when known (checked when present).
    pub local: Option<SocketAddr>,
    /// Its peer's address, when known (checked when present).
    pub peer: Option<SocketAddr>,
}

impl Socket {
    /// Whether the descriptor still names this socket. A descriptor closed and reused
    /// for another connection has another address pair (the peer's port, or for an
    /// outgoing connection the local port, differs while both are open).
    fn is_still_open(&self) -> bool {
        if self.local.is_none() && self.peer.is_none() {
            return false;
        }
        let matches = |expected: Option<SocketAddr>, peer: bool| match expected {
            None => true,
            Some(want) => {
                PingoraAddr::from_raw_fd(self.fd, peer)
                    .as_ref()
                    .and_then(|a| a.as_inet())
                    == Some(&want)
            }
        };
        matches(self.local, false) && matches(self.peer, true)
    }

    /// Shuts the socket down both ways: its owner's pending reads and writes fail now,
    /// and the descriptor stays open for the owner to close. Nothing happens when the
    /// descriptor no longer names this socket.
    pub fn shut_down(&self) {
        if !self.is_still_open() {
            return;
        }
        // SAFETY: shutdown(2) takes no pointers and only changes the state of the socket
        // `fd` names, which was just checked to be this one; the descriptor itself is
        // left for its owner to close.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// Bytes written to the socket that its peer has not yet acknowledged (`SIOCOUTQ`);
    /// zero when that cannot be read or the descriptor no longer names this socket.
    pub fn unsent_bytes(&self) -> usize {
        if !self.is_still_open() {
            return 0;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ on Linux) writes one int through the pointer it is
        // given, which points at `queued`, alive for the call.
        let ok = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut queued) } == 0;
        if ok {
            queued.max(0) as usize
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Socket;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    fn socket_of(s: &TcpStream) -> Socket {
        Socket {
            fd: s.as_raw_fd(),
            local: s.local_addr().ok(),
            peer: s.peer_addr().ok(),
        }
    }

    #[test]
    fn shut_down_ends_the_peers_reads() {
        let (client, mut server) = pair();
        socket_of(&client).shut_down();
        let mut buf = [0u8; 8];
        assert_eq!(server.read(&mut buf).expect("read after shutdown"), 0);
    }

    #[test]
    fn a_socket_with_other_addresses_is_left_alone() {
        let (client, mut server) = pair();
        let (other, _other_server) = pair();
        // The descriptor of `client` with the addresses of another connection: as if
        // the descriptor had been closed and reused.
        let stale = Socket {
            peer: other.peer_addr().ok(),
            ..socket_of(&client)
        };
        stale.shut_down();
        (&client).write_all(b"x").expect("still open");
        let mut buf = [0u8; 1];
        server.read_exact(&mut buf).expect("still delivers");
        let nothing_known = Socket {
            local: None,
            peer: None,
            ..socket_of(&client)
        };
        assert_eq!(nothing_known.unsent_bytes(), 0);
    }

    #[test]
    fn unsent_bytes_sees_what_the_peer_has_not_taken() {
        let (client, _server) = pair();
        assert_eq!(socket_of(&client).unsent_bytes(), 0);
        client.set_nonblocking(true).expect("nonblocking");
        // The peer never reads: once its receive buffer is full, bytes stay queued here.
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..256 {
            if (&client).write(&chunk).is_err() {
                break;
            }
        }
        assert!(socket_of(&client).unsent_bytes() > 0);
    }
}
