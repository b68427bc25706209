//! The worker's HTTP routes, called by the manager: `POST /tasks`,
//! `GET /tasks`, `DELETE /tasks/{id}`, `GET /stats`. Every route takes a
//! [`ManagerPeer`]: only the cluster's manager (its certificate) may call.

use actix::Addr;
use actix_web::{HttpResponse, web};
use uuid::Uuid;

use futures_util::StreamExt;
use serde_json::Value;

use super::actor::{Assign, GetNodeStats, ListStatuses, LogSource, StopTask, Worker, WorkerError};
use crate::api_error::ApiError;
use crate::security::peer::ManagerPeer;
use crate::task::spec;
use crate::wire::Assignment;
use crate::wire::Follow;
use crate::worker::endpoints::EndpointView;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(crate::api_error::configure)
        .route("/tasks", web::post().to(assign))
        .route("/tasks", web::get().to(list))
        .route("/tasks/{id}", web::delete().to(stop))
        .route("/tasks/{id}/logs", web::get().to(logs))
        .route("/stats", web::get().to(stats))
        .route("/endpoints", web::get().to(endpoints));
}

/// The endpoints this worker follows from the manager (what its balancer
/// and DNS use), one entry a service, by name.
async fn endpoints(_caller: ManagerPeer, view: web::Data<EndpointView>) -> HttpResponse {
    let table = view.borrow().clone();
    let mut entries: Vec<&crate::service::Endpoints> = table.values().map(|e| &**e).collect();
    entries.sort_by(|a, b| a.service.cmp(&b.service));
    HttpResponse::Ok().json(entries)
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

/// The worker is an API too: an assignment is checked as the manager checks
/// a submitted spec, field by field, each error naming its field
/// (`spec.memory_mb`), unknown fields refused.
fn parse_assignment(body: &[u8]) -> Result<Assignment, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}"), None))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::bad_request(
            "an assignment must be a JSON object",
            None,
        ));
    };
    const FIELDS: [&str; 3] = ["task_id", "attempt", "spec"];
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            format!("unknown field (known fields: {})", FIELDS.join(", ")),
            Some(unknown.clone()),
        ));
    }
    let mut take = |field: &str, expected: &str| {
        map.remove(field).ok_or_else(|| {
            ApiError::bad_request(format!("missing (expected {expected})"), Some(field.into()))
        })
    };
    let task_id = take("task_id", "a task id (UUID)")?;
    let attempt = take("attempt", "a non-negative integer")?;
    let spec = take("spec", "a task spec")?;
    let named = |field: &str, e: serde_json::Error| {
        ApiError::bad_request(format!("invalid: {e}"), Some(field.into()))
    };
    Ok(Assignment {
        task_id: serde_json::from_value(task_id).map_err(|e| named("task_id", e))?,
        attempt: serde_json::from_value(attempt).map_err(|e| named("attempt", e))?,
        spec: spec::from_value(spec).map_err(|e| {
            let field = e
                .field
                .map_or_else(|| "spec".into(), |f| format!("spec.{f}"));
            ApiError::bad_request(e.message, Some(field))
        })?,
    })
}

async fn assign(
    _caller: ManagerPeer,
    worker: web::Data<Addr<Worker>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let assignment = parse_assignment(&body)?;
    let status = worker.send(Assign(assignment)).await.map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(status))
}

async fn list(
    _caller: ManagerPeer,
    worker: web::Data<Addr<Worker>>,
) -> Result<HttpResponse, ApiError> {
    let statuses = worker.send(ListStatuses).await.map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(statuses))
}

async fn stop(
    _caller: ManagerPeer,
    worker: web::Data<Addr<Worker>>,
    id: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let status = worker.send(StopTask(*id)).await.map_err(mailbox)??;
    Ok(HttpResponse::Ok().json(status))
}

/// The task container's stdout and stderr; `?follow=true` keeps streaming.
async fn logs(
    _caller: ManagerPeer,
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

async fn stats(
    _caller: ManagerPeer,
    worker: web::Data<Addr<Worker>>,
) -> Result<HttpResponse, ApiError> {
    let stats = worker
        .send(GetNodeStats)
        .await
        .map_err(mailbox)?
        .map_err(mailbox)?;
    Ok(HttpResponse::Ok().json(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(v: Value) -> Option<String> {
        parse_assignment(v.to_string().as_bytes())
            .unwrap_err()
            .field
    }

    #[test]
    fn an_assignment_is_checked_like_a_submitted_spec() {
        let id = Uuid::new_v4();
        let spec = json!({"name": "a", "image": "b", "memory_mb": 64, "ports": [80]});
        let a = parse_assignment(
            json!({"task_id": id, "attempt": 2, "spec": spec})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!((a.task_id, a.attempt, a.spec.memory_mb), (id, 2, 64));
        // What the manager sends parses back the same.
        let sent = serde_json::to_vec(&a).unwrap();
        assert_eq!(parse_assignment(&sent).unwrap(), a);

        let with_spec = |spec: Value| json!({"task_id": id, "attempt": 1, "spec": spec});
        for (spec, field) in [
            (
                json!({"name": "a", "image": "b", "memory_mb": 1u64 << 44}),
                "spec.memory_mb",
            ),
            (
                json!({"name": "a", "image": "b", "memory_mb": 3}),
                "spec.memory_mb",
            ),
            (json!({"name": "a", "image": "b", "cpu": 0.001}), "spec.cpu"),
            (
                json!({"name": "a", "image": "b", "ports": (1..=65).collect::<Vec<u16>>()}),
                "spec.ports",
            ),
            (json!({"name": "a"}), "spec.image"),
            (
                json!({"name": "a", "image": "b", "colour": 1}),
                "spec.colour",
            ),
            (json!([1]), "spec"),
        ] {
            assert_eq!(
                field_of(with_spec(spec.clone())).as_deref(),
                Some(field),
                "{spec}"
            );
        }
        let spec = json!({"name": "a", "image": "b"});
        for (v, field) in [
            (json!({"attempt": 1, "spec": spec}), Some("task_id")),
            (
                json!({"task_id": "nope", "attempt": 1, "spec": spec}),
                Some("task_id"),
            ),
            (
                json!({"task_id": id, "attempt": -1, "spec": spec}),
                Some("attempt"),
            ),
            (json!({"task_id": id, "attempt": 1}), Some("spec")),
            (
                json!({"task_id": id, "attempt": 1, "spec": spec, "x": 1}),
                Some("x"),
            ),
            (json!("assignment"), None),
        ] {
            assert_eq!(field_of(v.clone()).as_deref(), field, "{v}");
        }
        assert_eq!(parse_assignment(b"{nope").unwrap_err().status, 400);
    }
}
