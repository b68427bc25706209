//! Starting a manager's Raft: its timing, and its log and state machine on
//! the manager's Store.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::network::{Network, Transport};
use super::types::{NodeId, Raft};
use super::{LogStore, StateMachine};
use crate::store::Store;

/// How often a leader speaks, and how long a follower waits for it before
/// it stands for election (a random time between the two bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl Default for Timing {
    /// A new leader within 2 s of a leader's death on a LAN: followers wait
    /// 0.4–0.8 s, leaders speak every 100 ms. (openraft also keeps a
    /// follower from voting while its leader's lease runs, so a new leader
    /// comes about 1.3–1.5 s after the old one stops: `tests/raft_tls.rs`.)
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
        }
    }
}

/// Why a Raft did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("Raft timing: {0}")]
    Timing(String),
    #[error("Raft: {0}")]
    Raft(String),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts member `id`'s Raft on `store`, reaching the others by
/// `transport`.
pub async fn start<T: Transport>(
    id: NodeId,
    timing: Timing,
    store: Addr<Store>,
    transport: T,
) -> Result<Raft, StartError> {
    let config = openraft::Config {
        cluster_name: "cube".into(),
        heartbeat_interval: millis(timing.heartbeat),
        election_timeout_min: millis(timing.election_min),
        election_timeout_max: millis(timing.election_max),
        // A snapshot goes in chunks of 1 MiB (about 3.5 MB as JSON), each
        // with 10 s to arrive and, the last, to be installed (openraft's
        // 200 ms would start a large one over and over on a slow link).
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 10_000,
        // Entries per append, well under the route's body limit.
        max_payload_entries: 64,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Timing(e.to_string()))?;
    Raft::new(
        id,
        Arc::new(config),
        Network::new(transport),
        LogStore::new(store.clone()),
        StateMachine::new(store),
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))
}
