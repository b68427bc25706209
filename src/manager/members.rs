//! Which worker is calling the manager: a [`Member`] is a [`WorkerPeer`]
//! (a verified certificate naming a worker) whose certificate is of a
//! generation of its name the cluster still accepts. A worker removed with
//! `cube node rm` keeps a certificate the CA signed, but of an older
//! generation: it gets 403 on every worker route, from the commit of the
//! removal on.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::core::CoreError;
use crate::core::nodes::Generations;
use crate::security::peer::WorkerPeer;

/// What the worker routes read the accepted generations from.
pub type GenerationTable = watch::Receiver<Arc<Generations>>;

/// A worker of the cluster; `name` is the one its certificate gives.
pub struct Member {
    pub name: String,
    /// The generation of the name its certificate was issued for.
    pub generation: u64,
}

impl Member {
    /// Refuses a request that speaks for another worker than the caller.
    pub fn must_be(&self, name: &str) -> Result<(), ApiError> {
        if self.name == name {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("worker {} cannot speak for worker {name}", self.name),
            ))
        }
    }
}

fn member(req: &HttpRequest, peer: WorkerPeer) -> Result<Member, ApiError> {
    let Some(table) = req.app_data::<web::Data<GenerationTable>>() else {
        return Err(ApiError::internal("no generation table"));
    };
    let WorkerPeer(identity, generation) = peer;
    if !table.borrow().accepts(&identity.name, generation) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            CoreError::Revoked(identity.name).to_string(),
        ));
    }
    Ok(Member {
        name: identity.name,
        generation,
    })
}

impl FromRequest for Member {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let peer = match WorkerPeer::from_request(req, payload).into_inner() {
            Ok(peer) => peer,
            Err(e) => return ready(Err(e)),
        };
        ready(member(req, peer))
    }
}
