//! The HTTP client of Cube's APIs: the CLI and workers talk to the manager
//! with it, the manager talks to workers with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::api_error::ApiError;
use crate::core::TaskPage;
use crate::core::nodes::NodeView;
use crate::core::tokens::{CreatedToken, NewToken, TokenView};
use crate::service::ServiceView;
use crate::task::TaskRecord;
use crate::wire::{
    AddManager, Assignment, CaCertificate, ClusterView, Heartbeat, HeartbeatReply, JoinReply,
    JoinRequest, ManagerJoinReply, ManagerJoinRequest, NodeStats, Registration, RegistrationReply,
    RenewRequest, ReportReply, TaskStatus,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(3);
/// Long enough for a worker to stop a container gracefully.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {}{}", .error.error, .error.field.as_ref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Api {
        url: String,
        status: u16,
        error: ApiError,
    },
    #[error("{url} sent a response that cannot be read: {reason}")]
    Decode { url: String, reason: String },
    #[error("cannot set up an HTTP client: {0}")]
    Setup(String),
}

impl ClientError {
    /// Whether the other side never answered (as opposed to answering "no").
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// A client of one Cube node (manager or worker), by base URL, over TLS:
/// `tls` says which CA to trust, whom to expect at the other end and which
/// certificate (if any) to present. A user's client also carries a token.
///
/// The base may list several URLs separated by commas (the managers of one
/// cluster): a request that reaches none at one goes to the next, and the
/// one that answered (or that a redirect led to) is asked first from then
/// on. A worker's clients of the managers share their URLs
/// ([`Client::alike`]) and learn the managers' list as it changes
/// ([`Client::learn`]).
#[derive(Debug, Clone)]
pub struct Client {
    bases: Arc<Bases>,
    http: reqwest::Client,
    tls: rustls::ClientConfig,
    token: Option<String>,
}

/// The URLs a client asks, shared by its clones and the clients made
/// [`Client::alike`].
#[derive(Debug)]
struct Bases {
    /// Never empty.
    urls: ArcSwap<Vec<String>>,
    /// Which of `urls` to ask first.
    first: AtomicUsize,
}

/// The URLs a comma-separated list names, each once, without a trailing `/`.
pub fn split_urls(list: &str) -> Vec<String> {
    distinct_urls(list.split(','))
}

/// The URLs among `pieces` (blank ones left out), each once, in order,
/// without a trailing `/`.
pub fn distinct_urls<'a>(pieces: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for url in pieces {
        let url = url.trim().trim_end_matches('/');
        if !url.is_empty() && !urls.iter().any(|u| u == url) {
            urls.push(url.to_string());
        }
    }
    urls
}

impl Client {
    pub fn new(base: &str, tls: &rustls::ClientConfig) -> Result<Self, ClientError> {
        Self::with_timeout(base, tls, REQUEST_TIMEOUT)
    }

    /// A client whose requests give up after `timeout` (a stopped process
    /// may accept a connection and never answer).
    pub fn with_timeout(
        base: &str,
        tls: &rustls::ClientConfig,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            // Below the servers' keep-alive (5 s): a pooled connection is
            // never reused just as the server closes it.
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|e| ClientError::Setup(describe(&e)))?;
        let urls = split_urls(base);
        if urls.is_empty() {
            return Err(ClientError::Setup(format!("no URL in {base:?}")));
        }
        Ok(Client {
            bases: Arc::new(Bases {
                urls: ArcSwap::from_pointee(urls),
                first: AtomicUsize::new(0),
            }),
            http,
            tls: tls.clone(),
            token: None,
        })
    }

    /// A client of the same URLs (those this one learns, it learns too)
    /// whose requests give up after `timeout`.
    pub fn alike(&self, timeout: Duration) -> Result<Self, ClientError> {
        let mut alike = Self::with_timeout(&self.base(), &self.tls, timeout)?;
        alike.bases = self.bases.clone();
        alike.token = self.token.clone();
        Ok(alike)
    }

    /// The URLs asked, in their order.
    pub fn urls(&self) -> Arc<Vec<String>> {
        self.bases.urls.load_full()
    }

    /// Takes `urls` (a list of the managers, the one to ask first first)
    /// as the URLs to ask, and asks the first of them from now on; whether
    /// they differ from those asked until now. An empty list is ignored.
    pub fn learn(&self, urls: &[String]) -> bool {
        let urls = distinct_urls(urls.iter().map(String::as_str));
        if urls.is_empty() || *self.bases.urls.load_full() == urls {
            return false;
        }
        self.bases.urls.store(Arc::new(urls));
        self.bases.first.store(0, Ordering::Relaxed);
        true
    }

    /// The same client, sending `Authorization: Bearer <token>`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.trim().to_string());
        self
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The URL asked first.
    pub fn base(&self) -> String {
        let urls = self.bases.urls.load();
        let first = self.bases.first.load(Ordering::Relaxed) % urls.len().max(1);
        urls.get(first).cloned().unwrap_or_default()
    }

    /// The URLs in the order to try them: the one asked first, then the
    /// others, with their places in the list.
    fn in_turn(&self) -> Vec<(usize, String)> {
        let urls = self.bases.urls.load_full();
        let n = urls.len();
        let first = self.bases.first.load(Ordering::Relaxed) % n.max(1);
        (0..n)
            .map(|i| ((first + i) % n, urls[(first + i) % n].clone()))
            .collect()
    }

    /// Asks the URL at `place` first from now on.
    fn ask_first(&self, place: usize) {
        self.bases.first.store(place, Ordering::Relaxed);
    }

    /// Notes which base answered: the one a redirect ended at, if listed.
    fn answered(&self, asked: usize, at: &reqwest::Url) {
        let at = at.as_str();
        let found = self
            .bases
            .urls
            .load()
            .iter()
            .position(|b| {
                at.strip_prefix(b.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .unwrap_or(asked);
        self.ask_first(found);
    }

    /// Sends a request to the first base that can be reached.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let mut last = None;
        let in_turn = self.in_turn();
        let n = in_turn.len();
        for (i, base) in in_turn {
            let url = format!("{base}{path}");
            let mut request = self.authorized(self.http.request(method.clone(), &url));
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    self.answered(i, response.url());
                    return Ok((url, response));
                }
                // Only a request that never reached anyone goes on to
                // the next: one sent may have been done.
                Err(e) if e.is_connect() => last = Some(unreachable(&url, &e)),
                Err(e) => {
                    // Reached but silent (a stopped process): the next
                    // request asks the next one.
                    if n > 1 {
                        self.ask_first((i + 1) % n);
                    }
                    return Err(unreachable(&url, &e));
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Setup("no URL to ask".into())))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(u16, T), ClientError> {
        let (url, response) = self.send(method, path, body).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| unreachable(&url, &e))?;
        if status >= 400 {
            return Err(api_error(url, status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })?;
        Ok((status, value))
    }

    // --- manager, user-facing ---

    /// Submits a spec (as JSON; the manager validates it).
    pub async fn submit(&self, spec: &serde_json::Value) -> Result<TaskRecord, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/tasks", Some(spec))
            .await?
            .1)
    }

    /// Every task, oldest first: pages through `GET /tasks` (in id order).
    pub async fn tasks(&self) -> Result<Vec<TaskRecord>, ClientError> {
        self.tasks_where("").await
    }

    /// Every task the query (`state=...&node=...&service=...`) selects, all
    /// pages, oldest first.
    pub async fn tasks_where(&self, query: &str) -> Result<Vec<TaskRecord>, ClientError> {
        let mut out = Vec::new();
        let mut after: Option<Uuid> = None;
        let sep = if query.is_empty() { "" } else { "&" };
        loop {
            let path = match after {
                Some(id) => format!("/tasks?after={id}{sep}{query}"),
                None => format!("/tasks?{query}"),
            };
            let page: TaskPage = self.call(reqwest::Method::GET, &path, None::<&()>).await?.1;
            out.extend(page.tasks);
            match page.next {
                Some(next) => after = Some(next),
                None => {
                    out.sort_by_key(|t| (t.created_at, t.id));
                    return Ok(out);
                }
            }
        }
    }

    /// One page of `GET /tasks` with a query string (`limit`, `after`,
    /// `state`, `node`).
    pub async fn tasks_page(&self, query: &str) -> Result<TaskPage, ClientError> {
        let path = format!("/tasks?{query}");
        Ok(self.call(reqwest::Method::GET, &path, None::<&()>).await?.1)
    }

    pub async fn task(&self, id: &str) -> Result<TaskRecord, ClientError> {
        let path = format!("/tasks/{id}");
        Ok(self.call(reqwest::Method::GET, &path, None::<&()>).await?.1)
    }

    /// Asks the manager to stop a task; the answer is the record after the
    /// stop (202 when its worker could not be reached yet).
    pub async fn stop(&self, id: &str) -> Result<TaskRecord, ClientError> {
        let path = format!("/tasks/{id}");
        Ok(self
            .call(reqwest::Method::DELETE, &path, None::<&()>)
            .await?
            .1)
    }

    /// Opens a streaming GET (no overall timeout: a followed stream may
    /// last); the body comes as chunks.
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<
        impl futures_util::Stream<Item = Result<actix_web::web::Bytes, ClientError>> + use<>,
        ClientError,
    > {
        use futures_util::StreamExt;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Setup(describe(&e)))?;
        // As `send`: the next URL only for one that could not be reached.
        let mut opened = Err(ClientError::Setup("no URL to ask".into()));
        for (i, base) in self.in_turn() {
            let url = format!("{base}{path}");
            match self.authorized(http.get(&url)).send().await {
                Ok(response) => {
                    self.answered(i, response.url());
                    opened = Ok((url, response));
                    break;
                }
                Err(e) if e.is_connect() => opened = Err(unreachable(&url, &e)),
                Err(e) => {
                    opened = Err(unreachable(&url, &e));
                    break;
                }
            }
        }
        let (url, response) = opened?;
        let status = response.status().as_u16();
        if status >= 400 {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(api_error(url, status, &bytes));
        }
        Ok(response
            .bytes_stream()
            .map(move |chunk| chunk.map_err(|e| unreachable(&url, &e))))
    }

    /// Opens a streaming GET and yields its body line by line (NDJSON),
    /// each line without its newline, as soon as it is complete.
    pub async fn stream_lines(
        &self,
        path: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, ClientError>> + use<>, ClientError>
    {
        use futures_util::StreamExt;
        let chunks = Box::pin(self.stream(path).await?);
        Ok(futures_util::stream::unfold(
            (chunks, Vec::new()),
            |(mut chunks, mut pending): (_, Vec<u8>)| async move {
                loop {
                    if let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let mut line: Vec<u8> = pending.drain(..=end).collect();
                        line.pop();
                        return Some((Ok(line), (chunks, pending)));
                    }
                    match chunks.next().await? {
                        Ok(chunk) => pending.extend_from_slice(&chunk),
                        Err(e) => return Some((Err(e), (chunks, pending))),
                    }
                }
            },
        ))
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, "/nodes", None::<&()>)
            .await?
            .1)
    }

    // --- manager, tokens (admin) ---

    pub async fn create_token(&self, new: &NewToken) -> Result<CreatedToken, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/tokens", Some(new))
            .await?
            .1)
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, "/tokens", None::<&()>)
            .await?
            .1)
    }

    pub async fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/tokens/{name}");
        self.call::<serde_json::Value>(reqwest::Method::DELETE, &path, None::<&()>)
            .await?;
        Ok(())
    }

    /// `POST /services`: creates a service (its spec as JSON).
    pub async fn create_service(
        &self,
        spec: &serde_json::Value,
    ) -> Result<ServiceView, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/services", Some(spec))
            .await?
            .1)
    }

    pub async fn services(&self) -> Result<Vec<ServiceView>, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, "/services", None::<&()>)
            .await?
            .1)
    }

    pub async fn service(&self, name: &str) -> Result<ServiceView, ClientError> {
        let path = format!("/services/{name}");
        Ok(self.call(reqwest::Method::GET, &path, None::<&()>).await?.1)
    }

    pub async fn scale_service(
        &self,
        name: &str,
        replicas: u32,
    ) -> Result<ServiceView, ClientError> {
        let path = format!("/services/{name}");
        let body = serde_json::json!({ "replicas": replicas });
        Ok(self
            .call(reqwest::Method::PATCH, &path, Some(&body))
            .await?
            .1)
    }

    /// `PUT /services/{name}`: a new spec, rolled out.
    pub async fn update_service(
        &self,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<ServiceView, ClientError> {
        let path = format!("/services/{name}");
        Ok(self.call(reqwest::Method::PUT, &path, Some(spec)).await?.1)
    }

    pub async fn rollback_service(&self, name: &str) -> Result<ServiceView, ClientError> {
        let path = format!("/services/{name}/rollback");
        Ok(self
            .call(reqwest::Method::POST, &path, None::<&()>)
            .await?
            .1)
    }

    pub async fn remove_service(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/services/{name}");
        self.call::<serde_json::Value>(reqwest::Method::DELETE, &path, None::<&()>)
            .await?;
        Ok(())
    }

    /// Removes a worker from the cluster (`DELETE /nodes/{name}`).
    pub async fn remove_node(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/nodes/{name}");
        self.call::<serde_json::Value>(reqwest::Method::DELETE, &path, None::<&()>)
            .await?;
        Ok(())
    }

    /// The join token of `role` (`worker` or `manager`: `GET
    /// /join-token/<role>`), or a new one (`POST /join-token/<role>/rotate`).
    pub async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ClientError> {
        let (method, path) = if rotate {
            (reqwest::Method::POST, format!("/join-token/{role}/rotate"))
        } else {
            (reqwest::Method::GET, format!("/join-token/{role}"))
        };
        let value: serde_json::Value = self.call(method, &path, None::<&()>).await?.1;
        value["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Decode {
                url: format!("{}{path}", self.base()),
                reason: "no token in the answer".into(),
            })
    }

    // --- managers among themselves ---

    /// The managers, as the one asked sees them (`consistent`: the
    /// leader's view).
    pub async fn cluster(&self, consistent: bool) -> Result<ClusterView, ClientError> {
        let path = if consistent {
            "/cluster?consistent=true"
        } else {
            "/cluster"
        };
        Ok(self.call(reqwest::Method::GET, path, None::<&()>).await?.1)
    }

    /// Removes a manager (`force`: even when the rest would be no majority).
    pub async fn remove_manager(&self, id: u64, force: bool) -> Result<ClusterView, ClientError> {
        let path = format!("/managers/{id}?force={force}");
        Ok(self
            .call(reqwest::Method::DELETE, &path, None::<&()>)
            .await?
            .1)
    }

    /// A joining manager gets the cluster's keys.
    pub async fn manager_join(
        &self,
        request: &ManagerJoinRequest,
    ) -> Result<ManagerJoinReply, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/managers/join", Some(request))
            .await?
            .1)
    }

    /// A manager holding the cluster's keys asks to be made a member.
    pub async fn add_manager(&self, request: &AddManager) -> Result<ClusterView, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/managers", Some(request))
            .await?
            .1)
    }

    // --- manager, worker-facing ---

    pub async fn register(&self, reg: &Registration) -> Result<RegistrationReply, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/workers/register", Some(reg))
            .await?
            .1)
    }

    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/workers/heartbeat", Some(beat))
            .await?
            .1)
    }

    pub async fn report(&self, status: &TaskStatus) -> Result<ReportReply, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/workers/reports", Some(status))
            .await?
            .1)
    }

    // --- joining ---

    /// The cluster's CA certificate (`GET /join/ca`).
    pub async fn ca_certificate(&self) -> Result<CaCertificate, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, "/join/ca", None::<&()>)
            .await?
            .1)
    }

    pub async fn join(&self, request: &JoinRequest) -> Result<JoinReply, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/join", Some(request))
            .await?
            .1)
    }

    /// A new certificate for the calling worker (`POST /workers/renew`).
    pub async fn renew(&self, request: &RenewRequest) -> Result<JoinReply, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/workers/renew", Some(request))
            .await?
            .1)
    }

    // --- worker ---

    pub async fn assign(&self, assignment: &Assignment) -> Result<TaskStatus, ClientError> {
        Ok(self
            .call(reqwest::Method::POST, "/tasks", Some(assignment))
            .await?
            .1)
    }

    pub async fn worker_tasks(&self) -> Result<Vec<TaskStatus>, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, "/tasks", None::<&()>)
            .await?
            .1)
    }

    pub async fn stop_on_worker(&self, task_id: Uuid) -> Result<TaskStatus, ClientError> {
        let path = format!("/tasks/{task_id}");
        Ok(self
            .call(reqwest::Method::DELETE, &path, None::<&()>)
            .await?
            .1)
    }

    pub async fn stats(&self) -> Result<NodeStats, ClientError> {
        Ok(self
            .call(reqwest::Method::GET, "/stats", None::<&()>)
            .await?
            .1)
    }
}

/// A client of plain `http://` endpoints (a workload's health check): the
/// crypto provider is given (none is installed process-wide), and no CA is
/// trusted, so it never speaks TLS to anyone.
/// The load balancer's client of the replicas: plain HTTP, connections
/// kept and reused, redirects handed back to the client (never followed),
/// no proxy from the environment, and a replica silent for a minute given
/// up on.
pub fn proxy_http() -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(plain_tls()?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(Duration::from_secs(60))
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .map_err(|e| ClientError::Setup(describe(&e)))
}

/// A TLS configuration trusting nothing: the plain HTTP clients never
/// speak TLS, but reqwest is built with one.
fn plain_tls() -> Result<rustls::ClientConfig, ClientError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::security::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Setup(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

pub fn plain_http() -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(plain_tls()?)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        .build()
        .map_err(|e| ClientError::Setup(describe(&e)))
}

fn unreachable(url: &str, e: &reqwest::Error) -> ClientError {
    ClientError::Unreachable {
        url: url.to_string(),
        reason: describe(e),
    }
}

/// An error answer: the JSON error shape, or the body as text when it is not.
fn api_error(url: String, status: u16, body: &[u8]) -> ClientError {
    let mut error: ApiError = serde_json::from_slice(body).unwrap_or_else(|_| ApiError {
        status,
        error: String::from_utf8_lossy(body).into_owned(),
        field: None,
    });
    error.status = status;
    ClientError::Api { url, status, error }
}

/// reqwest's Display hides the cause ("error sending request"); walk the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
