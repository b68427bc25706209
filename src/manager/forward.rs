//! What a manager that does not lead passes on to the leader: users'
//! writes (and the reads that need the leader's liveness view: `GET
//! /nodes`, or any read asked `?consistent=true`) are sent on and their
//! answers handed back; workers are redirected (`307`), since they prove
//! who they are by their certificate. Reads are served from this
//! manager's own state, which follows the log. Raft's RPCs and the join
//! of new managers are this manager's own.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServiceRequest;
use actix_web::http::Method;
use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, watch};

use crate::listener::divert::{Diversion, Divert};
use crate::raft::Raft;

/// The leader's URL while another manager leads (`None`: this one leads,
/// or no leader is known: the request is answered here).
pub type LeaderUrl = watch::Receiver<Option<String>>;

pub struct ToLeader {
    leader: LeaderUrl,
    http: reqwest::Client,
    raft: Raft,
    /// Consistent reads confirming at once (each asks a majority).
    confirming: Arc<Semaphore>,
}

/// The most consistent reads confirming at once; more get `503`.
const MAX_CONFIRMING: usize = 16;

impl ToLeader {
    /// `tls`: this manager's client configuration, expecting a manager.
    /// Answers are handed back as they are (redirects too); a stop may
    /// take a worker's whole stop timeout.
    pub fn new(leader: LeaderUrl, tls: rustls::ClientConfig, raft: Raft) -> reqwest::Result<Self> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(70))
            .pool_idle_timeout(Duration::from_secs(4))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ToLeader {
            leader,
            http,
            raft,
            confirming: Arc::new(Semaphore::new(MAX_CONFIRMING)),
        })
    }
}

/// How long a consistent read may wait for the leader to confirm it leads.
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// Whether a request asks for a consistent read.
fn consistent(query: &str) -> bool {
    query.split('&').any(|kv| kv == "consistent=true")
}

/// Where a request to a manager that does not lead goes, given the path,
/// the method and the query.
pub fn diversion(leader: &str, method: &Method, path: &str, query: &str) -> Option<Diversion> {
    let own = path.starts_with("/raft/") || path == "/join/ca" || path == "/managers/join";
    let read = method == Method::GET || method == Method::HEAD;
    let consistent = consistent(query);
    if own {
        return None;
    }
    // A stream (`follow=true`) is served here: the proxy passes whole
    // answers only.
    if query
        .split('&')
        .any(|kv| kv == "follow=true" || kv == "watch=true")
    {
        return None;
    }
    if path.starts_with("/workers/") || path == "/join" {
        // A worker's endpoint feed follows this manager's copy.
        if read && path == "/workers/endpoints" {
            return None;
        }
        return Some(Diversion::Redirect(leader.to_string()));
    }
    if read && !consistent && path != "/nodes" {
        return None;
    }
    Some(Diversion::Proxy(leader.to_string()))
}

impl Divert for ToLeader {
    fn divert(&self, req: &ServiceRequest) -> Option<Diversion> {
        let leader = self.leader.borrow().clone()?;
        diversion(&leader, req.method(), req.path(), req.query_string())
    }

    fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// A consistent read served here: this manager confirms with a
    /// majority that it still leads and has applied all that was committed
    /// (a leader cut off from the others may not know yet that it no
    /// longer leads).
    fn confirm(&self, req: &ServiceRequest) -> Option<BoxFuture<'static, Result<(), String>>> {
        if !consistent(req.query_string()) {
            return None;
        }
        let raft = self.raft.clone();
        let permit = self.confirming.clone().try_acquire_owned();
        Some(Box::pin(async move {
            let _permit = permit.map_err(|_| {
                format!("{MAX_CONFIRMING} consistent reads are confirming already: try again")
            })?;
            match tokio::time::timeout(CONFIRM_WITHIN, raft.ensure_linearizable()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("a consistent read needs the leader: {e}")),
                Err(_) => Err(format!(
                    "a consistent read needs the leader, and no majority confirmed it within {CONFIRM_WITHIN:?}"
                )),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: &str = "https://10.0.0.1:5555";

    fn to(method: Method, path: &str, query: &str) -> Option<Diversion> {
        diversion(L, &method, path, query)
    }

    #[test]
    fn writes_go_to_the_leader_reads_stay_and_workers_are_redirected() {
        let proxy = Some(Diversion::Proxy(L.into()));
        let redirect = Some(Diversion::Redirect(L.into()));
        assert_eq!(to(Method::POST, "/tasks", ""), proxy);
        assert_eq!(to(Method::DELETE, "/tasks/x", ""), proxy);
        assert_eq!(to(Method::POST, "/services/web/scale", ""), proxy);
        assert_eq!(to(Method::GET, "/tasks", ""), None);
        assert_eq!(to(Method::GET, "/tasks", "consistent=true"), proxy);
        assert_eq!(to(Method::GET, "/nodes", ""), proxy);
        assert_eq!(to(Method::POST, "/workers/heartbeat", ""), redirect);
        assert_eq!(to(Method::POST, "/join", ""), redirect);
        assert_eq!(to(Method::GET, "/workers/endpoints", ""), None);
        assert_eq!(to(Method::POST, "/raft/append", ""), None);
        assert_eq!(to(Method::POST, "/managers/join", ""), None);
        assert_eq!(to(Method::GET, "/join/ca", ""), None);
        // Streams are served here, consistent or not.
        assert_eq!(
            to(Method::GET, "/events", "follow=true&consistent=true"),
            None
        );
    }
}
