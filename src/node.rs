//! Starts what a node config asks for: the Store, then the manager's actors
//! and HTTP server, and/or the worker's actors and HTTP server.

use actix::prelude::*;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::config::{NodeConfig, Role};
use crate::manager::Manager;
use crate::manager::nodes::NodeRecord;
use crate::runtime::docker::DockerEngine;
use crate::scheduler::Scheduler;
use crate::store::{LoadAll, Store};
use crate::task::TaskRecord;
use crate::worker::Worker;
use crate::worker::record::WorkerTaskRecord;
use crate::worker::stats::{SAMPLE_EVERY, Stats};

/// Runs a node until it is stopped (Ctrl-C / SIGTERM) or fails.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let store = Store::start(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let mut servers = Vec::new();
    // An actor that cannot go on says why here; the process then ends.
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::unbounded_channel::<String>();

    if let Some(mc) = &config.manager {
        let tasks = store
            .send(LoadAll::<TaskRecord>::new())
            .await?
            .context("cannot load tasks")?;
        let nodes = store
            .send(LoadAll::<NodeRecord>::new())
            .await?
            .context("cannot load nodes")?;
        let scheduler = Scheduler::new(mc.scheduler).start();
        let manager = Manager::new(store.clone(), scheduler, tasks, nodes, mc.down_after()).start();
        let data = web::Data::new(manager);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(crate::manager::routes::configure)
        })
        .workers(1)
        .bind(mc.listen)
        .with_context(|| format!("manager: cannot listen on {}", mc.listen))?
        .run();
        log::info!(
            "manager: listening on http://{} (scheduler {}, workers down after {} ms)",
            mc.listen,
            mc.scheduler,
            mc.down_after_ms
        );
        servers.push(server);
    }

    if let Some(wc) = &config.worker {
        let manager_url = config
            .manager_url_for_worker()
            .context("the worker needs a manager URL")?;
        let records = store
            .send(LoadAll::<WorkerTaskRecord>::new())
            .await?
            .context("cannot load the worker's tasks")?;
        let stats = Stats::start(&config.data_dir, SAMPLE_EVERY);
        // Bind before the worker starts, so it registers a reachable address.
        let worker_addr = wc.listen;
        let listener = std::net::TcpListener::bind(worker_addr)
            .with_context(|| format!("worker: cannot listen on {worker_addr}"))?;
        let worker = Worker::new(
            wc,
            &manager_url,
            store.clone(),
            stats,
            records,
            fatal_tx.clone(),
            std::sync::Arc::new(DockerEngine::local()),
        )
        .start();
        let data = web::Data::new(worker);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(crate::worker::routes::configure)
        })
        .workers(1)
        .listen(listener)?
        .run();
        log::info!(
            "worker {}: listening on http://{worker_addr}, manager {manager_url}",
            wc.name
        );
        servers.push(server);
    }

    if config.role == Role::Dev {
        log::info!("dev node: manager and worker in one process");
    }
    let fatal = async move { fatal_rx.recv().await };
    tokio::select! {
        served = futures_util::future::try_join_all(servers) => {
            served?;
            Ok(())
        }
        Some(why) = fatal => Err(anyhow::anyhow!(why)),
    }
}
