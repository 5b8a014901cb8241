//! The platform's part of the cut: what the kernel knows of a connection, and ending it from
//! outside the task that owns it. The crate's `unsafe` code is here and in `fork.rs`.

/// What the kernel has counted on one TCP connection, in bytes since it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counters {
    /// Sent to the peer (first transmissions and retransmissions).
    pub(crate) sent: u64,
    /// Acknowledged by the peer's kernel.
    pub(crate) acked: u64,
    /// Received from the peer (read by the proxy or still waiting in the socket).
    pub(crate) received: u64,
    /// Sent again, after no acknowledgement came in time.
    pub(crate) retransmitted: u64,
    /// Time since data was last sent (a first transmission or a retransmission), in ms.
    pub(crate) last_send_ms: u32,
    /// The smoothed round-trip time, in µs.
    pub(crate) rtt_us: u32,
    /// Received and not yet read by the proxy (read by `Connection::counters` only).
    pub(crate) unread: u32,
}

/// The counters of the TCP connection behind `fd`, on Linux (`TCP_INFO`); `None` elsewhere, or
/// when `fd` is no TCP socket.
#[cfg(target_os = "linux")]
pub(crate) fn counters(fd: i32) -> Option<Counters> {
    let info = pingora_core::protocols::l4::ext::get_tcp_info(fd).ok()?;
    Some(Counters {
        sent: info.tcpi_bytes_sent,
        acked: info.tcpi_bytes_acked,
        received: info.tcpi_bytes_received,
        retransmitted: info.tcpi_bytes_retrans,
        last_send_ms: info.tcpi_last_data_sent,
        rtt_us: info.tcpi_rtt,
        unread: 0,
    })
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn counters(_fd: i32) -> Option<Counters> {
    None
}

#[cfg(unix)]
#[allow(unsafe_code)]
mod imp {
    use std::net::{Shutdown, SocketAddr, TcpStream};
    use std::os::fd::BorrowedFd;

    /// A descriptor of this crate's own for the connection behind `fd`, when `fd` is still the
    /// connection between `ends`. What is done through it reaches that connection and no
    /// other, even when its owner closes `fd` meanwhile and the number is reused at once (an
    /// aborted attempt's task, woken by the abort, closes its connection and opens the next
    /// attempt's, which may get the same number, before the abort's last call is made).
    pub(super) fn owned(fd: i32, ends: (SocketAddr, SocketAddr)) -> Option<TcpStream> {
        // SAFETY: `borrow_raw` requires `fd` to stay open while the borrow lives; the borrow
        // lives for the one `fcntl(F_DUPFD_CLOEXEC)` that `try_clone_to_owned` makes, and is
        // never used to close anything. If `fd` was closed, that call fails (EBADF) and nothing
        // is done. If the number now holds another descriptor, the duplicate is of that one: its
        // ends are checked below, and dropping it closes only the duplicate, never the
        // original.
        let dup = unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .ok()?;
        let stream = TcpStream::from(dup);
        (stream.local_addr().ok() == Some(ends.0) && stream.peer_addr().ok() == Some(ends.1))
            .then_some(stream)
    }

    /// A watched connection, held open by a descriptor of the crate's own ([`owned`]): what is
    /// read or done through it reaches that connection and no other, even when its owner
    /// closes its own descriptor meanwhile.
    #[derive(Debug)]
    pub(crate) struct Connection(TcpStream);

    impl Connection {
        /// The connection behind `fd`, if it is still the one between `ends`.
        pub(crate) fn of(fd: i32, ends: (SocketAddr, SocketAddr)) -> Option<Self> {
            owned(fd, ends).map(Self)
        }

        /// Its counters, with the bytes received that wait unread.
        pub(crate) fn counters(&self) -> Option<super::Counters> {
            use std::os::fd::AsRawFd;
            let fd = self.0.as_raw_fd();
            super::counters(fd).map(|c| super::Counters {
                unread: super::unread(fd),
                ..c
            })
        }

        /// Shuts it down: a waiting read on it ends at once.
        pub(crate) fn shut_down(&self) {
            let _ = self.0.shutdown(Shutdown::Both);
        }

        /// Aborts it: the kernel drops what it had not yet delivered (no further
        /// retransmission), answers the peer with a reset, and a waiting read ends. A
        /// `connect` to an `AF_UNSPEC` address is Linux's documented way to disconnect a socket
        /// without closing its descriptor, which the connection's owner still holds. Whether
        /// it was disconnected (it is shut down in any case).
        #[cfg(target_os = "linux")]
        pub(crate) fn abort(&self) -> bool {
            use std::os::fd::AsRawFd;
            // SAFETY: `sockaddr` is plain data, valid when zeroed; `connect` reads
            // `size_of::<sockaddr>()` bytes of it, all initialised, and the descriptor is this
            // value's own, open while it lives.
            let disconnected = unsafe {
                let mut unspec: libc::sockaddr = std::mem::zeroed();
                unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
                libc::connect(
                    self.0.as_raw_fd(),
                    &unspec,
                    std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
                ) == 0
            };
            self.shut_down();
            disconnected
        }

        #[cfg(not(target_os = "linux"))]
        pub(crate) fn abort(&self) -> bool {
            self.shut_down();
            false
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use std::net::SocketAddr;

    /// No connection is ever named here: nothing is watched.
    #[derive(Debug)]
    pub(crate) struct Connection;

    impl Connection {
        pub(crate) fn of(_fd: i32, _ends: (SocketAddr, SocketAddr)) -> Option<Self> {
            None
        }
        pub(crate) fn counters(&self) -> Option<super::Counters> {
            None
        }
        pub(crate) fn shut_down(&self) {}
        pub(crate) fn abort(&self) -> bool {
            false
        }
    }
}

pub(crate) use imp::Connection;

/// Bytes received on the socket behind `fd` that wait unread (`FIONREAD`); 0 when it cannot
/// tell. Called on a descriptor of the crate's own ([`Connection`]).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn unread(fd: i32) -> u32 {
    let mut n: libc::c_int = 0;
    // SAFETY: `FIONREAD` writes one `c_int` through the pointer, which points to `n`, alive and
    // writable for the call; `fd` is a socket the caller owns, open for the call.
    let ok = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0;
    if ok {
        u32::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn unread(_fd: i32) -> u32 {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    fn ends(s: &TcpStream) -> (SocketAddr, SocketAddr) {
        (s.local_addr().unwrap(), s.peer_addr().unwrap())
    }

    #[test]
    fn counters_follow_what_was_sent_acked_and_received() {
        let (mut a, mut b) = pair();
        let before = counters(a.as_raw_fd()).unwrap();
        a.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        b.write_all(b"hi").unwrap();
        let mut two = [0u8; 2];
        a.read_exact(&mut two).unwrap();
        let after = counters(a.as_raw_fd()).unwrap();
        assert_eq!(after.sent - before.sent, 5);
        assert_eq!(after.acked - before.acked, 5);
        assert_eq!(after.received - before.received, 2);
    }

    #[test]
    fn a_descriptor_that_is_no_longer_the_connection_is_left_alone() {
        let (a, _a_peer) = pair();
        let (b, mut b_peer) = pair();
        // The watch names `a`, but the number given holds `b`: `b` is left alone.
        assert!(Connection::of(b.as_raw_fd(), ends(&a)).is_none());
        b_peer.write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        (&b).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        // Nor is a descriptor that is no socket.
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(Connection::of(file.as_raw_fd(), ends(&a)).is_none());
    }

    #[test]
    fn what_is_done_reaches_the_checked_connection_after_its_number_is_reused() {
        let (a, mut a_peer) = pair();
        let (fd, a_ends) = (a.as_raw_fd(), ends(&a));
        let own = imp::owned(fd, a_ends).expect("still the connection");
        // The owner closes its descriptor, and the next connections take the free numbers.
        drop(a);
        let (b, mut b_peer) = pair();
        own.shutdown(std::net::Shutdown::Both).unwrap();
        // The shutdown reached `a`'s connection (kept open by the duplicate alone)...
        let mut buf = [0u8; 2];
        assert_eq!(a_peer.read(&mut buf).unwrap(), 0);
        // ...and not the connection that may hold its old number.
        b_peer.write_all(b"ok").unwrap();
        (&b).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
        assert!(
            imp::owned(fd, a_ends).is_none(),
            "the number is no longer `a`"
        );
    }

    #[test]
    fn an_aborted_connection_resets_its_peer_and_ends_a_waiting_read() {
        let (a, mut peer) = pair();
        let (fd, a_ends) = (a.as_raw_fd(), ends(&a));
        // Whether the read has begun or not when the abort comes, it ends.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 1];
            (&a).read(&mut buf)
        });
        let conn = Connection::of(fd, a_ends).expect("the connection");
        assert!(conn.abort(), "disconnected");
        let read = reader.join().unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let mut buf = [0u8; 1];
        let got = peer.read(&mut buf);
        assert!(
            matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
                || matches!(got, Ok(0)),
            "{got:?}"
        );
    }
}
