//! `cube logs ID [-f]`: the container's output, streamed from its worker
//! through the manager.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

async fn hit(port: u16, path: &str) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let r = plain_get(&url).await.expect("the task answers");
    assert!(r.status().is_success() || r.status().as_u16() == 404);
}

#[tokio::test]
async fn cube_logs_shows_the_workloads_output_and_follows_it() {
    ensure_image();
    let cluster = Cluster::split_with("round-robin", &[""]);
    cluster.ready().await;
    let r = cluster
        .post(&echo_spec("talker", &["/echo", "serve", "7777"]))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let running = cluster.wait_state(&id, "Running", T).await;
    let port = running.host_ports[&7777];
    hit(port, "/first").await;

    // Without -f: what the container said so far, then the command ends.
    let out = cluster
        .cli()
        .args(["--manager", &cluster.manager_url, "logs", &id[..8]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listening on 0.0.0.0:7777"), "{text}");
    assert!(text.contains("GET /first 404"), "{text}");

    // With -f: later output arrives while the command runs.
    let log_path = cluster.dir.path().join("follow.out");
    let mut follower = cluster
        .cli()
        .args(["--manager", &cluster.manager_url, "logs", "-f", &id])
        .stdout(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    hit(port, "/second").await;
    let seen = wait_for("the follower to print the later request", T, || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        async move { text.contains("GET /second 404").then_some(text) }
    })
    .await;
    assert!(seen.contains("GET /first 404"), "{seen}");
    // Following ends when the container stops.
    cluster.client().stop(&id).await.unwrap();
    let deadline = std::time::Instant::now() + T;
    loop {
        if follower.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cube logs -f did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A task with no container says so.
    let out = cluster
        .cli()
        .args(["--manager", &cluster.manager_url, "logs", &id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no container"), "{err}");
}
