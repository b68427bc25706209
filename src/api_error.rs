//! The shape of every HTTP error: a JSON body `{"error": "...", "field": "..."}`
//! with a status that fits (4xx for the caller's mistakes, 5xx for ours).
//!
//! Every route of the manager and the worker answers in it, also where
//! actix-web would answer on its own: extractor errors (`configure`), unknown
//! paths and methods (`configure`'s default service), any other plain error
//! (`json_errors`), and what actix-http answers before any App runs
//! (`connection::JsonErrorHeads`).

pub mod connection;
pub mod deadline;

use actix_web::dev::ServiceResponse;
use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::{Deserialize, Serialize};

/// Request bodies larger than this are refused with 413 (a spec at its
/// bounds is far smaller).
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status: status.as_u16(),
            error: error.into(),
            field: None,
        }
    }

    pub fn bad_request(error: impl Into<String>, field: Option<String>) -> Self {
        ApiError {
            field,
            ..Self::new(StatusCode::BAD_REQUEST, error)
        }
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    pub fn internal(error: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }

    pub fn unavailable(error: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error)
    }

    fn too_large(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body too large (at most {MAX_BODY_BYTES} bytes): {detail}"),
        )
    }

    /// The JSON body of this error.
    pub fn body(&self) -> String {
        serde_json::json!(self).to_string()
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.status_code() == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 says how to authenticate.
            response.insert_header((
                actix_web::http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"cube\"",
            ));
        }
        response.json(self)
    }
}

/// What every App of Cube shares, called from each routes module's
/// `configure`: extractor errors in the JSON shape, a body limit, and JSON
/// 404 (unknown path) and 405 (known path, another method).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(json_config())
        .app_data(path_config())
        .app_data(query_config())
        .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .default_service(web::to(no_route));
}

/// Turns actix-web's JSON extractor errors into our shape.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| json_error(err).into())
}

fn json_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. }
        | JsonPayloadError::Overflow { .. }
        | JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::too_large(err),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (Content-Type: application/json)",
        ),
        JsonPayloadError::Deserialize(e) => {
            let message = e.to_string();
            let field = serde_field(&message);
            ApiError::bad_request(format!("invalid request body: {message}"), field)
        }
        err => ApiError::bad_request(format!("invalid request body: {err}"), None),
    }
}

/// Path parameters that do not parse (a task id that is not a UUID) are the
/// caller's mistake: 400, naming the parameter.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, req| path_error(&err, req).into())
}

fn path_error(err: &PathError, req: &HttpRequest) -> ApiError {
    let PathError::Deserialize(reason) = err else {
        return ApiError::bad_request(format!("invalid path: {err}"), None);
    };
    let params: Vec<(&str, &str)> = req.match_info().iter().collect();
    match params.as_slice() {
        [(name, value)] => ApiError::bad_request(
            format!("{value:?} is not a valid {name}: {reason}"),
            Some(name.to_string()),
        ),
        _ => ApiError::bad_request(format!("invalid path: {reason}"), None),
    }
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| query_error(&err).into())
}

fn query_error(err: &QueryPayloadError) -> ApiError {
    let message = match err {
        QueryPayloadError::Deserialize(e) => e.to_string(),
        err => err.to_string(),
    };
    let field = serde_field(&message);
    ApiError::bad_request(format!("invalid query string: {message}"), field)
}

/// The field serde names in its messages about missing and unknown fields.
fn serde_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))?;
    rest.split('`').next().map(str::to_string)
}

/// The default service: no resource matched the request.
async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // Routes are method-guarded resources: a path that a resource matches
    // was asked with another method.
    Err(if req.resource_map().has_resource(req.path()) {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {}", req.method(), req.path()),
        )
    } else {
        ApiError::not_found(format!("no route {} {}", req.method(), req.path()))
    })
}

/// Middleware for the whole App: any error response that is not JSON yet
/// (one actix-web made by itself, e.g. for a raw body over the limit) is
/// given our shape, keeping its status and headers.
pub fn json_errors<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(into_json)
}

fn into_json<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let error = describe(status, res.response().error());
    let (req, mut response) = res.into_parts();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let response = response.set_body(error.body());
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response)
            .map_into_boxed_body()
            .map_into_right_body::<B>(),
    ))
}

/// Our error for a plain error response of this status.
fn describe(status: StatusCode, error: Option<&actix_web::Error>) -> ApiError {
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    match (status, error) {
        (StatusCode::PAYLOAD_TOO_LARGE, Some(e)) => ApiError::too_large(e),
        (StatusCode::PAYLOAD_TOO_LARGE, None) => ApiError::too_large(reason),
        (_, Some(e)) => ApiError::new(status, format!("{reason}: {e}")),
        (_, None) => ApiError::new(status, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::App;
    use actix_web::test as web_test;

    async fn ok() -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    async fn plain_error() -> HttpResponse {
        HttpResponse::BadGateway().body("upstream said no")
    }

    async fn echo_bytes(body: web::Bytes) -> HttpResponse {
        HttpResponse::Ok().body(body)
    }

    async fn echo_json(body: web::Json<serde_json::Value>) -> HttpResponse {
        HttpResponse::Ok().json(body.into_inner())
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Q {
        #[serde(default)]
        follow: bool,
    }

    async fn query(_q: web::Query<Q>) -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    async fn by_id(_id: web::Path<uuid::Uuid>) -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    fn routes(cfg: &mut web::ServiceConfig) {
        cfg.configure(configure)
            .route("/things", web::get().to(ok))
            .route("/things", web::post().to(echo_json))
            .route("/raw", web::post().to(echo_bytes))
            .route("/things/{id}", web::delete().to(by_id))
            .route("/query", web::get().to(query))
            .route("/plain", web::get().to(plain_error));
    }

    /// Status and JSON body of one request to the test App.
    async fn call(req: web_test::TestRequest) -> (u16, serde_json::Value) {
        let app = web_test::init_service(App::new().wrap(json_errors()).configure(routes)).await;
        let res = web_test::call_service(&app, req.to_request()).await;
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or_default().to_string());
        let bytes = web_test::read_body(res).await;
        if status >= 400 {
            assert_eq!(
                content_type.as_deref(),
                Some("application/json"),
                "{status}"
            );
        }
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    #[actix_web::test]
    async fn unknown_paths_are_404_and_other_methods_405() {
        let (status, body) = call(web_test::TestRequest::get().uri("/nope")).await;
        assert_eq!(status, 404);
        assert!(body["error"].as_str().unwrap().contains("/nope"), "{body}");
        let (status, body) = call(web_test::TestRequest::put().uri("/things")).await;
        assert_eq!(status, 405);
        assert!(body["error"].as_str().unwrap().contains("PUT"), "{body}");
        let id = uuid::Uuid::new_v4();
        let (status, _) = call(web_test::TestRequest::get().uri(&format!("/things/{id}"))).await;
        assert_eq!(status, 405);
        let (status, _) = call(web_test::TestRequest::get().uri("/things")).await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn bodies_over_the_limit_are_413() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let (status, body) = call(
            web_test::TestRequest::post()
                .uri("/things")
                .insert_header(("content-type", "application/json"))
                .set_payload(big.clone()),
        )
        .await;
        assert_eq!(status, 413);
        assert!(
            body["error"].as_str().unwrap().contains("too large"),
            "{body}"
        );
        // A raw body extractor has no error handler of its own: the middleware.
        let (status, body) = call(web_test::TestRequest::post().uri("/raw").set_payload(big)).await;
        assert_eq!(status, 413);
        assert!(
            body["error"].as_str().unwrap().contains("too large"),
            "{body}"
        );
        let (status, _) = call(web_test::TestRequest::post().uri("/raw").set_payload("x")).await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn bad_json_and_content_types_are_named() {
        let (status, body) = call(
            web_test::TestRequest::post()
                .uri("/things")
                .insert_header(("content-type", "application/json"))
                .set_payload("{nope"),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body["error"].is_string(), "{body}");
        let (status, body) = call(
            web_test::TestRequest::post()
                .uri("/things")
                .insert_header(("content-type", "text/plain"))
                .set_payload("{}"),
        )
        .await;
        assert_eq!(status, 415);
        assert!(body["error"].as_str().unwrap().contains("JSON"), "{body}");
    }

    #[actix_web::test]
    async fn bad_path_params_and_queries_are_400_naming_them() {
        let (status, body) = call(web_test::TestRequest::delete().uri("/things/abc")).await;
        assert_eq!(status, 400);
        assert_eq!(body["field"], "id", "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("\"abc\""),
            "{body}"
        );
        let (status, body) = call(web_test::TestRequest::get().uri("/query?follow=maybe")).await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().contains("query"), "{body}");
        let (status, body) = call(web_test::TestRequest::get().uri("/query?folow=true")).await;
        assert_eq!(status, 400);
        assert_eq!(body["field"], "folow", "{body}");
        let (status, _) = call(web_test::TestRequest::get().uri("/query?follow=true")).await;
        assert_eq!(status, 200);
    }

    #[actix_web::test]
    async fn any_other_plain_error_becomes_json_keeping_its_status() {
        let (status, body) = call(web_test::TestRequest::get().uri("/plain")).await;
        assert_eq!(status, 502);
        assert_eq!(body["error"], "bad gateway", "{body}");
    }

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            serde_field("missing field `name` at line 1 column 2").as_deref(),
            Some("name")
        );
        assert_eq!(
            serde_field("unknown field `folow`, expected `follow`").as_deref(),
            Some("folow")
        );
        assert_eq!(serde_field("invalid type: string"), None);
    }
}
