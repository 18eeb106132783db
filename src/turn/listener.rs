//! The TURN server's sockets: the UDP listener, and TCP/TLS connections cut into messages (STUN
//! by its length field, ChannelData by its own, padded to four bytes: RFC 8656 §12.5).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::relay::{Client, Event, Sink, Transport};
use crate::metrics::Metrics;
use crate::net::canonical;

/// A connection that sends nothing for this long is closed (a live TURN client refreshes its
/// allocation well within its 10-minute lifetime, and ICE keeps it busy far more often).
const STREAM_IDLE: Duration = Duration::from_secs(11 * 60);
/// A connection that holds no allocation this long after it opened is closed: a client
/// allocates within a round trip or two of connecting, and a slot is not for idling in.
const ALLOCATE_WITHIN: Duration = Duration::from_secs(20);
/// A TLS handshake must finish within this.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Messages queued for a connection that does not read; past it its packets drop.
const STREAM_QUEUE: usize = 512;

pub async fn serve_udp(socket: Arc<UdpSocket>, events: mpsc::Sender<Event>, metrics: Metrics) {
    let mut buf = vec![0u8; 65536];
    let ipv6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let client = Client {
            transport: Transport::Udp,
            addr: canonical(from),
            sink: Sink::Udp(socket.clone(), ipv6),
        };
        let event = Event::FromClient {
            client,
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => metrics.turn_dropped.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Accepts TCP (or, with an acceptor, TLS) clients, at most `connections` at once.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.turn_refused.with_label_values(&["capacity"]).inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (events, tls, metrics) = (events.clone(), tls.clone(), metrics.clone());
        tokio::spawn(async move {
            let from = canonical(from);
            match tls {
                None => serve_stream(stream, from, transport, events, metrics).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_stream(stream, from, transport, events, metrics).await
                        }
                        _ => debug!(client = %from, "turn tls handshake failed"),
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve_stream<S>(
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (queue, mut outgoing) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let writing = tokio::spawn(async move {
        while let Some(data) = outgoing.recv().await {
            if writer.write_all(&data).await.is_err() {
                return;
            }
        }
    });
    let allocated = Arc::new(AtomicBool::new(false));
    let client = Client {
        transport,
        addr,
        sink: Sink::Stream(queue, allocated.clone()),
    };
    let opened = tokio::time::Instant::now();
    let mut buf = BytesMut::with_capacity(4096);
    'read: loop {
        let deadline = if allocated.load(Ordering::Relaxed) {
            tokio::time::Instant::now() + STREAM_IDLE
        } else {
            opened + ALLOCATE_WITHIN
        };
        match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
        loop {
            match frame_len(&buf) {
                Frame::Incomplete => break,
                Frame::Invalid => break 'read,
                Frame::Message { len, padded } => {
                    if buf.len() < padded {
                        // The whole frame, not more than 64 KiB, must fit before it is taken.
                        buf.reserve(padded - buf.len());
                        break;
                    }
                    let data = buf.split_to(padded).freeze().slice(..len);
                    let event = Event::FromClient {
                        client: client.clone(),
                        data,
                    };
                    match events.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => metrics.turn_dropped.inc(),
                        Err(mpsc::error::TrySendError::Closed(_)) => break 'read,
                    }
                }
            }
        }
    }
    drop(client);
    let _ = events.send(Event::Closed { transport, addr }).await;
    writing.abort();
}

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Incomplete,
    Invalid,
    /// A message of `len` bytes, taking `padded` bytes of the stream.
    Message {
        len: usize,
        padded: usize,
    },
}

fn frame_len(buf: &[u8]) -> Frame {
    if buf.len() < 4 {
        return Frame::Incomplete;
    }
    let length = usize::from((&buf[2..4]).get_u16());
    match buf[0] {
        // STUN: a 20-byte header, then attributes whose length is a multiple of four.
        0x00..=0x03 => {
            if length % 4 != 0 {
                return Frame::Invalid;
            }
            Frame::Message {
                len: 20 + length,
                padded: 20 + length,
            }
        }
        0x40..=0x7f => Frame::Message {
            len: 4 + length,
            padded: 4 + length.div_ceil(4) * 4,
        },
        _ => Frame::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_their_own_lengths() {
        assert_eq!(frame_len(&[0, 1, 0]), Frame::Incomplete);
        assert_eq!(
            frame_len(&[0x00, 0x01, 0x00, 0x08]),
            Frame::Message {
                len: 28,
                padded: 28
            }
        );
        assert_eq!(frame_len(&[0x00, 0x01, 0x00, 0x07]), Frame::Invalid);
        assert_eq!(
            frame_len(&[0x40, 0x00, 0x00, 0x05]),
            Frame::Message { len: 9, padded: 12 }
        );
        assert_eq!(
            frame_len(&[0x16, 0x03, 0x01, 0x00]),
            Frame::Invalid,
            "TLS on TCP"
        );
        assert_eq!(frame_len(&[0xff, 0, 0, 0]), Frame::Invalid);
    }
}
