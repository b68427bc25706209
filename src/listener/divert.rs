//! Requests a node passes on instead of handling them: a manager that does
//! not lead sends writes to the one that does. What is diverted, and
//! where, is the App's to say (a [`Divert`] in its data); this middleware
//! does the passing: a `Proxy` sends the request on with its body and
//! `Authorization`, and hands the answer back (the client never knows);
//! a `Redirect` answers `307` to the same path there (for clients that
//! prove who they are by their certificate, which a proxy cannot pass on).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;

use crate::api_error::ApiError;

/// The header a passed-on request carries: it is never passed on again.
pub const DIVERTED: &str = "x-cube-diverted";
/// The largest body passed on: the routes' own limit (1 MiB).
const MAX_BODY: usize = 1 << 20;

/// Where a request goes instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diversion {
    /// Sent on to this base URL; its answer is the answer.
    Proxy(String),
    /// The client is sent to this base URL (`307`).
    Redirect(String),
}

/// What an App diverts: put in its data as `web::Data<dyn Divert>`.
pub trait Divert: Send + Sync + 'static {
    /// Where `req` goes instead of here, if anywhere.
    fn divert(&self, req: &ServiceRequest) -> Option<Diversion>;
    /// The client that passes requests on.
    fn client(&self) -> &reqwest::Client;
    /// Before `req` is served here: what must hold first (e.g. that this
    /// node still leads), or why it cannot be served (a JSON `503`).
    fn confirm(&self, req: &ServiceRequest) -> Option<BoxFuture<'static, Result<(), String>>>;
}

/// The middleware (`middleware::from_fn(divert)`).
pub async fn divert(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let diversion = req
        .app_data::<web::Data<dyn Divert>>()
        .filter(|_| !req.headers().contains_key(DIVERTED))
        .and_then(|d| d.divert(&req).map(|to| (to, d.client().clone())));
    let Some((diversion, client)) = diversion else {
        let confirm = req
            .app_data::<web::Data<dyn Divert>>()
            .and_then(|d| d.confirm(&req));
        if let Some(confirm) = confirm
            && let Err(why) = confirm.await
        {
            let error = ApiError::unavailable(why);
            return Ok(req.into_response(actix_web::ResponseError::error_response(&error)));
        }
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let target = |base: &str| {
        let path = req
            .uri()
            .path_and_query()
            .map_or(req.path(), |p| p.as_str());
        format!("{}{path}", base.trim_end_matches('/'))
    };
    match diversion {
        Diversion::Redirect(base) => {
            let url = target(&base);
            Ok(req.into_response(
                HttpResponse::TemporaryRedirect()
                    .insert_header((LOCATION, url))
                    .finish(),
            ))
        }
        Diversion::Proxy(base) => {
            let url = target(&base);
            let (http, mut payload) = req.into_parts();
            let answer = match pass_on(&http, &mut payload, &client, &url).await {
                Ok(answer) => answer,
                Err(e) => actix_web::ResponseError::error_response(&e),
            };
            Ok(ServiceResponse::new(http, answer))
        }
    }
}

/// Sends the request to `url` and turns the answer into this one's.
async fn pass_on(
    http: &actix_web::HttpRequest,
    payload: &mut actix_web::dev::Payload,
    client: &reqwest::Client,
    url: &str,
) -> Result<HttpResponse, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}"), None))?;
        if body.len().saturating_add(chunk.len()) > MAX_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body passed on to the leader is at most {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let method = reqwest::Method::from_bytes(http.method().as_str().as_bytes())
        .map_err(|e| ApiError::bad_request(e.to_string(), None))?;
    let mut request = client.request(method, url).header(DIVERTED, "1");
    for name in [AUTHORIZATION, CONTENT_TYPE, ACCEPT] {
        if let Some(value) = http.headers().get(&name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    if !body.is_empty() {
        request = request.body(body.freeze());
    }
    let unavailable = |e: reqwest::Error| {
        ApiError::unavailable(format!("the leader at {url} could not be asked: {e}"))
    };
    let answer = request.send().await.map_err(unavailable)?;
    let status = StatusCode::from_u16(answer.status().as_u16())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let content_type = answer.headers().get(CONTENT_TYPE.as_str()).cloned();
    let bytes = answer.bytes().await.map_err(unavailable)?;
    let mut response = HttpResponse::build(status);
    if let Some(value) = content_type {
        response.insert_header((CONTENT_TYPE, value.as_bytes()));
    }
    Ok(response.body(bytes))
}
