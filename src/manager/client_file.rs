//! The client file a manager writes for the CLI on its machine (the
//! managers' URLs, the CA, the admin token; 0600), so that a user there
//! reaches the cluster with no flags. It names this manager first, then
//! every other voter, and is written again whenever the voters change: the
//! CLI tries the next URL when one cannot be reached, so the file still
//! works while this manager is down. Failing to write it is not fatal: the
//! tokens are in the data dir.

use std::path::PathBuf;

use crate::config::ClientFile;
use crate::raft::types::{Membership, Raft};
use crate::security::pki::write_file;

/// Where and what a manager writes, but for the managers' URLs.
#[derive(Debug, Clone)]
pub struct ClientFileAt {
    pub path: PathBuf,
    pub ca: PathBuf,
    pub token: String,
}

/// The CLI's list of managers: `own` first, then every other voter's URL
/// in the order of their ids, each once, comma-separated.
pub fn manager_list(own: &str, membership: &Membership) -> String {
    manager_urls(own, membership).join(",")
}

/// `own`, then every other voter's URL in the order of their ids, each once.
pub fn manager_urls(own: &str, membership: &Membership) -> Vec<String> {
    let mut urls = vec![own.to_string()];
    for id in membership.voter_ids() {
        if let Some(member) = membership.get_node(&id)
            && !urls.contains(&member.url)
        {
            urls.push(member.url.clone());
        }
    }
    urls
}

fn write(at: &ClientFileAt, managers: String) {
    let text = ClientFile {
        manager: managers,
        ca: at.ca.clone(),
        token: at.token.clone(),
    }
    .to_toml();
    match write_file(&at.path, text.as_bytes(), true) {
        Ok(()) => log::info!(
            "manager: client file for the CLI written to {}",
            at.path.display()
        ),
        Err(e) => log::warn!("manager: cannot write the client file: {e}"),
    }
}

/// Writes the client file naming `own` now (before Raft has said anything,
/// so that the first manager's user can start at once).
pub fn write_first(at: &ClientFileAt, own: &str) {
    write(at, own.to_string());
}

/// Keeps the client file naming every voter, for as long as `raft` runs.
pub async fn keep(at: ClientFileAt, own: String, raft: Raft) {
    // The server metrics change with votes and membership only, not with
    // every entry the log takes.
    let mut metrics = raft.server_metrics();
    let mut written = own.clone();
    loop {
        let now = manager_list(
            &own,
            metrics.borrow_and_update().membership_config.membership(),
        );
        if now != written {
            let (file, list) = (at.clone(), now.clone());
            // Off the arbiter: a file write may wait on the disk.
            if tokio::task::spawn_blocking(move || write(&file, list))
                .await
                .is_err()
            {
                log::warn!("manager: the client file's writer stopped");
            }
            written = now;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::raft::types::Member;

    fn member(name: &str, url: &str) -> Member {
        Member {
            name: name.into(),
            url: url.into(),
        }
    }

    #[test]
    fn this_manager_first_then_every_other_voter_once() {
        let nodes = BTreeMap::from([
            (1, member("a", "https://10.0.0.1:5555")),
            (2, member("b", "https://10.0.0.2:5555")),
            (3, member("c", "https://10.0.0.3:5555")),
            // A learner: not yet a manager to send users to.
            (4, member("d", "https://10.0.0.4:5555")),
        ]);
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        assert_eq!(
            manager_list("https://10.0.0.2:5555", &membership),
            "https://10.0.0.2:5555,https://10.0.0.1:5555,https://10.0.0.3:5555"
        );
        // Alone (or not yet a voter): itself only.
        let alone = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, member("a", "https://10.0.0.1:5555"))]),
        );
        assert_eq!(
            manager_list("https://10.0.0.9:5555", &alone),
            "https://10.0.0.9:5555,https://10.0.0.1:5555"
        );
    }
}
