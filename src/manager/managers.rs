//! The managers of a cluster, as users and managers see them:
//!
//! - `POST /managers/join` (the manager join token's secret): a new
//!   manager gets the cluster's keys: the CA, the join tokens, the first
//!   admin token's secret. It checked the CA against its token first.
//! - `POST /managers` (a manager's certificate): add the caller as a
//!   member: a learner until it has caught up, then a voter. A member at
//!   the same URL under another id (the manager came back with a new data
//!   dir) is replaced.
//! - `GET /cluster` (any token): the members, who leads, the term, the
//!   log, and each member's last contact (as the answering manager knows).
//! - `DELETE /managers/{id}` (admin): removes a member, refused when the
//!   members left would not be a majority of reachable ones, unless
//!   `?force=true`.
//! - The manager join token is shown and rotated with the workers' (in
//!   `join.rs`); rotating either is refused while there are several
//!   managers ([`alone`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
use tokio::sync::watch;

use super::auth::{Admin, Reader};
use super::consensus::member;
use super::join::JoinAuthority;
use crate::api_error::ApiError;
use crate::core::join_tokens::JoinRole;
use crate::raft::{ChangeMembers, Metrics, NodeId, Raft};
use crate::security::peer::ManagerPeer;
use crate::wire::{AddManager, ClusterView, ManagerJoinReply, ManagerJoinRequest, MemberView};

/// A member heard from within this long counts as reachable.
const REACHABLE_WITHIN: Duration = Duration::from_secs(2);

/// When each member last answered this manager's Raft.
pub type Contacts = watch::Receiver<BTreeMap<NodeId, Instant>>;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/managers/join", web::post().to(join))
        .route("/managers", web::post().to(add))
        .route("/managers/{id}", web::delete().to(remove))
        .route("/cluster", web::get().to(cluster));
}

/// The cluster as `metrics` and `contacts` say, at `now`.
pub fn view(metrics: &Metrics, contacts: &BTreeMap<NodeId, Instant>, now: Instant) -> ClusterView {
    let membership = metrics.membership_config.membership();
    let voters = settled_voters(membership.get_joint_config());
    let members = membership
        .nodes()
        .map(|(id, m)| MemberView {
            id: *id,
            name: m.name.clone(),
            url: m.url.clone(),
            voter: voters.contains(id),
            leader: metrics.current_leader == Some(*id),
            last_contact_ms: if *id == metrics.id {
                Some(0)
            } else {
                contacts.get(id).map(|at| {
                    u64::try_from(now.saturating_duration_since(*at).as_millis())
                        .unwrap_or(u64::MAX)
                })
            },
            matched_index: metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).copied().flatten())
                .map(|l| l.index),
        })
        .collect();
    ClusterView {
        id: metrics.id,
        leader: metrics.current_leader,
        term: metrics.current_term,
        last_log_index: metrics.last_log_index,
        applied_index: metrics.last_applied.map(|l| l.index),
        members,
    }
}

/// The members that vote in every configuration of a membership: while a
/// change is under way (a joint configuration, old and new), one being
/// added is not yet a voter to count on. Until the change settles, an
/// election needs a majority of the old configuration too, so a cluster
/// going from two voters to three stalls if either of the two dies; a
/// member is shown as a voter only once it settled.
fn settled_voters(configs: &[BTreeSet<NodeId>]) -> BTreeSet<NodeId> {
    let mut all = configs.iter();
    let first = all.next().cloned().unwrap_or_default();
    all.fold(first, |kept, config| {
        kept.intersection(config).copied().collect()
    })
}

/// Why a member may not be removed without force: the voters left, and
/// how many of them are reachable, are no majority.
pub fn quorum_after_removal(view: &ClusterView, id: NodeId) -> Result<(), String> {
    let left: Vec<&MemberView> = view
        .members
        .iter()
        .filter(|m| m.voter && m.id != id)
        .collect();
    if left.is_empty() {
        return Err("the last manager cannot be removed".into());
    }
    let within = u64::try_from(REACHABLE_WITHIN.as_millis()).unwrap_or(u64::MAX);
    let reachable = left
        .iter()
        .filter(|m| m.last_contact_ms.is_some_and(|ms| ms <= within))
        .count();
    let majority = left.len() / 2 + 1;
    if reachable < majority {
        return Err(format!(
            "removing manager {id} leaves {} managers of which {reachable} are reachable, \
             less than the majority of {majority} they need: ?force=true removes it anyway",
            left.len()
        ));
    }
    Ok(())
}

fn leading(raft: &Raft) -> Result<Metrics, ApiError> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Err(ApiError::unavailable(
            "this manager does not lead the cluster: ask the leader".to_string(),
        ));
    }
    Ok(metrics)
}

async fn join(
    authority: web::Data<JoinAuthority>,
    request: web::Json<ManagerJoinRequest>,
) -> Result<HttpResponse, ApiError> {
    if !authority.join.admits(JoinRole::Manager, &request.secret) {
        log::warn!("manager: refused a manager's join: wrong manager join token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the token is not this cluster's manager join token (or it was rotated)",
        ));
    }
    let worker_token = authority.join.current(JoinRole::Worker).to_string();
    let manager_token = authority.join.current(JoinRole::Manager).to_string();
    log::info!("manager: a new manager got the cluster's keys");
    Ok(HttpResponse::Ok().json(ManagerJoinReply {
        ca_cert: authority.ca.cert_pem().to_string(),
        ca_key: authority.ca.key_pem(),
        worker_token,
        manager_token,
        admin_secret: authority.admin_secret.clone(),
    }))
}

async fn add(
    _manager: ManagerPeer,
    raft: web::Data<Raft>,
    contacts: web::Data<Contacts>,
    request: web::Json<AddManager>,
) -> Result<HttpResponse, ApiError> {
    let AddManager { id, url } = request.into_inner();
    crate::config::validate_url(&url).map_err(|m| ApiError::bad_request(m, Some("url".into())))?;
    let metrics = leading(&raft)?;
    let membership = metrics.membership_config.membership();
    if let Some(taken) = membership.get_node(&id).filter(|m| m.url != url) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("manager id {id} is taken by the manager at {}", taken.url),
        ));
    }
    let is_voter = membership.voter_ids().any(|v| v == id);
    if !is_voter {
        let stale: BTreeSet<NodeId> = membership
            .nodes()
            .filter(|(other, m)| **other != id && m.url == url)
            .map(|(other, _)| *other)
            .collect();
        log::info!("manager: adding manager {id} at {url}: catching it up");
        raft.add_learner(id, member(id, &url), true)
            .await
            .map_err(|e| ApiError::unavailable(format!("manager {id} not added: {e}")))?;
        if !stale.is_empty() {
            log::info!("manager: {url} came back as manager {id}: removing {stale:?}");
            raft.change_membership(ChangeMembers::RemoveVoters(stale), false)
                .await
                .map_err(|e| ApiError::unavailable(format!("manager {id} not added: {e}")))?;
        }
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| ApiError::unavailable(format!("manager {id} not added: {e}")))?;
        log::info!("manager: manager {id} at {url} is a voter");
    }
    let metrics = raft.metrics().borrow().clone();
    Ok(HttpResponse::Ok().json(view(&metrics, &contacts.borrow(), Instant::now())))
}

async fn cluster(
    _reader: Reader,
    raft: web::Data<Raft>,
    contacts: web::Data<Contacts>,
) -> HttpResponse {
    let metrics = raft.metrics().borrow().clone();
    HttpResponse::Ok().json(view(&metrics, &contacts.borrow(), Instant::now()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove(
    admin: Admin,
    raft: web::Data<Raft>,
    contacts: web::Data<Contacts>,
    id: web::Path<NodeId>,
    query: web::Query<RemoveQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let metrics = leading(&raft)?;
    let before = view(&metrics, &contacts.borrow(), Instant::now());
    let Some(target) = before.members.iter().find(|m| m.id == id) else {
        return Err(ApiError::not_found(format!("no manager {id}")));
    };
    if !query.force {
        quorum_after_removal(&before, id).map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
    }
    let change = if target.voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false)
        .await
        .map_err(|e| ApiError::unavailable(format!("manager {id} not removed: {e}")))?;
    log::info!("manager: manager {id} removed by {}", admin.token);
    let metrics = raft.metrics().borrow().clone();
    Ok(HttpResponse::Ok().json(view(&metrics, &contacts.borrow(), Instant::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_being_added_is_no_voter_until_the_change_settles() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<NodeId>>();
        assert_eq!(settled_voters(&[set(&[1, 2, 3])]), set(&[1, 2, 3]));
        // Joint: from {1, 2} to {1, 2, 3}.
        assert_eq!(
            settled_voters(&[set(&[1, 2]), set(&[1, 2, 3])]),
            set(&[1, 2])
        );
        // Joint: from {1, 2, 3} to {1, 2} (3 leaving).
        assert_eq!(
            settled_voters(&[set(&[1, 2, 3]), set(&[1, 2])]),
            set(&[1, 2])
        );
        assert!(settled_voters(&[]).is_empty());
    }

    fn member(id: u64, voter: bool, last_contact_ms: Option<u64>) -> MemberView {
        MemberView {
            id,
            name: format!("manager-{id}"),
            url: format!("https://m{id}"),
            voter,
            leader: id == 1,
            last_contact_ms,
            matched_index: None,
        }
    }

    fn cluster(members: Vec<MemberView>) -> ClusterView {
        ClusterView {
            id: 1,
            leader: Some(1),
            term: 3,
            last_log_index: Some(9),
            applied_index: Some(9),
            members,
        }
    }

    #[test]
    fn a_removal_that_leaves_no_reachable_majority_is_refused() {
        // Three voters, one of them unreachable: removing the unreachable
        // one leaves two reachable of two.
        let three = cluster(vec![
            member(1, true, Some(0)),
            member(2, true, Some(100)),
            member(3, true, None),
        ]);
        assert!(quorum_after_removal(&three, 3).is_ok());
        // Removing a reachable one leaves one reachable of two: no.
        let e = quorum_after_removal(&three, 2).unwrap_err();
        assert!(e.contains("force=true"), "{e}");
        // A member heard from long ago does not count.
        let stale = cluster(vec![
            member(1, true, Some(0)),
            member(2, true, Some(60_000)),
            member(3, true, Some(10)),
        ]);
        assert!(quorum_after_removal(&stale, 3).is_err());
        // Learners are not counted.
        let learner = cluster(vec![member(1, true, Some(0)), member(4, false, Some(0))]);
        assert!(quorum_after_removal(&learner, 4).is_ok());
        assert!(quorum_after_removal(&learner, 1).is_err());
    }
}
