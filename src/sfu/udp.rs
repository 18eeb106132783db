//! An engine's UDP socket, which every peer of its rooms shares.
//!
//! Receive: batched (`recvmmsg` through quinn-udp, which also reports each datagram's destination
//! address via IP_PKTINFO: ICE needs to know which of our announced addresses a datagram reached).
//! Send: batched with `sendmmsg`, up to [`SEND_BATCH`] datagrams, each to its own destination, in
//! one system call. Demultiplexing to peers is the engine's job (see `demux.rs`).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams handed to the kernel per `sendmmsg`.
pub const SEND_BATCH: usize = 32;
/// Receive buffers per `recvmmsg`.
const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
/// Largest datagram we accept; media is far below this, GRO may coalesce up to it.
const RECV_BUF: usize = 64 * 1024;

pub struct MediaSocket {
    socket: UdpSocket,
    /// An IPv6 socket: IPv4 peers (on a dual-stack one) are addressed as `::ffff:a.b.c.d`.
    ipv6: bool,
    state: UdpSocketState,
    recv_bufs: Vec<Box<[u8]>>,
    recv_meta: Vec<RecvMeta>,
}

/// One datagram received: where it came from, which local address it reached, its bytes.
pub struct Datagram<'a> {
    pub source: SocketAddr,
    pub destination_ip: Option<IpAddr>,
    pub payload: &'a [u8],
}

/// Binds a media socket (non-blocking, large buffers); [`MediaSocket::from_std`] then takes it
/// into the runtime of the thread that will drive it. `[::]` is dual-stack: IPv4 and IPv6
/// clients on one port.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    // Large buffers absorb bursts (a keyframe fanned out to many subscribers).
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl MediaSocket {
    #[cfg(test)]
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::from_std(bind(addr)?)
    }

    /// Must run inside the tokio runtime that will poll the socket.
    pub fn from_std(std_socket: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&std_socket).into())?;
        let ipv6 = std_socket.local_addr()?.is_ipv6();
        let socket = UdpSocket::from_std(std_socket)?;
        Ok(Self {
            socket,
            ipv6,
            state,
            recv_bufs: (0..RECV_BATCH)
                .map(|_| vec![0u8; RECV_BUF].into_boxed_slice())
                .collect(),
            recv_meta: vec![RecvMeta::default(); RECV_BATCH],
        })
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receives what is queued without waiting and hands each datagram to `on_datagram`.
    /// Stops after about `budget` datagrams so one busy socket cannot starve commands and timers.
    /// Returns how many were received; 0 when nothing was waiting.
    pub fn drain(
        &mut self,
        budget: usize,
        mut on_datagram: impl FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        let mut total = 0;
        while total < budget {
            let mut slices: Vec<IoSliceMut<'_>> = self
                .recv_bufs
                .iter_mut()
                .map(|b| IoSliceMut::new(&mut b[..]))
                .collect();
            let meta = &mut self.recv_meta;
            let state = &self.state;
            let socket = &self.socket;
            let received = socket.try_io(Interest::READABLE, || {
                state.recv(socket.into(), &mut slices, meta)
            });
            let count = match received {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                // ICMP errors surface as recv errors on Linux; they concern one remote, not us.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            drop(slices);
            for (meta, buf) in self.recv_meta.iter().zip(self.recv_bufs.iter()).take(count) {
                // GRO may coalesce several datagrams of one sender into one buffer.
                let stride = meta.stride.max(1);
                for chunk in buf[..meta.len].chunks(stride) {
                    total += 1;
                    // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d: the
                    // demux, ICE and our candidates know it by its IPv4 address.
                    on_datagram(Datagram {
                        source: crate::net::canonical(meta.addr),
                        destination_ip: meta.dst_ip.map(|ip| ip.to_canonical()),
                        payload: chunk,
                    });
                }
            }
        }
        Ok(total)
    }

    /// Sends `datagrams` in batches, in order, as long as the kernel takes them; never waits.
    /// Returns how many were sent (or given up on: an error about one remote skips it); the
    /// rest is for the next call, once the socket is writable again.
    pub fn try_send(&self, datagrams: &[(SocketAddr, bytes::BytesMut)]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < datagrams.len() {
            let batch = &datagrams[sent..datagrams.len().min(sent + SEND_BATCH)];
            match self.socket.try_io(Interest::WRITABLE, || {
                sendmmsg(&self.socket, self.ipv6, batch)
            }) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_transient(&e) => sent += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Sends all of `datagrams`, waiting for the socket when its buffer is full.
    #[cfg(test)]
    pub async fn send_all(&self, datagrams: &[(SocketAddr, bytes::BytesMut)]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < datagrams.len() {
            sent += self.try_send(&datagrams[sent..])?;
            if sent < datagrams.len() {
                self.socket.writable().await?;
            }
        }
        Ok(sent)
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EMSGSIZE
                | libc::EPERM
        )
    )
}

#[cfg(target_os = "linux")]
fn sendmmsg(
    socket: &UdpSocket,
    ipv6: bool,
    batch: &[(SocketAddr, bytes::BytesMut)],
) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    debug_assert!(batch.len() <= SEND_BATCH);
    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(_, p)| [IoSlice::new(p)]).collect();
    let addresses: Vec<Option<SockaddrStorage>> = batch
        .iter()
        .map(|(destination, _)| {
            Some(SockaddrStorage::from(crate::net::on_wire(
                ipv6,
                *destination,
            )))
        })
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
    let sent = nix::sys::socket::sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        &slices,
        &addresses,
        [],
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

#[cfg(not(target_os = "linux"))]
fn sendmmsg(
    socket: &UdpSocket,
    ipv6: bool,
    batch: &[(SocketAddr, bytes::BytesMut)],
) -> io::Result<usize> {
    let (destination, payload) = &batch[0];
    socket
        .try_send_to(payload, crate::net::on_wire(ipv6, *destination))
        .map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dual_stack_socket_knows_ipv4_clients_by_their_ipv4_address() {
        let mut server = MediaSocket::bind("[::]:0".parse().unwrap()).unwrap();
        let port = server.socket.local_addr().unwrap().port();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        v4.send_to(b"four", ("127.0.0.1", port)).unwrap();
        v6.send_to(b"six", ("::1", port)).unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            server.readable().await.unwrap();
            server
                .drain(8, |d| {
                    seen.push((d.source, d.destination_ip, d.payload.to_vec()));
                })
                .unwrap();
        }
        seen.sort_by_key(|s| s.2.clone());
        assert_eq!(seen[0].0, v4.local_addr().unwrap());
        assert_eq!(seen[0].1, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(seen[1].0, v6.local_addr().unwrap());
        assert_eq!(seen[1].1, Some("::1".parse().unwrap()));
        // Answers go back to both, the IPv4 one written mapped.
        let replies = vec![
            (
                v4.local_addr().unwrap(),
                bytes::BytesMut::from(&b"to four"[..]),
            ),
            (
                v6.local_addr().unwrap(),
                bytes::BytesMut::from(&b"to six"[..]),
            ),
        ];
        server.send_all(&replies).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = v4.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to four");
        let (n, _) = v6.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"to six");
    }

    #[tokio::test]
    async fn batched_send_reaches_every_destination() {
        let mut server = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let batch: Vec<_> = (0..40u8)
            .map(|i| {
                let to = if i % 2 == 0 {
                    a.local_addr().unwrap()
                } else {
                    b.local_addr().unwrap()
                };
                (to, bytes::BytesMut::from(&[i; 100][..]))
            })
            .collect();
        assert_eq!(server.send_all(&batch).await.unwrap(), 40);
        let mut buf = [0u8; 200];
        for expected in (0..40u8).step_by(2) {
            let (n, _) = a.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[expected; 100][..]);
        }

        a.send_to(b"hello", server.socket.local_addr().unwrap())
            .unwrap();
        server.readable().await.unwrap();
        let mut got = Vec::new();
        server
            .drain(64, |d| {
                got.push((d.source, d.destination_ip, d.payload.to_vec()))
            })
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, a.local_addr().unwrap());
        assert_eq!(got[0].1, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(got[0].2, b"hello");
    }
}
