//! The cluster node at the other end of a connection, as a request
//! extractor. The TLS listener puts the identity of a verified client
//! certificate into the connection's data; a route that only nodes may
//! call takes a [`ManagerPeer`] or a [`WorkerPeer`], and a request without
//! such a certificate never reaches it (401, or 403 for the wrong role).

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload};

use super::identity::{Generation, Identity, PeerRole};
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

/// The caller is a worker; `.0.name` is the name its certificate gives,
/// `.1` the generation of the name it was issued for.
pub struct WorkerPeer(pub Identity, pub u64);

impl FromRequest for WorkerPeer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let generation = req.conn_data::<Generation>().map_or(0, |g| g.0);
        ready(peer(req, PeerRole::Worker).map(|id| WorkerPeer(id, generation)))
    }
}
