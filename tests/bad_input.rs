//! Bad input against a real dev node, manager and worker APIs both: every
//! error is JSON with an `error` field and a fitting status, also those
//! actix answers by itself (413, 404, 405, 431, 400 for a malformed head,
//! 408); specs out of bounds are refused naming the field, by the manager
//! and by the worker.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// An API under test: its base URL, and how to reach it (TLS as the
/// manager's users do, or as the manager does for a worker).
struct Target {
    base: String,
    http: reqwest::Client,
    tls: rustls::ClientConfig,
    /// A user's token, sent on raw requests too (the worker takes none).
    token: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base)
    }
}

/// A dev node, ready; its manager and its worker.
async fn node() -> (Cluster, Target, Target) {
    let cluster = Cluster::dev();
    cluster.ready().await;
    let files = cluster.files();
    let nodes = cluster.client().nodes().await.unwrap();
    let worker = Target {
        base: nodes[0].address.clone(),
        http: files.worker_http(&nodes[0].name),
        tls: files.manager_tls(&nodes[0].name),
        token: None,
    };
    let manager = Target {
        base: cluster.manager_url.clone(),
        http: files.http(),
        tls: files.user_tls(),
        token: Some(files.admin_token.clone()),
    };
    (cluster, manager, worker)
}

/// Checks that a response is a JSON error of this status; its body.
async fn json_error(what: &str, response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/json", "{what}");
    let body: Value = response.json().await.expect(what);
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
    body
}

/// A response read off a raw connection: status, headers (lowercase), body.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Checks that it is a JSON error of this status; its body.
    fn json_error(&self, what: &str, status: u16) -> Value {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let length: usize = self
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .expect("content-length");
        assert_eq!(length, self.body.len(), "{what}");
        let body: Value = serde_json::from_slice(&self.body).expect(what);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
        body
    }
}

/// Parses the responses in `bytes` (which may hold several, one after the other).
fn parse_responses(mut bytes: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let rest = &bytes[end + 4..];
        let body = rest[..length.min(rest.len())].to_vec();
        bytes = &rest[body.len()..];
        out.push(Raw {
            status,
            headers,
            body,
        });
    }
    out
}

/// Sends raw bytes on a new connection, optionally waits, and reads until the
/// server closes it. A server that closes with some of a too large request
/// unread resets the connection: what was read until then counts.
async fn raw(target: &Target, mut request: Vec<u8>, pause: Duration) -> Vec<Raw> {
    let addr = target.base.trim_start_matches("https://").to_string();
    // The token goes right after the request line.
    if let (Some(token), Some(end)) = (&target.token, request.windows(2).position(|w| w == b"\r\n"))
    {
        let header = format!("authorization: Bearer {token}\r\n");
        request.splice(end + 2..end + 2, header.into_bytes());
    }
    let tls = std::sync::Arc::new(target.tls.clone());
    tokio::task::spawn_blocking(move || {
        let tcp = TcpStream::connect(&addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(tls, name).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // The server may stop reading (and close) before all is written.
        let _ = stream.write_all(&request);
        std::thread::sleep(pause);
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        parse_responses(&bytes)
    })
    .await
    .unwrap()
}

async fn raw_one(target: &Target, request: Vec<u8>) -> Raw {
    let mut responses = raw(target, request, Duration::ZERO).await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    responses.remove(0)
}

#[tokio::test]
async fn every_error_of_manager_and_worker_is_json_with_a_fitting_status() {
    let (cluster, manager, worker) = node().await;
    let task = uuid::Uuid::new_v4();
    for base in [&manager, &worker] {
        let http = &base.http;
        // 404: no such path.
        let r = http
            .get(format!("{base}/no/such/path"))
            .send()
            .await
            .unwrap();
        json_error(&format!("{base} 404"), r, 404).await;
        // 405: a known path, another method.
        let r = http.put(format!("{base}/tasks")).send().await.unwrap();
        let body = json_error(&format!("{base} 405"), r, 405).await;
        assert!(body["error"].as_str().unwrap().contains("PUT"), "{body}");
        let r = http
            .patch(format!("{base}/tasks/{task}"))
            .send()
            .await
            .unwrap();
        json_error(&format!("{base} 405 with an id"), r, 405).await;
        // 400: a task id that is not a UUID, named.
        let r = http
            .delete(format!("{base}/tasks/not-a-uuid"))
            .send()
            .await
            .unwrap();
        let body = json_error(&format!("{base} bad id"), r, 400).await;
        assert_eq!(body["field"], "id", "{body}");
        // 400: a query that does not parse, or names no known parameter.
        let r = http
            .get(format!("{base}/tasks/{task}/logs?follow=maybe"))
            .send()
            .await
            .unwrap();
        json_error(&format!("{base} bad query"), r, 400).await;
        let r = http
            .get(format!("{base}/tasks/{task}/logs?folow=true"))
            .send()
            .await
            .unwrap();
        let body = json_error(&format!("{base} unknown query"), r, 400).await;
        assert_eq!(body["field"], "folow", "{body}");
        // 400: malformed JSON.
        let r = http
            .post(format!("{base}/tasks"))
            .header("content-type", "application/json")
            .body("{\"name\": ")
            .send()
            .await
            .unwrap();
        json_error(&format!("{base} malformed JSON"), r, 400).await;
        // 413: a body over the limit, announced...
        let r = http
            .post(format!("{base}/tasks"))
            .header("content-type", "application/json")
            .body(vec![b' '; 2 << 20])
            .send()
            .await;
        // (the server may answer and close before taking it all)
        if let Ok(r) = r {
            json_error(&format!("{base} 413 with a length"), r, 413).await;
        }
        // ...and streamed without a length: the limit holds as it comes.
        let chunks = futures_util::stream::iter(
            (0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])),
        );
        let r = http
            .post(format!("{base}/tasks"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        if let Ok(r) = r {
            let body = json_error(&format!("{base} 413 chunked"), r, 413).await;
            assert!(
                body["error"].as_str().unwrap().contains("too large"),
                "{body}"
            );
        }
        // The same, raw, so that the answer is always seen.
        let request = format!(
            "POST /tasks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            3 << 20
        );
        raw_one(base, request.into_bytes())
            .await
            .json_error(&format!("{base} raw 413"), 413);

        // 431: more headers than actix takes (96), or a head over 128 KiB.
        let mut many = "GET /tasks HTTP/1.1\r\nhost: x\r\n".to_string();
        for i in 0..100 {
            many.push_str(&format!("x-h{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let body = raw_one(base, many.clone().into_bytes())
            .await
            .json_error(&format!("{base} 431 many headers"), 431);
        assert!(
            body["error"].as_str().unwrap().contains("too large"),
            "{body}"
        );
        let big = format!(
            "GET /tasks HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(140 * 1024)
        );
        raw_one(base, big.into_bytes())
            .await
            .json_error(&format!("{base} 431 big header"), 431);
        // On a kept-alive connection, after a good request: that answer
        // stands, then the JSON 431.
        let mut pipelined = b"GET /tasks HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
        pipelined.extend_from_slice(many.as_bytes());
        let responses = raw(base, pipelined, Duration::ZERO).await;
        assert_eq!(responses.len(), 2, "{responses:?}");
        assert_eq!(responses[0].status, 200);
        // The worker lists its tasks; the manager answers a page of them.
        let listed = serde_json::from_slice::<Value>(&responses[0].body).unwrap();
        assert!(
            listed == json!([]) || listed == json!({"tasks": [], "next": null}),
            "{listed}"
        );
        responses[1].json_error(&format!("{base} 431 after a good request"), 431);

        // 400: a head that is not HTTP.
        raw_one(base, b"NOT\x01HTTP /\r\n\r\n".to_vec())
            .await
            .json_error(&format!("{base} malformed head"), 400);
    }

    // The manager's worker-facing routes (called with the worker's
    // certificate): wrong content type, missing field.
    let as_worker = https(
        cluster
            .dev_worker_tls()
            .client(cube::security::tls::Expect::Manager)
            .unwrap(),
    );
    let r = as_worker
        .post(format!("{manager}/workers/heartbeat"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    json_error("heartbeat as text", r, 415).await;
    let r = as_worker
        .post(format!("{manager}/workers/heartbeat"))
        .json(&json!({"name": "w"}))
        .send()
        .await
        .unwrap();
    let body = json_error("heartbeat without instance", r, 400).await;
    assert_eq!(body["field"], "instance", "{body}");

    // Nothing was stored by any of it.
    let tasks: Value = manager
        .http
        .get(format!("{manager}/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks, json!({"tasks": [], "next": null}));
}

#[tokio::test]
async fn a_request_head_too_slow_is_a_json_408() {
    let (_cluster, manager, worker) = node().await;
    for base in [&manager, &worker] {
        // Half a head, then nothing: actix gives up after 5 s.
        let responses = raw(
            base,
            b"GET /tasks HTTP/1.1\r\nhost: x\r\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        assert_eq!(responses.len(), 1, "{responses:?}");
        responses[0].json_error(&format!("{base} 408"), 408);
    }
}

#[tokio::test]
async fn specs_out_of_bounds_are_refused_by_the_manager_naming_the_field() {
    let (cluster, _manager, _worker) = node().await;
    let spec = |extra: Value| {
        let mut s = json!({"name": "bounds", "image": IMAGE});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    };
    let ports = |n: u32| json!((1..=n).collect::<Vec<u32>>());
    for (extra, field) in [
        // 2^44 MiB is 2^64 bytes: it once made a container without a limit.
        (json!({"memory_mb": 1u64 << 44}), "memory_mb"),
        (json!({"memory_mb": u64::MAX}), "memory_mb"),
        (json!({"memory_mb": 5}), "memory_mb"),
        (json!({"disk_mb": u64::MAX}), "disk_mb"),
        (json!({"ports": ports(65)}), "ports"),
        (json!({"ports": ports(10_000)}), "ports"),
        (json!({"cpu": 0.001}), "cpu"),
        (json!({"cpu": 100_000}), "cpu"),
        (json!({"cmd": vec!["x"; 257]}), "cmd"),
        (json!({"env": {"A": "x".repeat(70_000)}}), "env"),
        (json!({"image": "i".repeat(600)}), "image"),
        (json!({"name": "n".repeat(64)}), "name"),
        (json!({"pids_limit": 15}), "pids_limit"),
        (json!({"pids_limit": (1u64 << 20) + 1}), "pids_limit"),
        (json!({"pids_limit": u64::MAX}), "pids_limit"),
        (json!({"pids_limit": -1}), "pids_limit"),
        (json!({"user": ""}), "user"),
        (json!({"user": "a\nb"}), "user"),
        (json!({"user": "u".repeat(200)}), "user"),
        (json!({"read_only": "yes"}), "read_only"),
    ] {
        let r = cluster.post(&spec(extra.clone())).await;
        let body = json_error(&format!("{extra}"), r, 400).await;
        assert_eq!(body["field"], field, "{extra} -> {body}");
    }
    // Nothing was stored, nothing started.
    assert!(cluster.client().tasks().await.unwrap().is_empty());
    assert!(containers_of_node(&cluster.worker_names[0]).is_empty());
}

#[tokio::test]
async fn the_worker_refuses_a_bad_assignment_naming_the_field() {
    let (cluster, _manager, worker) = node().await;
    let http = &worker.http;
    let task = uuid::Uuid::new_v4();
    let assignment = |spec: Value| json!({"task_id": task, "attempt": 1, "spec": spec});
    let base = json!({"name": "direct", "image": IMAGE, "cmd": ["/echo", "serve", "7777"]});
    let with = |k: &str, v: Value| {
        let mut s = base.clone();
        s[k] = v;
        s
    };
    for (body, field) in [
        (
            assignment(with("memory_mb", json!(1u64 << 44))),
            "spec.memory_mb",
        ),
        (
            assignment(with("ports", json!((1..=65).collect::<Vec<u32>>()))),
            "spec.ports",
        ),
        (assignment(with("cpu", json!(0.001))), "spec.cpu"),
        (assignment(with("pids_limit", json!(0))), "spec.pids_limit"),
        (assignment(with("user", json!("a:b:c"))), "spec.user"),
        (assignment(with("colour", json!("red"))), "spec.colour"),
        (assignment(json!({"image": IMAGE})), "spec.name"),
        (
            json!({"task_id": "x", "attempt": 1, "spec": base}),
            "task_id",
        ),
        (json!({"task_id": task, "spec": base}), "attempt"),
    ] {
        let r = http
            .post(format!("{worker}/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let answer = json_error(&format!("{body}"), r, 400).await;
        assert_eq!(answer["field"], field, "{body} -> {answer}");
    }
    // The worker holds nothing and started nothing.
    let held: Value = http
        .get(format!("{worker}/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held, json!([]));
    assert!(containers_of_task(&task.to_string()).is_empty());
    assert!(containers_of_node(&cluster.worker_names[0]).is_empty());
}

/// Specs asking for the host: privileged mode, host namespaces, host mounts
/// (the Docker socket), capabilities, devices. Each with the field Docker's
/// API or a compose file would use, and a value that would do harm.
fn host_access() -> Vec<(&'static str, Value)> {
    let socket = json!(["/var/run/docker.sock:/var/run/docker.sock"]);
    vec![
        ("privileged", json!(true)),
        ("network_mode", json!("host")),
        ("network", json!("host")),
        ("pid_mode", json!("host")),
        ("pid", json!("host")),
        ("ipc", json!("host")),
        ("ipc_mode", json!("host")),
        ("userns_mode", json!("host")),
        ("binds", socket.clone()),
        ("volumes", socket.clone()),
        ("mounts", socket),
        ("cap_add", json!(["SYS_ADMIN"])),
        ("devices", json!(["/dev/sda:/dev/sda"])),
        ("security_opt", json!(["seccomp=unconfined"])),
    ]
}

#[tokio::test]
async fn specs_asking_for_the_host_are_refused_by_manager_and_worker() {
    // Docker is needed to check that nothing was created: fail without it.
    ensure_image();
    let (cluster, _manager, worker) = node().await;
    let http = &worker.http;
    let task = uuid::Uuid::new_v4();
    let base = json!({"name": "host", "image": IMAGE, "cmd": ["/echo", "sleep", "60"]});
    for (field, value) in host_access() {
        let mut spec = base.clone();
        spec[field] = value.clone();
        let what = format!("{field} = {value}");

        let r = cluster.post(&spec).await;
        let body = json_error(&format!("manager: {what}"), r, 400).await;
        assert_eq!(body["field"], field, "manager: {what} -> {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with("refused: "),
            "manager: {what} -> {body}"
        );

        let r = http
            .post(format!("{worker}/tasks"))
            .json(&json!({"task_id": task, "attempt": 1, "spec": spec}))
            .send()
            .await
            .unwrap();
        let body = json_error(&format!("worker: {what}"), r, 400).await;
        assert_eq!(
            body["field"],
            format!("spec.{field}"),
            "worker: {what} -> {body}"
        );
    }
    // Nothing stored or held, nothing created.
    assert!(cluster.client().tasks().await.unwrap().is_empty());
    let held: Value = http
        .get(format!("{worker}/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(held, json!([]));
    assert!(containers_of_task(&task.to_string()).is_empty());
    assert!(containers_of_node(&cluster.worker_names[0]).is_empty());
}
