//! Security: the cluster's CA and node certificates, who a peer is, the
//! TLS configurations of every listener and client, and secrets (join
//! tokens, user tokens, stored only as their SHA-256).

pub mod files;
pub mod identity;
pub mod peer;
pub mod pki;
pub mod renewal;
pub mod secret;
pub mod tls;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("certificate signing request: {0}")]
    Request(String),
    #[error("cannot make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the system's random generator failed")]
    Random,
    #[error("bad join token: {0}")]
    BadJoinToken(String),
}
