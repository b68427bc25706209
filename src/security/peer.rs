//! The cluster node at the other end of a connection, as a request
//! extractor. The TLS listener puts the identity of a verified client
//! certificate into the connection's data; a route that only nodes may
//! call takes a [`ManagerPeer`] or a [`WorkerPeer`], and a request without
//! such a certificate never reaches it (401, or 403 for the wrong role).

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload};

use super::identity::{Identity, PeerRole};
use crate::api_error::ApiError;

fn peer(req: &HttpRequest, role: PeerRole) -> Result<Identity, ApiError> {
    let Some(id) = req.conn_data::<Identity>() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this route is for the cluster's nodes: present a node certificate",
        ));
    };
    if id.role != role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this route is not for a {id}"),
        ));
    }
    Ok(id.clone())
}

/// The caller is the cluster's manager.
pub struct ManagerPeer(pub Identity);

impl FromRequest for ManagerPeer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(peer(req, PeerRole::Manager).map(ManagerPeer))
    }
}

/// The caller is a worker; `.0.name` is the name its certificate gives.
pub struct WorkerPeer(pub Identity);

impl WorkerPeer {
    /// Refuses a request that speaks for another worker than the caller.
    pub fn must_be(&self, name: &str) -> Result<(), ApiError> {
        if self.0.name == name {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("worker {} cannot speak for worker {name}", self.0.name),
            ))
        }
    }
}

impl FromRequest for WorkerPeer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(peer(req, PeerRole::Worker).map(WorkerPeer))
    }
}
