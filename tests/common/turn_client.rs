//! A TURN client written from the RFC (over UDP, TCP or TLS) for the TURN tests: it builds
//! requests with webrtc-rs' STUN/TURN codec and reads the answers.

use std::net::SocketAddr;
use std::time::Duration;

use rtc::stun::attributes::*;
use rtc::stun::error_code::ErrorCodeAttribute;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::*;
use rtc::stun::textattrs::TextAttribute;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::relayaddr::RelayedAddress;
use rtc::turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;
use rtc::turn::proto::reqtrans::RequestedTransport;
use rtc::turn::proto::PROTO_UDP;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// A TURN client written from the RFC, over UDP, TCP or TLS.
pub enum Wire {
    Udp(UdpSocket, SocketAddr),
    Stream(Box<dyn Stream>),
}

pub struct RawClient {
    pub wire: Wire,
    pub realm: String,
    pub nonce: String,
}

/// What the server answered: success or the error code, and the message.
pub struct Answer {
    pub code: Option<u16>,
    pub msg: Message,
}

impl RawClient {
    pub async fn udp(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Self::new(Wire::Udp(socket, server))
    }

    pub async fn tcp(server: SocketAddr) -> Self {
        Self::new(Wire::Stream(Box::new(
            TcpStream::connect(server).await.unwrap(),
        )))
    }

    /// TLS to `server`, trusting the certificate in `cert` (PEM) for 127.0.0.1.
    pub async fn tls(server: SocketAddr, cert: &std::path::Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = TcpStream::connect(server).await.unwrap();
        let name = ServerName::IpAddress(server.ip().into());
        let stream = connector.connect(name, tcp).await.expect("TLS handshake");
        Self::new(Wire::Stream(Box::new(stream)))
    }

    pub fn new(wire: Wire) -> Self {
        Self {
            wire,
            realm: String::new(),
            nonce: String::new(),
        }
    }

    pub async fn exchange(&mut self, request: &Message) -> Answer {
        let raw = match &mut self.wire {
            Wire::Udp(socket, server) => {
                socket.send_to(&request.raw, *server).await.unwrap();
                let mut buf = vec![0u8; 2048];
                let (n, _) =
                    tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                        .await
                        .expect("the TURN server answers")
                        .unwrap();
                buf.truncate(n);
                buf
            }
            Wire::Stream(stream) => {
                stream.write_all(&request.raw).await.unwrap();
                let mut header = [0u8; 20];
                tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
                    .await
                    .expect("the TURN server answers")
                    .unwrap();
                let len = u16::from_be_bytes([header[2], header[3]]) as usize;
                let mut body = vec![0u8; len];
                stream.read_exact(&mut body).await.unwrap();
                [header.to_vec(), body].concat()
            }
        };
        let mut msg = Message::new();
        msg.unmarshal_binary(&raw).unwrap();
        assert_eq!(msg.transaction_id, request.transaction_id);
        let code = if msg.typ.class == CLASS_ERROR_RESPONSE {
            let mut error = ErrorCodeAttribute::default();
            error.get_from(&msg).unwrap();
            Some(error.code.0)
        } else {
            None
        };
        if let (Ok(realm), Ok(nonce)) = (
            TextAttribute::get_from_as(&msg, ATTR_REALM),
            TextAttribute::get_from_as(&msg, ATTR_NONCE),
        ) {
            self.realm = realm.text;
            self.nonce = nonce.text;
        }
        Answer { code, msg }
    }

    /// A request of `method` with `attributes`, signed with `username`/`password` when given.
    pub fn request(
        &self,
        method: Method,
        attributes: Vec<Box<dyn Setter>>,
        credential: Option<(&str, &str)>,
    ) -> Message {
        let provider = rtc::crypto::default_provider().unwrap();
        let mut msg = Message::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(attributes);
        if let Some((username, password)) = credential {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                username.to_owned(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            setters.push(Box::new(
                MessageIntegrity::new_long_term_integrity_with_provider(
                    username.to_owned(),
                    self.realm.clone(),
                    password.to_owned(),
                    provider.crypto(),
                )
                .unwrap(),
            ));
        }
        setters.push(Box::new(FINGERPRINT));
        msg.build(&setters).unwrap();
        msg
    }

    pub async fn allocate(&mut self, credential: Option<(&str, &str)>) -> Answer {
        let request = self.request(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            })],
            credential,
        );
        self.exchange(&request).await
    }
}

/// What an IPv6 allocation on `server` (signed with `secret`) gave.
#[derive(Debug)]
pub struct Ipv6Outcome {
    pub relayed: SocketAddr,
    /// The error code of a permission to `media` (None: granted).
    pub permission_to_media: Option<u16>,
    /// The error code of a permission to an IPv4 peer on the IPv6 relay.
    pub permission_to_ipv4: Option<u16>,
}

pub async fn allocate_ipv6(server: SocketAddr, secret: &str, media: SocketAddr) -> Ipv6Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = convene::turn::credentials::issue(secret.as_bytes(), "six", 600, now);
    let credential = Some((c.username.as_str(), c.password.as_str()));
    let socket = UdpSocket::bind(SocketAddr::new(
        if server.is_ipv6() { "::1" } else { "127.0.0.1" }
            .parse()
            .unwrap(),
        0,
    ))
    .await
    .unwrap();
    let mut client = RawClient::new(Wire::Udp(socket, server));
    client.allocate(None).await;
    let request = client.request(
        METHOD_ALLOCATE,
        vec![
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(REQUESTED_FAMILY_IPV6),
        ],
        credential,
    );
    let answer = client.exchange(&request).await;
    assert_eq!(answer.code, None, "{}", answer.msg);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&answer.msg).unwrap();
    let permission = |peer: SocketAddr| {
        client.request(
            METHOD_CREATE_PERMISSION,
            vec![Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })],
            credential,
        )
    };
    let to_media = permission(media);
    let to_ipv4 = permission("127.0.0.1:9".parse().unwrap());
    Ipv6Outcome {
        relayed: SocketAddr::new(relayed.ip, relayed.port),
        permission_to_media: client.exchange(&to_media).await.code,
        permission_to_ipv4: client.exchange(&to_ipv4).await.code,
    }
}
