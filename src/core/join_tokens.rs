//! The cluster's join tokens, one for workers and one for managers: part
//! of the replicated state, so that a rotation on any manager holds on
//! every manager. A cluster that never rotated a token has no record of
//! it; every manager then uses the token its data dir holds (the first
//! manager made it; a joining manager got it from the one it joined).
//!
//! Unlike a user's token, a join token's secret is kept (in the log, the
//! Store and snapshots, like the CA's key in the data dir): every manager
//! must check it and show it to admins.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::security::secret::JoinToken;
use crate::store::Stored;

/// Who a join token lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinRole {
    Worker,
    Manager,
}

impl JoinRole {
    pub const ALL: [JoinRole; 2] = [JoinRole::Worker, JoinRole::Manager];

    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Worker => "worker",
            JoinRole::Manager => "manager",
        }
    }

    /// The role a path names (`worker` or `manager`).
    pub fn parse(s: &str) -> Option<JoinRole> {
        JoinRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for JoinRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A join token as the cluster keeps it once rotated. Its `Debug` (the
/// token's) leaves the secret out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRecord {
    pub role: JoinRole,
    pub token: JoinToken,
    pub rotated_at: DateTime<Utc>,
    /// The admin token that rotated it.
    pub rotated_by: String,
}

impl Stored for JoinTokenRecord {
    const TABLE: &'static str = "join_tokens";
    fn key(&self) -> String {
        self.role.as_str().to_string()
    }
}

/// The rotated join tokens by role: what the Manager publishes after every
/// committed change of them. A role it lacks was never rotated.
pub type JoinTokenTable = BTreeMap<JoinRole, JoinToken>;
