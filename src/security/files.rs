//! What a node keeps on disk, under its data dir:
//!
//! ```text
//! pki/ca.crt        the cluster CA certificate (every node)
//! pki/ca.key        its key (the manager only; 0600)
//! pki/manager.crt   the manager's certificate, issued again at every start
//! pki/manager.key   (0600)
//! pki/node.crt      a worker's certificate, from joining (or, in dev, from
//! pki/node.key      its own manager's CA); the key never leaves the node
//! worker.token      the join token for workers (manager; 0600)
//! admin.token       the first admin token's secret (manager; 0600)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SecurityError;
use super::identity::Identity;
use super::pki::{Ca, KeyedCert, read, write_file};
use super::secret::{JoinToken, random_secret};
use super::tls::NodeTls;

/// The manager's name in its certificate (one manager per cluster, until
/// managers are replicated).
pub const MANAGER_NAME: &str = "manager";

pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

pub fn ca_path(data_dir: &Path) -> PathBuf {
    pki_dir(data_dir).join("ca.crt")
}

pub fn worker_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("worker.token")
}

pub fn manager_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("manager.token")
}

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// What a manager holds.
pub struct ManagerKeys {
    pub ca: Ca,
    pub tls: NodeTls,
    pub join_token: JoinToken,
    /// The token managers join with.
    pub manager_token: JoinToken,
    pub admin_secret: String,
    /// Whether the CA was made by this start (a new cluster).
    pub new_cluster: bool,
}

/// The manager's keys: the CA and tokens made on first start and kept,
/// and a certificate for `hosts` issued now, good for `lifetime` (as long
/// as the workers' certificates: `[manager] node_cert_ttl_s`).
pub fn manager_keys(
    data_dir: &Path,
    hosts: &[String],
    lifetime: Duration,
) -> Result<ManagerKeys, SecurityError> {
    let pki = pki_dir(data_dir);
    let (ca, new_cluster) = Ca::load_or_create(&pki)?;
    let issued = ca.issue(&Identity::manager(MANAGER_NAME), 0, hosts, lifetime)?;
    save_keyed(&pki, "manager", &issued)?;
    let tls = NodeTls::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)?;

    let join_token = token_file(&worker_token_path(data_dir), &ca)?;
    let manager_token = token_file(&manager_token_path(data_dir), &ca)?;
    let admin_path = admin_token_path(data_dir);
    let admin_secret = match read(&admin_path) {
        Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
        _ => {
            let secret = random_secret()?;
            write_file(&admin_path, format!("{secret}\n").as_bytes(), true)?;
            secret
        }
    };
    Ok(ManagerKeys {
        ca,
        tls,
        join_token,
        manager_token,
        admin_secret,
        new_cluster,
    })
}

/// The join token kept at `path`, or a new one for `ca` (written there).
fn token_file(path: &Path, ca: &Ca) -> Result<JoinToken, SecurityError> {
    match read(path)
        .ok()
        .and_then(|text| text.parse::<JoinToken>().ok())
    {
        Some(token) if token.ca_digest == ca.digest() => Ok(token),
        _ => {
            let token = JoinToken::new(ca.digest())?;
            write_file(path, format!("{token}\n").as_bytes(), true)?;
            Ok(token)
        }
    }
}

fn save_keyed(pki: &Path, stem: &str, issued: &KeyedCert) -> Result<(), SecurityError> {
    write_file(
        &pki.join(format!("{stem}.key")),
        issued.key_pem.as_bytes(),
        true,
    )?;
    write_file(
        &pki.join(format!("{stem}.crt")),
        issued.cert_pem.as_bytes(),
        false,
    )
}

/// Saves a renewed certificate and its key as `pki/<stem>.crt` / `.key`.
pub fn save_own_keys(
    data_dir: &Path,
    stem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), SecurityError> {
    save_keyed(
        &pki_dir(data_dir),
        stem,
        &KeyedCert {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        },
    )
}

/// A worker's certificate and key (what it forgets when removed from the
/// cluster; the CA stays).
pub fn node_cert_paths(data_dir: &Path) -> Vec<PathBuf> {
    let pki = pki_dir(data_dir);
    vec![pki.join("node.crt"), pki.join("node.key")]
}

/// A worker's certificate, key and CA, as saved by [`save_node_keys`];
/// `None` when the worker has not joined yet.
pub fn load_node_keys(data_dir: &Path) -> Result<Option<NodeTls>, SecurityError> {
    let pki = pki_dir(data_dir);
    let (ca, crt, key) = (
        pki.join("ca.crt"),
        pki.join("node.crt"),
        pki.join("node.key"),
    );
    if !(ca.exists() && crt.exists() && key.exists()) {
        return Ok(None);
    }
    NodeTls::from_pem(&read(&ca)?, &read(&crt)?, &read(&key)?).map(Some)
}

/// Saves what a worker got by joining: the CA, its certificate, its key.
pub fn save_node_keys(
    data_dir: &Path,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<NodeTls, SecurityError> {
    let tls = NodeTls::from_pem(ca_pem, cert_pem, key_pem)?;
    let pki = pki_dir(data_dir);
    write_file(&pki.join("ca.crt"), ca_pem.as_bytes(), false)?;
    save_keyed(
        &pki,
        "node",
        &KeyedCert {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        },
    )?;
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_manager_keeps_its_ca_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["127.0.0.1".to_string()];
        let first = manager_keys(dir.path(), &hosts, Duration::from_secs(3600)).unwrap();
        assert!(first.new_cluster);
        let again = manager_keys(dir.path(), &hosts, Duration::from_secs(3600)).unwrap();
        assert!(!again.new_cluster);
        assert_eq!(first.ca.digest(), again.ca.digest());
        assert_eq!(first.join_token, again.join_token);
        assert_eq!(first.admin_secret, again.admin_secret);
        assert_eq!(first.join_token.ca_digest, first.ca.digest());
        assert_eq!(
            again.tls.identity().unwrap(),
            Identity::manager(MANAGER_NAME)
        );
        use std::os::unix::fs::PermissionsExt as _;
        for f in [
            "worker.token",
            "admin.token",
            "pki/ca.key",
            "pki/manager.key",
        ] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(load_node_keys(dir.path()).unwrap().is_none());
    }
}
