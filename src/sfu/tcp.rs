//! ICE-TCP (RFC 6544): an engine's passive TCP candidates, on its media port number. Clients
//! whose UDP is blocked connect here; each connection carries STUN, DTLS and SRTP framed by a
//! two-byte length (RFC 4571). Connection tasks run on the engine's own runtime and talk to the
//! engine through channels: frames in (the engine handles them as it handles datagrams, tagged
//! TCP), framed packets out through a bounded queue per connection (full: the packet drops, as
//! UDP would, rather than stalling the engine).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;
use tracing::debug;

/// Frames queued for one connection's writer.
const WRITE_QUEUE: usize = 1024;
/// A connection that no verified ICE check has bound to a peer within this is closed.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames from all connections waiting for the engine; readers wait past it (TCP backpressure).
pub const EVENT_QUEUE: usize = 4096;

pub enum TcpEvent {
    Opened {
        peer: SocketAddr,
        /// Tells this connection from an earlier one from the same address.
        id: u64,
        writer: mpsc::Sender<Bytes>,
        task: AbortHandle,
    },
    Frame {
        peer: SocketAddr,
        local: SocketAddr,
        data: BytesMut,
    },
    Closed {
        peer: SocketAddr,
        id: u64,
    },
}

struct Connection {
    id: u64,
    writer: mpsc::Sender<Bytes>,
    task: AbortHandle,
    opened: Instant,
    /// A verified check bound its address to a peer at least once.
    bound: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An engine's open ICE-TCP connections, by the client's address.
#[derive(Default)]
pub struct Connections {
    open: FxHashMap<SocketAddr, Connection>,
}

impl Connections {
    /// Takes a new connection; true when it replaced one from the same address (which closes).
    pub fn opened(
        &mut self,
        peer: SocketAddr,
        id: u64,
        writer: mpsc::Sender<Bytes>,
        task: AbortHandle,
    ) -> bool {
        self.open
            .insert(
                peer,
                Connection {
                    id,
                    writer,
                    task,
                    opened: Instant::now(),
                    bound: false,
                },
            )
            .is_some()
    }

    /// Forgets connection `id` from `peer`; false when it was already gone (closed by us, or
    /// replaced by a newer one from the same address).
    pub fn closed(&mut self, peer: SocketAddr, id: u64) -> bool {
        if self.open.get(&peer).is_some_and(|c| c.id == id) {
            self.open.remove(&peer);
            true
        } else {
            false
        }
    }

    /// Sends `packet` on `peer`'s connection, framed; false when there is none or its queue is
    /// full.
    pub fn send(&self, peer: SocketAddr, packet: &[u8]) -> bool {
        let Some(connection) = self.open.get(&peer) else {
            return false;
        };
        let Ok(len) = u16::try_from(packet.len()) else {
            return false;
        };
        let mut framed = BytesMut::with_capacity(2 + packet.len());
        framed.put_u16(len);
        framed.put_slice(packet);
        connection.writer.try_send(framed.freeze()).is_ok()
    }

    /// Closes connections no peer holds: never bound within [`BIND_TIMEOUT`], or whose peer is
    /// gone. `is_bound` says whether an address is bound to a peer now.
    pub fn close_unbound(&mut self, now: Instant, is_bound: impl Fn(SocketAddr) -> bool) -> usize {
        let before = self.open.len();
        self.open.retain(|addr, connection| {
            if is_bound(*addr) {
                connection.bound = true;
                return true;
            }
            !connection.bound && now.duration_since(connection.opened) < BIND_TIMEOUT
        });
        before - self.open.len()
    }
}

/// Binds an ICE-TCP listener (non-blocking, for the engine's runtime); `[::]` is dual-stack.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts ICE-TCP connections, at most as many at once as `slots` has permits.
pub async fn accept(listener: TcpListener, slots: Arc<Semaphore>, events: mpsc::Sender<TcpEvent>) {
    let mut next_id = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "ice-tcp connection refused: too many open");
            continue;
        };
        let peer = crate::net::canonical(peer);
        let Ok(local) = stream.local_addr().map(crate::net::canonical) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let (writer, outgoing) = mpsc::channel(WRITE_QUEUE);
        let events_for_task = events.clone();
        // The engine hears of the connection before any of its frames.
        let (go, registered) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if registered.await.is_err() {
                return;
            }
            serve(stream, peer, local, outgoing, &events_for_task).await;
            let _ = events_for_task.send(TcpEvent::Closed { peer, id }).await;
            drop(permit);
        });
        let opened = TcpEvent::Opened {
            peer,
            id,
            writer,
            task: task.abort_handle(),
        };
        if events.send(opened).await.is_err() {
            task.abort();
            return;
        }
        let _ = go.send(());
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mut outgoing: mpsc::Receiver<Bytes>,
    events: &mpsc::Sender<TcpEvent>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let writing = async {
        while let Some(frame) = outgoing.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    let reading = async {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            while buf.len() >= 2 {
                let len = usize::from((&buf[..2]).get_u16());
                if buf.len() < 2 + len {
                    buf.reserve(2 + len - buf.len());
                    break;
                }
                buf.advance(2);
                let data = buf.split_to(len);
                // Zero-length frames carry nothing (RFC 4571 allows them).
                if !data.is_empty() {
                    let frame = TcpEvent::Frame { peer, local, data };
                    if events.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            match reader.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = writing => {}
        _ = reading => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client puts it on the wire.
    fn frame(packet: &[u8]) -> Vec<u8> {
        let mut out = (packet.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(packet);
        out
    }

    #[tokio::test]
    async fn frames_are_cut_by_their_length_and_answers_are_framed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (events, mut incoming) = mpsc::channel(16);
        let accepting = tokio::spawn(accept(listener, Arc::new(Semaphore::new(4)), events));
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Two frames and an empty one, split across writes mid-frame.
        let mut wire = frame(b"hello");
        wire.extend(frame(b""));
        wire.extend(frame(&[7u8; 300]));
        client.write_all(&wire[..4]).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&wire[4..]).await.unwrap();
        let mut connections = Connections::default();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            match incoming.recv().await.unwrap() {
                TcpEvent::Opened {
                    peer,
                    id,
                    writer,
                    task,
                } => {
                    assert!(!connections.opened(peer, id, writer, task));
                }
                TcpEvent::Frame { local, data, .. } => {
                    assert_eq!(local, addr);
                    frames.push(data.to_vec());
                }
                TcpEvent::Closed { .. } => panic!("closed"),
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), vec![7u8; 300]]);
        let me = client.local_addr().unwrap();
        assert!(connections.send(me, b"answer"));
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x00\x06answer");
        // Unbound past the timeout: closed, and the client sees the end.
        let later = Instant::now() + BIND_TIMEOUT;
        assert_eq!(connections.close_unbound(later, |_| false), 1);
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
        accepting.abort();
    }
}
