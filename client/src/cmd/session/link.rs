//! The session's connection to the daemon: a daemon that went away (stopped, idle
//! timeout) is started again by the next call, and the events subscription follows it.
use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{AuthStatus, AuthStatusRequest, ClientContext, CredentialsReply};
use tonic::transport::Channel;

use super::editor::Notices;
use super::events::{self, Known};
use crate::error::ClientError;
use crate::{connect, exchange, term};

/// The session's connection to the daemon, started again when the daemon went away, and
/// what the session knows of the daemon's state.
pub struct Link {
    pub channel: Channel,
    pub ctx: ClientContext,
    /// `/model NAME` (or `--model`): this session only.
    pub model: Option<String>,
    pub known: Known,
    pub notices: Notices,
    pub events: Option<tokio::task::JoinHandle<()>>,
}

impl Link {
    /// (Re)subscribe to the daemon's events when not subscribed (first time, or the
    /// daemon restarted).
    pub async fn watch(&mut self) {
        if self.events.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        match events::watch(
            self.channel.clone(),
            self.known.clone(),
            self.notices.clone(),
        )
        .await
        {
            Ok(h) => self.events = Some(h),
            Err(e) => term::warn(&format!(
                "changes made by other clients will not be announced: {}",
                e.message()
            )),
        }
    }

    /// A daemon that went away (stopped, idle timeout) is started again.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.channel = connect::daemon().await?;
        self.events = None;
        self.watch().await;
        Ok(())
    }

    /// `call` on the connection; when the daemon is gone, once more after starting it.
    /// The outer error: it could not be started.
    async fn call<T>(
        &mut self,
        call: impl AsyncFn(&Channel, &ClientContext) -> Result<T, tonic::Status>,
    ) -> Result<Result<T, tonic::Status>, ClientError> {
        match call(&self.channel, &self.ctx).await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                self.reconnect().await?;
                Ok(call(&self.channel, &self.ctx).await)
            }
            other => Ok(other),
        }
    }

    pub async fn status(&mut self) -> Result<AuthStatus, ClientError> {
        let st = self
            .call(async |ch, ctx| {
                let req = AuthStatusRequest {
                    client: Some(ctx.clone()),
                };
                AuthClient::new(ch.clone()).get_auth_status(req).await
            })
            .await??
            .into_inner();
        self.known.set_method(Some(st.auth_type()));
        Ok(st)
    }

    pub async fn credentials(
        &mut self,
        rejected: Option<&str>,
    ) -> Result<CredentialsReply, ClientError> {
        let model = self.model.clone();
        let r = self
            .call(async |ch, ctx| {
                let rejected = rejected.map(str::to_string);
                crate::cmd::credentials::fetch(ch, ctx, model.as_deref(), rejected).await
            })
            .await?;
        r.map_err(|s| match s.code() {
            tonic::Code::FailedPrecondition => {
                ClientError::AuthNeeded(format!("{} (/auth to set up)", s.message()))
            }
            _ => s.into(),
        })
    }
}

impl exchange::Daemon for Link {
    fn channel(&self) -> &Channel {
        &self.channel
    }

    fn ctx(&self) -> &ClientContext {
        &self.ctx
    }

    async fn replace(&mut self, rejected: &str) -> Result<CredentialsReply, ClientError> {
        self.credentials(Some(rejected)).await
    }
}
