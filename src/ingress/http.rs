//! A published HTTP port: every request goes to a healthy replica
//! (round-robin, or the one with the fewest requests in flight for
//! `least-conn`), over connections to the replicas that are kept alive and
//! reused. The request carries `X-Forwarded-For` (the client's address
//! added) and `X-Forwarded-Proto`. A replica that cannot be connected to is
//! skipped for the next (the request was not sent); one that fails after
//! the request went out is retried elsewhere only for idempotent methods.
//! Request bodies are read whole first (at most [`MAX_BODY`]), so that a
//! retry can send them again; responses stream through as they come.
//!
//! HTTP/1 on both sides is hyper's (server and pooled client), on
//! actix-server's threads (`[worker] ingress_threads`, default 1), each
//! with its own client, whose connections to the replicas live on that
//! thread. Requests and
//! responses pass through as they are parsed, only their connection
//! headers changed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Place, Route, allowed, candidates};
use crate::api_error::ApiError;
use crate::service::spec::Balance;
use crate::worker::endpoints::EndpointView;

/// The largest request body the balancer takes.
pub const MAX_BODY: usize = 16 << 20;

/// A client that has not sent a request's headers (or its body) within
/// this is answered and closed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections to replicas kept idle for reuse this long.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Client connections one thread of a port holds at once; more wait to be
/// accepted (each may hold a request body of up to [`MAX_BODY`]).
const MAX_CONNECTIONS: usize = 4096;
/// Seconds a stopped port's open connections get to finish.
const SHUTDOWN_S: u64 = 5;

/// Headers that belong to one connection, not to the request.
const HOP_BY_HOP: [HeaderName; 8] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

type ReplicaClient = Client<HttpConnector, Full<Bytes>>;
type Answer = Response<Either<Passed, Full<Bytes>>>;

/// What every worker thread of one published port shares (each has its own
/// client, whose connections to the replicas live on its runtime).
struct Balancer {
    route: Route,
    view: EndpointView,
    place: Place,
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
            &self.place.node,
            self.turn.fetch_add(1, Ordering::Relaxed),
        );
        if self.least_conn()
            && let Ok(counts) = self.in_flight.lock()
        {
            targets.sort_by_key(|t| counts.get(t).copied().unwrap_or(0));
        }
        targets
    }

    fn least_conn(&self) -> bool {
        self.route.expose.balance == Balance::LeastConn
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

/// Serves one published HTTP port until the returned server's handle stops
/// it.
pub fn serve(
    listener: std::net::TcpListener,
    route: Route,
    view: EndpointView,
    place: Place,
) -> std::io::Result<actix_server::Server> {
    let threads = place.threads.max(1);
    let balancer = Arc::new(Balancer {
        route,
        view,
        place,
        turn: AtomicUsize::new(0),
        in_flight: Mutex::new(HashMap::new()),
    });
    Ok(actix_server::Server::build()
        .workers(threads)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_S)
        .max_concurrent_connections(MAX_CONNECTIONS)
        .listen("ingress-http", listener, move || {
            // Made on each worker thread: its pool lives there.
            let client = Rc::new(replica_client());
            let balancer = balancer.clone();
            actix_service::fn_service(move |stream: actix_rt::net::TcpStream| {
                let (balancer, client) = (balancer.clone(), client.clone());
                async move {
                    connection(stream, balancer, client).await;
                    Ok::<(), Infallible>(())
                }
            })
        })?
        .run())
}

/// The balancer's client of the replicas: plain HTTP/1, connections kept
/// and reused, redirects handed back to the client (never followed).
fn replica_client() -> ReplicaClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Serves one client connection's requests, kept alive between them.
async fn connection(
    stream: actix_rt::net::TcpStream,
    balancer: Arc<Balancer>,
    client: Rc<ReplicaClient>,
) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let (balancer, client) = (balancer.clone(), client.clone());
        async move { Ok::<_, Infallible>(forward(req, peer, &balancer, &client).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        log::debug!("ingress: a connection from {peer} ended: {e}");
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The replica's answer to `req`, or the balancer's error (JSON).
async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    balancer: &Arc<Balancer>,
    client: &ReplicaClient,
) -> Answer {
    match pass(req, peer, balancer, client).await {
        Ok(answer) => answer,
        Err(e) => error_answer(&e),
    }
}

async fn pass(
    req: Request<Incoming>,
    peer: SocketAddr,
    balancer: &Arc<Balancer>,
    client: &ReplicaClient,
) -> Result<Answer, ApiError> {
    if !allowed(balancer.place.allow, peer.ip()) {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "this address serves the node's containers only",
        ));
    }
    let (mut head, body) = req.into_parts();
    let body = read_body(body).await?;
    strip_connection_headers(&mut head.headers);
    let forwarded = forwarded_for(&head.headers, peer.ip());
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        head.headers.insert(X_FORWARDED_FOR, v);
    }
    head.headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // HTTP/1.1 to the replicas, whatever the client spoke: kept alive.
    head.version = hyper::Version::HTTP_11;
    let path = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    let may_retry = idempotent(&head.method);
    // A replica that sends nothing for this long is given up on.
    let patience = balancer.route.expose.idle_timeout();
    // What went wrong with the last replica tried, answered when none
    // takes the request.
    let mut failed = failure(
        StatusCode::BAD_GATEWAY,
        format!(
            "no replica of service {} could take the request",
            balancer.route.service
        ),
    );
    for target in balancer.order() {
        let uri = Uri::builder()
            .scheme("http")
            .authority(target.to_string())
            .path_and_query(path.clone())
            .build()
            .map_err(|e| ApiError::bad_request(format!("the request's path: {e}"), None))?;
        let mut out = Request::from_parts(head.clone(), Full::new(body.clone()));
        *out.uri_mut() = uri;
        let guard = InFlight::new(balancer, target);
        let response = match tokio::time::timeout(patience, client.request(out)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let retry = e.is_connect() || may_retry;
                failed = failure(
                    StatusCode::BAD_GATEWAY,
                    format!("the replica at {target} failed: {e}"),
                );
                if retry {
                    continue;
                }
                return Err(failed);
            }
            Err(_) => {
                failed = failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("the replica at {target} did not answer within {patience:?}"),
                );
                if may_retry {
                    continue;
                }
                return Err(failed);
            }
        };
        let (mut head, body) = response.into_parts();
        strip_connection_headers(&mut head.headers);
        // Ours to the client (hyper answers an HTTP/1.0 client in kind).
        head.version = hyper::Version::HTTP_11;
        // In flight until its body has been passed on (or dropped).
        let passed = Passed {
            body,
            _guard: guard,
            patience,
            stalled: None,
        };
        return Ok(Response::from_parts(head, Either::Left(passed)));
    }
    Err(failed)
}

/// The request's whole body (none read for a request without one).
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    match tokio::time::timeout(CLIENT_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(
            format!("the request's body: {e}"),
            None,
        )),
        Err(_) => Err(failure(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request's body did not arrive within {CLIENT_TIMEOUT:?}"),
        )),
    }
}

/// `X-Forwarded-For` for the replica: every earlier hop (all the header's
/// lines), then the client (an IPv4 client on an IPv6 socket as IPv4).
fn forwarded_for(headers: &HeaderMap, client: std::net::IpAddr) -> String {
    let mut hops: Vec<String> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    hops.push(client.to_canonical().to_string());
    hops.join(", ")
}

fn too_large() -> ApiError {
    failure(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a request body is at most {MAX_BODY} bytes"),
    )
}

/// Takes out the headers of one connection: the hop-by-hop ones and those
/// the `Connection` header names.
fn strip_connection_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// The balancer's own error, as every Cube error: JSON.
fn failure(status: StatusCode, error: impl Into<String>) -> ApiError {
    ApiError {
        status: status.as_u16(),
        error: error.into(),
        field: None,
    }
}

fn error_answer(e: &ApiError) -> Answer {
    let body = serde_json::to_vec(e).unwrap_or_default();
    let mut answer = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *answer.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_GATEWAY);
    answer.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

/// A request counted in flight to a replica (for `least-conn`) until
/// dropped.
struct InFlight {
    counted: Option<(Arc<Balancer>, SocketAddr)>,
}

impl InFlight {
    fn new(balancer: &Arc<Balancer>, target: SocketAddr) -> Self {
        if !balancer.least_conn() {
            return InFlight { counted: None };
        }
        balancer.count(target, true);
        InFlight {
            counted: Some((balancer.clone(), target)),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((balancer, target)) = &self.counted {
            balancer.count(*target, false);
        }
    }
}

/// A replica's response body on its way to the client: in flight until
/// done, and given up on when the replica sends nothing for `patience`.
struct Passed {
    body: Incoming,
    _guard: InFlight,
    patience: Duration,
    /// Armed while the replica has nothing to send.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Passed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.stalled = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let patience = self.patience;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "the replica sent nothing for {patience:?}"
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn connection_headers_and_those_it_names_are_taken_out() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("host", "web"),
            ("accept", "*/*"),
        ]);
        strip_connection_headers(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "accept"]);
    }

    #[test]
    fn forwarded_for_keeps_every_hop_and_adds_the_client() {
        let client: std::net::IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert_eq!(forwarded_for(&HeaderMap::new(), client), "10.0.0.9");
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        assert_eq!(
            forwarded_for(&h, "fd00::1".parse().unwrap()),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, fd00::1"
        );
    }
}
