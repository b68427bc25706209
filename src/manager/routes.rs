//! The manager's HTTP routes: user-facing (`/tasks`, `/tasks/{id}/logs`,
//! `/nodes`, `/events`) and
//! worker-facing (`/workers/register`, `/workers/heartbeat`, `/workers/reports`).

use actix::Addr;
use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use uuid::Uuid;

use super::actor::{
    Beat, Events, GetTask, ListNodes, ListTasks, LogsAt, Manager, ManagerError, Register, Report,
    StopTask, Submit,
};
use crate::api_error::ApiError;
use crate::task::spec;
use crate::wire::Follow;
use crate::wire::{Heartbeat, Registration, ReportReply, TaskStatus};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(crate::api_error::json_config())
        .app_data(crate::api_error::path_config())
        .route("/tasks", web::post().to(submit))
        .route("/tasks", web::get().to(list_tasks))
        .route("/tasks/{id}", web::get().to(get_task))
        .route("/tasks/{id}", web::delete().to(stop_task))
        .route("/tasks/{id}/logs", web::get().to(task_logs))
        .route("/nodes", web::get().to(list_nodes))
        .route("/events", web::get().to(events))
        .route("/workers/register", web::post().to(register))
        .route("/workers/heartbeat", web::post().to(heartbeat))
        .route("/workers/reports", web::post().to(report));
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::NotFound(_) => ApiError::not_found(e.to_string()),
            ManagerError::Conflict(_) => {
                ApiError::new(actix_web::http::StatusCode::CONFLICT, e.to_string())
            }
            ManagerError::Store(_) => ApiError::internal(e.to_string()),
        }
    }
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::unavailable(format!("the manager is not available: {e}"))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no task with id {raw:?} (not a task id)")))
}

async fn submit(
    manager: web::Data<Addr<Manager>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("request body is not UTF-8", None))?;
    let spec = spec::parse_json(text)?;
    let record = manager.send(Submit(spec)).await.map_err(mailbox)??;
    Ok(HttpResponse::Created().json(record))
}

async fn list_tasks(manager: web::Data<Addr<Manager>>) -> Result<HttpResponse, ApiError> {
    let tasks = manager.send(ListTasks).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(tasks))
}

async fn get_task(
    manager: web::Data<Addr<Manager>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    match manager.send(GetTask(id)).await.map_err(mailbox)? {
        Some(task) => Ok(HttpResponse::Ok().json(task)),
        None => Err(ManagerError::NotFound(id).into()),
    }
}

async fn stop_task(
    manager: web::Data<Addr<Manager>>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let (record, done) = manager.send(StopTask(id)).await.map_err(mailbox)??;
    Ok(if done {
        HttpResponse::Ok().json(record)
    } else {
        HttpResponse::Accepted().json(record)
    })
}

async fn list_nodes(manager: web::Data<Addr<Manager>>) -> Result<HttpResponse, ApiError> {
    let nodes = manager.send(ListNodes).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(nodes))
}

/// The task container's output, streamed from its worker through the
/// manager (users only know the manager).
async fn task_logs(
    manager: web::Data<Addr<Manager>>,
    id: web::Path<String>,
    query: web::Query<Follow>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let address = manager.send(LogsAt(id)).await.map_err(mailbox)??;
    let path = format!("/tasks/{id}/logs?follow={}", query.follow);
    let stream = crate::client::Client::new(&address)
        .stream(&path)
        .await
        .map_err(|e| match e {
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
    manager: web::Data<Addr<Manager>>,
    query: web::Query<Follow>,
) -> Result<HttpResponse, ApiError> {
    let (recent, follower) = manager
        .send(Events {
            follow: query.follow,
        })
        .await
        .map_err(mailbox)?;
    let line = |event: super::events::Event| {
        let mut bytes = serde_json::to_vec(&event).unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, actix_web::Error>(web::Bytes::from(bytes))
    };
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
    manager: web::Data<Addr<Manager>>,
    reg: web::Json<Registration>,
) -> Result<HttpResponse, ApiError> {
    crate::config::validate_node_name(&reg.name)
        .map_err(|m| ApiError::bad_request(m, Some("name".into())))?;
    let reply = manager
        .send(Register(reg.into_inner()))
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(reply))
}

async fn heartbeat(
    manager: web::Data<Addr<Manager>>,
    beat: web::Json<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    let reply = manager
        .send(Beat(beat.into_inner()))
        .await
        .map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(reply))
}

async fn report(
    manager: web::Data<Addr<Manager>>,
    status: web::Json<TaskStatus>,
) -> Result<HttpResponse, ApiError> {
    manager
        .send(Report(status.into_inner()))
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(ReportReply { stop: false }))
}
