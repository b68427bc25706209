//! Kill -9 of a dev node loses no acknowledged task; the CLI end to end.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(90);

#[tokio::test]
async fn kill9_of_a_dev_node_loses_no_acknowledged_task() {
    ensure_image();
    let mut cluster = Cluster::dev();
    cluster.ready().await;
    // Post concurrently and kill the node as soon as the last 201 is in.
    let posts = (0..8).map(|i| {
        let spec = echo_spec(&format!("d{i}"), &["/echo", "serve", "7777"]);
        let url = format!("{}/tasks", cluster.manager_url);
        let http = cluster.http();
        async move {
            let r = http.post(url).json(&spec).send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    let ids: Vec<String> = futures_util::future::join_all(posts).await;
    cluster.nodes[0].restart();
    cluster.ready().await;
    let tasks = cluster.client().tasks().await.unwrap();
    for id in &ids {
        assert!(
            tasks.iter().any(|t| t.id.to_string() == *id),
            "task {id} lost"
        );
    }
    for id in &ids {
        let t = cluster.wait_state(id, "Running", T).await;
        assert_eq!(
            containers_of_task(id),
            vec![t.container_id.clone().unwrap()],
            "exactly one container for {id}"
        );
    }
    for id in &ids {
        let stopped = cluster.client().stop(id).await.unwrap();
        assert_eq!(stopped.state.as_str(), "Completed");
        assert!(containers_of_task(id).is_empty());
    }
}

/// The CLI as a user on the manager's machine runs it: no flags, the
/// manager's client file says where it is, which CA to trust and the token.
fn cube(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = cluster.cli().args(args).output().expect("cannot run cube");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_runs_shows_and_stops_tasks() {
    ensure_image();
    let cluster = Cluster::dev();
    cluster.ready().await;
    let repo = env!("CARGO_MANIFEST_DIR");

    // A TOML spec (exits 3 after a second) and the JSON example.
    let (ok, out, err) = cube(
        &cluster,
        &["--json", "run", &format!("{repo}/data/task2.toml")],
    );
    assert!(ok, "{err}");
    let failing: serde_json::Value = serde_json::from_str(&out).unwrap();
    let failing_id = failing["id"].as_str().unwrap().to_string();
    let (ok, out, err) = cube(&cluster, &["run", &format!("{repo}/data/task1.json")]);
    assert!(ok, "{err}");
    assert!(out.contains("accepted"), "{out}");
    let echo_id = out.split_whitespace().nth(1).unwrap().to_string();

    cluster.wait_state(&echo_id, "Running", T).await;
    cluster.wait_state(&failing_id, "Failed", T).await;
    let (ok, out, _) = cube(&cluster, &["status"]);
    assert!(ok);
    assert!(out.starts_with("ID"), "{out}");
    assert!(out.contains("Running") && out.contains("Failed"), "{out}");
    let (ok, out, _) = cube(&cluster, &["--json", "status", &failing_id[..8]]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exit_code"], 3);
    let (ok, out, _) = cube(&cluster, &["nodes"]);
    assert!(ok);
    assert!(out.contains(&cluster.worker_names[0]), "{out}");

    // Bad input names the field and changes nothing.
    let bad = cluster.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name": "x", "image": "y", "cpu": "lots"}"#).unwrap();
    let (ok, _, err) = cube(&cluster, &["run", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("`cpu`"), "{err}");

    let (ok, out, err) = cube(&cluster, &["stop", &echo_id]);
    assert!(ok, "{err}");
    assert!(out.contains("Completed"), "{out}");
    assert!(containers_of_task(&echo_id).is_empty());
}
