//! Who a certificate speaks for. Every node certificate the cluster CA
//! issues names its holder in a URI subject alternative name,
//! `cube://manager/<name>` or `cube://worker/<name>`; a peer's identity is
//! read from there (its chain having been verified against the CA by
//! rustls), never from anything the peer says in a request.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::SecurityError;

/// What a node is to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    Manager,
    Worker,
}

impl PeerRole {
    fn as_str(self) -> &'static str {
        match self {
            PeerRole::Manager => "manager",
            PeerRole::Worker => "worker",
        }
    }
}

/// A node of the cluster, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: PeerRole,
    pub name: String,
}

const SCHEME: &str = "cube://";

impl Identity {
    pub fn manager(name: &str) -> Self {
        Identity {
            role: PeerRole::Manager,
            name: name.to_string(),
        }
    }

    pub fn worker(name: &str) -> Self {
        Identity {
            role: PeerRole::Worker,
            name: name.to_string(),
        }
    }

    /// The URI this identity is written as in a certificate.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role.as_str(), self.name)
    }

    /// Reads an identity URI; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(SCHEME)?;
        let (role, name) = rest.split_once('/')?;
        let role = match role {
            "manager" => PeerRole::Manager,
            "worker" => PeerRole::Worker,
            _ => return None,
        };
        if name.is_empty() || name.contains('/') {
            return None;
        }
        Some(Identity {
            role,
            name: name.to_string(),
        })
    }

    /// The identity a DER certificate names (exactly one is required).
    pub fn of_cert(der: &[u8]) -> Result<Self, SecurityError> {
        let bad = |why: String| SecurityError::Certificate(why);
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| bad(format!("cannot parse: {e}")))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| bad(format!("bad subject alternative names: {e}")))?;
        let mut found = sans
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Identity::from_uri(uri),
                _ => None,
            });
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(bad("it names no Cube node".into())),
            (Some(_), Some(_)) => Err(bad("it names more than one Cube node".into())),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_others_are_not_identities() {
        for id in [Identity::manager("m1"), Identity::worker("w-1")] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
        for uri in [
            "cube://admin/x",
            "cube://worker/",
            "cube://worker/a/b",
            "https://worker/w1",
            "cube:/worker/w1",
        ] {
            assert_eq!(Identity::from_uri(uri), None, "{uri}");
        }
    }
}
