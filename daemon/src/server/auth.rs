//! `qwend.v1.Auth`: status, switch and logout.
use std::sync::Arc;

use qwend_shared::api::auth_server::Auth;
use qwend_shared::api::{
    self as api, AuthStatusRequest, CredentialsReply, GetCredentialsRequest, LoginEvent,
    LoginRequest, LogoutRequest, LogoutResponse, SwitchAuthRequest,
};
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, AuthState, AuthType, ClientCtx};
use crate::events::Hub;
use crate::store::LogoutTarget;
use qwend_shared::api::event::Kind;

#[derive(Debug, Clone)]
pub struct AuthService {
    auth: Arc<AuthState>,
    hub: Arc<Hub>,
}

impl AuthService {
    pub fn new(auth: Arc<AuthState>, hub: Arc<Hub>) -> Self {
        Self { auth, hub }
    }
}

pub fn client_ctx(c: Option<api::ClientContext>) -> ClientCtx {
    let c = c.unwrap_or_default();
    ClientCtx {
        cwd: c.cwd.into(),
        env: c.env,
    }
}

pub fn to_api_type(t: Option<AuthType>) -> api::AuthType {
    match t {
        Some(AuthType::QwenOAuth) => api::AuthType::QwenOauth,
        Some(AuthType::OpenAi) => api::AuthType::Openai,
        None => api::AuthType::Unspecified,
    }
}

fn status_to_api(auth: &AuthState, st: crate::auth::Status) -> api::AuthStatus {
    api::AuthStatus {
        auth_type: to_api_type(st.auth_type) as i32,
        logged_in: st.logged_in,
        expires_at_ms: st.expires_at_ms,
        store: st.store.map(|s| s.as_str().to_string()),
        base_url: st.base_url,
        model: st.model,
        warnings: st.warnings,
        settings_file: auth.settings_path().display().to_string(),
    }
}

fn to_status(e: AuthError) -> Status {
    match e {
        AuthError::NoApiKey { .. }
        | AuthError::NothingConfigured
        | AuthError::MissingApiKey { .. }
        | AuthError::NotLoggedIn => Status::failed_precondition(e.to_string()),
        // Not FAILED_PRECONDITION: clients read that as "authentication needed".
        AuthError::Settings(_) => Status::internal(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("task failed: {e}")))?
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn get_auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<api::AuthStatus>, Status> {
        let ctx = client_ctx(req.into_inner().client);
        let auth = self.auth.clone();
        let st = blocking(move || {
            let st = auth.status(&ctx).map_err(to_status)?;
            Ok(status_to_api(&auth, st))
        })
        .await?;
        Ok(Response::new(st))
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
        let ctx = client_ctx(req.client);
        let auth = self.auth.clone();
        let st = blocking(move || {
            let st = auth.switch(to, &ctx).map_err(to_status)?;
            tracing::info!(method = to.as_str(), "auth method switched");
            Ok(status_to_api(&auth, st))
        })
        .await?;
        self.hub.publish(Kind::AuthSwitched(api::AuthSwitched {
            auth_type: st.auth_type,
        }));
        Ok(Response::new(st))
    }

    async fn logout(
        &self,
        _req: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let auth = self.auth.clone();
        let report = blocking(move || {
            auth.logout()
                .map_err(|e| Status::internal(format!("credential store: {e}")))
        })
        .await?;
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
        Ok(Response::new(LogoutResponse {
            removed: report
                .done
                .iter()
                .filter(|(_, r)| !matches!(r, crate::store::Removal::NotPresent))
                .map(|(t, _)| name(t).to_string())
                .collect(),
            failed: report
                .failed
                .iter()
                .map(|(t, e)| format!("{}: {e}", name(t)))
                .collect(),
        }))
    }

    type LoginStream = tokio_stream::wrappers::ReceiverStream<Result<LoginEvent, Status>>;

    async fn login(
        &self,
        _req: Request<LoginRequest>,
    ) -> Result<Response<Self::LoginStream>, Status> {
        Err(Status::unimplemented("login is not wired yet"))
    }

    async fn get_credentials(
        &self,
        req: Request<GetCredentialsRequest>,
    ) -> Result<Response<CredentialsReply>, Status> {
        let req = req.into_inner();
        let ctx = client_ctx(req.client);
        let auth = self.auth.clone();
        let ready = blocking(move || {
            auth.credentials(&ctx, req.model.as_deref())
                .map_err(to_status)
        })
        .await?;
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
