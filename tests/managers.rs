//! Managers replicated on Raft, as real processes on loopback: three
//! managers (the second and third join the first with the manager join
//! token), two workers that know all three, and the real engine.
//!
//! Needs Docker (the workers run real containers) and the example image,
//! built by the tests themselves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::netns::Netns;
use common::{
    ContainerGuard, ManagerFiles, NodeProc, containers_of_task, ensure_image, free_port,
    manager_files, own_network, unique, wait_for,
};
use cube::client::Client;
use cube::task::DesiredState;
use cube::wire::ClusterView;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const SETUP: Duration = Duration::from_secs(60);

struct Managers {
    dir: tempfile::TempDir,
    urls: Vec<String>,
    managers: Vec<NodeProc>,
    workers: Vec<NodeProc>,
    worker_names: Vec<String>,
    files: ManagerFiles,
    _guard: ContainerGuard,
    /// The first manager's network namespace, if apart (dropped after the
    /// processes).
    netns: Option<Netns>,
}

/// Where the managers run.
struct Layout {
    /// The address each manager listens on.
    hosts: Vec<String>,
    /// The first manager in a network namespace of its own (the others on
    /// the host's end of its link).
    netns: Option<Netns>,
    /// More TOML for every manager's `[manager]`.
    extra: String,
}

impl Layout {
    fn loopback(n: usize) -> Self {
        Layout {
            hosts: vec!["127.0.0.1".to_string(); n],
            netns: None,
            extra: String::new(),
        }
    }

    /// The first manager alone in a namespace, the others on the host.
    fn first_apart(n: usize) -> Self {
        let netns = Netns::new();
        let mut hosts = vec![netns.ns_ip.clone()];
        hosts.extend(std::iter::repeat_n(netns.host_ip.clone(), n - 1));
        Layout {
            hosts,
            netns: Some(netns),
            extra: String::new(),
        }
    }
}

impl Managers {
    /// `n` managers on loopback (the first makes the cluster, the others
    /// join it) and `workers` workers that know every manager.
    async fn start(n: usize, workers: usize) -> Self {
        Self::start_in(Layout::loopback(n), workers).await
    }

    async fn start_in(layout: Layout, workers: usize) -> Self {
        ensure_image();
        let n = layout.hosts.len();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let urls: Vec<String> = (0..n)
            .map(|i| format!("https://{}:{}", layout.hosts[i], ports[i]))
            .collect();
        let config = |i: usize, join: &str| -> PathBuf {
            let path = dir.path().join(format!("m{i}.toml"));
            std::fs::write(
                &path,
                format!(
                    "role = \"manager\"\ndata_dir = \"{}\"\n[manager]\nlisten = \"{}:{}\"\n\
                     client_file = \"{}\"\ndown_after_ms = 3000\n{}\n{join}\n",
                    dir.path().join(format!("m{i}")).display(),
                    layout.hosts[i],
                    ports[i],
                    dir.path().join(format!("client-{i}.toml")).display(),
                    layout.extra,
                ),
            )
            .unwrap();
            path
        };
        let log = |i: usize| dir.path().join(format!("m{i}.log"));
        let prefix = layout.netns.as_ref().map(Netns::exec).unwrap_or_default();
        let mut managers = vec![NodeProc::start_under(prefix, config(0, ""), log(0), vec![])];
        let files = manager_files(&dir.path().join("m0"));
        let token = wait_for("the manager join token", SETUP, || async {
            std::fs::read_to_string(dir.path().join("m0/manager.token")).ok()
        })
        .await;
        for i in 1..n {
            let join = format!("join = \"{}\"\njoin_token = \"{}\"", urls[0], token.trim());
            managers.push(NodeProc::start(config(i, &join), log(i), vec![]));
        }
        let mut cluster = Managers {
            urls,
            managers,
            workers: Vec::new(),
            worker_names: Vec::new(),
            files,
            _guard: ContainerGuard(Vec::new()),
            dir,
            netns: layout.netns,
        };
        let voters = wait_or_logs(
            cluster.dir.path(),
            "every manager a voter",
            SETUP,
            || async {
                let view = cluster.view(0, true).await?;
                (view.members.iter().filter(|m| m.voter).count() == n).then_some(view)
            },
        )
        .await;
        println!("cluster: {} managers, leader {:?}", n, voters.leader);
        for _ in 0..workers {
            cluster.add_worker();
        }
        let want = cluster.worker_names.len();
        wait_or_logs(
            cluster.dir.path(),
            "every worker registered and ready",
            SETUP,
            || async {
                let nodes = cluster.any().nodes().await.ok()?;
                (nodes.iter().filter(|n| n.state.as_str() == "ready").count() == want).then_some(())
            },
        )
        .await;
        cluster
    }

    fn add_worker(&mut self) {
        let urls = self.urls.join(",");
        self.add_worker_knowing(&urls);
    }

    /// A worker whose config names only the managers `urls` lists.
    fn add_worker_knowing(&mut self, urls: &str) {
        let name = unique(&format!("w{}", self.worker_names.len()));
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "role = \"worker\"\ndata_dir = \"{}\"\n[worker]\nname = \"{name}\"\n\
                 listen = \"127.0.0.1:{}\"\nmanager = \"{}\"\njoin_token = \"{}\"\n\
                 heartbeat_ms = 500\n{}\n",
                self.dir.path().join(&name).display(),
                free_port(),
                urls,
                self.files.worker_token,
                own_network(&name, ""),
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        self.workers.push(NodeProc::start(path, log, vec![]));
        self.worker_names.push(name.clone());
        self._guard.0.push(name);
    }

    /// The admin's client of manager `i` alone.
    fn one(&self, i: usize) -> Client {
        self.files.client(&self.urls[i])
    }

    /// The admin's client of these managers.
    fn client_of(files: &ManagerFiles, urls: &[String]) -> Client {
        files.client(&urls.join(","))
    }

    /// The admin's client of every manager (the next tried when one is down).
    fn any(&self) -> Client {
        self.files.client(&self.urls.join(","))
    }

    async fn view(&self, i: usize, consistent: bool) -> Option<ClusterView> {
        self.one(i).cluster(consistent).await.ok()
    }

    /// The index of the manager that leads, as the live managers say (all
    /// of those that answer agree, and it is one of them).
    async fn leader(&mut self, within: Duration) -> usize {
        let urls = self.urls.clone();
        let live: Vec<usize> = (0..self.managers.len())
            .filter(|i| self.managers[*i].alive())
            .collect();
        let this = &*self;
        wait_or_logs(
            this.dir.path(),
            "a leader the live managers agree on",
            within,
            || {
                let (urls, live) = (urls.clone(), live.clone());
                async move {
                    let mut seen = BTreeSet::new();
                    for i in &live {
                        let view = this.view(*i, false).await?;
                        let leader = view.leader?;
                        let url = view.members.iter().find(|m| m.id == leader)?.url.clone();
                        seen.insert(urls.iter().position(|u| *u == url)?);
                    }
                    let only = *seen.iter().next()?;
                    (seen.len() == 1 && live.contains(&only)).then_some(only)
                }
            },
        )
        .await
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.managers.iter().enumerate() {
            out.push_str(&format!("--- manager {i}\n{}\n", tail(&m.log_text(), 60)));
        }
        for w in &self.workers {
            out.push_str(&format!(
                "--- {}\n{}\n",
                w.log.display(),
                tail(&w.log_text(), 30)
            ));
        }
        out
    }
}

/// As `wait_for`, with the nodes' logs in the panic.
async fn wait_or_logs<T, F, Fut>(
    dir: &std::path::Path,
    what: &str,
    timeout: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            let mut logs = String::new();
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "log"))
            {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let panic = text
                    .find("panicked at")
                    .map(|at| &text[at..(at + 600).min(text.len())]);
                logs.push_str(&format!(
                    "--- {}\n{}\n{}\n",
                    f.display(),
                    panic.unwrap_or(""),
                    tail(&text, 40)
                ));
            }
            panic!("timed out after {timeout:?} waiting for {what}\n{logs}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn spec(name: &str) -> Value {
    json!({"name": name, "image": "cube-demo/echo:latest", "memory_mb": 32})
}

/// What a bounded client loop saw: the tasks it was told were accepted
/// (201), and those it was told were stopped.
#[derive(Default)]
struct Acknowledged {
    submitted: Vec<String>,
    stopped: Vec<String>,
    refused: usize,
}

/// Submits and stops tasks through every manager, one request at a time
/// with a pause, until `stop` is set; keeps at most four of its tasks up.
async fn client_loop(client: Client, acked: Arc<Mutex<Acknowledged>>, stop: Arc<AtomicBool>) {
    let mut live: Vec<String> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        match client.submit(&spec(&format!("loop-{n}"))).await {
            Ok(task) => {
                let id = task.id.to_string();
                acked.lock().await.submitted.push(id.clone());
                live.push(id);
            }
            Err(e) => {
                let mut acked = acked.lock().await;
                acked.refused += 1;
                if acked.refused <= 5 {
                    println!("client loop: submission refused: {e}");
                }
            }
        }
        if live.len() > 4 {
            let id = live.remove(0);
            match client.stop(&id).await {
                Ok(_) => acked.lock().await.stopped.push(id),
                Err(e) => {
                    let mut acked = acked.lock().await;
                    acked.refused += 1;
                    if acked.refused <= 5 {
                        println!("client loop: stop refused: {e}");
                    }
                    live.insert(0, id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_knows_one_manager_learns_them_all_and_outlives_its_death() {
    let mut cluster = Managers::start(3, 0).await;
    let first = cluster.urls[0].clone();
    cluster.add_worker_knowing(&first);
    let name = cluster.worker_names[0].clone();
    let kept = cluster.dir.path().join(&name).join("managers");
    // The heartbeats' answers name every manager; the worker keeps them.
    let all: BTreeSet<String> = cluster.urls.iter().cloned().collect();
    wait_or_logs(
        cluster.dir.path(),
        "the worker keeping every manager's URL",
        SETUP,
        || async {
            let text = std::fs::read_to_string(&kept).ok()?;
            let learnt: BTreeSet<String> = text.lines().map(str::to_string).collect();
            (learnt == all).then_some(())
        },
    )
    .await;

    // The one manager its config names dies: its reports reach another.
    cluster.managers[0].kill9();
    cluster.leader(Duration::from_secs(20)).await;
    runs_on(&cluster, &name, "after-its-manager-died").await;

    // Restarted, with its config still naming only the dead manager, it
    // registers with those it learnt.
    cluster.workers[0].kill9();
    cluster.workers[0].restart();
    runs_on(&cluster, &name, "after-its-restart").await;
    let logs = cluster.workers[0].log_text();
    assert!(logs.contains("the managers are"), "{}", tail(&logs, 40));
}

/// A task submitted through any manager, Running on worker `name`.
async fn runs_on(cluster: &Managers, name: &str, label: &str) {
    let client = cluster.any();
    let dir = cluster.dir.path();
    let id = wait_or_logs(dir, "a write accepted", SETUP, || async {
        client
            .submit(&spec(label))
            .await
            .ok()
            .map(|t| t.id.to_string())
    })
    .await;
    wait_or_logs(dir, "the task Running on the worker", SETUP, || async {
        let t = client.task(&id).await.ok()?;
        (t.state.to_string() == "Running" && t.node.as_deref() == Some(name)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_lose_their_leader_ten_times_and_lose_nothing() {
    let mut cluster = Managers::start(3, 2).await;

    // Writes through any manager: a follower passes them to the leader.
    let mut first = BTreeMap::new();
    for i in 0..3 {
        let task = cluster
            .one(i)
            .submit(&spec(&format!("first-{i}")))
            .await
            .unwrap_or_else(|e| panic!("submit through manager {i}: {e}\n{}", cluster.logs()));
        first.insert(task.id.to_string(), ());
    }
    let placed: BTreeMap<String, (String, u32)> = wait_or_logs(
        cluster.dir.path(),
        "the first tasks running",
        SETUP,
        || async {
            let mut out = BTreeMap::new();
            for id in first.keys() {
                let t = cluster.any().task(id).await.ok()?;
                if t.state.to_string() != "Running" {
                    return None;
                }
                out.insert(id.clone(), (t.node.clone()?, t.attempt));
            }
            Some(out)
        },
    )
    .await;
    // Every manager holds them (reads are its own).
    for i in 0..3 {
        wait_or_logs(
            cluster.dir.path(),
            "every manager holding the first tasks",
            SETUP,
            || async {
                let tasks = cluster.one(i).tasks().await.ok()?;
                let ids: BTreeSet<String> = tasks.iter().map(|t| t.id.to_string()).collect();
                first.keys().all(|id| ids.contains(id)).then_some(())
            },
        )
        .await;
    }

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let looping = tokio::spawn(client_loop(cluster.any(), acked.clone(), stop.clone()));

    let kills = std::env::var("CUBE_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut to_leader = Vec::new();
    let mut to_write = Vec::new();
    for round in 0..kills {
        let old = cluster.leader(SETUP).await;
        cluster.managers[old].kill9();
        let killed = Instant::now();
        let new = cluster.leader(Duration::from_secs(20)).await;
        to_leader.push(killed.elapsed());
        assert_ne!(new, old);
        let writer = cluster.any();
        wait_or_logs(
            cluster.dir.path(),
            "a write accepted after the leader's death",
            Duration::from_secs(20),
            || async {
                writer
                    .submit(&spec(&format!("after-kill-{round}")))
                    .await
                    .ok()
            },
        )
        .await;
        to_write.push(killed.elapsed());
        println!(
            "round {round}: manager {old} killed; manager {new} leads after {:?}, a write accepted after {:?}",
            to_leader[round], to_write[round]
        );
        cluster.managers[old].restart();
        // Back among the voters and caught up before the next kill.
        wait_or_logs(
            cluster.dir.path(),
            "the restarted manager back and caught up",
            SETUP,
            || async {
                let mine = cluster.view(old, false).await?;
                let leader = cluster.view(new, false).await?;
                (mine.leader.is_some() && mine.applied_index >= leader.applied_index).then_some(())
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    looping.await.expect("the client loop");

    let sorted = |v: &mut Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (lead_median, lead_max) = sorted(&mut to_leader);
    let (write_median, write_max) = sorted(&mut to_write);
    println!(
        "{kills} leader kills: new leader median {lead_median:?} max {lead_max:?}; \
         writes accepted median {write_median:?} max {write_max:?}"
    );

    let acked = acked.lock().await;
    println!(
        "client loop: {} submissions and {} stops acknowledged, {} refused",
        acked.submitted.len(),
        acked.stopped.len(),
        acked.refused
    );
    assert!(!acked.submitted.is_empty(), "the loop got nothing through");
    // Every acknowledged task is on every manager; every acknowledged stop
    // holds there.
    let every: Vec<String> = acked
        .submitted
        .iter()
        .chain(placed.keys())
        .cloned()
        .collect();
    for i in 0..3 {
        let client = cluster.one(i);
        wait_or_logs(
            cluster.dir.path(),
            "every acknowledged task on every manager",
            SETUP,
            || async {
                let tasks = client.tasks().await.ok()?;
                let by_id: BTreeMap<String, _> =
                    tasks.into_iter().map(|t| (t.id.to_string(), t)).collect();
                let missing = every.iter().find(|id| !by_id.contains_key(*id));
                let not_stopped = acked.stopped.iter().find(|id| {
                    by_id
                        .get(*id)
                        .is_none_or(|t| t.desired_state != DesiredState::Stopped)
                });
                (missing.is_none() && not_stopped.is_none()).then_some(())
            },
        )
        .await;
    }
    // No task moved, and none has two containers.
    for (id, (node, attempt)) in &placed {
        let t = cluster.any().task(id).await.expect("the task");
        assert_eq!(
            (t.node.as_deref(), t.attempt, t.state.to_string().as_str()),
            (Some(node.as_str()), *attempt, "Running"),
            "task {id} was disturbed by the failovers\n{}",
            cluster.logs()
        );
    }
    for id in &every {
        let containers = containers_of_task(id);
        assert!(
            containers.len() <= 1,
            "task {id} has containers {containers:?}"
        );
    }
    // No node was marked down by any manager.
    for (i, m) in cluster.managers.iter().enumerate() {
        assert!(
            !m.log_text().contains("is down (no heartbeat"),
            "manager {i} marked a worker down\n{}",
            cluster.logs()
        );
    }
    let nodes = cluster.any().nodes().await.expect("nodes");
    assert!(
        nodes.iter().all(|n| n.state.as_str() == "ready"),
        "{nodes:?}"
    );
}

/// Submits `n` tasks no worker takes (there is none), one at a time
/// through any manager: `n` entries in the log; their ids.
async fn pending_tasks(cluster: &Managers, prefix: &str, n: usize) -> Vec<String> {
    let client = cluster.any();
    let mut ids = Vec::new();
    for i in 0..n {
        let task = client
            .submit(&spec(&format!("{prefix}-{i}")))
            .await
            .unwrap_or_else(|e| panic!("submission {i}: {e}\n{}", cluster.logs()));
        ids.push(task.id.to_string());
    }
    ids
}

/// Waits until manager `i` holds every task of `ids` (its own reads).
async fn holds(cluster: &Managers, i: usize, ids: &[String]) {
    let client = cluster.one(i);
    wait_or_logs(
        cluster.dir.path(),
        &format!("manager {i} holding every acknowledged task"),
        SETUP,
        || async {
            let tasks = client.tasks().await.ok()?;
            let have: BTreeSet<String> = tasks.iter().map(|t| t.id.to_string()).collect();
            ids.iter().all(|id| have.contains(id)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_whose_data_dir_is_lost_joins_again_and_catches_up_from_a_snapshot() {
    let mut layout = Layout::loopback(3);
    layout.extra = "snapshot_every = 10".into();
    let mut cluster = Managers::start_in(layout, 0).await;
    let before = cluster.view(0, true).await.expect("the cluster");
    let lost = 2;
    let old_id = before
        .members
        .iter()
        .find(|m| m.url == cluster.urls[lost])
        .expect("the manager to lose")
        .id;
    // More entries than a snapshot leaves in the log.
    let mut ids = pending_tasks(&cluster, "before", 30).await;
    // Its machine's client file names every manager, itself first ...
    let client_file = cluster.dir.path().join(format!("client-{lost}.toml"));
    let others: Vec<&String> = (0..3)
        .filter(|&i| i != lost)
        .map(|i| &cluster.urls[i])
        .collect();
    let listed = wait_or_logs(
        cluster.dir.path(),
        "the client file to name every manager",
        SETUP,
        || async {
            let file = cube::config::ClientFile::load(&client_file).ok()?;
            let urls: Vec<String> = file.manager.split(',').map(str::to_string).collect();
            (urls.len() == 3
                && urls[0] == cluster.urls[lost]
                && others.iter().all(|u| urls.contains(u)))
            .then_some(file.manager)
        },
    )
    .await;
    println!("manager {lost}'s client file names {listed}");
    cluster.managers[lost].kill9();
    // ... so the CLI there still reaches the cluster with it down.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cube"))
        .arg("--client-file")
        .arg(&client_file)
        .args(["--json", "status"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the CLI with a dead manager's client file: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks: Vec<Value> = serde_json::from_slice(&out.stdout).expect("tasks as JSON");
    assert!(tasks.len() >= ids.len(), "{} tasks listed", tasks.len());
    std::fs::remove_dir_all(cluster.dir.path().join(format!("m{lost}"))).expect("data dir");
    ids.extend(pending_tasks(&cluster, "while-gone", 15).await);
    cluster.managers[lost].restart();
    // It joins as a new member in its old self's place, and holds
    // everything acknowledged, got from a snapshot.
    let after = wait_or_logs(
        cluster.dir.path(),
        "the manager back as a voter in its old self's place",
        SETUP,
        || async {
            let view = cluster.view(0, true).await?;
            let at_url: Vec<_> = view
                .members
                .iter()
                .filter(|m| m.url == cluster.urls[lost])
                .collect();
            (view.members.len() == 3
                && at_url.len() == 1
                && at_url[0].voter
                && at_url[0].id != old_id)
                .then_some(view)
        },
    )
    .await;
    println!("manager {old_id} came back as {:?}", after.members);
    holds(&cluster, lost, &ids).await;
    let log = cluster.managers[lost].log_text();
    assert!(
        log.contains("a snapshot up to"),
        "it did not catch up from a snapshot\n{}",
        cluster.logs()
    );
    // And it takes part: a write through it reaches every manager.
    let task = cluster
        .one(lost)
        .submit(&spec("after"))
        .await
        .expect("a write through the manager back");
    ids.push(task.id.to_string());
    for i in 0..3 {
        holds(&cluster, i, &ids).await;
    }

    // With one manager dead, removing a live one would leave no reachable
    // majority: refused unless forced. Removing the dead one is not.
    let leader = cluster.leader(SETUP).await;
    let (dead, live) = match (0..3).filter(|i| *i != leader).collect::<Vec<_>>()[..] {
        [a, b] => (a, b),
        _ => unreachable!("three managers"),
    };
    cluster.managers[dead].kill9();
    let id_at = |view: &ClusterView, i: usize| {
        view.members
            .iter()
            .find(|m| m.url == cluster.urls[i])
            .map(|m| m.id)
            .expect("a member")
    };
    // Once the leader has not heard from the dead one for a while.
    let view = wait_or_logs(
        cluster.dir.path(),
        "the dead manager silent",
        SETUP,
        || async {
            let view = cluster.view(leader, true).await?;
            let dead_one = view.members.iter().find(|m| m.url == cluster.urls[dead])?;
            dead_one
                .last_contact_ms
                .is_none_or(|ms| ms > 2_500)
                .then_some(view)
        },
    )
    .await;
    println!("before the removal: {view:?}");
    let admin = cluster.any();
    let refused = admin
        .remove_manager(id_at(&view, live), false)
        .await
        .expect_err("a live manager removed with no reachable majority left");
    assert!(refused.to_string().contains("force=true"), "{refused}");
    println!("refused: {refused}");
    let after = admin
        .remove_manager(id_at(&view, dead), false)
        .await
        .expect("the dead manager removed");
    assert_eq!(after.members.len(), 2, "{after:?}");
    assert!(after.members.iter().all(|m| m.url != cluster.urls[dead]));
    let task = admin
        .submit(&spec("two-left"))
        .await
        .expect("the two left take writes");
    ids.push(task.id.to_string());
    holds(&cluster, live, &ids).await;
}

/// Join tokens are the cluster's, not each manager's: one rotated
/// through a manager that does not lead holds on every manager (shown,
/// checked, in each data dir), the old one is refused everywhere, and a
/// change of leader keeps the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_rotated_through_any_manager_holds_on_every_manager() {
    let mut cluster = Managers::start(3, 0).await;
    let leader = cluster.leader(SETUP).await;
    let follower = (leader + 1) % 3;
    let dir = cluster.dir.path().to_path_buf();
    let file = |i: usize, role: &str| {
        std::fs::read_to_string(dir.join(format!("m{i}/{role}.token")))
            .map(|t| t.trim().to_string())
            .ok()
    };
    let old_manager = file(0, "manager").expect("the first manager's token");
    let old_worker = cluster.files.worker_token.clone();
    let mut rotated = BTreeMap::new();
    for role in ["worker", "manager"] {
        let new = cluster
            .one(follower)
            .join_token(role, true)
            .await
            .unwrap_or_else(|e| panic!("{role} token rotated through a follower: {e}"));
        assert!(new.starts_with("CUBE1-"), "{new}");
        rotated.insert(role, new);
    }
    assert_ne!(rotated["worker"], old_worker);
    assert_ne!(rotated["manager"], old_manager);
    // Every manager shows it and keeps it in its data dir.
    for i in 0..3 {
        for (role, new) in &rotated {
            let client = cluster.one(i);
            wait_or_logs(
                &dir,
                &format!("manager {i} holding the rotated {role} token"),
                SETUP,
                || async {
                    let shown = client.join_token(role, false).await.ok()?;
                    (shown == *new && file(i, role).as_deref() == Some(new.as_str())).then_some(())
                },
            )
            .await;
        }
    }
    // Each manager checks a joining manager's secret itself: the old one
    // is refused by all three, the new one taken.
    let secret = |token: &str| token.rsplit('-').next().unwrap_or_default().to_string();
    for i in 0..3 {
        let ask = |token: &str| {
            let request = cube::wire::ManagerJoinRequest {
                secret: secret(token),
            };
            let client = cluster.one(i);
            async move { client.manager_join(&request).await }
        };
        let e = ask(&old_manager).await.expect_err("the old manager token");
        assert!(e.to_string().contains("401"), "manager {i}: {e}");
        ask(&rotated["manager"])
            .await
            .unwrap_or_else(|e| panic!("manager {i} refused the new manager token: {e}"));
    }
    // The leader dies: the new one still holds the rotated tokens. A
    // worker with the old token is refused; one with the new joins.
    cluster.managers[leader].kill9();
    let next = cluster.leader(Duration::from_secs(20)).await;
    assert_ne!(next, leader);
    let shown = cluster
        .one(next)
        .join_token("worker", false)
        .await
        .expect("shown by the new leader");
    assert_eq!(shown, rotated["worker"]);
    cluster.files.worker_token = old_worker;
    cluster.add_worker();
    let refused = cluster.workers.len() - 1;
    let status = cluster.workers[refused]
        .wait_exit(SETUP)
        .await
        .expect("the worker with the old token stops");
    assert!(!status.success());
    let log = cluster.workers[refused].log_text();
    assert!(log.contains("401"), "{}", tail(&log, 20));
    cluster.files.worker_token = rotated["worker"].clone();
    cluster.add_worker();
    let name = cluster.worker_names.last().expect("a worker").clone();
    let client = cluster.any();
    wait_or_logs(
        &dir,
        "the worker with the new token ready",
        SETUP,
        || async {
            let nodes = client.nodes().await.ok()?;
            nodes
                .iter()
                .any(|n| n.name == name && n.state.as_str() == "ready")
                .then_some(())
        },
    )
    .await;
    // The old leader, back, holds them too.
    cluster.managers[leader].restart();
    let back = cluster.one(leader);
    wait_or_logs(
        &dir,
        "the old leader back with the rotated token",
        SETUP,
        || async {
            let shown = back.join_token("manager", false).await.ok()?;
            (shown == rotated["manager"]).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_past_the_election_timeout_steps_down_when_it_resumes() {
    let mut cluster = Managers::start(3, 0).await;
    let mut ids = pending_tasks(&cluster, "before", 3).await;
    let old = cluster.leader(SETUP).await;
    cluster.managers[old].pause();
    // A client that reaches only the stopped leader: its request waits.
    let stranded = cluster.one(old);
    let asked = tokio::spawn(async move { stranded.submit(&spec("to-the-stopped")).await });
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = wait_or_logs(
        cluster.dir.path(),
        "a new leader among the others",
        SETUP,
        || async {
            let view = cluster.view(others[0], false).await?;
            let leader = view.members.iter().find(|m| Some(m.id) == view.leader)?;
            let index = cluster.urls.iter().position(|u| *u == leader.url)?;
            (index != old).then_some(index)
        },
    )
    .await;
    ids.extend(pending_tasks(&cluster, "while-stopped", 3).await);
    cluster.managers[old].resume();
    // It steps down: it names the new leader.
    wait_or_logs(
        cluster.dir.path(),
        "the resumed manager following the new leader",
        SETUP,
        || async {
            let view = cluster.view(old, false).await?;
            let leader = view.members.iter().find(|m| Some(m.id) == view.leader)?;
            (leader.url == cluster.urls[new]).then_some(())
        },
    )
    .await;
    // What it answered: an error, or (passed on to the new leader once
    // it knew it) a task every manager holds. Never a write only it had.
    match asked.await.expect("the stranded request") {
        Ok(task) => {
            println!("the stranded request was passed to the new leader");
            ids.push(task.id.to_string());
        }
        Err(e) => println!("the stranded request was refused: {e}"),
    }
    for i in 0..3 {
        holds(&cluster, i, &ids).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_by_a_partition_acknowledges_nothing_and_the_majority_goes_on() {
    let mut cluster = Managers::start_in(Layout::first_apart(3), 0).await;
    let apart = 0;
    // The first manager made the cluster; it leads until a change.
    let leader = cluster.leader(SETUP).await;
    assert_eq!(leader, apart, "the cluster's maker does not lead");
    let mut ids = pending_tasks(&cluster, "before", 3).await;
    cluster.netns.as_ref().expect("a namespace").cut();
    let cut = Instant::now();
    // The minority side answers writes with an error, never a 201: a
    // client on its side of the cut (the CLI, in its namespace) asks it.
    let spec_file = cluster.dir.path().join("minority.json");
    std::fs::write(&spec_file, spec("minority").to_string()).unwrap();
    let prefix = cluster.netns.as_ref().expect("a namespace").exec();
    for i in 0..3 {
        let out = std::process::Command::new(&prefix[0])
            .args(&prefix[1..])
            .arg(env!("CARGO_BIN_EXE_cube"))
            .args(["--manager", &cluster.urls[apart], "--ca"])
            .arg(cluster.dir.path().join("m0/pki/ca.crt"))
            .args(["--token", &cluster.files.admin_token, "run"])
            .arg(&spec_file)
            .output()
            .expect("the CLI in the namespace");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "the cut-off leader acknowledged a write without a majority: {said}\n{}",
            cluster.logs()
        );
        assert!(
            said.contains("not confirmed by a majority") || said.contains("does not lead"),
            "not refused by the manager: {said}"
        );
        println!(
            "minority write {i} refused after {:?}: {}",
            cut.elapsed(),
            said.trim()
        );
    }
    // A consistent read there fails too (it may not know it no longer
    // leads): `cube manager ls` asks for the leader's view.
    let out = std::process::Command::new(&prefix[0])
        .args(&prefix[1..])
        .arg(env!("CARGO_BIN_EXE_cube"))
        .args(["--manager", &cluster.urls[apart], "--ca"])
        .arg(cluster.dir.path().join("m0/pki/ca.crt"))
        .args(["--token", &cluster.files.admin_token, "manager", "ls"])
        .output()
        .expect("the CLI in the namespace");
    assert!(
        !out.status.success(),
        "a consistent read was served by the cut-off manager: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The majority elects a leader and takes writes.
    let majority = Managers::client_of(&cluster.files, &cluster.urls[1..]);
    let first = wait_or_logs(
        cluster.dir.path(),
        "a write accepted by the majority",
        SETUP,
        || async { majority.submit(&spec("majority")).await.ok() },
    )
    .await;
    println!(
        "the majority took a write {:?} after the cut",
        cut.elapsed()
    );
    ids.push(first.id.to_string());
    for i in 0..3 {
        let task = majority
            .submit(&spec(&format!("majority-{i}")))
            .await
            .expect("a write to the majority");
        ids.push(task.id.to_string());
    }
    cluster.netns.as_ref().expect("a namespace").heal();
    // Every manager converges: the same tasks, the acknowledged ones
    // among them, and the cut-off one follows the majority's leader.
    for i in 0..3 {
        holds(&cluster, i, &ids).await;
    }
    let counts = wait_or_logs(
        cluster.dir.path(),
        "every manager holding the same tasks",
        SETUP,
        || async {
            let mut sets = Vec::new();
            for i in 0..3 {
                let tasks = cluster.one(i).tasks().await.ok()?;
                sets.push(
                    tasks
                        .iter()
                        .map(|t| t.id.to_string())
                        .collect::<BTreeSet<_>>(),
                );
            }
            (sets[0] == sets[1] && sets[1] == sets[2]).then(|| sets[0].len())
        },
    )
    .await;
    assert_eq!(
        counts,
        ids.len(),
        "a write refused on the minority side took effect"
    );
    let view = cluster.view(apart, false).await.expect("its view");
    assert_ne!(
        view.members
            .iter()
            .find(|m| Some(m.id) == view.leader)
            .map(|m| m.url.clone()),
        Some(cluster.urls[apart].clone()),
        "the cut-off manager still leads"
    );
}
