//! A manager's Raft at start: its id among the managers (kept in its
//! Store), the one-member cluster a first manager makes, the wait for a
//! leader, and the cluster's first admin token put through the log (so
//! that every manager that ever joins has it). A manager that joins an
//! existing cluster starts its Raft empty and asks to be added
//! ([`ask_to_join`]) once it serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::Context as _;
use tokio::sync::watch;

use super::raft_rpc::Https;
use crate::client::Client;
use crate::core::tokens::TokenRecord;
use crate::raft::{self, Change, Member, NodeId, Raft, Record, Replicated, Taps, Timing};
use crate::security::tls::{Expect, NodeTls};
use crate::store::{LoadAll, MetaGet, MetaPut, Store};
use crate::wire::AddManager;

/// Where a manager keeps its own id.
const ME: &str = "me";
/// The id of the manager that makes a cluster.
const FIRST: NodeId = 1;
/// How long a manager waits at start for a leader to be known.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// The longest wait between asks to be added to a cluster.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);

/// A manager's place among the managers: its Raft, its id, the changes its
/// state machine applies, and when each other manager last answered.
pub struct Consensus {
    pub raft: Raft,
    pub id: NodeId,
    pub feed: tokio::sync::mpsc::UnboundedReceiver<Replicated>,
    pub contacts: watch::Receiver<BTreeMap<NodeId, Instant>>,
    /// How long after a majority last answered the leader may still act:
    /// no other manager stands for election sooner.
    pub lease: Duration,
}

/// Starts this manager's Raft, reached by the others at `url`. One that is
/// not `joining` and starts for the first time makes a cluster of itself.
pub async fn start(
    store: &Addr<Store>,
    tls: &NodeTls,
    url: &str,
    joining: bool,
    timing: Timing,
) -> anyhow::Result<Consensus> {
    let id = own_id(store, joining).await?;
    let transport = Https::new(
        tls.client(Expect::Manager)
            .context("manager: Raft's TLS set-up")?,
    )
    .context("manager: Raft's client")?;
    let (feed_tx, feed) = tokio::sync::mpsc::unbounded_channel();
    let (contacts_tx, contacts) = watch::channel(BTreeMap::new());
    let taps = Taps {
        feed: Some(feed_tx),
        contacts: Some(Arc::new(contacts_tx)),
    };
    let raft = raft::start(id, timing, store.clone(), transport, taps)
        .await
        .context("manager: cannot start Raft")?;
    let initialized = raft.is_initialized().await.context("manager: Raft")?;
    if !initialized && !joining {
        let me = member(id, url);
        log::info!("manager {id}: a new cluster of one manager ({me})");
        raft.initialize(BTreeMap::from([(id, me)]))
            .await
            .context("manager: cannot make a cluster")?;
    }
    if initialized || !joining {
        let metrics = raft
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await;
        match metrics {
            Ok(m) => log::info!(
                "manager {id}: manager {} leads (term {})",
                m.current_leader.unwrap_or_default(),
                m.current_term
            ),
            Err(e) => log::warn!("manager {id}: no leader yet ({e}); it goes on waiting"),
        }
    }
    Ok(Consensus {
        raft,
        id,
        feed,
        contacts,
        lease: timing.election_min,
    })
}

/// How a manager appears among the members.
pub fn member(id: NodeId, url: &str) -> Member {
    Member {
        name: format!("manager-{id}"),
        url: url.to_string(),
    }
}

/// Whether this manager is a member of the cluster it knows of.
pub fn is_member(raft: &Raft, id: NodeId) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .is_some()
}

/// This manager's id: the one it was given; else a new cluster's first,
/// or a random one for a manager that joins.
async fn own_id(store: &Addr<Store>, joining: bool) -> anyhow::Result<NodeId> {
    let stored = store
        .send(MetaGet(vec![ME]))
        .await?
        .context("manager: cannot read its id")?
        .pop()
        .flatten();
    if let Some(bytes) = stored {
        return serde_json::from_slice(&bytes).context("manager: its stored id is unreadable");
    }
    let id = if joining {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("manager: no randomness for its id"))?;
        // Short enough to type, past the first's; the leader refuses an
        // id taken by another member.
        (u64::from_le_bytes(bytes) % 9_000_000) + 1_000_000
    } else {
        FIRST
    };
    store
        .send(MetaPut(vec![(ME, Some(serde_json::to_vec(&id)?))]))
        .await?
        .context("manager: cannot store its id")?;
    Ok(id)
}

/// Asks the cluster to add this manager, until it does: any of the
/// managers at `join` (comma-separated), and any member it has learnt of
/// since (a snapshot or the log names them). The leader makes it a
/// learner, lets it catch up, then makes it a voter.
pub async fn ask_to_join(join: String, tls: NodeTls, raft: Raft, id: NodeId, url: String) {
    let tls = match tls.client(Expect::Manager) {
        Ok(tls) => tls,
        Err(e) => {
            log::error!("manager {id}: cannot ask to join: {e}");
            return;
        }
    };
    let mut wait = Duration::from_millis(200);
    loop {
        let mut urls: Vec<String> = join.split(',').map(|u| u.trim().to_string()).collect();
        let known: Vec<String> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(_, m)| m.url.clone())
            .collect();
        for known in known {
            if known != url && !urls.contains(&known) {
                urls.push(known);
            }
        }
        let asked = match Client::with_timeout(&urls.join(","), &tls, Duration::from_secs(120)) {
            Ok(client) => client
                .add_manager(&AddManager {
                    id,
                    url: url.clone(),
                })
                .await
                .map(|view| (client.base().to_string(), view))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match asked {
            Ok((through, view)) => {
                log::info!(
                    "manager {id}: joined the cluster through {through}: {} managers",
                    view.members.len()
                );
                return;
            }
            Err(e) if e.contains("answered 409") => {
                log::error!(
                    "manager {id}: the cluster refuses to add it ({e}); start it again on an empty data dir"
                );
                return;
            }
            Err(e) => {
                log::warn!("manager {id}: not added yet ({e}); asking again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(JOIN_RETRY_MAX);
            }
        }
    }
}

/// On a cluster's first start (no token yet), the first admin token is
/// put through the log by the leader.
pub async fn first_admin(
    consensus: &Consensus,
    store: &Addr<Store>,
    admin: TokenRecord,
) -> anyhow::Result<()> {
    let tokens = store
        .send(LoadAll::<TokenRecord>::new())
        .await?
        .context("cannot load tokens")?;
    if !tokens.is_empty() || consensus.raft.current_leader().await != Some(consensus.id) {
        return Ok(());
    }
    let change = Change {
        records: vec![Record::put(&admin)?],
    };
    consensus
        .raft
        .client_write(change)
        .await
        .context("cannot store the first admin token")?;
    log::info!("manager: the first admin token, admin, is in admin.token");
    Ok(())
}
