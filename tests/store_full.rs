//! A manager whose store fills up: submissions are refused with a JSON 507
//! naming the cause, the node stays up and keeps answering, nothing
//! refused is half-stored, and ended tasks are removed to make room, so new
//! submissions are accepted again. A real `cube` process, a real LMDB file.

mod common;

use std::time::Duration;

use common::{NodeProc, free_port, manager_files, wait_for};
use serde_json::{Value, json};

/// A spec of ~60 KiB (its env), so that a 2 MB store fills in ~25 tasks.
fn big_spec(i: usize) -> Value {
    json!({
        "name": format!("big-{i}"),
        "image": "cube-demo/echo:latest",
        "env": {"PAD": "x".repeat(60 * 1024)},
    })
}

/// A manager process (no worker) with `top` as extra top-level config;
/// its directory, process, base URL and an admin's HTTP client, once it
/// answers.
async fn manager(top: &str) -> (tempfile::TempDir, NodeProc, String, reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let config = dir.path().join("manager.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"manager\"\ndata_dir = \"{}\"\n{top}[manager]\nlisten = \"127.0.0.1:{port}\"\n\
             client_file = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("client.toml").display()
        ),
    )
    .unwrap();
    let node = NodeProc::start(config, dir.path().join("manager.log"), vec![]);
    let http = manager_files(&dir.path().join("data")).http();
    wait_for("the manager", Duration::from_secs(30), || async {
        http.get(format!("{base}/nodes")).send().await.ok()
    })
    .await;
    (dir, node, base, http)
}

/// Waits until a big submission is accepted again (room was made).
async fn accepted_again(http: &reqwest::Client, base: &str) {
    wait_for(
        "a submission accepted again",
        Duration::from_secs(20),
        || async move {
            let r = http
                .post(format!("{base}/tasks"))
                .json(&big_spec(999))
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 201).then_some(())
        },
    )
    .await;
}

async fn page(http: &reqwest::Client, base: &str, query: &str) -> Value {
    http.get(format!("{base}/tasks?{query}"))
        .send()
        .await
        .expect("GET /tasks answers")
        .json()
        .await
        .expect("a page")
}

#[tokio::test]
async fn a_full_store_answers_507_stays_up_and_frees_room_by_removing_ended_tasks() {
    let (_dir, _node, base, http) = manager("store_map_mb = 2\n").await;

    // Submit until the store refuses; stop every other task (no worker:
    // a stop ends a Pending task at once, Completed).
    let mut accepted = Vec::new();
    let mut pending_ids = Vec::new();
    let mut stopped = 0;
    let mut refusal = None;
    for i in 0..200 {
        let r = http
            .post(format!("{base}/tasks"))
            .json(&big_spec(i))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 201 {
            let id = body["id"].as_str().unwrap().to_string();
            if i % 2 == 0 {
                let r = http
                    .delete(format!("{base}/tasks/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "stop of a Pending task");
                stopped += 1;
            } else {
                pending_ids.push(id.clone());
            }
            accepted.push(id);
            continue;
        }
        refusal = Some((status, body));
        break;
    }
    let (status, body) = refusal.expect("a 2 MB store never filled");
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("full"),
        "the error says why: {body}"
    );
    assert!(accepted.len() >= 4, "only {} tasks fit", accepted.len());

    // The node is up and answers reads; every accepted task that has not
    // ended is there (ended ones may have been removed to make room).
    let listed = page(&http, &base, "limit=10000").await;
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    for id in &pending_ids {
        assert!(ids.contains(&id.as_str()), "accepted task {id} missing");
    }
    let completed_before = stopped;
    assert!(completed_before > 0);
    accepted_again(&http, &base).await;
    let completed_after = page(&http, &base, "state=Completed&limit=10000").await["tasks"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        completed_after < completed_before,
        "ended tasks were removed: {completed_before} -> {completed_after}"
    );
    // Pending tasks are never removed to make room.
    let pending = page(&http, &base, "state=Pending&limit=10000").await["tasks"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(pending, pending_ids.len() + 1, "{pending}");
}

#[tokio::test]
async fn a_store_full_of_live_tasks_still_stops_them_and_then_takes_more() {
    let (_dir, _node, base, http) = manager("store_map_mb = 2\n").await;

    // Fill with Pending tasks only: nothing has ended, nothing can be
    // removed to make room.
    let mut accepted = Vec::new();
    loop {
        let r = http
            .post(format!("{base}/tasks"))
            .json(&big_spec(accepted.len()))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() != 201 {
            assert_eq!(r.status().as_u16(), 507);
            break;
        }
        let body: Value = r.json().await.unwrap();
        accepted.push(body["id"].as_str().unwrap().to_string());
        assert!(accepted.len() < 200, "a 2 MB store never filled");
    }
    // A stop changes a stored record: it goes through on a full store.
    let victim = &accepted[0];
    let r = http
        .delete(format!("{base}/tasks/{victim}"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "stop on a full store: {} {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    let task: Value = http
        .get(format!("{base}/tasks/{victim}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["state"], "Completed", "{task}");
    // The ended task makes room: a submission is accepted again.
    accepted_again(&http, &base).await;
}

#[tokio::test]
async fn get_tasks_pages_with_a_cursor_and_filters() {
    let (_dir, _node, base, http) = manager("").await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let spec = json!({"name": format!("t{i}"), "image": "cube-demo/echo:latest"});
        let r = http
            .post(format!("{base}/tasks"))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in ids.iter().take(5) {
        http.delete(format!("{base}/tasks/{id}"))
            .send()
            .await
            .unwrap();
    }
    // Pages of 10 through all 25: each id once, the last page says no more.
    let mut seen = Vec::new();
    let mut query = "limit=10".to_string();
    let mut pages = 0;
    loop {
        let p = page(&http, &base, &query).await;
        pages += 1;
        for t in p["tasks"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_string());
        }
        match p["next"].as_str() {
            Some(next) => query = format!("limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    // The default page holds them all; filters by state.
    assert_eq!(
        page(&http, &base, "").await["tasks"]
            .as_array()
            .unwrap()
            .len(),
        25
    );
    let done = page(&http, &base, "state=Completed").await;
    assert_eq!(done["tasks"].as_array().unwrap().len(), 5);
    assert_eq!(page(&http, &base, "node=nowhere").await["tasks"], json!([]));
    // Bad queries name the parameter.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("after=x", "after"),
        ("state=Sleeping", "state"),
    ] {
        let r = http
            .get(format!("{base}/tasks?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{query}: {v}");
    }
}
