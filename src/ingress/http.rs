//! A published HTTP port: every request goes to a healthy replica
//! (round-robin, or the one with the fewest requests in flight for
//! `least-conn`), over connections to the replicas that are kept alive and
//! reused. The request carries `X-Forwarded-For` (the client's address
//! added) and `X-Forwarded-Proto`. A replica that cannot be connected to is
//! skipped for the next (the request was not sent); one that fails after
//! the request went out is retried elsewhere only for idempotent methods.
//! Request bodies are read whole first (at most [`MAX_BODY`]), so that a
//! retry can send them again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;

use super::{Route, allowed, candidates};
use crate::api_error::ApiError;
use crate::service::spec::Balance;
use crate::worker::endpoints::EndpointView;

/// The most threads one published port is served by (one per core).
const MAX_THREADS: usize = 4;

/// The largest request body the balancer takes.
pub const MAX_BODY: usize = 16 << 20;

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What every worker thread of one published port shares (each has its own
/// client, whose connections to the replicas live on its runtime).
struct Balancer {
    route: Route,
    view: EndpointView,
    /// Who may use it, beside loopback (`None`: anyone).
    allow: Option<ipnet::IpNet>,
    turn: AtomicUsize,
    /// Requests in flight per replica (for `least-conn`).
    in_flight: Mutex<HashMap<SocketAddr, usize>>,
}

impl Balancer {
    /// The replicas to try, in order.
    fn order(&self) -> Vec<SocketAddr> {
        let mut targets = candidates(
            &self.view,
            &self.route,
            self.turn.fetch_add(1, Ordering::Relaxed),
        );
        if self.route.expose.balance == Balance::LeastConn
            && let Ok(counts) = self.in_flight.lock()
        {
            targets.sort_by_key(|t| counts.get(t).copied().unwrap_or(0));
        }
        targets
    }

    fn count(&self, target: SocketAddr, up: bool) {
        if let Ok(mut counts) = self.in_flight.lock() {
            let n = counts.entry(target).or_insert(0);
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
            if *n == 0 {
                counts.remove(&target);
            }
        }
    }
}

/// Serves one published HTTP port until the returned handle stops it.
pub fn serve(
    listener: std::net::TcpListener,
    route: Route,
    view: EndpointView,
    allow: Option<ipnet::IpNet>,
) -> std::io::Result<actix_web::dev::Server> {
    // Made once here to fail early; each worker thread makes its own.
    let first = crate::client::proxy_http().map_err(std::io::Error::other)?;
    let balancer = web::Data::new(Balancer {
        route,
        view,
        allow,
        turn: AtomicUsize::new(0),
        in_flight: Mutex::new(HashMap::new()),
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    Ok(HttpServer::new(move || {
        let client = crate::client::proxy_http().unwrap_or_else(|_| first.clone());
        App::new()
            .app_data(balancer.clone())
            .app_data(web::Data::new(client))
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .default_service(web::to(forward))
    })
    .workers(threads)
    .disable_signals()
    .listen(listener)?
    .run())
}

/// A request counted in flight to a replica until dropped.
struct InFlight {
    balancer: web::Data<Balancer>,
    target: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.balancer.count(self.target, false);
    }
}

fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    balancer: web::Data<Balancer>,
    client: web::Data<reqwest::Client>,
) -> Result<HttpResponse, ApiError> {
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::bad_request("an unknown method", None))?;
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Some(peer) = req.peer_addr()
        && !allowed(balancer.allow, peer.ip())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this address serves the node's containers only",
        ));
    }
    let client_ip = req.peer_addr().map(|a| a.ip().to_string());
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in req.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "x-forwarded-proto" {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    let forwarded = match (
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        &client_ip,
    ) {
        (Some(before), Some(ip)) => format!("{before}, {ip}"),
        (None, Some(ip)) => ip.clone(),
        (Some(before), None) => before.to_string(),
        (None, None) => String::new(),
    };
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        reqwest::header::HeaderValue::from_static("http"),
    );
    let may_retry = idempotent(method.as_str());
    for target in balancer.order() {
        let url = format!("http://{target}{path}");
        balancer.count(target, true);
        let sent = client
            .request(method.clone(), &url)
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                balancer.count(target, false);
                if e.is_connect() || may_retry {
                    continue;
                }
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the replica at {target} failed: {e}"),
                ));
            }
        };
        let mut out = HttpResponse::build(
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        );
        for (name, value) in response.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                out.append_header((name.as_str(), value.as_bytes()));
            }
        }
        // In flight until its body has been passed on (or dropped).
        let guard = InFlight {
            balancer: balancer.clone(),
            target,
        };
        let stream = response.bytes_stream().map(move |chunk| {
            let _ = &guard;
            chunk.map_err(|e| actix_web::error::ErrorBadGateway(e.to_string()))
        });
        return Ok(out.streaming(stream));
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        format!(
            "no replica of service {} could take the request",
            balancer.route.service
        ),
    ))
}
