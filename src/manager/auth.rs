//! Who may call a user route: `Authorization: Bearer <token>` checked
//! against the [`TokenTable`] the Manager publishes after every committed
//! token change (a watch channel: the routes read the newest snapshot, the
//! Manager alone writes it). A route takes [`Reader`], [`Deployer`] or
//! [`Admin`] as its first argument, so nothing of a request is looked at
//! before its token: a missing, unknown or expired token gets 401, a role
//! too weak for the route 403, both JSON.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use chrono::Utc;
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::core::tokens::{AuthError, Role, TokenTable};

/// What the routes read the tokens from.
pub type Tokens = watch::Receiver<Arc<TokenTable>>;

/// The token a request came with, if it may do what `needed` allows; its
/// name.
fn authorize(req: &HttpRequest, needed: Role) -> Result<String, ApiError> {
    let Some(tokens) = req.app_data::<web::Data<Tokens>>() else {
        return Err(ApiError::internal("no token table"));
    };
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let secret = header.and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    });
    let table = tokens.borrow();
    match table.authorize(secret, needed, Utc::now()) {
        Ok(token) => Ok(token.name.clone()),
        Err(e @ AuthError::Forbidden { .. }) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e) => Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())),
    }
}

macro_rules! access {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        pub struct $name {
            /// The token's name.
            pub token: String,
        }

        impl FromRequest for $name {
            type Error = ApiError;
            type Future = Ready<Result<Self, ApiError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                ready(authorize(req, $role).map(|token| $name { token }))
            }
        }
    };
}

access!(
    /// A token that may read (any role).
    Reader,
    Role::Read
);
access!(
    /// A token that may submit and stop tasks.
    Deployer,
    Role::Deploy
);
access!(
    /// A token that may do everything.
    Admin,
    Role::Admin
);
