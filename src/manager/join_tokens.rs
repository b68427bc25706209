//! The JoinTokens actor holds the worker join token: it checks a joining
//! worker's secret, shows the token to admins and rotates it. A rotation
//! writes the new token to `<data_dir>/worker.token` (0600) before it is
//! used, so a restart keeps it; from then on the old token is refused.
//! Workers that joined keep their certificates. Messages are taken one at
//! a time, so a rotation and a join never interleave.

use std::path::PathBuf;

use actix::prelude::*;

use crate::security::pki::write_file;
use crate::security::secret::{JoinToken, same_secret};

pub struct JoinTokens {
    token: JoinToken,
    path: PathBuf,
}

impl JoinTokens {
    pub fn new(token: JoinToken, path: PathBuf) -> Self {
        JoinTokens { token, path }
    }
}

impl Actor for JoinTokens {
    type Context = Context<Self>;
}

/// Whether a joining worker's secret is the worker token's.
pub struct CheckSecret(pub String);

impl Message for CheckSecret {
    type Result = bool;
}

impl Handler<CheckSecret> for JoinTokens {
    type Result = bool;

    fn handle(&mut self, msg: CheckSecret, _ctx: &mut Context<Self>) -> bool {
        same_secret(&msg.0, &self.token.secret)
    }
}

/// The worker token as it is now.
pub struct ShowToken;

impl Message for ShowToken {
    type Result = String;
}

impl Handler<ShowToken> for JoinTokens {
    type Result = String;

    fn handle(&mut self, _msg: ShowToken, _ctx: &mut Context<Self>) -> String {
        self.token.to_string()
    }
}

/// A new worker token, saved; the answer is it.
pub struct Rotate;

impl Message for Rotate {
    type Result = Result<String, String>;
}

impl Handler<Rotate> for JoinTokens {
    type Result = AtomicResponse<Self, Result<String, String>>;

    fn handle(&mut self, _msg: Rotate, _ctx: &mut Context<Self>) -> Self::Result {
        let next = JoinToken::new(&self.token.ca_digest);
        let path = self.path.clone();
        let work = async move {
            let next: JoinToken = next.map_err(|e| e.to_string())?;
            let text = format!("{next}\n");
            actix_rt::task::spawn_blocking(move || write_file(&path, text.as_bytes(), true))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            Ok(next)
        };
        // Atomic: nothing else is taken until it is saved and in use.
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |saved: Result<JoinToken, String>, act, _ctx| {
                let next = saved?;
                log::info!("manager: the worker join token was rotated; the old one is refused");
                act.token = next;
                Ok(act.token.to_string())
            },
        )))
    }
}
