//! `qwend.v1.Auth`: status, switch and logout.
use std::sync::Arc;

use qwend_shared::api::auth_server::Auth;
use qwend_shared::api::{
    self as api, AuthStatusRequest, CredentialsReply, GetCredentialsRequest, LoginEvent,
    LoginRequest, LogoutRequest, LogoutResponse, SwitchAuthRequest,
};
use tonic::{Request, Response, Status};

use super::validate::client_ctx;
use crate::auth::{AuthError, AuthState, AuthType};
use crate::blocking::{BlockingError, STORE_DEADLINE, run};
use crate::clock::millis;
use crate::events::Hub;
use crate::login::{LoginCoordinator, LoginResult, Outcome, Start, Update};
use crate::oauth::DeviceFlowEvent;
use crate::store::LogoutTarget;
use crate::tokens::TokenError;
use api::login_event::Kind as LoginKind;
use api::login_progress::Kind as ProgressKind;
use api::login_result::Outcome as ApiOutcome;
use qwend_shared::api::event::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone)]
pub struct AuthService {
    auth: Arc<AuthState>,
    login: Arc<LoginCoordinator>,
    hub: Arc<Hub>,
}

impl AuthService {
    pub fn new(auth: Arc<AuthState>, login: Arc<LoginCoordinator>, hub: Arc<Hub>) -> Self {
        Self { auth, login, hub }
    }
}

pub fn to_api_type(t: Option<AuthType>) -> api::AuthType {
    match t {
        Some(AuthType::QwenOAuth) => api::AuthType::QwenOauth,
        Some(AuthType::OpenAi) => api::AuthType::Openai,
        None => api::AuthType::Unspecified,
    }
}

fn status_to_api(st: crate::auth::Status) -> api::AuthStatus {
    api::AuthStatus {
        auth_type: to_api_type(st.auth_type) as i32,
        logged_in: st.logged_in,
        expires_at_ms: st.expires_at_ms,
        store: st.store.map(|s| s.as_str().to_string()),
        base_url: st.base_url,
        model: st.model,
        warnings: st.warnings,
        settings_file: st
            .settings_file
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

pub(super) fn to_status(e: AuthError) -> Status {
    match e {
        AuthError::NoApiKey { .. }
        | AuthError::NothingConfigured { .. }
        | AuthError::MissingApiKey { .. }
        | AuthError::NotLoggedIn => Status::failed_precondition(e.to_string()),
        // Not FAILED_PRECONDITION: clients read that as "authentication needed".
        AuthError::Settings(_) => Status::internal(e.to_string()),
        AuthError::Token(
            TokenError::NotLoggedIn | TokenError::NoRefreshToken | TokenError::ReloginNeeded { .. },
        ) => Status::failed_precondition(e.to_string()),
        AuthError::Token(TokenError::Transient { .. }) => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// A request that outlived its blocking job's deadline gets DEADLINE_EXCEEDED.
impl From<BlockingError> for Status {
    fn from(e: BlockingError) -> Self {
        match e {
            BlockingError::Deadline { .. } => Status::deadline_exceeded(e.to_string()),
            BlockingError::Failed { .. } => Status::internal(e.to_string()),
        }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn get_auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<api::AuthStatus>, Status> {
        let ctx = client_ctx(req.into_inner().client)?;
        // Picks up a login made meanwhile with Qwen Code; a store problem shows in status.
        let _ = self.auth.tokens().await;
        let auth = self.auth.clone();
        let st = run("auth request", STORE_DEADLINE, move || auth.status(&ctx)).await?;
        Ok(Response::new(status_to_api(st)))
    }

    async fn switch_auth(
        &self,
        req: Request<SwitchAuthRequest>,
    ) -> Result<Response<api::AuthStatus>, Status> {
        let req = req.into_inner();
        let to = match req.auth_type() {
            api::AuthType::QwenOauth => AuthType::QwenOAuth,
            api::AuthType::Openai => AuthType::OpenAi,
            api::AuthType::Unspecified => {
                return Err(Status::invalid_argument(
                    "auth_type must be qwen-oauth or openai",
                ));
            }
        };
        let ctx = client_ctx(req.client)?;
        let auth = self.auth.clone();
        let st = run("auth request", STORE_DEADLINE, move || {
            auth.switch(to, &ctx)
        })
        .await?
        .map_err(to_status)?;
        tracing::info!(method = to.as_str(), "auth method switched");
        let st = status_to_api(st);
        self.hub.publish(Kind::AuthSwitched(api::AuthSwitched {
            auth_type: st.auth_type,
        }));
        Ok(Response::new(st))
    }

    async fn logout(
        &self,
        _req: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let report = self
            .auth
            .logout()
            .await
            .map_err(|e| Status::internal(format!("credential store: {e}")))?;
        let name = |t: &LogoutTarget| match t {
            LogoutTarget::Keyring => "keyring",
            LogoutTarget::File => "file",
            LogoutTarget::QwenCodeFile => "qwen-code-file",
        };
        tracing::info!("logged out");
        self.hub.publish(Kind::LoggedOut(api::LoggedOut {
            relogin_needed: false,
            reason: "logged out".into(),
        }));
        let removed: Vec<LogoutTarget> = report
            .done
            .iter()
            .filter(|(_, r)| !matches!(r, crate::store::Removal::NotPresent))
            .map(|(t, _)| *t)
            .collect();
        Ok(Response::new(LogoutResponse {
            removed: removed.iter().map(|t| name(t).to_string()).collect(),
            removed_from: removed
                .iter()
                .map(|t| self.auth.describe_place(*t))
                .collect(),
            failed: report
                .failed
                .iter()
                .map(|(t, e)| format!("{}: {e}", self.auth.describe_place(*t)))
                .collect(),
        }))
    }

    type LoginStream = ReceiverStream<Result<LoginEvent, Status>>;

    async fn login(
        &self,
        req: Request<LoginRequest>,
    ) -> Result<Response<Self::LoginStream>, Status> {
        let force = req.into_inner().force;
        let (tx, rx) = mpsc::channel(16);
        let login = self.login.clone();
        tokio::spawn(async move {
            let mut attachment = match login.start(force).await {
                Start::Finished(r) => {
                    let _ = tx.send(Ok(result_event(r))).await;
                    return;
                }
                Start::Attached(a) => a,
            };
            let p = attachment.prompt().clone();
            let prompt = LoginKind::Prompt(api::LoginPrompt {
                verification_uri: p.verification_uri,
                verification_uri_complete: p.verification_uri_complete,
                user_code: p.user_code,
                expires_at_ms: p.expires_at_ms,
                interval_ms: millis(p.interval),
                attached: attachment.joined,
            });
            if tx.send(Ok(event(prompt))).await.is_err() {
                return;
            }
            loop {
                // The client going away (Ctrl-C) drops the attachment at once, which
                // cancels the flow when nobody else is attached.
                let update = tokio::select! {
                    _ = tx.closed() => return,
                    u = attachment.next() => u,
                };
                match update {
                    Update::Progress(ev) => {
                        if tx.send(Ok(event(progress(ev)))).await.is_err() {
                            return;
                        }
                    }
                    Update::Done(r) => {
                        let _ = tx.send(Ok(result_event(r))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_credentials(
        &self,
        req: Request<GetCredentialsRequest>,
    ) -> Result<Response<CredentialsReply>, Status> {
        let req = req.into_inner();
        let ctx = client_ctx(req.client)?;
        let rejected = req.rejected_token.map(secrecy::SecretString::from);
        let ready = self
            .auth
            .credentials(ctx, req.model, rejected)
            .await
            .map_err(to_status)?;
        Ok(Response::new(CredentialsReply {
            auth_type: to_api_type(Some(ready.auth_type)) as i32,
            token: secrecy::ExposeSecret::expose_secret(&ready.token).to_string(),
            base_url: ready.base_url,
            model: ready.model,
            expires_at_ms: ready.expires_at_ms,
            warnings: ready.warnings,
        }))
    }
}

fn event(kind: LoginKind) -> LoginEvent {
    LoginEvent { kind: Some(kind) }
}

fn progress(ev: DeviceFlowEvent) -> LoginKind {
    let (kind, remaining, detail) = match ev {
        DeviceFlowEvent::Pending { remaining } => (ProgressKind::Pending, remaining, String::new()),
        DeviceFlowEvent::SlowDown { new_interval } => (
            ProgressKind::SlowDown,
            std::time::Duration::ZERO,
            format!("polling every {}s", new_interval.as_secs_f64()),
        ),
        DeviceFlowEvent::Retrying {
            reason,
            retry_in,
            remaining,
        } => (
            ProgressKind::Retrying,
            remaining,
            format!("{reason}; retrying in {}s", retry_in.as_secs_f64()),
        ),
    };
    LoginKind::Progress(api::LoginProgress {
        kind: kind as i32,
        remaining_ms: millis(remaining),
        detail,
    })
}

fn result_event(r: LoginResult) -> LoginEvent {
    let outcome = match r.outcome {
        Outcome::Success => ApiOutcome::Success,
        Outcome::AlreadyLoggedIn => ApiOutcome::AlreadyLoggedIn,
        Outcome::Denied => ApiOutcome::Denied,
        Outcome::Expired => ApiOutcome::Expired,
        Outcome::Cancelled => ApiOutcome::Cancelled,
        Outcome::Error => ApiOutcome::Error,
    };
    event(LoginKind::Result(api::LoginResult {
        outcome: outcome as i32,
        message: r.message,
        expires_at_ms: r.expires_at_ms,
        store: r.store.map(String::from),
    }))
}
