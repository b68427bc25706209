//! A published HTTP port: every request goes to a healthy replica
//! (round-robin, or the one with the fewest requests in flight for
//! `least-conn`), over connections to the replicas that are kept alive and
//! reused. The request carries `X-Forwarded-For` (the client's address
//! added) and `X-Forwarded-Proto`. A replica that cannot be connected to is
//! skipped for the next (the request was not sent); one that fails after
//! the request went out is retried elsewhere only for idempotent methods;
//! one that sends nothing for the port's idle timeout is answered 504 and
//! not retried (the client has waited long enough). Request bodies are
//! read whole first (at most [`MAX_BODY`] each, and the node's
//! [`BodyBudget`] in all), so that a retry can send them again; responses
//! stream through as they come. A client that takes nothing of an answer
//! for the idle timeout is cut off.
//!
//! The replicas one request tries share one deadline: the idle timeout,
//! never under a connection attempt's limit and a half.
//!
//! HTTP/1 on both sides is hyper's (server and pooled client), on threads
//! of the port's own (`[worker] ingress_threads`, default 1), each a
//! single-threaded runtime with its own client, whose connections to the
//! replicas live on that thread, and its own [`Targets`]. Requests and
//! responses pass through as they are parsed, only their connection
//! headers changed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot, watch};

use super::budget::{BodyBudget, Held};
use super::pool::{Lease, Pool};
use super::stall::{Stall, WriteTimeout};
use super::{Place, Route, Targets, allowed};
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
/// accepted (their request bodies count against the node's
/// [`BodyBudget`]).
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

type Answer = Response<Either<Passed, Full<Bytes>>>;

/// What every worker thread of one published port shares (each has its own
/// [`Local`]).
struct Balancer {
    route: Route,
    view: EndpointView,
    place: Place,
    turn: AtomicUsize,
    /// Requests in flight per replica (for `least-conn`).
    in_flight: Mutex<HashMap<SocketAddr, usize>>,
}

/// What one thread of a port keeps for itself: its connections to the
/// replicas (which live on the thread's runtime) and its copy of where the
/// replicas are.
struct Local {
    pool: Rc<Pool>,
    targets: RefCell<Targets<Target>>,
}

/// A replica as a request is sent to it: its address, and that address
/// as a `Host` header for a request that has none (made once, when the
/// endpoints change).
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
}

impl Target {
    fn new(addr: SocketAddr) -> Option<Self> {
        let host = HeaderValue::from_str(&addr.to_string()).ok()?;
        Some(Target { addr, host })
    }
}

/// A client connection's far end, and the hop it adds to
/// `X-Forwarded-For` (made once per connection).
struct Peer {
    addr: SocketAddr,
    hop: HeaderValue,
}

impl Balancer {
    /// The replicas to try, in order.
    fn order(&self, local: &Local) -> Vec<Target> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut targets = local.targets.borrow_mut().order(turn);
        if self.least_conn()
            && let Ok(counts) = self.in_flight.lock()
        {
            targets.sort_by_key(|t| counts.get(&t.addr).copied().unwrap_or(0));
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

/// A published HTTP port being served, until [`Serving::stop`] (or its
/// drop): its threads then take no more connections and give the open
/// ones [`SHUTDOWN_S`] to finish.
pub struct Serving {
    stop: watch::Sender<bool>,
    /// One per thread: said (or dropped) once it has let go of the port.
    released: Vec<oneshot::Receiver<()>>,
}

impl Serving {
    /// Stops taking connections; returns once no thread holds the port's
    /// address any more (the open connections still finish).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for released in self.released {
            let _ = released.await;
        }
    }
}

/// Serves one published HTTP port on `place.threads` threads of its own,
/// each a single-threaded runtime that takes connections from `listener`
/// (non-blocking) and serves them to the end.
pub fn serve(
    listener: std::net::TcpListener,
    route: Route,
    view: EndpointView,
    place: Place,
) -> std::io::Result<Serving> {
    let threads = place.threads.max(1);
    let port = route.expose.publish;
    let balancer = Arc::new(Balancer {
        route,
        view,
        place,
        turn: AtomicUsize::new(0),
        in_flight: Mutex::new(HashMap::new()),
    });
    let (stop, stopped) = watch::channel(false);
    let mut released = Vec::with_capacity(threads);
    for i in 0..threads {
        let listener = listener.try_clone()?;
        let (balancer, stopped) = (balancer.clone(), stopped.clone());
        let (release, on_release) = oneshot::channel();
        released.push(on_release);
        // The runtime is made on its own thread: one made here and dropped
        // here (a spawn that fails) would panic in this async context.
        std::thread::Builder::new()
            .name(format!("ingress-{port}-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        log::error!("ingress: no runtime for port {port}: {e}");
                        return;
                    }
                };
                let tasks = tokio::task::LocalSet::new();
                let taking = take_connections(listener, balancer, stopped, release);
                tasks.block_on(&runtime, taking);
                // The LocalSet's drop closes what is still open.
            })?;
    }
    Ok(Serving { stop, released })
}

/// One thread's accept loop: each connection served in a task of its own
/// on this thread, at most [`MAX_CONNECTIONS`] at once, until `stopped`.
async fn take_connections(
    listener: std::net::TcpListener,
    balancer: Arc<Balancer>,
    mut stopped: watch::Receiver<bool>,
    release: oneshot::Sender<()>,
) {
    let port = balancer.route.expose.publish;
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("ingress: cannot take connections on port {port}: {e}");
            return;
        }
    };
    // Made on each thread: its pool lives there.
    let local = Rc::new(Local {
        pool: Pool::new(CONNECT_TIMEOUT, POOL_IDLE),
        targets: RefCell::new(Targets::new(
            balancer.view.clone(),
            balancer.place.running.clone(),
            &balancer.route,
            &balancer.place.node,
            Target::new,
        )),
    });
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place,
            _ = stopped.changed() => break,
        };
        let Ok(place) = place else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("ingress: accept on port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (balancer, local) = (balancer.clone(), local.clone());
        tokio::task::spawn_local(async move {
            connection(stream, balancer, local).await;
            drop(place);
        });
    }
    drop(listener);
    let _ = release.send(());
    // The connections still open get a while to finish.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(SHUTDOWN_S), places.acquire_many(all)).await;
}

/// Serves one client connection's requests, kept alive between them.
async fn connection(stream: tokio::net::TcpStream, balancer: Arc<Balancer>, local: Rc<Local>) {
    let Ok(addr) = stream.peer_addr() else {
        return;
    };
    let Ok(hop) = HeaderValue::from_str(&client_hop(addr.ip())) else {
        return;
    };
    let peer = Rc::new(Peer { addr, hop });
    let _ = stream.set_nodelay(true);
    // A client that takes nothing of an answer for this long is cut off.
    let stream = WriteTimeout::new(stream, balancer.route.expose.idle_timeout());
    let service = hyper::service::service_fn(move |req| {
        let (balancer, local, peer) = (balancer.clone(), local.clone(), peer.clone());
        async move { Ok::<_, Infallible>(forward(req, &peer, &balancer, &local).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        log::debug!("ingress: a connection from {addr} ended: {e}");
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
    peer: &Peer,
    balancer: &Arc<Balancer>,
    local: &Local,
) -> Answer {
    match pass(req, peer, balancer, local).await {
        Ok(answer) => answer,
        Err(e) => error_answer(&e),
    }
}

async fn pass(
    req: Request<Incoming>,
    peer: &Peer,
    balancer: &Arc<Balancer>,
    local: &Local,
) -> Result<Answer, ApiError> {
    if !allowed(balancer.place.allow, peer.addr.ip()) {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "this address serves the node's containers only",
        ));
    }
    let (mut head, body) = req.into_parts();
    // Held until the answer's head has come (the last retry is decided).
    let (body, _held) = read_body(body, &balancer.place.bodies).await?;
    strip_connection_headers(&mut head.headers);
    let forwarded = forwarded_for(&head.headers, &peer.hop);
    head.headers.insert(X_FORWARDED_FOR, forwarded);
    head.headers
        .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // HTTP/1.1 to the replicas, whatever the client spoke: kept alive;
    // the path alone (a client may have named the whole URL).
    head.version = hyper::Version::HTTP_11;
    head.uri = Uri::from(
        head.uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let has_host = head.headers.contains_key(hyper::header::HOST);
    let may_retry = idempotent(&head.method);
    // A replica that sends nothing for this long is given up on.
    let patience = balancer.route.expose.idle_timeout();
    // All the replicas tried get this long together, never shorter than
    // a connection attempt's own limit, so that a replica that cannot be
    // connected to is skipped for the next, not answered 504 (a port's
    // idle timeout may be 1 s).
    let wait = patience.max(CONNECT_TIMEOUT + CONNECT_TIMEOUT / 2);
    let deadline = tokio::time::Instant::now() + wait;
    // What went wrong with the last replica tried, answered when none
    // takes the request (made only then: not on every request's way).
    let mut failed = None;
    for Target { addr: target, host } in balancer.order(local) {
        let mut out = Request::from_parts(head.clone(), Full::new(body.clone()));
        if !has_host {
            out.headers_mut().insert(hyper::header::HOST, host);
        }
        let guard = InFlight::new(balancer, target);
        let sent = tokio::time::timeout_at(deadline, local.pool.send(target, out));
        let (response, lease) = match sent.await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => {
                let retry = e.unsent() || may_retry;
                let e = failure(
                    StatusCode::BAD_GATEWAY,
                    format!("the replica at {target} failed: {e}"),
                );
                if retry {
                    failed = Some(e);
                    continue;
                }
                return Err(e);
            }
            // Not tried elsewhere: the client has waited the port's idle
            // timeout already (and a slow service is not made slower by
            // the same request on every replica).
            Err(_) => {
                return Err(failure(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the replica at {target} did not answer within the request's \
                         {wait:?} (shared by every replica it tries)"
                    ),
                ));
            }
        };
        let (mut head, body) = response.into_parts();
        strip_connection_headers(&mut head.headers);
        // Ours to the client (hyper answers an HTTP/1.0 client in kind).
        head.version = hyper::Version::HTTP_11;
        // In flight until its body has been passed on (or dropped).
        let passed = Passed {
            body,
            lease,
            _guard: guard,
            stall: Stall::new(patience),
        };
        return Ok(Response::from_parts(head, Either::Left(passed)));
    }
    Err(failed.unwrap_or_else(|| {
        failure(
            StatusCode::BAD_GATEWAY,
            format!(
                "no replica of service {} could take the request",
                balancer.route.service
            ),
        )
    }))
}

/// The request's whole body (none read for a request without one) and
/// its hold on the node's budget.
async fn read_body<B>(body: B, budget: &Arc<BodyBudget>) -> Result<(Bytes, Held), ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut held = budget.hold();
    if body.is_end_stream() {
        return Ok((Bytes::new(), held));
    }
    // A body announced too large is refused before it is read. The budget
    // is taken as bytes arrive, not for what is announced: headers alone
    // must not hold it.
    usize::try_from(body.size_hint().lower())
        .ok()
        .filter(|&n| n <= MAX_BODY)
        .ok_or_else(too_large)?;
    match tokio::time::timeout(CLIENT_TIMEOUT, collect(body, &mut held, budget)).await {
        Ok(whole) => whole.map(|whole| (whole, held)),
        Err(_) => Err(failure(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request's body did not arrive within {CLIENT_TIMEOUT:?}"),
        )),
    }
}

/// Reads `body` whole, holding the budget for each byte before it is kept.
async fn collect<B>(mut body: B, held: &mut Held, budget: &BodyBudget) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut whole = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("the request's body: {e}"), None))?;
        // Trailers are not passed on.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = whole
            .len()
            .checked_add(data.len())
            .filter(|&n| n <= MAX_BODY)
            .ok_or_else(too_large)?;
        if let Some(more) = len.checked_sub(held.bytes())
            && !held.grow(more)
        {
            return Err(busy(budget));
        }
        whole.extend_from_slice(&data);
    }
    Ok(whole.freeze())
}

/// The hop a client adds to `X-Forwarded-For`: its address (an IPv4
/// client on an IPv6 socket as IPv4).
fn client_hop(client: std::net::IpAddr) -> String {
    client.to_canonical().to_string()
}

/// `X-Forwarded-For` for the replica: every earlier hop (all the header's
/// lines), then the client's `hop`.
fn forwarded_for(headers: &HeaderMap, hop: &HeaderValue) -> HeaderValue {
    let mut earlier = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    if earlier.peek().is_none() {
        return hop.clone();
    }
    let mut hops: Vec<&str> = earlier.collect();
    hops.push(hop.to_str().unwrap_or_default());
    HeaderValue::from_str(&hops.join(", ")).unwrap_or_else(|_| hop.clone())
}

fn busy(budget: &BodyBudget) -> ApiError {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the node's balancer holds {} bytes of request bodies already, its most; try again",
            budget.cap()
        ),
    )
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
    // Most messages carry none: one pass over the few names they have
    // costs less than a removal (a hash) of each of the eight.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
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
/// done, and given up on when the replica sends nothing for the port's
/// idle timeout. Its connection goes back to the pool once the body has
/// been passed on whole (cut short, the connection is closed).
struct Passed {
    body: Incoming,
    lease: Lease,
    _guard: InFlight,
    stall: Stall,
}

impl Drop for Passed {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.lease.give_back();
        }
    }
}

impl Body for Passed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.lease.give_back();
        }
        this.stall.watch(cx, polled).map(|watched| match watched {
            Ok(frame) => frame.map(|f| f.map_err(Into::into)),
            Err(stalled) => Some(Err(format!("the replica: {stalled}").into())),
        })
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

    /// A body of `chunks`, its length not announced.
    fn chunked(
        chunks: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(c.into())))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_past_the_nodes_budget_are_refused_and_held_bytes_given_back() {
        let budget = BodyBudget::new(10);
        // Past the budget: refused as it arrives.
        let refused = read_body(Full::new(Bytes::from(vec![0u8; 11])), &budget).await;
        assert_eq!(refused.map(|_| ()).unwrap_err().status, 503);
        // Not announced: refused when it crosses the budget.
        let refused = read_body(chunked([&b"123456"[..], b"789012"]), &budget).await;
        assert_eq!(refused.map(|_| ()).unwrap_err().status, 503);
        // One that fits is read whole and holds its bytes until dropped.
        let (whole, held) = read_body(chunked([&b"01234"[..], b"56789"]), &budget)
            .await
            .expect("within the budget");
        assert_eq!(&whole[..], b"0123456789");
        let refused = read_body(Full::new(Bytes::from_static(b"x")), &budget).await;
        assert_eq!(refused.map(|_| ()).unwrap_err().status, 503);
        drop(held);
        let (whole, _held) = read_body(Full::new(Bytes::from_static(b"x")), &budget)
            .await
            .expect("the budget given back");
        assert_eq!(&whole[..], b"x");
    }

    #[tokio::test]
    async fn a_body_past_the_largest_is_refused_whatever_the_budget() {
        let budget = BodyBudget::new(usize::MAX);
        let announced = read_body(Full::new(Bytes::from(vec![0u8; MAX_BODY + 1])), &budget).await;
        assert_eq!(announced.map(|_| ()).unwrap_err().status, 413);
        let half = vec![0u8; MAX_BODY / 2 + 1];
        let streamed = read_body(chunked([half.clone(), half]), &budget).await;
        assert_eq!(streamed.map(|_| ()).unwrap_err().status, 413);
    }

    /// A listener that takes no connection: its one place in the accept
    /// queue is taken, so the kernel drops every further SYN and a connect
    /// hangs.
    fn black_hole() -> (std::net::TcpListener, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        rustix::net::listen(&listener, 0).unwrap();
        let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, filler)
    }

    fn replica_at(addr: SocketAddr) -> crate::service::Endpoint {
        crate::service::Endpoint {
            task: uuid::Uuid::new_v4(),
            slot: 1,
            node: "elsewhere".into(),
            address: addr.ip().to_string(),
            ports: [(8080, addr.port())].into(),
            container_ip: None,
        }
    }

    #[tokio::test]
    async fn the_replicas_a_request_tries_share_one_deadline() {
        // Three replicas that cannot be connected to: each attempt takes
        // the connect timeout (1 s), so without one deadline over them all
        // the client would wait 3 s for a 502.
        let holes: Vec<_> = (0..3).map(|_| black_hole()).collect();
        let expose = crate::service::Expose {
            port: 8080,
            publish: 1,
            protocol: crate::service::spec::Protocol::Http,
            balance: Balance::RoundRobin,
            proxy_protocol: false,
            idle_timeout_s: Some(1),
        };
        let table = crate::service::EndpointTable::from([(
            "web".to_string(),
            Arc::new(crate::service::Endpoints {
                service: "web".into(),
                expose: vec![expose.clone()],
                endpoints: holes
                    .iter()
                    .map(|(l, _)| replica_at(l.local_addr().unwrap()))
                    .collect(),
            }),
        )]);
        let (_feed, view) = watch::channel(Arc::new(table));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let at = listener.local_addr().unwrap();
        let place = Place {
            node: "here".into(),
            addr: at.ip(),
            allow: None,
            threads: 1,
            bodies: BodyBudget::new(1 << 20),
            running: watch::channel(Default::default()).1,
            open: Default::default(),
        };
        let route = Route {
            service: "web".into(),
            expose,
        };
        let serving = serve(listener, route, view, place).unwrap();
        let client = crate::client::plain_http().unwrap();
        let started = std::time::Instant::now();
        let answer = client.get(format!("http://{at}/")).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(answer.status(), 504);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("shared by every replica"),
            "{body}"
        );
        // 1.5 s for them all (the connect timeout and a half), not 3 s.
        assert!(took < Duration::from_millis(2500), "{took:?}");
        serving.stop().await;
    }

    fn hop(ip: &str) -> HeaderValue {
        HeaderValue::from_str(&client_hop(ip.parse().unwrap())).unwrap()
    }

    #[test]
    fn forwarded_for_keeps_every_hop_and_adds_the_client() {
        assert_eq!(
            forwarded_for(&HeaderMap::new(), &hop("::ffff:10.0.0.9")),
            "10.0.0.9"
        );
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        assert_eq!(
            forwarded_for(&h, &hop("fd00::1")),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, fd00::1"
        );
    }
}
