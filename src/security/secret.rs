//! Secrets and digests: random secrets, their SHA-256 (what is stored in
//! place of a secret), and the join token that carries the CA's digest.

use std::fmt;
use std::str::FromStr;

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use super::SecurityError;

/// Bytes of randomness in a secret (shown as twice as many hex digits).
const SECRET_BYTES: usize = 32;

/// A new random secret: 64 lowercase hex digits.
pub fn random_secret() -> Result<String, SecurityError> {
    let mut bytes = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecurityError::Random)?;
    Ok(hex(&bytes))
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest(&SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a node needs to join a cluster: the digest of the cluster's CA
/// (to know it talks to the right manager before it sends anything) and
/// the secret that proves it may join. Written `CUBE1-<ca sha256>-<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

const JOIN_PREFIX: &str = "CUBE1";

impl JoinToken {
    pub fn new(ca_digest: &str) -> Result<Self, SecurityError> {
        Ok(JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: random_secret()?,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}-{}-{}", self.ca_digest, self.secret)
    }
}

/// The secret stays out of logs and debug output.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({JOIN_PREFIX}-{}-…)", self.ca_digest)
    }
}

impl FromStr for JoinToken {
    type Err = SecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| SecurityError::BadJoinToken(why.to_string());
        let mut parts = s.trim().splitn(3, '-');
        let (Some(prefix), Some(ca_digest), Some(secret)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected CUBE1-<CA digest>-<secret>"));
        };
        if prefix != JOIN_PREFIX {
            return Err(bad("it does not start with CUBE1-"));
        }
        if !is_hex(ca_digest, 64) {
            return Err(bad("the CA digest is not 64 hex digits"));
        }
        if !is_hex(secret, SECRET_BYTES * 2) {
            return Err(bad("the secret is not 64 hex digits"));
        }
        Ok(JoinToken {
            ca_digest: ca_digest.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

/// Kept and sent as its text (`CUBE1-...`), checked when read back.
impl serde::Serialize for JoinToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for JoinToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether two secrets are the same, compared through their digests: how
/// long the comparison takes says nothing about where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    sha256_hex(a.as_bytes()) == sha256_hex(b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_hex() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert!(is_hex(&a, 64));
        assert_ne!(a, b);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn join_tokens_round_trip_and_bad_ones_say_why() {
        let digest = sha256_hex(b"ca");
        let token = JoinToken::new(&digest).unwrap();
        let parsed: JoinToken = token.to_string().parse().unwrap();
        assert_eq!(parsed, token);
        assert!(!format!("{token:?}").contains(&token.secret));
        for (text, why) in [
            ("", "expected"),
            ("SWMTKN-1-abc", "CUBE1"),
            (&format!("CUBE1-{}-{}", "ab", token.secret), "CA digest"),
            (&format!("CUBE1-{digest}-short"), "secret"),
        ] {
            let e = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
