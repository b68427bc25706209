//! Mutual TLS between the nodes, tried as an outsider and as a worker that
//! oversteps: real `cube` processes, real certificates, real sockets.
//! - Plain HTTP gets no answer that looks like success.
//! - Without a node certificate nobody registers, heartbeats or reports,
//!   and nobody gets through to a worker at all.
//! - A worker's certificate speaks for that worker only.
//! - A join token pinning another CA: the worker refuses to join, saying
//!   why; a token with the right CA but a wrong secret is refused.
//! - Node certificates (the workers' and the manager's) renewed under load
//!   disturb nothing.
//! - A worker removed (`cube node rm`) is refused from then on, its tasks
//!   move, and it may join again; nobody joins under a live worker's name.

mod common;

use std::time::Duration;

use common::*;
use cube::security::tls::{Expect, NodeTls};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// A reqwest client presenting `tls`'s certificate to the manager.
fn as_node(tls: &NodeTls) -> reqwest::Client {
    https(tls.client(Expect::Manager).unwrap())
}

/// The certificate a split cluster's worker `index` (in `nodes`) got by
/// joining.
fn worker_tls(cluster: &Cluster, name: &str, index: usize) -> NodeTls {
    let pki = cluster
        .dir
        .path()
        .join(format!("{name}-{index}"))
        .join("pki");
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap();
    NodeTls::from_pem(&read("ca.crt"), &read("node.crt"), &read("node.key")).unwrap()
}

/// The certificate a TLS server presents (DER), from a handshake with `tls`.
fn served_certificate(url: &str, tls: rustls::ClientConfig) -> Vec<u8> {
    let addr = url.trim_start_matches("https://");
    let host = addr.rsplit_once(':').unwrap().0.to_string();
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(tls), name).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).unwrap();
    }
    tls.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn nodes_prove_who_they_are_and_speak_only_for_themselves() {
    ensure_image();
    let cluster = Cluster::split(2);
    cluster.ready().await;
    let (w1, w2) = (
        cluster.worker_names[0].clone(),
        cluster.worker_names[1].clone(),
    );
    let files = cluster.files();
    let base = &cluster.manager_url;

    // Plain HTTP to a TLS port: no HTTP answer at all.
    let plain = plain_get(&base.replace("https://", "http://")).await;
    assert!(plain.is_err(), "plain HTTP got {plain:?}");

    // A user's client (CA trusted, no certificate) on the worker routes: 401.
    let user = files.http();
    let beat = json!({"name": w1, "instance": uuid::Uuid::new_v4(), "stats": {}});
    for path in [
        "/workers/register",
        "/workers/heartbeat",
        "/workers/reports",
    ] {
        let r = user
            .post(format!("{base}{path}"))
            .json(&beat)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("certificate"),
            "{body}"
        );
    }

    // A worker without the manager's certificate: the handshake fails.
    let nodes = cluster.client().nodes().await.unwrap();
    let w1_address = &nodes.iter().find(|n| n.name == w1).unwrap().address;
    let no_cert = https(files.user_tls_for_worker(&w1));
    assert!(
        no_cert
            .get(format!("{w1_address}/tasks"))
            .send()
            .await
            .is_err(),
        "a worker answered a client without a certificate"
    );
    // ...and another worker's certificate is not the manager's: 403.
    let w2_cert = worker_tls(&cluster, &w2, 2);
    let r = https(w2_cert.client(Expect::Worker(w1.clone())).unwrap())
        .get(format!("{w1_address}/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // w1's certificate cannot heartbeat, register or report as w2.
    let w1_client = as_node(&worker_tls(&cluster, &w1, 1));
    let beat_w2 = cube::wire::Heartbeat {
        name: w2.clone(),
        instance: uuid::Uuid::new_v4(),
        stats: Default::default(),
    };
    let r = w1_client
        .post(format!("{base}/workers/heartbeat"))
        .json(&beat_w2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = w1_client
        .post(format!("{base}/workers/register"))
        .json(&cube::wire::Registration {
            name: w2.clone(),
            instance: uuid::Uuid::new_v4(),
            address: "https://127.0.0.1:1".into(),
            capacity: cube::wire::Capacity {
                cpus: 1.0,
                memory_mb: 1,
                disk_mb: 1,
            },
            tasks: vec![],
            stats: Default::default(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A report on a task of w2's, as if from w2: refused, the task as it was.
    let id = {
        let r = cluster
            .post(&echo_spec("mine", &["/echo", "serve", "7777"]))
            .await;
        assert_eq!(r.status(), 201);
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let running = cluster.wait_state(&id, "Running", T).await;
    let home = running.node.clone().unwrap();
    let (thief, victim) = if home == w1 {
        (worker_tls(&cluster, &w2, 2), w1.clone())
    } else {
        (worker_tls(&cluster, &w1, 1), w2.clone())
    };
    let forged = json!({
        "task_id": id, "attempt": running.attempt, "node": victim, "state": "Completed",
        "container_id": "forged", "host_ports": {}, "exit_code": 0, "error": null,
        "at": chrono::Utc::now(), "seq": u64::MAX, "restart_count": 0,
        "started_at": null, "next_restart_at": null, "health": null
    });
    let r = as_node(&thief)
        .post(format!("{base}/workers/reports"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let now = cluster.client().task(&id).await.unwrap();
    assert_eq!(now.state.as_str(), "Running");
    assert_eq!(now.container_id, running.container_id);
    cluster.client().stop(&id).await.unwrap();
}

#[tokio::test]
async fn a_worker_refuses_a_manager_whose_ca_its_token_does_not_pin() {
    let mut cluster = Cluster::split(0);
    let token = |t: String| vec![("CUBE_JOIN_TOKEN".to_string(), t)];
    // The token of another cluster: same shape, another CA digest (the
    // environment's token wins over the harness's in the config).
    let other = format!("CUBE1-{}-{}", "ab".repeat(32), "cd".repeat(32));
    let i = cluster.add_worker_with_env("", token(other));
    let node = &mut cluster.nodes[i];
    let status = node.wait_exit(T).await.expect("the worker stops by itself");
    assert!(!status.success());
    let log = node.log_text();
    assert!(
        log.contains("not the cluster the token is for") && log.contains(&"ab".repeat(32)),
        "{log}"
    );
    assert!(cluster.client().nodes().await.unwrap().is_empty());

    // The right CA, a wrong secret: the manager refuses it.
    let right = cluster.files().worker_token;
    let digest = right.split('-').nth(1).unwrap();
    let forged = format!("CUBE1-{digest}-{}", "ef".repeat(32));
    let i = cluster.add_worker_with_env("", token(forged));
    let node = &mut cluster.nodes[i];
    let status = node.wait_exit(T).await.expect("the worker stops by itself");
    assert!(!status.success());
    let log = node.log_text();
    assert!(log.contains("401") && log.contains("join token"), "{log}");
    assert!(cluster.client().nodes().await.unwrap().is_empty());
}

#[tokio::test]
async fn certificates_renewed_under_load_disturb_nothing() {
    ensure_image();
    // Node certificates (the workers' and the manager's) live 6 s: renewed
    // every 3 to 5 s.
    let cluster = Cluster::split_tuned("round-robin", "node_cert_ttl_s = 6", &["", ""]);
    let manager_cert = || std::fs::read_to_string(cluster.manager_dir.join("pki/manager.crt"));
    cluster.ready().await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let r = cluster
            .post(&echo_spec(
                &format!("steady{i}"),
                &["/echo", "serve", "7777"],
            ))
            .await;
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for id in &ids {
        cluster.wait_state(id, "Running", T).await;
    }
    let first: Vec<String> = (0..2)
        .map(|i| {
            let name = &cluster.worker_names[i];
            std::fs::read_to_string(
                cluster
                    .dir
                    .path()
                    .join(format!("{name}-{}", i + 1))
                    .join("pki/node.crt"),
            )
            .unwrap()
        })
        .collect();
    let manager_first = manager_cert().unwrap();

    // 20 s: three lifetimes of the first certificates. Nothing moves.
    let client = cluster.client();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        for node in client.nodes().await.unwrap() {
            assert_eq!(node.state.as_str(), "ready", "{node:?}\n{}", cluster.logs());
        }
        for id in &ids {
            let t = client.task(id).await.unwrap();
            assert_eq!((t.state.as_str(), t.attempt), ("Running", 1), "{t:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, old) in first.iter().enumerate() {
        let name = &cluster.worker_names[i];
        let now = std::fs::read_to_string(
            cluster
                .dir
                .path()
                .join(format!("{name}-{}", i + 1))
                .join("pki/node.crt"),
        )
        .unwrap();
        assert_ne!(&now, old, "worker {name} kept its first certificate");
        let renewed = cluster.nodes[i + 1]
            .log_text()
            .matches("presents its new certificate")
            .count();
        assert!(renewed >= 3, "worker {name} renewed {renewed} times");
    }
    // The manager renewed its own, as often, and serves it.
    assert_ne!(manager_cert().unwrap(), manager_first);
    let renewed = cluster.nodes[0]
        .log_text()
        .matches("manager presents its new certificate")
        .count();
    assert!(renewed >= 3, "the manager renewed {renewed} times");
    let served = served_certificate(&cluster.manager_url, cluster.files().user_tls());
    assert_ne!(
        served,
        der_of(&manager_first),
        "the manager still serves its first certificate"
    );
    // Long after the first certificates expired, the manager still reaches
    // the workers (they serve the new ones) and they it.
    let r = cluster
        .post(&echo_spec("late", &["/echo", "serve", "7777"]))
        .await;
    assert_eq!(r.status(), 201);
    let late = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cluster.wait_state(&late, "Running", T).await;
    for id in ids.iter().chain([&late]) {
        cluster.client().stop(id).await.unwrap();
    }
}

#[tokio::test]
async fn a_worker_started_before_its_manager_joins_once_it_is_up() {
    let mut cluster = Cluster::split(0);
    cluster.ready().await;
    cluster.nodes[0].kill9();
    let i = cluster.add_worker("");
    wait_for("the worker to wait for its manager", T, || {
        let log = cluster.nodes[i].log_text();
        async move { log.contains("to join").then_some(()) }
    })
    .await;
    assert!(cluster.nodes[i].alive(), "{}", cluster.logs());
    cluster.nodes[0].restart();
    cluster.ready().await;
    let nodes = cluster.client().nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state.as_str(), "ready");
}

#[tokio::test]
async fn a_rotated_join_token_is_refused_and_joined_workers_stay() {
    let mut cluster = Cluster::split(1);
    cluster.ready().await;
    let old = cluster.files().worker_token;
    let out = cluster.cli_ok(&["join-token", "worker"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), old);
    let out = cluster.cli_ok(&["join-token", "worker", "--rotate"]);
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new, old);
    // The file comes to say the same.
    let path = cluster.manager_dir.join("worker.token");
    wait_for("the worker token file to hold the new token", T, || async {
        let saved = std::fs::read_to_string(&path).ok()?;
        (saved.trim() == new).then_some(())
    })
    .await;
    // A worker with the old token is refused; one with the new joins.
    let token = |t: &str| vec![("CUBE_JOIN_TOKEN".to_string(), t.to_string())];
    let i = cluster.add_worker_with_env("", token(&old));
    let status = cluster.nodes[i].wait_exit(T).await.expect("it stops");
    assert!(!status.success());
    assert!(cluster.nodes[i].log_text().contains("401"));
    cluster.add_worker_with_env("", token(&new));
    wait_for("the new worker and the old one ready", T, || {
        let client = cluster.client();
        async move {
            let nodes = client.nodes().await.ok()?;
            (nodes.len() == 2 && nodes.iter().all(|n| n.state.as_str() == "ready")).then_some(())
        }
    })
    .await;
    // Not for a deploy token.
    let r = cluster
        .http()
        .post(format!("{}/tokens", cluster.manager_url))
        .json(&json!({"name": "ci", "role": "deploy"}))
        .send()
        .await
        .unwrap();
    let ci: serde_json::Value = r.json().await.unwrap();
    let out = cluster
        .cli()
        .args([
            "--token",
            ci["secret"].as_str().unwrap(),
            "join-token",
            "worker",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `cube node rm`: the worker's certificate is refused from then on, its
/// task moves, its container goes, and nothing of it is listed; a restart
/// of the worker joins again, under a new generation of its name. A second
/// worker cannot join under a live worker's name.
#[tokio::test]
async fn a_removed_worker_is_refused_its_tasks_move_and_it_may_join_again() {
    ensure_image();
    let mut cluster = Cluster::split(2);
    cluster.ready().await;
    let base = cluster.manager_url.clone();
    let r = cluster
        .post(&echo_spec("moving", &["/echo", "serve", "7777"]))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let first = cluster.wait_state(&id, "Running", T).await;
    let victim = first.node.clone().unwrap();
    let index = if victim == cluster.worker_names[0] {
        1
    } else {
        2
    };
    let other = cluster.worker_names[2 - index].clone();
    let old_cert = worker_tls(&cluster, &victim, index);

    cluster.cli_ok(&["node", "rm", &victim]);
    // The task runs on the other worker, as a new attempt, and the removed
    // worker's container is gone.
    let moved = wait_for("the task to run on the other worker", T, || {
        let client = cluster.client();
        let (id, other) = (id.clone(), other.clone());
        async move {
            let t = client.task(&id).await.ok()?;
            (t.state.as_str() == "Running" && t.node.as_deref() == Some(&other)).then_some(t)
        }
    })
    .await;
    assert!(moved.attempt > first.attempt);
    wait_for("the removed worker's container to go", T, || {
        let victim = victim.clone();
        async move { containers_of_node(&victim).is_empty().then_some(()) }
    })
    .await;
    assert_eq!(containers_of_task(&id).len(), 1);
    // Not listed; its certificate refused on every worker route.
    let nodes = cluster.client().nodes().await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        vec![other.as_str()]
    );
    let beat = cube::wire::Heartbeat {
        name: victim.clone(),
        instance: uuid::Uuid::new_v4(),
        stats: Default::default(),
    };
    let r = as_node(&old_cert)
        .post(format!("{base}/workers/heartbeat"))
        .json(&beat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("removed"),
        "{body}"
    );
    let r = as_node(&old_cert)
        .post(format!("{base}/workers/renew"))
        .json(&json!({"hosts": ["127.0.0.1"], "csr": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a removed worker cannot renew");
    // The worker knows, and forgot its certificate.
    wait_for("the removed worker to say so", T, || {
        let log = cluster.nodes[index].log_text();
        async move { log.contains("refuses this worker").then_some(()) }
    })
    .await;
    let pki = cluster
        .dir
        .path()
        .join(format!("{victim}-{index}"))
        .join("pki");
    assert!(!pki.join("node.crt").exists());
    // Removing it again, or a name never seen: 404.
    for name in [victim.as_str(), "nobody"] {
        let r = cluster
            .http()
            .delete(format!("{base}/nodes/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{name}");
    }

    // Restarted, it joins again (a new certificate) and is a member.
    cluster.nodes[index].restart();
    wait_for("the removed worker to join again", T, || {
        let client = cluster.client();
        let victim = victim.clone();
        async move {
            let nodes = client.nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.name == victim && n.state.as_str() == "ready")
                .then_some(())
        }
    })
    .await;
    let new_cert = worker_tls(&cluster, &victim, index);
    assert_ne!(new_cert.certificate(), old_cert.certificate());

    // A second worker cannot join under a live worker's name.
    let impostor = cluster.add_named_worker(&other, "");
    let status = cluster.nodes[impostor]
        .wait_exit(T)
        .await
        .expect("it stops");
    assert!(!status.success());
    let log = cluster.nodes[impostor].log_text();
    assert!(
        log.contains("409") && log.contains("cannot share a name"),
        "{log}"
    );
    let task = cluster.client().task(&id).await.unwrap();
    assert_eq!(task.node.as_deref(), Some(other.as_str()));
    assert_eq!(task.attempt, moved.attempt, "nothing moved again");
    cluster.client().stop(&id).await.unwrap();
}
