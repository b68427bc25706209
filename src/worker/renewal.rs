//! The Renewal actor keeps a worker's certificate alive: at a random point
//! between 50% and 80% of its life it makes a new key and asks the manager
//! for a certificate (`POST /workers/renew`, with the current certificate),
//! saves both and swaps them in ([`NodeTls::renew`]): the listener and every
//! client present the new one from their next handshake on. Nothing is
//! restarted; connections open stay as they are. A failed try is tried
//! again soon, while the old certificate lasts.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use time::OffsetDateTime;

use crate::client::Client;
use crate::security::files::save_node_keys;
use crate::security::identity::Identity;
use crate::security::pki::{new_request, renewal_delay, renewal_fraction, validity_of_der};
use crate::security::tls::NodeTls;
use crate::wire::RenewRequest;

/// The wait before a failed renewal is tried again (at most).
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct Renewal {
    tls: NodeTls,
    data_dir: PathBuf,
    name: String,
    hosts: Vec<String>,
    /// The manager, called with this worker's certificate.
    manager: Client,
}

impl Renewal {
    pub fn new(
        tls: NodeTls,
        data_dir: PathBuf,
        name: String,
        hosts: Vec<String>,
        manager: Client,
    ) -> Self {
        Renewal {
            tls,
            data_dir,
            name,
            hosts,
            manager,
        }
    }

    /// The current certificate's validity.
    fn validity(&self) -> Option<(OffsetDateTime, OffsetDateTime)> {
        validity_of_der(&self.tls.certificate()).ok()
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let Some((from, until)) = self.validity() else {
            log::error!("renewal: cannot read this worker's certificate; not renewing it");
            return;
        };
        let delay = renewal_delay(from, until, OffsetDateTime::now_utc(), renewal_fraction());
        log::info!(
            "renewal: worker {}'s certificate (valid until {until}) is renewed in {:.1} s",
            self.name,
            delay.as_secs_f64()
        );
        ctx.run_later(delay, |act, ctx| act.renew(ctx));
    }

    /// A failed try: again in a tenth of what is left, at most 30 s.
    fn retry(&mut self, ctx: &mut Context<Self>) {
        let left = self
            .validity()
            .and_then(|(_, until)| Duration::try_from(until - OffsetDateTime::now_utc()).ok())
            .unwrap_or(Duration::ZERO);
        let wait = (left / 10).clamp(Duration::from_millis(100), RETRY_MAX);
        ctx.run_later(wait, |act, ctx| act.renew(ctx));
    }

    fn renew(&mut self, ctx: &mut Context<Self>) {
        let (key, csr) = match new_request(&Identity::worker(&self.name)) {
            Ok(made) => made,
            Err(e) => {
                log::error!("renewal: cannot make a key: {e}");
                return self.retry(ctx);
            }
        };
        let key_pem = key.serialize_pem();
        let request = RenewRequest {
            hosts: self.hosts.clone(),
            csr,
        };
        let manager = self.manager.clone();
        let ca_pem = self.tls.trust().pem().to_string();
        let data_dir = self.data_dir.clone();
        let work = async move {
            let reply = manager.renew(&request).await.map_err(|e| e.to_string())?;
            // Saved before it is used: a restart finds the newest.
            let (cert, key) = (reply.certificate, key_pem);
            let saved = actix_rt::task::spawn_blocking(move || {
                save_node_keys(&data_dir, &ca_pem, &cert, &key).map(|_| (cert, key))
            })
            .await
            .map_err(|e| e.to_string())?;
            saved.map_err(|e| e.to_string())
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| match result {
            Ok((cert, key)) => match act.tls.renew(&cert, &key) {
                Ok(()) => {
                    log::info!("renewal: worker {} presents its new certificate", act.name);
                    act.schedule(ctx);
                }
                Err(e) => {
                    log::error!("renewal: the new certificate cannot be used: {e}");
                    act.retry(ctx);
                }
            },
            Err(e) => {
                log::warn!(
                    "renewal: worker {} could not renew its certificate: {e}",
                    act.name
                );
                act.retry(ctx);
            }
        }));
    }
}

impl Actor for Renewal {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.schedule(ctx);
    }
}
