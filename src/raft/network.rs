//! Raft's messages between managers: each RPC is one request with a JSON
//! body to a member, answered with JSON (the receiver's `Result`). How a
//! request travels is a [`Transport`] (HTTPS with the cluster's
//! certificates, in the manager); [`answer`] is the receiving side.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{Cube, Member, NodeId};

/// One kind of Raft RPC, named as its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Rpc {
    pub fn path(self) -> &'static str {
        match self {
            Rpc::Append => "append",
            Rpc::Vote => "vote",
            Rpc::Snapshot => "snapshot",
        }
    }

    pub fn from_path(path: &str) -> Option<Self> {
        [Rpc::Append, Rpc::Vote, Rpc::Snapshot]
            .into_iter()
            .find(|rpc| rpc.path() == path)
    }
}

/// Why a request to a member got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Not reached at all (refused, no route, no connection in time):
    /// openraft backs off before trying again.
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    /// Reached, but the exchange failed (a timeout, a broken answer).
    #[error("{0}: {1}")]
    Failed(String, String),
}

/// How an RPC reaches a member: `body` (JSON) to `rpc`'s path at `to`,
/// which must be member `target` (a manager back at the same URL under a
/// new id is not the member it was), the answer's body back, within
/// `timeout`.
pub trait Transport: Clone + Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        to: &Member,
        rpc: Rpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, TransportError>> + Send;
}

/// When each member last answered an RPC (any answer: it is up and
/// reachable).
pub type Contacts = watch::Sender<BTreeMap<NodeId, Instant>>;

/// openraft's network: a [`Link`] per member, over a transport.
#[derive(Clone)]
pub struct Network<T> {
    transport: T,
    contacts: Option<Arc<Contacts>>,
}

impl<T: Transport> Network<T> {
    pub fn new(transport: T, contacts: Option<Arc<Contacts>>) -> Self {
        Network {
            transport,
            contacts,
        }
    }
}

impl<T: Transport> RaftNetworkFactory<Cube> for Network<T> {
    type Network = Link<T>;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Self::Network {
        Link {
            transport: self.transport.clone(),
            target,
            member: node.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

/// The way to one member.
pub struct Link<T> {
    transport: T,
    target: NodeId,
    member: Member,
    contacts: Option<Arc<Contacts>>,
}

type Failure<E> = RPCError<NodeId, Member, E>;

impl<T: Transport> Link<T> {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, Failure<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            serde_json::to_vec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = self
            .transport
            .call(self.target, &self.member, rpc, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Failed(..) => RPCError::Network(NetworkError::new(&e)),
            })?;
        if let Some(contacts) = &self.contacts {
            contacts.send_modify(|c| {
                c.insert(self.target, Instant::now());
            });
        }
        let answered: Result<Resp, E> = serde_json::from_slice(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answered.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

impl<T: Transport> RaftNetwork<Cube> for Link<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Cube>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Failure<RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Cube>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Failure<RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Failure<RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// Why a received RPC was not handed to Raft.
#[derive(Debug, thiserror::Error)]
#[error("a Raft {rpc:?} request: {source}")]
pub struct BadRequest {
    rpc: Rpc,
    source: serde_json::Error,
}

/// The receiving side: `body` handed to the local Raft as `rpc`; its
/// answer (a `Result`, encoded).
pub async fn answer(raft: &Raft<Cube>, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let bad = |source| BadRequest { rpc, source };
    let encoded = match rpc {
        Rpc::Append => {
            let request = serde_json::from_slice(body).map_err(bad)?;
            serde_json::to_vec(&raft.append_entries(request).await)
        }
        Rpc::Vote => {
            let request = serde_json::from_slice(body).map_err(bad)?;
            serde_json::to_vec(&raft.vote(request).await)
        }
        Rpc::Snapshot => {
            let request = serde_json::from_slice(body).map_err(bad)?;
            serde_json::to_vec(&raft.install_snapshot(request).await)
        }
    };
    encoded.map_err(bad)
}
