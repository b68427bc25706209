//! The Renewal actor keeps a node's certificate alive: at a random point
//! between 50% and 80% of its life it makes a new key and has a
//! certificate issued for it (a worker asks the manager, `POST
//! /workers/renew` with its current certificate; the manager signs its own
//! with the CA), saves both and swaps them in ([`NodeTls::renew`]): the
//! listener and every client present the new one from their next handshake
//! on. Nothing is restarted; connections open stay as they are. A failed
//! try is tried again soon, while the old certificate lasts.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use time::OffsetDateTime;

use futures_util::future::LocalBoxFuture;

use super::files::save_own_keys;
use super::identity::Identity;
use super::pki::{new_request, renewal_delay, renewal_fraction, validity_of_der};
use super::tls::NodeTls;

/// Issues a certificate for a certificate signing request (PEM to PEM).
pub type Issue = Box<dyn Fn(String) -> LocalBoxFuture<'static, Result<String, String>>>;

/// The wait before a failed renewal is tried again (at most).
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct Renewal {
    tls: NodeTls,
    data_dir: PathBuf,
    /// The files' name under `pki/`: `node` or `manager`.
    stem: &'static str,
    who: Identity,
    issue: Issue,
}

impl Renewal {
    pub fn new(
        tls: NodeTls,
        data_dir: PathBuf,
        stem: &'static str,
        who: Identity,
        issue: Issue,
    ) -> Self {
        Renewal {
            tls,
            data_dir,
            stem,
            who,
            issue,
        }
    }

    /// The current certificate's validity.
    fn validity(&self) -> Option<(OffsetDateTime, OffsetDateTime)> {
        validity_of_der(&self.tls.certificate()).ok()
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        let Some((from, until)) = self.validity() else {
            log::error!(
                "renewal: cannot read the certificate of {}; not renewing it",
                self.who
            );
            return;
        };
        let delay = renewal_delay(from, until, OffsetDateTime::now_utc(), renewal_fraction());
        log::info!(
            "renewal: the certificate of {} (valid until {until}) is renewed in {:.1} s",
            self.who,
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
        let (key, csr) = match new_request(&self.who) {
            Ok(made) => made,
            Err(e) => {
                log::error!("renewal: cannot make a key: {e}");
                return self.retry(ctx);
            }
        };
        let key_pem = key.serialize_pem();
        let issued = (self.issue)(csr);
        let (data_dir, stem) = (self.data_dir.clone(), self.stem);
        let work = async move {
            let cert = issued.await?;
            // Saved before it is used: a restart finds the newest.
            let key = key_pem;
            let saved = actix_rt::task::spawn_blocking(move || {
                save_own_keys(&data_dir, stem, &cert, &key).map(|_| (cert, key))
            })
            .await
            .map_err(|e| e.to_string())?;
            saved.map_err(|e| e.to_string())
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| match result {
            Ok((cert, key)) => match act.tls.renew(&cert, &key) {
                Ok(()) => {
                    log::info!("renewal: {} presents its new certificate", act.who);
                    act.schedule(ctx);
                }
                Err(e) => {
                    log::error!("renewal: the new certificate cannot be used: {e}");
                    act.retry(ctx);
                }
            },
            Err(e) => {
                log::warn!("renewal: {} could not renew its certificate: {e}", act.who);
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
