//! The join tokens a manager checks and shows: the worker token and the
//! manager token. Each is the cluster's rotated one (replicated, so the
//! same on every manager, see `core::join_tokens`) or, if it was never
//! rotated, the one in this manager's data dir. [`keep_files`] keeps
//! `<data_dir>/worker.token` and `manager.token` (0600) the cluster's
//! current tokens, so an admin on any manager's machine reads the right
//! one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::core::join_tokens::{JoinRole, JoinTokenTable};
use crate::security::files::{manager_token_path, worker_token_path};
use crate::security::pki::write_file;
use crate::security::secret::{JoinToken, same_secret};

/// What the Manager publishes after every committed rotation.
pub type RotatedTokens = watch::Receiver<Arc<JoinTokenTable>>;

#[derive(Clone)]
pub struct JoinTokens {
    /// The data dir's tokens, as they were at start.
    worker: JoinToken,
    manager: JoinToken,
    rotated: RotatedTokens,
}

impl JoinTokens {
    pub fn new(worker: JoinToken, manager: JoinToken, rotated: RotatedTokens) -> Self {
        JoinTokens {
            worker,
            manager,
            rotated,
        }
    }

    /// The token that lets `role` in now.
    pub fn current(&self, role: JoinRole) -> JoinToken {
        if let Some(token) = self.rotated.borrow().get(&role) {
            return token.clone();
        }
        match role {
            JoinRole::Worker => self.worker.clone(),
            JoinRole::Manager => self.manager.clone(),
        }
    }

    /// Whether `secret` is the secret of `role`'s token now.
    pub fn admits(&self, role: JoinRole, secret: &str) -> bool {
        same_secret(secret, &self.current(role).secret)
    }
}

fn path_of(data_dir: &Path, role: JoinRole) -> PathBuf {
    match role {
        JoinRole::Worker => worker_token_path(data_dir),
        JoinRole::Manager => manager_token_path(data_dir),
    }
}

/// Writes each rotated token to its file whenever the cluster's changes
/// (at start too: a manager killed before it wrote one catches up), and
/// leaves files that already say it alone. Runs until the Manager goes.
pub async fn keep_files(data_dir: PathBuf, mut rotated: RotatedTokens) {
    loop {
        let table = rotated.borrow_and_update().clone();
        for (role, token) in table.iter() {
            let path = path_of(&data_dir, *role);
            let text = format!("{token}\n");
            let role = *role;
            let written = actix_rt::task::spawn_blocking(move || {
                if std::fs::read_to_string(&path).is_ok_and(|now| now == text) {
                    return Ok(false);
                }
                write_file(&path, text.as_bytes(), true)
                    .map(|()| true)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match written {
                Ok(true) => {
                    log::info!("manager: the {role} join token file now holds the cluster's")
                }
                Ok(false) => {}
                Err(e) => log::error!("manager: cannot write the {role} join token file: {e}"),
            }
        }
        if rotated.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken::new(&"ab".repeat(32)).expect("token")
    }

    #[test]
    fn the_rotated_token_replaces_the_data_dirs_and_the_old_one_is_refused() {
        let (worker, manager) = (token(), token());
        let (tx, rx) = watch::channel(Arc::new(JoinTokenTable::new()));
        let tokens = JoinTokens::new(worker.clone(), manager.clone(), rx);
        assert!(tokens.admits(JoinRole::Worker, &worker.secret));
        assert!(tokens.admits(JoinRole::Manager, &manager.secret));
        assert!(!tokens.admits(JoinRole::Worker, &manager.secret));

        let next = token();
        tx.send_replace(Arc::new(JoinTokenTable::from([(
            JoinRole::Worker,
            next.clone(),
        )])));
        assert_eq!(tokens.current(JoinRole::Worker), next);
        assert!(tokens.admits(JoinRole::Worker, &next.secret));
        assert!(!tokens.admits(JoinRole::Worker, &worker.secret));
        // The other role keeps its own.
        assert!(tokens.admits(JoinRole::Manager, &manager.secret));
    }
}
