//! The manager's events stream (GET /events, `cube events`): a task's
//! transitions and restarts, in order, each with task, node and time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cube::manager::events::{Event, EventKind};
use futures_util::StreamExt;

const T: Duration = Duration::from_secs(60);

fn describe(e: &Event) -> String {
    match &e.kind {
        EventKind::State { to, .. } => format!("state {to}"),
        EventKind::Restart { restart_count, .. } => format!("restart {restart_count}"),
        EventKind::Health { state, .. } => format!("health {state:?}"),
        EventKind::Service { message } => format!("service {message}"),
    }
}

#[tokio::test]
async fn the_events_stream_shows_a_tasks_transitions_in_order() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let client = cluster.client();
    let mut stream = Box::pin(client.stream("/events?follow=true").await.unwrap());

    let mut spec = echo_spec("evented", &["/echo", "exit", "3", "300"]);
    spec["restart"] = serde_json::json!({"policy": "on-failure", "max_retries": 1});
    let r = cluster.post(&spec).await;
    assert_eq!(r.status(), 201);
    let id: uuid::Uuid = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let deadline = Instant::now() + T;
    let mut pending = Vec::new();
    let mut seen: Vec<Event> = Vec::new();
    'read: loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("timed out; events so far: {seen:?}"))
            .expect("the stream ended")
            .unwrap();
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: Event = serde_json::from_slice(&line).unwrap();
            if event.task != id {
                continue;
            }
            let done = matches!(event.kind, EventKind::State { to, .. } if to.is_terminal());
            seen.push(event);
            if done {
                break 'read;
            }
        }
    }
    let kinds: Vec<String> = seen.iter().map(describe).collect();
    assert_eq!(
        kinds,
        vec![
            "state Pending",
            "state Scheduled",
            "state Running",
            "state Scheduled",
            "restart 1",
            "state Running",
            "state Failed",
        ],
        "{seen:?}"
    );
    let node = cluster.worker_names[0].as_str();
    assert!(seen[1..].iter().all(|e| e.node.as_deref() == Some(node)));
    assert!(
        seen.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at)
    );

    // The CLI shows the same history.
    let out = cluster
        .cli()
        .args(["--manager", &cluster.manager_url, "events"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let short = &id.to_string()[..8];
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(short)).collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[4].contains("restart 1 (exit code 3)"), "{text}");
    assert!(
        lines[6].contains("Running -> Failed (exit code 3)"),
        "{text}"
    );
}
