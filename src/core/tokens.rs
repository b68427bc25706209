//! Users' tokens: a name, a role, the SHA-256 of the secret (the secret
//! itself is shown once, when the token is made, and never stored), and
//! when it expires. Part of the cluster's state, changed by commands like
//! everything else; the Manager publishes a [`TokenTable`] after every
//! committed change, which requests are checked against.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::security::secret::sha256_hex;
use crate::store::Stored;

/// What a token may do. Each role may do what the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything (tasks, nodes, events, logs).
    Read,
    /// Also submit and stop tasks.
    Deploy,
    /// Also manage tokens and nodes.
    Admin,
}

impl Role {
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as the cluster keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The token that made it (none for the first admin token).
    pub created_by: Option<String>,
}

impl Stored for TokenRecord {
    const TABLE: &'static str = "tokens";
    fn key(&self) -> String {
        self.name.clone()
    }
}

/// What a user sees of a token (never its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<String>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        TokenView {
            name: t.name.clone(),
            role: t.role,
            created_at: t.created_at,
            expires_at: t.expires_at,
            created_by: t.created_by.clone(),
        }
    }
}

/// `POST /tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    /// Seconds from now; none: it lives until revoked.
    pub ttl_s: Option<u64>,
}

/// The answer to `POST /tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub name: String,
    pub role: Role,
    pub secret: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a request's token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is not known (never made, or revoked)")]
    Unknown,
    #[error("token {0} has expired")]
    Expired(String),
    #[error("token {name} has role {role}; this needs {needed}")]
    Forbidden {
        name: String,
        role: Role,
        needed: Role,
    },
}

/// The tokens by the hash of their secrets: what a request is checked
/// against. An immutable snapshot; the Manager publishes a new one after
/// every committed change.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_hash: HashMap<String, TokenRecord>,
}

impl TokenTable {
    pub fn new<'a>(tokens: impl Iterator<Item = &'a TokenRecord>) -> Self {
        TokenTable {
            by_hash: tokens.map(|t| (t.hash.clone(), t.clone())).collect(),
        }
    }

    /// The token whose secret is `secret`, if it may do what `needed`
    /// allows at `now`.
    pub fn authorize(
        &self,
        secret: Option<&str>,
        needed: Role,
        now: DateTime<Utc>,
    ) -> Result<&TokenRecord, AuthError> {
        let secret = secret.map(str::trim).filter(|s| !s.is_empty());
        let secret = secret.ok_or(AuthError::Missing)?;
        let token = self
            .by_hash
            .get(&sha256_hex(secret.as_bytes()))
            .ok_or(AuthError::Unknown)?;
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired(token.name.clone()));
        }
        if !token.role.allows(needed) {
            return Err(AuthError::Forbidden {
                name: token.name.clone(),
                role: token.role,
                needed,
            });
        }
        Ok(token)
    }
}

/// A token name: 1 to 64 of `a-z A-Z 0-9 . _ -`.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a token name: 1 to 64 letters, digits, '.', '_' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(
        name: &str,
        role: Role,
        secret: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role,
            hash: sha256_hex(secret.as_bytes()),
            created_at: Utc::now(),
            expires_at,
            created_by: None,
        }
    }

    #[test]
    fn a_token_may_do_what_its_role_allows_until_it_expires() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let tokens = [
            token("r", Role::Read, "s-read", None),
            token("d", Role::Deploy, "s-deploy", Some(now + hour)),
            token("old", Role::Admin, "s-old", Some(now - hour)),
        ];
        let table = TokenTable::new(tokens.iter());
        assert_eq!(
            table
                .authorize(Some("s-read"), Role::Read, now)
                .unwrap()
                .name,
            "r"
        );
        assert!(matches!(
            table.authorize(Some("s-read"), Role::Deploy, now),
            Err(AuthError::Forbidden {
                needed: Role::Deploy,
                ..
            })
        ));
        assert!(table.authorize(Some("s-deploy"), Role::Deploy, now).is_ok());
        assert!(matches!(
            table.authorize(Some("s-deploy"), Role::Admin, now),
            Err(AuthError::Forbidden { .. })
        ));
        assert!(matches!(
            table.authorize(Some("s-deploy"), Role::Read, now + hour * 2),
            Err(AuthError::Expired(_))
        ));
        assert_eq!(
            table.authorize(Some("s-old"), Role::Read, now),
            Err(AuthError::Expired("old".into()))
        );
        assert_eq!(
            table.authorize(Some("nope"), Role::Read, now),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            table.authorize(None, Role::Read, now),
            Err(AuthError::Missing)
        );
        assert_eq!(
            table.authorize(Some(" "), Role::Read, now),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn token_names_are_checked() {
        assert!(validate_token_name("ci-deploy_1.x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_token_name(bad).is_err(), "{bad:?}");
        }
    }
}
