//! Health checks run by the worker's HealthChecker, with the real engine:
//! a task whose health endpoint starts failing is restarted (or, with
//! policy `no`, stopped and Failed "unhealthy"); exec checks run in the
//! container.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

async fn submit(cluster: &Cluster, spec: &serde_json::Value) -> String {
    let r = cluster.post(spec).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Serves on 7777; its /health fails `after_ms` after each start.
fn turns_unhealthy(name: &str, after_ms: u32, policy: &str) -> serde_json::Value {
    let mut spec = echo_spec(name, &["/echo", "serve", "7777"]);
    spec["env"]["UNHEALTHY_AFTER_MS"] = after_ms.to_string().into();
    spec["restart"] = serde_json::json!({ "policy": policy });
    spec["health"] = serde_json::json!({
        "http": "/health", "port": 7777, "interval_s": 0.2, "timeout_s": 1, "retries": 2
    });
    spec
}

#[tokio::test]
async fn a_task_whose_health_check_starts_failing_is_restarted() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let id = submit(&cluster, &turns_unhealthy("sick", 1500, "always")).await;
    let client = cluster.client();
    let healthy = wait_for("the task to be healthy", T, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            let h = t.health.clone()?;
            (h.state == cube::wire::HealthState::Healthy).then_some(t)
        }
    })
    .await;
    assert_eq!(healthy.state.as_str(), "Running");
    assert_eq!(
        healthy.health.unwrap().last_probe.as_deref(),
        Some("HTTP 200")
    );
    let first = healthy.container_id.unwrap();
    let restarted = wait_for("an unhealthy container to be replaced", T, || {
        let client = client.clone();
        let id = id.clone();
        let first = first.clone();
        async move {
            let t = client.task(&id).await.ok()?;
            (t.state.as_str() == "Running"
                && t.restart_count >= 1
                && t.container_id.as_deref() != Some(first.as_str()))
            .then_some(t)
        }
    })
    .await;
    assert_eq!(restarted.attempt, 1);
    assert!(containers_of_task(&id).len() <= 1);
    client.stop(&id).await.unwrap();
    assert!(containers_of_task(&id).is_empty());
}

#[tokio::test]
async fn an_unhealthy_task_without_a_restart_policy_fails_as_unhealthy() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let id = submit(&cluster, &turns_unhealthy("once", 800, "no")).await;
    let failed = cluster.wait_state(&id, "Failed", T).await;
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.starts_with("unhealthy: HTTP 503"), "{failed:?}");
    assert_eq!(failed.restart_count, 0);
    assert_eq!(
        failed.health.map(|h| h.state),
        Some(cube::wire::HealthState::Unhealthy)
    );
    assert!(containers_of_task(&id).is_empty());
}

#[tokio::test]
async fn exec_and_tcp_checks_pass_and_an_exec_check_can_fail() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let mut tcp = echo_spec("tcp", &["/echo", "serve", "7777"]);
    tcp["health"] = serde_json::json!({"tcp": true, "port": 7777, "interval_s": 0.2});
    let mut exec_ok = echo_spec("exec-ok", &["/echo", "serve", "7777"]);
    exec_ok["health"] = serde_json::json!({"exec": ["/echo", "exit", "0"], "interval_s": 0.2});
    let mut exec_bad = echo_spec("exec-bad", &["/echo", "serve", "7777"]);
    exec_bad["health"] =
        serde_json::json!({"exec": ["/echo", "exit", "4"], "interval_s": 0.2, "retries": 2});
    let ids = [
        submit(&cluster, &tcp).await,
        submit(&cluster, &exec_ok).await,
        submit(&cluster, &exec_bad).await,
    ];
    let client = cluster.client();
    for id in &ids[..2] {
        let t = wait_for("the check to pass", T, || {
            let client = client.clone();
            let id = id.clone();
            async move {
                let t = client.task(&id).await.ok()?;
                (t.health.as_ref()?.state == cube::wire::HealthState::Healthy).then_some(t)
            }
        })
        .await;
        assert_eq!(t.state.as_str(), "Running");
    }
    let failed = cluster.wait_state(&ids[2], "Failed", T).await;
    let error = failed.error.unwrap_or_default();
    assert!(error.starts_with("unhealthy: exit code 4"), "{error}");
    for id in &ids[..2] {
        client.stop(id).await.unwrap();
    }
}
