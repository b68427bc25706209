//! The manager's HTTP routes: user-facing (`/tasks`, `/tasks/{id}/logs`,
//! `/nodes`, `/events`) and
//! worker-facing (`/workers/register`, `/workers/heartbeat`, `/workers/reports`).

use actix::Addr;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use uuid::Uuid;

use super::actor::Apply;
use super::actor::{
    Beat, Events, GetTask, ListNodes, ListTasks, LogsAt, Manager, ManagerError, Register, Report,
    StopTask, Submit,
};
use super::auth::{Admin, Deployer, Reader};
use super::members::Member;
use crate::api_error::ApiError;
use crate::core::{Command, Reply};
use crate::core::{CoreError, TaskQuery};
use crate::task::spec;
use crate::wire::Follow;
use crate::wire::{Heartbeat, Registration, TaskStatus};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(crate::api_error::configure)
        .route("/tasks", web::post().to(submit))
        .route("/tasks", web::get().to(list_tasks))
        .route("/tasks/{id}", web::get().to(get_task))
        .route("/tasks/{id}", web::delete().to(stop_task))
        .route("/tasks/{id}/logs", web::get().to(task_logs))
        .route("/nodes", web::get().to(list_nodes))
        .route("/nodes/{name}", web::delete().to(remove_node))
        .route("/events", web::get().to(events))
        .route("/workers/register", web::post().to(register))
        .route("/workers/heartbeat", web::post().to(heartbeat))
        .route("/workers/reports", web::post().to(report));
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        use actix_web::http::StatusCode;
        match &e {
            ManagerError::Core(
                CoreError::NotFound(_)
                | CoreError::NoToken(_)
                | CoreError::NoNode(_)
                | CoreError::NoService(_),
            ) => ApiError::not_found(e.to_string()),
            ManagerError::Core(CoreError::Revoked(_)) => {
                ApiError::new(StatusCode::FORBIDDEN, e.to_string())
            }
            ManagerError::Core(CoreError::Conflict(_)) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            ManagerError::NotStored { full: true, .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            }
            ManagerError::NotStored { full: false, .. } => ApiError::internal(e.to_string()),
            ManagerError::Gone(_)
            | ManagerError::NotLeader { .. }
            | ManagerError::Unconfirmed(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

/// The most tasks one page of `GET /tasks` holds.
pub const MAX_PAGE: usize = 10_000;
/// A page's size when the query does not say.
pub const DEFAULT_PAGE: usize = 1_000;

/// `GET /tasks` query: `limit`, `after` (a task id), `state`, `node`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TasksQuery {
    limit: Option<String>,
    after: Option<String>,
    state: Option<String>,
    node: Option<String>,
    service: Option<String>,
}

fn task_query(q: TasksQuery) -> Result<TaskQuery, ApiError> {
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    format!("limit must be a whole number from 1 to {MAX_PAGE}, not {raw:?}"),
                    Some("limit".into()),
                ));
            }
        },
    };
    let after = match q.after {
        None => None,
        Some(raw) => Some(raw.parse::<Uuid>().map_err(|_| {
            ApiError::bad_request(
                format!("after must be a task id, not {raw:?}"),
                Some("after".into()),
            )
        })?),
    };
    let state = match q.state {
        None => None,
        Some(raw) => Some(
            crate::task::state::ALL_STATES
                .into_iter()
                .find(|s| s.as_str().eq_ignore_ascii_case(&raw))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!(
                            "state must be one of Pending, Scheduled, Running, Completed, Failed, not {raw:?}"
                        ),
                        Some("state".into()),
                    )
                })?,
        ),
    };
    Ok(TaskQuery {
        limit,
        after,
        state,
        node: q.node,
        service: q.service,
    })
}

/// One value as a line of an NDJSON stream.
pub(super) fn ndjson<T: serde::Serialize>(value: &T) -> web::Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    web::Bytes::from(bytes)
}

pub(super) fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::unavailable(format!("the manager is not available: {e}"))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            format!("{raw:?} is not a task id (a UUID)"),
            Some("id".into()),
        )
    })
}

async fn submit(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("request body is not UTF-8", None))?;
    let spec = spec::parse_json(text)?;
    let record = manager
        .send(Submit {
            spec,
            by: caller.token,
        })
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Created().json(record))
}

/// One page of tasks, in id order: `{"tasks": [...], "next": <id or null>}`.
async fn list_tasks(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
    query: web::Query<TasksQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = task_query(query.into_inner())?;
    let page = manager.send(ListTasks(query)).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(page))
}

async fn get_task(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    match manager.send(GetTask(id)).await.map_err(mailbox)? {
        Some(task) => Ok(HttpResponse::Ok().json(task)),
        None => Err(ManagerError::Core(CoreError::NotFound(id)).into()),
    }
}

async fn stop_task(
    caller: Deployer,
    manager: web::Data<Addr<Manager>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let (record, done) = manager
        .send(StopTask {
            id,
            by: caller.token,
        })
        .await
        .map_err(mailbox)??;
    Ok(if done {
        HttpResponse::Ok().json(record)
    } else {
        HttpResponse::Accepted().json(record)
    })
}

async fn list_nodes(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
) -> Result<HttpResponse, ApiError> {
    let nodes = manager.send(ListNodes).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(nodes))
}

/// Removes a worker from the cluster (admin): its certificates are refused
/// from now on, it is told to stop its tasks, and they move.
async fn remove_node(
    caller: Admin,
    manager: web::Data<Addr<Manager>>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let command = Command::RemoveNode {
        name: name.clone(),
        by: Some(caller.token),
    };
    match manager.send(Apply(command)).await.map_err(mailbox)?? {
        Reply::Done => Ok(HttpResponse::Ok().json(serde_json::json!({ "removed": name }))),
        other => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

/// The task container's output, streamed from its worker through the
/// manager (users only know the manager).
async fn task_logs(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
    id: web::Path<String>,
    query: web::Query<Follow>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let worker = manager.send(LogsAt(id)).await.map_err(mailbox)??;
    let path = format!("/tasks/{id}/logs?follow={}", query.follow);
    let stream = worker.stream(&path).await.map_err(|e| match e {
        crate::client::ClientError::Api { error, .. } => error,
        e => ApiError::unavailable(format!("the task's worker cannot be reached: {e}")),
    })?;
    let stream = stream.map(|chunk| chunk.map_err(actix_web::error::ErrorBadGateway));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream))
}

/// The task events kept (state changes, restarts, health), as NDJSON, one
/// event a line, oldest first; with `?follow=true` the stream stays open
/// and every later event follows as it happens.
async fn events(
    _caller: Reader,
    manager: web::Data<Addr<Manager>>,
    query: web::Query<Follow>,
) -> Result<HttpResponse, ApiError> {
    let (recent, follower) = manager
        .send(Events {
            follow: query.follow,
        })
        .await
        .map_err(mailbox)?;
    let line = |event: super::events::Event| Ok::<_, actix_web::Error>(ndjson(&event));
    let past = futures_util::stream::iter(recent.into_iter().map(line));
    let later = futures_util::stream::unfold(follower, |follower| async move {
        let mut rx = follower?;
        let event = rx.recv().await?;
        Some((event, Some(rx)))
    })
    .map(line);
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(past.chain(later)))
}

async fn register(
    caller: Member,
    manager: web::Data<Addr<Manager>>,
    reg: web::Json<Registration>,
) -> Result<HttpResponse, ApiError> {
    crate::config::validate_node_name(&reg.name)
        .map_err(|m| ApiError::bad_request(m, Some("name".into())))?;
    caller.must_be(&reg.name)?;
    let reply = manager
        .send(Register {
            registration: reg.into_inner(),
            generation: caller.generation,
        })
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(reply))
}

async fn heartbeat(
    caller: Member,
    manager: web::Data<Addr<Manager>>,
    beat: web::Json<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    caller.must_be(&beat.name)?;
    let reply = manager
        .send(Beat(beat.into_inner()))
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(reply))
}

async fn report(
    caller: Member,
    manager: web::Data<Addr<Manager>>,
    status: web::Json<TaskStatus>,
) -> Result<HttpResponse, ApiError> {
    caller.must_be(&status.node)?;
    let reply = manager
        .send(Report(status.into_inner()))
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(reply))
}
