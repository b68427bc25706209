//! Who a certificate speaks for. Every node certificate the cluster CA
//! issues names its holder in a URI subject alternative name,
//! `cube://manager/<name>` or `cube://worker/<name>`; a peer's identity is
//! read from there (its chain having been verified against the CA by
//! rustls), never from anything the peer says in a request.
//!
//! A worker's name may be removed from the cluster (`cube node rm`) and
//! join again later: each removal starts a new generation of the name, and
//! a certificate names the generation it was issued for
//! (`cube://worker/<name>?g=<generation>`, none written for generation 0),
//! so the manager refuses every certificate of an older one.

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

/// The generation of its name a connection's client certificate was
/// issued for (beside its [`Identity`] in the connection's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(pub u64);

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

    /// The URI this identity is written as in a certificate of its name's
    /// `generation`.
    pub fn uri(&self, generation: u64) -> String {
        match generation {
            0 => format!("{SCHEME}{}/{}", self.role.as_str(), self.name),
            g => format!("{SCHEME}{}/{}?g={g}", self.role.as_str(), self.name),
        }
    }

    /// Reads an identity URI; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::from_uri_with_generation(uri).map(|(id, _)| id)
    }

    /// Reads an identity URI and the generation it names.
    fn from_uri_with_generation(uri: &str) -> Option<(Self, u64)> {
        let rest = uri.strip_prefix(SCHEME)?;
        let (rest, generation) = match rest.split_once('?') {
            None => (rest, 0),
            Some((rest, query)) => {
                let g: u64 = query.strip_prefix("g=")?.parse().ok()?;
                (rest, g)
            }
        };
        let (role, name) = rest.split_once('/')?;
        let role = match role {
            "manager" => PeerRole::Manager,
            "worker" => PeerRole::Worker,
            _ => return None,
        };
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let id = Identity {
            role,
            name: name.to_string(),
        };
        Some((id, generation))
    }

    /// The identity a DER certificate names (exactly one is required).
    pub fn of_cert(der: &[u8]) -> Result<Self, SecurityError> {
        Self::of_cert_with_generation(der).map(|(id, _)| id)
    }

    /// The identity a DER certificate names, and the generation of the
    /// name it was issued for.
    pub fn of_cert_with_generation(der: &[u8]) -> Result<(Self, u64), SecurityError> {
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
                GeneralName::URI(uri) => Identity::from_uri_with_generation(uri),
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
            assert_eq!(Identity::from_uri(&id.uri(0)), Some(id.clone()));
            assert_eq!(
                Identity::from_uri_with_generation(&id.uri(7)),
                Some((id, 7))
            );
        }
        assert_eq!(Identity::worker("w1").uri(0), "cube://worker/w1");
        assert_eq!(Identity::worker("w1").uri(3), "cube://worker/w1?g=3");
        for uri in [
            "cube://worker/w1?g=",
            "cube://worker/w1?g=-1",
            "cube://worker/w1?x=1",
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
