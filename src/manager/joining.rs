//! A manager joining a cluster gets the cluster's keys before it starts:
//! with the manager join token it checks that the manager it asks holds
//! the cluster's CA (the token pins its digest), then sends the token's
//! secret and gets the CA's certificate and key, the join tokens and the
//! first admin token's secret. They are written to its data dir where a
//! first manager keeps its own, so from then on it starts as any manager
//! does; its Raft starts empty and it asks to be added once it serves
//! (`consensus::ask_to_join`).

use std::path::Path;

use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::client::{Client, ClientError};
use crate::security::files::{admin_token_path, manager_token_path, pki_dir, worker_token_path};
use crate::security::pki::{digest_of_pem, write_file};
use crate::security::secret::JoinToken;
use crate::security::tls::{Expect, Trust, unverified_client};
use crate::wire::ManagerJoinRequest;

/// Whether this data dir already holds a cluster's keys.
pub fn has_keys(data_dir: &Path) -> bool {
    pki_dir(data_dir).join("ca.crt").exists()
}

/// The longest wait between tries to reach a manager.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a try to get the keys failed: a manager not reached is tried again.
enum Failed {
    Unreachable(ClientError),
    Refused(anyhow::Error),
}

impl From<anyhow::Error> for Failed {
    fn from(e: anyhow::Error) -> Self {
        Failed::Refused(e)
    }
}

impl From<crate::security::SecurityError> for Failed {
    fn from(e: crate::security::SecurityError) -> Self {
        Failed::Refused(e.into())
    }
}

fn asked(what: &str, join: &str) -> impl FnOnce(ClientError) -> Failed {
    let what = format!("manager: {join} {what}");
    move |e| {
        if e.is_unreachable() {
            Failed::Unreachable(e)
        } else {
            Failed::Refused(anyhow::Error::new(e).context(what))
        }
    }
}

/// Gets the cluster's keys through the managers at `join` (one URL, or
/// several separated by commas) with the manager join token `token`. A
/// manager not up yet is waited for; a refusal is an error.
pub async fn fetch_keys(data_dir: &Path, join: &str, token: &str) -> anyhow::Result<()> {
    let token: JoinToken = token
        .parse()
        .context("manager: the manager join token is not one")?;
    let mut wait = Duration::from_millis(100);
    loop {
        match try_fetch(data_dir, join, &token).await {
            Ok(()) => return Ok(()),
            Err(Failed::Refused(e)) => return Err(e),
            Err(Failed::Unreachable(e)) => {
                log::warn!("manager: cannot reach {join} to join ({e}); trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

async fn try_fetch(data_dir: &Path, join: &str, token: &JoinToken) -> Result<(), Failed> {
    // The CA is public; what matters is that it is the one the token pins.
    let anyone = Client::new(join, &unverified_client()?).map_err(asked("", join))?;
    let ca = anyone
        .ca_certificate()
        .await
        .map_err(asked("did not give its CA", join))?
        .ca;
    let found = digest_of_pem(&ca)?;
    if found != token.ca_digest {
        return Err(Failed::Refused(anyhow!(
            "manager: refusing to join {}: its CA has digest {found}, the manager join token pins {}",
            anyone.base(),
            token.ca_digest
        )));
    }
    let manager = Client::new(join, &Trust::from_pem(&ca)?.client(Expect::Manager)?)
        .map_err(asked("", join))?;
    let keys = manager
        .manager_join(&ManagerJoinRequest {
            secret: token.secret.clone(),
        })
        .await
        .map_err(asked("did not hand over the cluster's keys", join))?;
    if digest_of_pem(&keys.ca_cert)? != token.ca_digest {
        return Err(Failed::Refused(anyhow!(
            "manager: the CA handed over is not the one the token pins"
        )));
    }
    let pki = pki_dir(data_dir);
    write_file(&pki.join("ca.key"), keys.ca_key.as_bytes(), true)?;
    write_file(&pki.join("ca.crt"), keys.ca_cert.as_bytes(), false)?;
    let line = |text: &str| format!("{}\n", text.trim());
    write_file(
        &worker_token_path(data_dir),
        line(&keys.worker_token).as_bytes(),
        true,
    )?;
    write_file(
        &manager_token_path(data_dir),
        line(&keys.manager_token).as_bytes(),
        true,
    )?;
    write_file(
        &admin_token_path(data_dir),
        line(&keys.admin_secret).as_bytes(),
        true,
    )?;
    log::info!("manager: got the cluster's keys from {}", manager.base());
    Ok(())
}
