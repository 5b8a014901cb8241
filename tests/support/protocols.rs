//! The protocols an upstream speaks besides plain HTTP/1.1: h2c, served with the h2 crate so that
//! it can refuse streams and send GOAWAY like a real server under load or shutting down, and
//! HTTP/1.1 over TLS with certificates from a private CA made for the test.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use h2::Reason;
use tokio::net::TcpStream;

use super::{handle, Mode, State};

/// What an upstream speaks.
#[derive(Clone)]
pub enum Proto {
    H1,
    /// HTTP/2 in clear, by prior knowledge.
    H2c,
    /// HTTP/1.1 over TLS, with a certificate for `localhost` signed by this CA.
    #[cfg(feature = "rustls")]
    Tls(Arc<TestCa>),
}

impl Proto {
    /// A peer builder for an upstream of this protocol at `addr`.
    pub fn peer_builder(&self, addr: String) -> pingora_failover::PeerBuilder {
        let b = pingora_failover::Peer::builder(addr);
        match self {
            Proto::H1 => b,
            Proto::H2c => b.with_http_peer(|p| p.options.set_http_version(2, 2)),
            #[cfg(feature = "rustls")]
            Proto::Tls(ca) => ca.trusting(b.with_tls("localhost")),
        }
    }
}

/// Serves one h2c connection, each stream on its own task.
pub(super) async fn serve_h2(
    tcp: TcpStream,
    name: &'static str,
    mode: Arc<Mutex<Mode>>,
    state: Arc<State>,
) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    if *mode.lock().unwrap() == Mode::GoAway {
        // Last stream id 0: nothing on this connection was processed.
        conn.abrupt_shutdown(Reason::NO_ERROR);
    }
    let mut streams = tokio::task::JoinSet::new();
    let mut closing = false;
    while let Some(next) = conn.accept().await {
        let Ok((req, mut respond)) = next else { break };
        let now = *mode.lock().unwrap();
        match now {
            Mode::Refuse => {
                state.refused.fetch_add(1, Ordering::SeqCst);
                respond.send_reset(Reason::REFUSED_STREAM);
                continue;
            }
            Mode::Http11Required => {
                respond.send_reset(Reason::HTTP_1_1_REQUIRED);
                continue;
            }
            // This stream was received, so it counts as processed: answer it, then shut down.
            Mode::GoAway if !closing => {
                closing = true;
                conn.graceful_shutdown();
            }
            _ => {}
        }
        let (mode, state) = (mode.clone(), state.clone());
        streams.spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut bytes = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            let resp = handle(
                name,
                mode,
                state,
                parts.method,
                parts.headers,
                Body::from(bytes),
            )
            .await;
            let (parts, body) = resp.into_parts();
            // A gRPC status in the header is a trailers-only response: headers and end of stream.
            let trailers_only = parts.headers.contains_key("grpc-status");
            let head = axum::http::Response::from_parts(parts, ());
            let Ok(mut send) = respond.send_response(head, trailers_only) else {
                return;
            };
            if trailers_only {
                return;
            }
            let mut data = body.into_data_stream();
            while let Some(Ok(chunk)) = data.next().await {
                if send.send_data(chunk, false).is_err() {
                    return;
                }
            }
            let _ = send.send_data(Bytes::new(), true);
        });
        while streams.try_join_next().is_some() {}
    }
    while streams.join_next().await.is_some() {}
}

/// A private certificate authority and a certificate it signed for `localhost` and 127.0.0.1.
#[cfg(feature = "rustls")]
pub struct TestCa {
    ca_der: Vec<u8>,
    acceptor: tokio_rustls::TlsAcceptor,
}

#[cfg(feature = "rustls")]
impl TestCa {
    pub fn new() -> Arc<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use tokio_rustls::rustls;

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Arc::new(Self {
            ca_der: ca.der().to_vec(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub(super) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// `builder` with this CA as its only trusted root.
    pub fn trusting(
        &self,
        builder: pingora_failover::PeerBuilder,
    ) -> pingora_failover::PeerBuilder {
        use pingora_core::utils::tls::{parse_x509, WrappedX509};
        let der = self.ca_der.clone();
        builder.with_http_peer(move |p| {
            let ca: Arc<[WrappedX509]> = Arc::from(vec![WrappedX509::new(der, parse_x509)]);
            p.options.ca = Some(ca);
        })
    }
}
