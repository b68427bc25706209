//! Raft's RPCs between managers over HTTPS, mutual TLS with the cluster's
//! certificates: the route `POST /raft/{rpc}` (only a manager's
//! certificate gets in) hands each one to this manager's Raft, and
//! [`Https`] is the transport that sends them.

use std::time::Duration;

use actix_web::{HttpResponse, web};

use crate::api_error::ApiError;
use crate::raft::network::{Rpc, Transport, TransportError, answer};
use crate::raft::{Member, NodeId, Raft};
use crate::security::peer::ManagerPeer;

/// The largest RPC body taken: a batch of entries or a snapshot's chunk.
pub const MAX_RPC_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Below the managers' keep-alive (5 s), as every client of Cube's.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The transport of one manager: its client certificate, a manager
/// expected at the other end.
#[derive(Clone)]
pub struct Https {
    http: reqwest::Client,
}

impl Https {
    /// `tls`: this manager's client configuration, expecting a manager.
    pub fn new(tls: rustls::ClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE)
            .build()?;
        Ok(Https { http })
    }
}

/// The header naming the member an RPC is for.
const TO: &str = "x-cube-raft-to";

impl Transport for Https {
    async fn call(
        &self,
        target: NodeId,
        to: &Member,
        rpc: Rpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let url = format!("{}/raft/{}", to.url.trim_end_matches('/'), rpc.path());
        let sent = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TO, target.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let reason = e.to_string();
                if e.is_connect() {
                    TransportError::Unreachable(url.clone(), reason)
                } else {
                    TransportError::Failed(url.clone(), reason)
                }
            })?;
        let status = sent.status();
        let answer = sent
            .bytes()
            .await
            .map_err(|e| TransportError::Failed(url.clone(), e.to_string()))?;
        if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
            // Another manager answers there now: the member is gone.
            return Err(TransportError::Unreachable(
                url,
                String::from_utf8_lossy(&answer).into_owned(),
            ));
        }
        if !status.is_success() {
            return Err(TransportError::Failed(
                url,
                format!("{status}: {}", String::from_utf8_lossy(&answer)),
            ));
        }
        Ok(answer.to_vec())
    }
}

/// `POST /raft/{rpc}`: from another manager only, for this one (`421`
/// when the sender means another member: this manager came back at that
/// one's URL under a new id).
async fn receive(
    _manager: ManagerPeer,
    raft: web::Data<Raft>,
    rpc: web::Path<String>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let me = raft.metrics().borrow().id;
    let to = req
        .headers()
        .get(TO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<NodeId>().ok());
    if to != Some(me) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::MISDIRECTED_REQUEST,
            format!("this is manager {me}, not manager {to:?}"),
        ));
    }
    let rpc = Rpc::from_path(&rpc)
        .ok_or_else(|| ApiError::not_found(format!("no Raft RPC named {rpc:?}")))?;
    let answered = answer(&raft, rpc, &body)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(answered))
}

/// The route; the Raft it feeds is the App's `web::Data<Raft>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/raft/{rpc}")
            .app_data(web::PayloadConfig::new(MAX_RPC_BYTES))
            .route(web::post().to(receive)),
    );
}
