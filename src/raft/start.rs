//! Starting a manager's Raft: its timing, and its log and state machine on
//! the manager's Store.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use super::network::{Contacts, Network, Transport};
use super::types::{Feed, NodeId, Raft};
use super::{LogStore, StateMachine};
use crate::store::Store;

/// How often a leader speaks, how long a follower waits for it before it
/// stands for election (a random time between the two bounds), and how
/// many entries the log grows by before a snapshot cuts it back (to half
/// of that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    pub snapshot_every: u64,
}

impl Default for Timing {
    /// A new leader within 2 s of a leader's death on a LAN: followers wait
    /// 0.4–0.55 s, leaders speak every 100 ms. openraft keeps a follower
    /// from voting while its leader's lease runs, and the lease is
    /// `election_timeout_max`: a follower's first stand after a leader's
    /// death is nearly always refused, and its second (0.8–1.1 s after the
    /// last heartbeat) wins. With 0.4–0.8 s that took 1.3–1.7 s; the
    /// narrower range takes the second stand sooner.
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(550),
            snapshot_every: 1000,
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

/// What a Raft tells as it goes: what it applied (`feed`), and when each
/// member last answered (`contacts`).
#[derive(Default)]
pub struct Taps {
    pub feed: Option<Feed>,
    pub contacts: Option<Arc<Contacts>>,
}

/// Starts member `id`'s Raft on `store`, reaching the others by
/// `transport`.
pub async fn start<T: Transport>(
    id: NodeId,
    timing: Timing,
    store: Addr<Store>,
    transport: T,
    taps: Taps,
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
        // The log is cut back to its last half after every
        // `snapshot_every` entries (a snapshot is the records as they are:
        // nothing to write).
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
        max_in_snapshot_log_to_keep: timing.snapshot_every / 2,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Timing(e.to_string()))?;
    let reader = Store::reader(&store)
        .await
        .map_err(|e| StartError::Raft(format!("no reader of the store: {e}")))?;
    Raft::new(
        id,
        Arc::new(config),
        Network::new(transport, taps.contacts),
        LogStore::new(store.clone(), reader),
        StateMachine::new(store, taps.feed),
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))
}

/// Cuts the log back as far as it can: a snapshot of everything applied,
/// then every entry in it purged (a full store gets back the log's room).
/// Waits at most `within` for the snapshot.
pub async fn compact(raft: &Raft, within: Duration) -> Result<u64, StartError> {
    let applied = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let metrics = raft
        .wait(Some(within))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "a snapshot of everything applied",
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let upto = metrics.snapshot.map_or(0, |s| s.index);
    raft.trigger()
        .purge_log(upto)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    Ok(upto)
}
