//! The protocols an upstream speaks besides plain HTTP/1.1: h2c, served with the h2 crate so that
//! it can refuse streams and send GOAWAY like a real server under load or shutting down, and
//! HTTP/1.1 or HTTP/2 over TLS with certificates from a private CA made for the test, with or
//! without requiring a client certificate.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};

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
    /// HTTP/2 over TLS: ALPN offers `h2` alone, so a client that does not ask for it fails.
    #[cfg(feature = "rustls")]
    H2Tls(Arc<TestCa>),
    /// HTTP/1.1 over TLS, requiring a client certificate signed by this CA.
    #[cfg(feature = "rustls")]
    MutualTls(Arc<TestCa>),
}

impl Proto {
    /// A peer builder for an upstream of this protocol at `addr`.
    pub fn peer_builder(&self, addr: String) -> pingora_failover::PeerBuilder {
        let b = pingora_failover::Peer::builder(addr);
        use pingora_failover::HttpVersion;
        match self {
            Proto::H1 => b,
            Proto::H2c => b.with_http_version(HttpVersion::Http2),
            #[cfg(feature = "rustls")]
            Proto::Tls(ca) | Proto::MutualTls(ca) => b.with_tls("localhost").with_ca_pem(ca.pem()),
            #[cfg(feature = "rustls")]
            Proto::H2Tls(ca) => b
                .with_tls("localhost")
                .with_ca_pem(ca.pem())
                .with_http_version(HttpVersion::Http2),
        }
    }
}

/// Serves one HTTP/2 connection, each stream on its own task.
pub(super) async fn serve_h2<T: AsyncRead + AsyncWrite + Unpin>(
    mut tcp: T,
    name: &'static str,
    mode: Arc<Mutex<Mode>>,
    state: Arc<State>,
) {
    serve_h2_streams(&mut tcp, name, mode, state).await;
    // A lingering close, as a server shutting down gracefully does: the client's frames still
    // in flight are read, so that closing does not reset the connection, which would throw
    // away the GOAWAY the client has not read yet.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn serve_h2_streams<T: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut T,
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
                parts.uri,
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

/// A private certificate authority, a certificate it signed for `localhost` and 127.0.0.1, the
/// TLS acceptors that serve it, and a client certificate it signed.
#[cfg(feature = "rustls")]
pub struct TestCa {
    ca_pem: String,
    h1: tokio_rustls::TlsAcceptor,
    h2: tokio_rustls::TlsAcceptor,
    mutual: tokio_rustls::TlsAcceptor,
    client: (String, String),
}

#[cfg(feature = "rustls")]
impl TestCa {
    pub fn new() -> Arc<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["proxy.test".into()])
            .unwrap()
            .signed_by(&client_key, &ca)
            .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = || {
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
        };
        let chain = || vec![leaf.der().clone()];
        let server_key = || PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let acceptor =
            |config: rustls::ServerConfig| tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let h1 = builder()
            .with_no_client_auth()
            .with_single_cert(chain(), server_key())
            .unwrap();
        let mut h2 = builder()
            .with_no_client_auth()
            .with_single_cert(chain(), server_key())
            .unwrap();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mutual = builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(), server_key())
            .unwrap();
        Arc::new(Self {
            ca_pem: ca.pem(),
            h1: acceptor(h1),
            h2: acceptor(h2),
            mutual: acceptor(mutual),
            client: (client.pem(), client_key.serialize_pem()),
        })
    }

    /// The acceptor for an upstream speaking `proto`.
    pub(super) fn acceptor(&self, proto: &Proto) -> &tokio_rustls::TlsAcceptor {
        match proto {
            Proto::H2Tls(_) => &self.h2,
            Proto::MutualTls(_) => &self.mutual,
            _ => &self.h1,
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate this CA signed, and its key, PEM.
    pub fn client_cert(&self) -> (&str, &str) {
        (&self.client.0, &self.client.1)
    }
}
