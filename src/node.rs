//! Starts what a node config asks for: the Store, then the manager's actors
//! and HTTP server, and/or the worker's actors and HTTP server.

use actix::prelude::*;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpService, KeepAlive, Protocol};
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::{AppConfig, Server, ServiceFactory as _, fn_factory, fn_service};
use actix_web::{App, web};
use anyhow::Context as _;

use crate::config::{NodeConfig, Role};
use crate::core::ClusterState;
use crate::core::nodes::NodeRecord;
use crate::manager::Manager;
use crate::runtime::docker::DockerEngine;
use crate::store::{LoadAll, Store};
use crate::task::TaskRecord;
use crate::worker::Worker;
use crate::worker::record::WorkerTaskRecord;
use crate::worker::stats::{SAMPLE_EVERY, Stats};

/// Runs a node until it is stopped (Ctrl-C / SIGTERM) or fails.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let map_size = config.store_map_mb.saturating_mul(1 << 20);
    let store = Store::start_with_map_size(&config.data_dir, map_size)
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
        let state = ClusterState::new(
            tasks,
            nodes,
            mc.scheduler,
            mc.down_after(),
            (&mc.retain_ended).into(),
            std::time::Instant::now(),
        );
        let manager = Manager::new(store.clone(), state).start();
        let data = web::Data::new(manager);
        let listener = std::net::TcpListener::bind(mc.listen)
            .with_context(|| format!("manager: cannot listen on {}", mc.listen))?;
        let server = serve(listener, move |cfg| {
            cfg.app_data(data.clone());
            crate::manager::routes::configure(cfg);
        })
        .with_context(|| format!("manager: cannot serve on {}", mc.listen))?;
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
        let server = serve(listener, move |cfg| {
            cfg.app_data(data.clone());
            crate::worker::routes::configure(cfg);
        })
        .with_context(|| format!("worker: cannot serve on {worker_addr}"))?;
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

/// Serves one App (its routes and data set by `configure`) on `listener`
/// with one worker thread, as actix-web's `HttpServer` would (same
/// timeouts, signals and graceful shutdown), except that each connection is
/// wrapped so that the errors actix-http answers before any App runs (request
/// heads too large, malformed or too slow) are JSON too; the App's own errors
/// are made JSON by `api_error`.
fn serve<F>(listener: std::net::TcpListener, configure: F) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let addr = listener.local_addr()?;
    let builder = actix_server::Server::build().workers(1);
    let shutdown = builder.graceful_shutdown_signal();
    let builder = builder.listen(format!("cube-http-{addr}"), listener, move || {
        let configure = configure.clone();
        let app = fn_factory(move || {
            App::new()
                .wrap(crate::api_error::json_errors())
                .configure(configure.clone())
                .into_factory()
                .new_service(AppConfig::default())
        });
        let shutdown = shutdown.clone();
        let http = HttpService::build()
            .keep_alive(KeepAlive::default())
            .client_request_timeout(Duration::from_secs(5))
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .finish(app);
        fn_service(|io: actix_rt::net::TcpStream| async move {
            let peer = io.peer_addr().ok();
            let io = crate::api_error::connection::JsonErrorHeads::new(io);
            Ok::<_, DispatchError>((io, Protocol::Http1, peer))
        })
        .and_then(http)
    })?;
    Ok(builder.run())
}
