//! TLS material from PEM, turned into what pingora's TLS back-end takes: the CAs a peer is
//! trusted by, and a client certificate with its key. Everything is parsed and checked here,
//! when the peer is built: pingora parses again when it connects, and panics on bad input there.

use std::sync::Arc;

use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::CertKey;

/// Whether the pingora this crate runs on has a TLS back-end, whichever crate enabled it: with
/// none, pingora's stand-in `CertKey` has no fields. Without a back-end, pingora would connect
/// to a TLS peer in clear text.
pub(crate) const PINGORA_HAS_TLS: bool = std::mem::size_of::<CertKey>() != 0;

pub(crate) use backend::{ca_from_pem, cert_key_from_pem};

#[cfg(feature = "rustls")]
mod backend {
    use super::*;
    use pingora_core::tls::RootCertStore;
    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// Every certificate in `pem`, each checked to parse as X.509 by the parser pingora's
    /// `parse_x509` uses (it panics where this returns an error) and by webpki, which rustls
    /// uses.
    fn certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no CERTIFICATE block".into());
        }
        let mut check = RootCertStore::empty();
        for cert in &certs {
            X509Certificate::from_der(cert)
                .map_err(|e| format!("not an X.509 certificate: {e}"))?;
            check
                .add(cert.clone())
                .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        }
        Ok(certs.iter().map(|c| c.to_vec()).collect())
    }

    pub(crate) fn ca_from_pem(pem: &[u8]) -> Result<Arc<CaType>, String> {
        let certs = certificates(pem)?;
        Ok(certs
            .into_iter()
            .map(|der| WrappedX509::new(der, parse_x509))
            .collect())
    }

    pub(crate) fn cert_key_from_pem(cert: &[u8], key: &[u8]) -> Result<Arc<CertKey>, String> {
        let certs = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key: {e}"))?;
        let der = key.secret_der().to_vec();
        // What pingora's connector does with it, unwrapping (RFC 5208/5915/8017 structure).
        PrivateKeyDer::try_from(der.as_slice()).map_err(|e| format!("key: {e}"))?;
        Ok(Arc::new(CertKey::new(certs, der)))
    }
}

#[cfg(all(
    any(feature = "openssl", feature = "boringssl"),
    not(feature = "rustls")
))]
mod backend {
    use super::*;
    use pingora_core::tls::pkey::PKey;
    use pingora_core::tls::x509::X509;

    fn certificates(pem: &[u8]) -> Result<Vec<X509>, String> {
        let certs = X509::stack_from_pem(pem).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no CERTIFICATE block".into());
        }
        Ok(certs)
    }

    pub(crate) fn ca_from_pem(pem: &[u8]) -> Result<Arc<CaType>, String> {
        Ok(Arc::new(certificates(pem)?.into_boxed_slice()))
    }

    pub(crate) fn cert_key_from_pem(cert: &[u8], key: &[u8]) -> Result<Arc<CertKey>, String> {
        let certs = certificates(cert)?;
        let key = PKey::private_key_from_pem(key).map_err(|e| format!("key: {e}"))?;
        Ok(Arc::new(CertKey::new(certs, key)))
    }
}

#[cfg(not(any(feature = "openssl", feature = "boringssl", feature = "rustls")))]
mod backend {
    use super::*;

    const NEEDS_FEATURE: &str = "reading PEM needs one of this crate's features openssl, \
                                 boringssl or rustls (the one pingora is built with)";

    pub(crate) fn ca_from_pem(_: &[u8]) -> Result<Arc<CaType>, String> {
        Err(NEEDS_FEATURE.into())
    }

    pub(crate) fn cert_key_from_pem(_: &[u8], _: &[u8]) -> Result<Arc<CertKey>, String> {
        Err(NEEDS_FEATURE.into())
    }
}

#[cfg(test)]
mod tests {
    /// Where this crate's features decide pingora's back-end, the detection agrees with them
    /// (`make test` builds both ways). A pingora given TLS by another crate alone is detected
    /// too; that build is outside this crate's own feature sets.
    #[test]
    fn detects_the_back_end_the_features_gave_pingora() {
        let by_features = cfg!(any(
            feature = "openssl",
            feature = "boringssl",
            feature = "rustls"
        ));
        assert_eq!(super::PINGORA_HAS_TLS, by_features);
    }
}
