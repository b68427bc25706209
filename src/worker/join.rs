//! A worker joins its cluster: with the join token it checks that the
//! manager holds the cluster's CA (the token pins its digest), and only
//! then sends the token's secret with a certificate signing request. Its
//! key is made here and never leaves the node. What it gets is saved under
//! `<data_dir>/pki/` and used from then on; the token is not needed again.

use std::path::Path;

use crate::client::{Client, ClientError};
use crate::security::SecurityError;
use crate::security::files::save_node_keys;
use crate::security::identity::Identity;
use crate::security::pki::{digest_of_pem, new_request};
use crate::security::secret::JoinToken;
use crate::security::tls::{Expect, NodeTls, Trust, unverified_client};
use crate::wire::JoinRequest;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "this worker has not joined a cluster yet: give it the manager's worker token ([worker] join_token or CUBE_JOIN_TOKEN; the manager wrote it to <its data_dir>/worker.token)"
    )]
    NoToken,
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(
        "refusing to join {url}: its CA has digest {found}, the join token pins {pinned}; this is not the cluster the token is for"
    )]
    WrongCa {
        url: String,
        found: String,
        pinned: String,
    },
    #[error("cannot join through {url}: {source}")]
    Manager { url: String, source: ClientError },
}

/// Joins through the manager at `url` with `token` (its text); saves and
/// returns what the worker holds from then on.
pub async fn join(
    data_dir: &Path,
    name: &str,
    hosts: &[String],
    url: &str,
    token: Option<&str>,
) -> Result<NodeTls, JoinError> {
    let token: JoinToken = token.ok_or(JoinError::NoToken)?.parse()?;
    let failed = |source| JoinError::Manager {
        url: url.to_string(),
        source,
    };
    // The CA is public; what matters is that it is the one the token pins.
    let anyone = Client::new(url, &unverified_client()?).map_err(failed)?;
    let ca = anyone.ca_certificate().await.map_err(failed)?.ca;
    let found = digest_of_pem(&ca)?;
    if found != token.ca_digest {
        return Err(JoinError::WrongCa {
            url: url.to_string(),
            found,
            pinned: token.ca_digest,
        });
    }
    let manager =
        Client::new(url, &Trust::from_pem(&ca)?.client(Expect::Manager)?).map_err(failed)?;
    let (key, csr) = new_request(&Identity::worker(name))?;
    let reply = manager
        .join(&JoinRequest {
            name: name.to_string(),
            secret: token.secret.clone(),
            hosts: hosts.to_vec(),
            csr,
        })
        .await
        .map_err(failed)?;
    Ok(save_node_keys(
        data_dir,
        &ca,
        &reply.certificate,
        &key.serialize_pem(),
    )?)
}
