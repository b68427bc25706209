//! The service routes: `POST /services` (deploy), `GET /services`, `GET
//! /services/{name}` (read), `PATCH /services/{name}` `{"replicas": N}`,
//! `PUT /services/{name}` (a new spec: a rolling update), `POST
//! /services/{name}/rollback`, `DELETE /services/{name}` (deploy). Every
//! change is a command of the core, answered once committed.

use actix::Addr;
use actix_web::{HttpResponse, web};
use uuid::Uuid;

use super::Manager;
use super::actor::{Apply, GetService, ListServices};
use super::auth::{Deployer, Reader};
use super::members::Member;
use super::routes::{mailbox, ndjson};
use crate::api_error::ApiError;
use crate::core::{Command, CoreError, Reply};
use crate::service::endpoints::FeedLine;
use crate::service::spec::{self, check_replicas};
use crate::service::{EndpointTable, Endpoints};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::watch;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services", web::post().to(create))
        .route("/services", web::get().to(list))
        .route("/services/{name}", web::get().to(get))
        .route("/services/{name}", web::patch().to(scale))
        .route("/services/{name}", web::put().to(update))
        .route("/services/{name}", web::delete().to(remove))
        .route("/services/{name}/rollback", web::post().to(rollback))
        .route("/services/{name}/endpoints", web::get().to(endpoints))
        .route("/workers/endpoints", web::get().to(worker_feed));
}

/// `GET /workers/endpoints` (workers only): NDJSON, first the whole table
/// (`{"table": [...]}`), then a line for each service whose entry changes
/// (a service removed: a line with no endpoints and no ports), until the
/// worker goes. What every node's balancer and DNS follow.
async fn worker_feed(_caller: Member, feed: web::Data<EndpointFeed>) -> HttpResponse {
    let mut rx = feed.get_ref().clone();
    let first: EndpointTable = (**rx.borrow_and_update()).clone();
    let table = FeedLine::Table(first.values().map(|e| (**e).clone()).collect());
    let lines = vec![ndjson(&table)];
    let later = futures_util::stream::unfold((rx, first), |(mut rx, last)| async move {
        rx.changed().await.ok()?;
        let now: EndpointTable = (**rx.borrow_and_update()).clone();
        let mut lines: Vec<web::Bytes> = now
            .iter()
            .filter(|(name, entry)| last.get(*name).is_none_or(|old| !Arc::ptr_eq(old, entry)))
            .map(|(_, entry)| ndjson(&FeedLine::Service((**entry).clone())))
            .collect();
        lines.extend(
            last.keys()
                .filter(|name| !now.contains_key(*name))
                .map(|name| ndjson(&FeedLine::Service(Endpoints::gone(name)))),
        );
        Some((futures_util::stream::iter(lines), (rx, now)))
    })
    .flatten();
    // An empty line every few seconds: a worker that hears nothing for
    // longer knows the connection is dead (a partition sends no reset).
    let alive = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(FEED_KEEPALIVE).await;
        Some((web::Bytes::from_static(b"\n"), ()))
    });
    let stream = futures_util::stream::iter(lines)
        .chain(futures_util::stream::select(later, alive))
        .map(Ok::<_, actix_web::Error>);
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(stream)
}

/// How often the workers' endpoint feed says it is alive.
pub const FEED_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(3);

/// What the endpoint routes read: the table the Manager publishes after
/// every commit that changed a service or its replicas.
pub type EndpointFeed = watch::Receiver<Arc<EndpointTable>>;

/// `GET /services/{name}/endpoints`: the replicas a client may be sent to;
/// `?watch=true` streams the list as NDJSON, once now and again at every
/// change, until the client goes.
async fn endpoints(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
    feed: web::Data<EndpointFeed>,
    name: web::Path<String>,
    query: web::Query<Watch>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    if manager
        .send(GetService(name.clone()))
        .await
        .map_err(mailbox)?
        .is_none()
    {
        return Err(ApiError::not_found(CoreError::NoService(name).to_string()));
    }
    let mut rx = feed.get_ref().clone();
    let current = rx.borrow_and_update().get(&name).cloned();
    let line = |name: &str, entry: &Option<Arc<Endpoints>>| match entry {
        Some(entry) => (**entry).clone(),
        None => Endpoints::gone(name),
    };
    if !query.watch {
        return Ok(HttpResponse::Ok().json(line(&name, &current)));
    }
    let first = ndjson(&line(&name, &current));
    let later = futures_util::stream::unfold(
        (rx, name, current),
        move |(mut rx, name, mut last)| async move {
            loop {
                rx.changed().await.ok()?;
                let now = rx.borrow_and_update().get(&name).cloned();
                let same = match (&now, &last) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    let bytes = ndjson(&line(&name, &now));
                    last = now;
                    return Some((bytes, (rx, name, last)));
                }
            }
        },
    );
    let stream = futures_util::stream::once(async move { first })
        .chain(later)
        .map(Ok::<_, actix_web::Error>);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(stream))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Watch {
    #[serde(default)]
    watch: bool,
}

fn text(body: &web::Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|_| ApiError::bad_request("request body is not UTF-8", None))
}

/// Applies a service command and answers the service as it is then.
async fn apply(
    manager: &Addr<Manager>,
    command: Command,
    created: bool,
) -> Result<HttpResponse, ApiError> {
    let name = match manager.send(Apply(command)).await.map_err(mailbox)?? {
        Reply::Service(record) => record.spec.name,
        other => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    };
    let view = manager.send(GetService(name)).await.map_err(mailbox)?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(match view {
        Some(view) => response.json(view),
        // Removed.
        None => response.json(serde_json::json!({})),
    })
}

async fn create(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let spec = spec::parse_json(text(&body)?)?;
    let command = Command::CreateService {
        id: Uuid::new_v4(),
        spec,
        by: Some(caller.token),
    };
    apply(&manager, command, true).await
}

async fn list(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
) -> Result<HttpResponse, ApiError> {
    let services = manager.send(ListServices).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(services))
}

async fn get(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    match manager
        .send(GetService(name.clone()))
        .await
        .map_err(mailbox)?
    {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::not_found(CoreError::NoService(name).to_string())),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Scale {
    replicas: u32,
}

async fn scale(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let scale: Scale = serde_json::from_str(text(&body)?).map_err(|e| {
        ApiError::bad_request(
            format!("expected {{\"replicas\": N}}: {e}"),
            Some("replicas".into()),
        )
    })?;
    check_replicas(scale.replicas)?;
    let command = Command::ScaleService {
        name: name.into_inner(),
        replicas: scale.replicas,
        by: Some(caller.token),
    };
    apply(&manager, command, false).await
}

async fn update(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let spec = spec::parse_json(text(&body)?)?;
    if spec.name != *name {
        return Err(ApiError::bad_request(
            format!(
                "the spec names service {:?}, the path {:?}",
                spec.name, *name
            ),
            Some("name".into()),
        ));
    }
    let command = Command::UpdateService {
        spec,
        by: Some(caller.token),
    };
    apply(&manager, command, false).await
}

async fn rollback(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let command = Command::RollbackService {
        name: name.into_inner(),
        by: Some(caller.token),
    };
    apply(&manager, command, false).await
}

async fn remove(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let command = Command::RemoveService {
        name: name.into_inner(),
        by: Some(caller.token),
    };
    apply(&manager, command, false).await
}
