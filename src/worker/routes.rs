//! The worker's HTTP routes, called by the manager: `POST /tasks`,
//! `GET /tasks`, `DELETE /tasks/{id}`, `GET /stats`.

use actix::Addr;
use actix_web::{HttpResponse, web};
use uuid::Uuid;

use futures_util::StreamExt;

use super::actor::{Assign, GetNodeStats, ListStatuses, LogSource, StopTask, Worker, WorkerError};
use crate::api_error::ApiError;
use crate::task::spec;
use crate::wire::Assignment;
use crate::wire::Follow;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(crate::api_error::json_config())
        .app_data(crate::api_error::path_config())
        .route("/tasks", web::post().to(assign))
        .route("/tasks", web::get().to(list))
        .route("/tasks/{id}", web::delete().to(stop))
        .route("/tasks/{id}/logs", web::get().to(logs))
        .route("/stats", web::get().to(stats));
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::NotFound(_) | WorkerError::NoContainer(_) => {
                ApiError::not_found(e.to_string())
            }
            WorkerError::EngineDown | WorkerError::Stop(..) => ApiError::unavailable(e.to_string()),
            WorkerError::OtherAttempt { .. } => {
                ApiError::new(actix_web::http::StatusCode::CONFLICT, e.to_string())
            }
            WorkerError::Store(_) | WorkerError::Supervisor(_) => ApiError::internal(e.to_string()),
        }
    }
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::unavailable(format!("the worker is not available: {e}"))
}

async fn assign(
    worker: web::Data<Addr<Worker>>,
    assignment: web::Json<Assignment>,
) -> Result<HttpResponse, ApiError> {
    let assignment = assignment.into_inner();
    spec::validate(&assignment.spec)?;
    let status = worker.send(Assign(assignment)).await.map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(status))
}

async fn list(worker: web::Data<Addr<Worker>>) -> Result<HttpResponse, ApiError> {
    let statuses = worker.send(ListStatuses).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(statuses))
}

async fn stop(
    worker: web::Data<Addr<Worker>>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let status = worker.send(StopTask(*id)).await.map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(status))
}

/// The task container's stdout and stderr; `?follow=true` keeps streaming.
async fn logs(
    worker: web::Data<Addr<Worker>>,
    id: web::Path<Uuid>,
    query: web::Query<Follow>,
) -> Result<HttpResponse, ApiError> {
    let (engine, container) = worker.send(LogSource(*id)).await.map_err(mailbox)??;
    let stream = engine
        .logs(&container, query.follow)
        .map(|chunk| chunk.map_err(actix_web::error::ErrorInternalServerError));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .streaming(stream))
}

async fn stats(worker: web::Data<Addr<Worker>>) -> Result<HttpResponse, ApiError> {
    let stats = worker
        .send(GetNodeStats)
        .await
        .map_err(mailbox)?
        .map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(stats))
}
