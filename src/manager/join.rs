//! How a worker joins: `GET /join/ca` hands out the CA certificate (public;
//! the worker checks it against the digest in its join token), and `POST
//! /join` with the token's secret and a certificate signing request
//! answers a certificate naming the worker, good for `node_cert_ttl`.
//! The certificate is the worker's identity from then on: the manager
//! takes its registration, heartbeats and reports only for that name. A
//! name a live worker holds cannot be joined under (409); a removed name
//! can, with a certificate of the name's new generation.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::Manager;
use super::actor::{Admission, Apply};
use super::auth::Admin;
use super::join_tokens::JoinTokens;
use super::members::Member;
use super::routes::mailbox;
use crate::api_error::ApiError;
use crate::config::{validate_host, validate_node_name};
use crate::core::join_tokens::{JoinRole, JoinTokenRecord};
use crate::core::{Command, Reply};
use crate::security::identity::Identity;
use crate::security::pki::Ca;
use crate::security::secret::JoinToken;
use crate::wire::{CaCertificate, JoinReply, JoinRequest, RenewRequest};
use actix::Addr;

/// The most addresses a worker's certificate names.
const MAX_HOSTS: usize = 8;
/// A P-256 request is well under 1 KiB.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// What issues worker certificates, and hands a joining manager the
/// cluster's keys.
pub struct JoinAuthority {
    pub ca: Ca,
    /// The worker and manager join tokens.
    pub join: JoinTokens,
    /// The first admin token's secret (what `admin.token` holds).
    pub admin_secret: String,
    pub ttl: Duration,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/join/ca", web::get().to(ca))
        .route("/join", web::post().to(join))
        .route("/workers/renew", web::post().to(renew))
        .route("/join-token/{role}", web::get().to(show_token))
        .route("/join-token/{role}/rotate", web::post().to(rotate_token));
}

/// The join token a path's `role` names: the workers' or the managers'.
fn role_of(role: &str) -> Result<JoinRole, ApiError> {
    JoinRole::parse(role)
        .ok_or_else(|| ApiError::not_found(format!("no {role:?} join token: worker or manager")))
}

/// `{"token": ...}`: the worker or manager join token (admin).
async fn show_token(
    _admin: Admin,
    authority: web::Data<JoinAuthority>,
    role: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let token = authority.join.current(role_of(&role)?);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "token": token.to_string() })))
}

/// A new worker or manager join token, put through the log: once it is
/// answered, the old one is refused by this manager, and by every other
/// as soon as it has applied the change (admin).
async fn rotate_token(
    admin: Admin,
    authority: web::Data<JoinAuthority>,
    manager: web::Data<Addr<Manager>>,
    role: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let role = role_of(&role)?;
    let ca_digest = authority.join.current(role).ca_digest;
    let token = JoinToken::new(&ca_digest).map_err(|e| ApiError::internal(e.to_string()))?;
    let record = JoinTokenRecord {
        role,
        token,
        rotated_at: chrono::Utc::now(),
        rotated_by: admin.token,
    };
    match manager
        .send(Apply(Command::RotateJoinToken { record }))
        .await
        .map_err(mailbox)?
        .map_err(ApiError::from)?
    {
        Reply::JoinToken(record) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({ "token": record.token.to_string() })))
        }
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// A joined worker's new certificate, for the name its current one gives.
async fn renew(
    caller: Member,
    authority: web::Data<JoinAuthority>,
    request: web::Json<RenewRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = request.into_inner();
    let certificate = issue(
        &authority,
        &caller.name,
        caller.generation,
        &request.hosts,
        &request.csr,
    )?;
    log::info!(
        "manager: worker {} renewed its certificate, good for {} s",
        caller.name,
        authority.ttl.as_secs()
    );
    Ok(HttpResponse::Ok().json(JoinReply { certificate }))
}

/// Checks what a worker asks for and issues its certificate.
fn issue(
    authority: &JoinAuthority,
    name: &str,
    generation: u64,
    hosts: &[String],
    csr: &str,
) -> Result<String, ApiError> {
    if hosts.is_empty() || hosts.len() > MAX_HOSTS {
        return Err(ApiError::bad_request(
            format!("give 1 to {MAX_HOSTS} addresses"),
            Some("hosts".into()),
        ));
    }
    for host in hosts {
        validate_host(host).map_err(|m| ApiError::bad_request(m, Some("hosts".into())))?;
    }
    if csr.len() > MAX_CSR_BYTES {
        return Err(ApiError::bad_request(
            format!("over {MAX_CSR_BYTES} bytes"),
            Some("csr".into()),
        ));
    }
    authority
        .ca
        .sign_request(
            csr,
            &Identity::worker(name),
            generation,
            hosts,
            authority.ttl,
        )
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("csr".into())))
}

async fn ca(authority: web::Data<JoinAuthority>) -> HttpResponse {
    HttpResponse::Ok().json(CaCertificate {
        ca: authority.ca.cert_pem().to_string(),
    })
}

async fn join(
    authority: web::Data<JoinAuthority>,
    manager: web::Data<Addr<Manager>>,
    request: web::Json<JoinRequest>,
) -> Result<HttpResponse, ApiError> {
    let request = request.into_inner();
    if !authority.join.admits(JoinRole::Worker, &request.secret) {
        log::warn!(
            "manager: refused a join as {:?}: wrong join token",
            request.name
        );
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the join token is not this cluster's worker token (or it was rotated)",
        ));
    }
    validate_node_name(&request.name).map_err(|m| ApiError::bad_request(m, Some("name".into())))?;
    let generation = manager
        .send(Admission(request.name.clone()))
        .await
        .map_err(mailbox)?
        .map_err(|e| {
            log::warn!("manager: refused a join as {:?}: {e}", request.name);
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        })?;
    let certificate = issue(
        &authority,
        &request.name,
        generation,
        &request.hosts,
        &request.csr,
    )?;
    log::info!(
        "manager: worker {} joined: certificate for {} issued, good for {} s",
        request.name,
        request.hosts.join(", "),
        authority.ttl.as_secs()
    );
    Ok(HttpResponse::Ok().json(JoinReply { certificate }))
}
