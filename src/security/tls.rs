//! rustls configurations (ring as the one crypto provider): the server side
//! of every listener and the client side of every call. A client checks
//! the chain against the cluster CA, the address against the certificate's
//! names, and then who the certificate says the peer is: a user's CLI and a
//! worker accept only a manager, the manager accepts only the worker it
//! meant to call. A certificate of another node of the same cluster cannot
//! stand in for the manager.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::SecurityError;
use super::identity::{Identity, PeerRole};

/// The crypto provider of every configuration.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who a client expects to find at the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A manager of the cluster.
    Manager,
    /// The worker of this name.
    Worker(String),
}

impl Expect {
    fn admits(&self, id: &Identity) -> bool {
        match self {
            Expect::Manager => id.role == PeerRole::Manager,
            Expect::Worker(name) => id.role == PeerRole::Worker && &id.name == name,
        }
    }
}

/// Whether a listener asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Users come with a token and no certificate; nodes with one.
    Optional,
    /// Only nodes of the cluster may connect.
    Required,
}

/// The cluster CA certificate, trusted by every node and user.
#[derive(Debug, Clone)]
pub struct Trust {
    ca: CertificateDer<'static>,
    pem: String,
}

impl Trust {
    pub fn from_pem(ca_pem: &str) -> Result<Self, SecurityError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| SecurityError::Certificate(format!("the CA is not PEM: {e}")))?;
        Ok(Trust {
            ca,
            pem: ca_pem.to_string(),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, SecurityError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// A client that presents no certificate (a user).
    pub fn client(&self, expect: Expect) -> Result<ClientConfig, SecurityError> {
        let verifier = self.verifier(expect)?;
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    fn verifier(&self, expect: Expect) -> Result<Arc<ExpectPeer>, SecurityError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(|e| SecurityError::Certificate(e.to_string()))?;
        Ok(Arc::new(ExpectPeer { inner, expect }))
    }
}

/// What a node holds: the CA it trusts, and its certificate with its key.
/// Clones share the certificate: [`NodeTls::renew`] swaps it for every
/// listener and client made from any clone, from their next handshake on
/// (an atomic swap of an immutable value, as a watch channel publishes).
#[derive(Debug, Clone)]
pub struct NodeTls {
    trust: Trust,
    current: Arc<Current>,
}

/// The node's certificate and key now, for rustls to present.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, SecurityError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SecurityError::Certificate(format!("the certificate is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(SecurityError::Certificate(
            "no certificate in the PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| SecurityError::Certificate(format!("the key is not PEM: {e}")))?;
    Ok(CertifiedKey::from_der(chain, key, &provider())?)
}

impl NodeTls {
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, SecurityError> {
        let trust = Trust::from_pem(ca_pem)?;
        let current = certified(cert_pem, key_pem)?;
        Ok(NodeTls {
            trust,
            current: Arc::new(Current(ArcSwap::from_pointee(current))),
        })
    }

    /// Presents this certificate and key from now on, everywhere.
    pub fn renew(&self, cert_pem: &str, key_pem: &str) -> Result<(), SecurityError> {
        let next = certified(cert_pem, key_pem)?;
        let (now, then) = (self.identity()?, Identity::of_cert(&next.cert[0])?);
        if now != then {
            return Err(SecurityError::Certificate(format!(
                "the new certificate names {then}, not {now}"
            )));
        }
        self.current.0.store(Arc::new(next));
        Ok(())
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The certificate presented now (DER).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.current.0.load().cert[0].clone()
    }

    /// Who this node's certificate says it is.
    pub fn identity(&self) -> Result<Identity, SecurityError> {
        Identity::of_cert(&self.certificate())
    }

    /// The server side of this node's listener.
    pub fn server(&self, clients: ClientCerts) -> Result<ServerConfig, SecurityError> {
        let builder = WebPkiClientVerifier::builder_with_provider(self.trust.roots()?, provider());
        let builder = match clients {
            ClientCerts::Optional => builder.allow_unauthenticated(),
            ClientCerts::Required => builder,
        };
        let verifier = builder
            .build()
            .map_err(|e| SecurityError::Certificate(e.to_string()))?;
        Ok(ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.current.clone()))
    }

    /// A client that presents this node's certificate.
    pub fn client(&self, expect: Expect) -> Result<ClientConfig, SecurityError> {
        let verifier = self.trust.verifier(expect)?;
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.current.clone()))
    }
}

/// A client that checks nothing about the server: only to fetch the CA
/// certificate before joining, which the joining node then checks against
/// the digest in its join token.
pub fn unverified_client() -> Result<ClientConfig, SecurityError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
        .with_no_client_auth())
}

/// The CA's checks, then the peer's identity.
#[derive(Debug)]
struct ExpectPeer {
    inner: Arc<WebPkiServerVerifier>,
    expect: Expect,
}

#[derive(Debug, thiserror::Error)]
#[error("the server's certificate names {found}, not {expected:?}")]
struct WrongPeer {
    found: String,
    expected: Expect,
}

impl ServerCertVerifier for ExpectPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let found = match Identity::of_cert(end_entity) {
            Ok(id) if self.expect.admits(&id) => return Ok(verified),
            Ok(id) => id.to_string(),
            Err(e) => e.to_string(),
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(WrongPeer {
                found,
                expected: self.expect.clone(),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate (signatures still checked).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
