//! Users' tokens against a real manager process: every user route, with no
//! token, a bad, an expired and a revoked token (401), and with each role
//! (403 where the role does not reach); tokens made, listed and revoked by
//! an admin, the secret shown once; events saying who submitted and stopped.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// A user route, and the least role that may call it.
struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    needs: &'static str,
}

fn routes(task: &str) -> Vec<Route> {
    let r = |method: Method, path: String, body: Option<Value>, needs| Route {
        method,
        path,
        body,
        needs,
    };
    let spec = json!({"name": "t", "image": IMAGE});
    vec![
        r(Method::GET, "/tasks".into(), None, "read"),
        r(Method::GET, format!("/tasks/{task}"), None, "read"),
        r(Method::GET, format!("/tasks/{task}/logs"), None, "read"),
        r(Method::GET, "/nodes".into(), None, "read"),
        r(Method::GET, "/events".into(), None, "read"),
        r(Method::POST, "/tasks".into(), Some(spec), "deploy"),
        r(Method::DELETE, format!("/tasks/{task}"), None, "deploy"),
        r(Method::GET, "/tokens".into(), None, "admin"),
        r(
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "x", "role": "read"})),
            "admin",
        ),
        r(Method::DELETE, "/tokens/nobody".into(), None, "admin"),
        r(Method::GET, "/services".into(), None, "read"),
        r(Method::GET, "/services/nobody".into(), None, "read"),
        r(
            Method::POST,
            "/services".into(),
            Some(json!({"name": "svc", "replicas": 0, "task": {"image": IMAGE}})),
            "deploy",
        ),
        r(
            Method::PUT,
            "/services/nobody".into(),
            Some(json!({"name": "nobody", "replicas": 0, "task": {"image": IMAGE}})),
            "deploy",
        ),
        r(
            Method::PATCH,
            "/services/nobody".into(),
            Some(json!({"replicas": 1})),
            "deploy",
        ),
        r(
            Method::POST,
            "/services/nobody/rollback".into(),
            None,
            "deploy",
        ),
        r(Method::DELETE, "/services/nobody".into(), None, "deploy"),
        r(Method::DELETE, "/nodes/nobody".into(), None, "admin"),
        r(Method::GET, "/join-token/worker".into(), None, "admin"),
        r(
            Method::POST,
            "/join-token/worker/rotate".into(),
            None,
            "admin",
        ),
    ]
}

fn rank(role: &str) -> u8 {
    match role {
        "read" => 0,
        "deploy" => 1,
        _ => 2,
    }
}

/// Calls `route` with `token` (none: no header); the status and body.
async fn call(
    http: &reqwest::Client,
    base: &str,
    route: &Route,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = http.request(route.method.clone(), format!("{base}{}", route.path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &route.body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the manager answers");
    let status = response.status().as_u16();
    if status == 401 {
        let challenge = response.headers().get("www-authenticate");
        assert_eq!(
            challenge.and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"cube\""),
            "a 401 says how to authenticate"
        );
    }
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn make_token(cluster: &Cluster, name: &str, role: &str, ttl_s: Option<u64>) -> String {
    let mut body = json!({"name": name, "role": role});
    if let Some(ttl) = ttl_s {
        body["ttl_s"] = ttl.into();
    }
    let r = cluster
        .http()
        .post(format!("{}/tokens", cluster.manager_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["name"], name);
    assert_eq!(created["role"], role);
    created["secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_user_route_asks_for_a_token_with_a_role_that_reaches() {
    let cluster = Cluster::split(0);
    cluster.ready().await;
    let http = cluster.files().anonymous();
    let base = cluster.manager_url.clone();
    // A task to read and stop (Pending: there is no worker).
    let r = cluster.post(&json!({"name": "held", "image": IMAGE})).await;
    assert_eq!(r.status(), 201);
    let task = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let read = make_token(&cluster, "reader", "read", None).await;
    let deploy = make_token(&cluster, "deployer", "deploy", None).await;
    let revoked = make_token(&cluster, "gone", "admin", None).await;
    let expired = make_token(&cluster, "brief", "admin", Some(1)).await;
    let r = cluster
        .http()
        .delete(format!("{base}/tokens/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The brief token works, then expires.
    let nodes = Route {
        method: Method::GET,
        path: "/nodes".into(),
        body: None,
        needs: "read",
    };
    wait_for("the brief token to expire", Duration::from_secs(10), || {
        let (http, base, expired) = (http.clone(), base.clone(), expired.clone());
        let nodes = &nodes;
        async move { (call(&http, &base, nodes, Some(&expired)).await.0 == 401).then_some(()) }
    })
    .await;

    for route in routes(&task) {
        let what = format!("{} {}", route.method, route.path);
        // Refused before anything else of the request is looked at.
        for (who, token) in [
            ("no token", None),
            ("a made-up token", Some("0".repeat(64))),
            ("a revoked token", Some(revoked.clone())),
            ("an expired token", Some(expired.clone())),
        ] {
            let (status, body) = call(&http, &base, &route, token.as_deref()).await;
            assert_eq!(status, 401, "{what} with {who}: {body}");
            assert!(body["error"].is_string(), "{what} with {who}: {body}");
        }
        for (role, token) in [("read", &read), ("deploy", &deploy)] {
            let (status, body) = call(&http, &base, &route, Some(token)).await;
            if rank(role) < rank(route.needs) {
                assert_eq!(status, 403, "{what} as {role}: {body}");
                assert!(
                    body["error"].as_str().unwrap().contains(route.needs),
                    "{what} as {role}: {body}"
                );
            } else {
                assert!(
                    status != 401 && status != 403,
                    "{what} as {role}: {status} {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_admin_makes_lists_and_revokes_tokens_and_events_name_them() {
    let cluster = Cluster::split(0);
    cluster.ready().await;
    let admin = cluster.http();
    let base = cluster.manager_url.clone();
    let ci = make_token(&cluster, "ci", "deploy", Some(3600)).await;
    // A name is taken once.
    let r = admin
        .post(format!("{base}/tokens"))
        .json(&json!({"name": "ci", "role": "read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Bad input names the field.
    for (body, field) in [
        (json!({"name": "a b", "role": "read"}), "name"),
        (json!({"name": "ok", "role": "read", "ttl_s": 0}), "ttl_s"),
        (
            json!({"name": "ok", "role": "read", "ttl_s": u64::MAX}),
            "ttl_s",
        ),
    ] {
        let r = admin
            .post(format!("{base}/tokens"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["field"], field, "{body} -> {answer}");
    }
    let r = admin
        .post(format!("{base}/tokens"))
        .json(&json!({"name": "ok", "role": "root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The list shows names and roles, never a secret or its hash.
    let listed: Value = admin
        .get(format!("{base}/tokens"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = listed.to_string();
    assert!(
        text.contains("\"ci\"") && text.contains("\"admin\""),
        "{text}"
    );
    assert!(!text.contains(&ci), "a secret is listed: {text}");
    assert!(!text.contains("hash"), "{text}");

    // The deploy token submits and stops; the events say so.
    let as_ci = cluster.files().anonymous();
    let r = as_ci
        .post(format!("{base}/tasks"))
        .bearer_auth(&ci)
        .json(&json!({"name": "by-ci", "image": IMAGE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let record: Value = r.json().await.unwrap();
    assert_eq!(record["submitted_by"], "ci");
    let id = record["id"].as_str().unwrap().to_string();
    let r = as_ci
        .delete(format!("{base}/tasks/{id}"))
        .bearer_auth(&ci)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let events = admin
        .get(format!("{base}/events"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mine: Vec<Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["task"] == id.as_str())
        .collect();
    assert_eq!(mine.first().unwrap()["by"], "ci", "{mine:?}");
    assert_eq!(mine.last().unwrap()["to"], "Completed", "{mine:?}");
    assert_eq!(mine.last().unwrap()["by"], "ci", "{mine:?}");

    // Revoked: refused at once, and the CLI says so.
    cluster.cli_ok(&["token", "revoke", "ci"]);
    let r = as_ci
        .get(format!("{base}/tasks"))
        .bearer_auth(&ci)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let out = cluster
        .cli()
        .args(["--token", &ci, "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not known"), "{err}");
    // Revoking what is not there: 404.
    let r = admin
        .delete(format!("{base}/tokens/ci"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The CLI makes a token and lists it; the new secret works.
    let out = cluster.cli_ok(&["--json", "token", "create", "viewer", "--role", "read"]);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = created["secret"].as_str().unwrap();
    let out = cluster.cli().args(["token", "ls"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("viewer") && table.contains("read"),
        "{table}"
    );
    cluster.cli_ok(&["--token", secret, "status"]);
    let out = cluster
        .cli()
        .args(["--token", secret, "token", "ls"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin"));

    // A restart keeps the tokens (and the revocation).
    let mut cluster = cluster;
    cluster.nodes[0].restart();
    let viewer = cluster.files().anonymous();
    let status = wait_for("the manager back", Duration::from_secs(30), || {
        let viewer = viewer.clone();
        let url = format!("{base}/nodes");
        async move {
            viewer
                .get(url)
                .bearer_auth(secret)
                .send()
                .await
                .ok()
                .map(|r| r.status())
        }
    })
    .await;
    assert_eq!(status, 200);
    let r = viewer
        .get(format!("{base}/nodes"))
        .bearer_auth(&ci)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
