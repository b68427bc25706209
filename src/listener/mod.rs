//! Every HTTP listener of a node: TLS (rustls) on one worker thread, with
//! the limits that keep one client from hurting the others: a share of
//! connections per source address ([`per_peer`]), a bound on all
//! connections below the process's file descriptors, a deadline for the
//! TLS handshake, the request head and the body.

pub mod divert;
pub mod per_peer;

use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpService, KeepAlive, Protocol};
use actix_rt::net::TcpStream;
use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
use actix_web::dev::{AppConfig, Server, ServiceFactory as _, fn_factory, fn_service};
use actix_web::{App, web};

use crate::api_error::connection::JsonErrorHeads;
use crate::security::identity::{Generation, Identity};
use per_peer::{Counted, PeerCounts};

/// A client that has not finished its TLS handshake by then is cut off.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head not complete by then is answered 408.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections one listener holds, whatever the file descriptors.
const MAX_CONNECTIONS: usize = 4096;
/// TLS handshakes in progress at once (the whole process): above one
/// peer's share, so one peer cannot hold them all.
const MAX_HANDSHAKES: usize = 4 * per_peer::MAX_PER_PEER;
/// File descriptors kept for everything else (LMDB, the engine, logs,
/// calls out).
const SPARE_FDS: u64 = 256;

type Conn = JsonErrorHeads<TlsStream<Counted<TcpStream>>>;

/// The connections a listener may hold: below `MAX_CONNECTIONS`, and half
/// of the file descriptors this process may open beyond the spare ones
/// (a dev node has two listeners).
pub fn connection_limit() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let usable = soft.saturating_sub(SPARE_FDS) / 2;
    (usable.max(64) as usize).min(MAX_CONNECTIONS)
}

/// Serves one App (its routes and data set by `configure`) on `listener`
/// over TLS with one worker thread, as actix-web's `HttpServer` would (same
/// timeouts, signals and graceful shutdown), except that each connection is
/// wrapped so that the errors actix-http answers before any App runs (request
/// heads too large, malformed or too slow) are JSON too; the App's own errors
/// are made JSON by `api_error`. The identity a verified client certificate
/// names goes into the connection's data (see `security::peer`).
pub fn serve<F>(
    listener: std::net::TcpListener,
    tls: rustls::ServerConfig,
    configure: F,
) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let addr = listener.local_addr()?;
    let mut acceptor = Acceptor::new(tls);
    acceptor.set_handshake_timeout(TLS_HANDSHAKE_TIMEOUT);
    actix_tls::accept::max_concurrent_tls_connect(MAX_HANDSHAKES);
    let limit = connection_limit();
    log::debug!(
        "listener {addr}: at most {limit} connections, {} per peer",
        per_peer::MAX_PER_PEER
    );
    let builder = actix_server::Server::build()
        .workers(1)
        .max_concurrent_connections(limit);
    let shutdown = builder.graceful_shutdown_signal();
    let builder = builder.listen(format!("cube-https-{addr}"), listener, move || {
        let configure = configure.clone();
        let app = fn_factory(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(divert::divert))
                .wrap(actix_web::middleware::from_fn(
                    crate::api_error::deadline::body_deadline,
                ))
                .wrap(crate::api_error::json_errors())
                .configure(configure.clone())
                .into_factory()
                .new_service(AppConfig::default())
        });
        let shutdown = shutdown.clone();
        let http = HttpService::build()
            .keep_alive(KeepAlive::default())
            .client_request_timeout(HEAD_TIMEOUT)
            .client_disconnect_timeout(Duration::from_secs(1))
            .local_addr(addr)
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .on_connect_ext(|io: &Conn, data| {
                let (_, session) = io.get_ref().get_ref();
                if let Some(cert) = session.peer_certificates().and_then(|c| c.first())
                    && let Ok((identity, generation)) = Identity::of_cert_with_generation(cert)
                {
                    data.insert(identity);
                    data.insert(Generation(generation));
                }
            })
            .finish(app);
        let counts = PeerCounts::default();
        fn_service(move |io: TcpStream| {
            // Over its share: closed at once, before any TLS work.
            let place = io.peer_addr().ok().and_then(|peer| counts.admit(peer.ip()));
            async move {
                match place {
                    Some(place) => Ok(Counted::new(io, place)),
                    None => Err(DispatchError::Io(std::io::Error::other(
                        "too many connections from one address",
                    ))),
                }
            }
        })
        .and_then(
            acceptor
                .clone()
                .map_err(|e| DispatchError::Io(std::io::Error::other(e.to_string()))),
        )
        .and_then(fn_service(|io: TlsStream<Counted<TcpStream>>| async move {
            let peer = io.get_ref().0.get_ref().peer_addr().ok();
            let io = JsonErrorHeads::new(io);
            Ok::<_, DispatchError>((io, Protocol::Http1, peer))
        }))
        .and_then(http)
    })?;
    Ok(builder.run())
}
