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
use super::routes::mailbox;
use crate::api_error::ApiError;
use crate::core::{Command, CoreError, Reply};
use crate::service::spec::{self, check_replicas};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services", web::post().to(create))
        .route("/services", web::get().to(list))
        .route("/services/{name}", web::get().to(get))
        .route("/services/{name}", web::patch().to(scale))
        .route("/services/{name}", web::put().to(update))
        .route("/services/{name}", web::delete().to(remove))
        .route("/services/{name}/rollback", web::post().to(rollback));
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
