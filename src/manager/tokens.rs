//! `POST /tokens`, `GET /tokens`, `DELETE /tokens/{name}`: admins make and
//! revoke users' tokens. A new token's secret is made here, answered once
//! and stored only as its SHA-256.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::Utc;

use super::actor::{Apply, ListTokens, Manager, ManagerError};
use super::auth::Admin;
use super::routes::mailbox;
use crate::api_error::ApiError;
use crate::core::tokens::{CreatedToken, NewToken, TokenRecord, validate_token_name};
use crate::core::{Command, Reply};
use crate::security::secret::{random_secret, sha256_hex};

/// The longest a token may live: ten years.
const MAX_TTL_S: u64 = 10 * 365 * 24 * 3600;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::post().to(create))
        .route("/tokens", web::get().to(list))
        .route("/tokens/{name}", web::delete().to(revoke));
}

async fn create(
    admin: Admin,
    manager: web::Data<Addr<Manager>>,
    body: web::Json<NewToken>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    validate_token_name(&body.name).map_err(|m| ApiError::bad_request(m, Some("name".into())))?;
    let now = Utc::now();
    let expires_at = match body.ttl_s {
        None => None,
        Some(ttl) => {
            let at = (1..=MAX_TTL_S)
                .contains(&ttl)
                .then(|| chrono::Duration::try_seconds(ttl as i64))
                .flatten()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("must be from 1 to {MAX_TTL_S} seconds"),
                        Some("ttl_s".into()),
                    )
                })?;
            Some(at)
        }
    };
    let secret = random_secret().map_err(|e| ApiError::internal(e.to_string()))?;
    let record = TokenRecord {
        name: body.name,
        role: body.role,
        hash: sha256_hex(secret.as_bytes()),
        created_at: now,
        expires_at,
        created_by: Some(admin.token),
    };
    match manager
        .send(Apply(Command::CreateToken { record }))
        .await
        .map_err(mailbox)?
        .map_err(ApiError::from)?
    {
        Reply::Token(record) => Ok(HttpResponse::Created().json(CreatedToken {
            name: record.name,
            role: record.role,
            secret,
            expires_at: record.expires_at,
        })),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

async fn list(_admin: Admin, manager: web::Data<Addr<Manager>>) -> Result<HttpResponse, ApiError> {
    let tokens = manager.send(ListTokens).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(tokens))
}

async fn revoke(
    admin: Admin,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    manager
        .send(Apply(Command::RevokeToken { name: name.clone() }))
        .await
        .map_err(mailbox)?
        .map_err(|e: ManagerError| ApiError::from(e))?;
    log::info!("manager: token {name} revoked by {}", admin.token);
    Ok(HttpResponse::build(StatusCode::OK).json(serde_json::json!({ "revoked": name })))
}
