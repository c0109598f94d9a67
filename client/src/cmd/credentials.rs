//! Credentials for a model request, from the daemon. When nothing usable is configured:
//! on a terminal, offer Qwen Code's `/auth` choice; without one, never start a browser
//! login and say exactly what to set (Qwen Code's non-interactive rule).
use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{
    AuthStatusRequest, AuthType, ClientContext, CredentialsReply, GetCredentialsRequest,
};
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::term;

/// What a script must set: the variables and the places they are read from.
const NON_INTERACTIVE_HINT: &str = "without a terminal qwen never starts a browser login: set OPENAI_API_KEY (optionally OPENAI_BASE_URL and OPENAI_MODEL) in the environment or in a .env file (.qwen/.env in the project, or ~/.qwen/.env), or log in once on a terminal with `qwen auth login`";

pub async fn fetch(
    channel: &Channel,
    ctx: &ClientContext,
    model: Option<&str>,
    rejected_token: Option<String>,
) -> Result<CredentialsReply, tonic::Status> {
    AuthClient::new(channel.clone())
        .get_credentials(GetCredentialsRequest {
            client: Some(ctx.clone()),
            rejected_token,
            model: model.map(str::to_string),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Credentials, setting up authentication first on a terminal when none is configured.
pub async fn obtain(
    channel: &Channel,
    ctx: &ClientContext,
    model: Option<&str>,
) -> Result<CredentialsReply, ClientError> {
    match fetch(channel, ctx, model, None).await {
        Ok(c) => Ok(c),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            if !term::can_ask() {
                return Err(ClientError::AuthNeeded(
                    explain(channel, ctx, s.message(), true).await,
                ));
            }
            eprintln!("qwen: {}", s.message());
            super::first_run::choose(channel, ctx).await?;
            Ok(fetch(channel, ctx, model, None).await?)
        }
        Err(s) => Err(s.into()),
    }
}

/// The daemon's reason for refusing credentials, completed with the next step for the
/// method in effect. `no_terminal`: the caller will not offer a login itself.
pub async fn explain(
    channel: &Channel,
    ctx: &ClientContext,
    reason: &str,
    no_terminal: bool,
) -> String {
    let status = AuthClient::new(channel.clone())
        .get_auth_status(AuthStatusRequest {
            client: Some(ctx.clone()),
        })
        .await
        .map(tonic::Response::into_inner);
    match status {
        // The daemon's reason names the key and the files; a browser login is beside the point.
        Ok(st) if st.auth_type() == AuthType::Openai => reason.to_string(),
        // Setting OPENAI_API_KEY alone would not help: the selected method wins.
        Ok(st) if st.auth_type() == AuthType::QwenOauth => {
            let key = if openai_key_here(channel, ctx).await {
                "or use the OPENAI_API_KEY set here with `qwen auth switch openai`"
            } else {
                "or set OPENAI_API_KEY (environment or .env) and run `qwen auth switch openai`"
            };
            let login = if no_terminal {
                ", and without a terminal qwen never starts a browser login. Log in once on a terminal with `qwen auth login`"
            } else {
                ". Log in with `qwen auth login`"
            };
            format!(
                "{reason}: Qwen OAuth is the selected auth method ({}){login}, {key}",
                st.settings_file
            )
        }
        _ if !no_terminal => reason.to_string(),
        _ if reason.contains("OPENAI_API_KEY") && reason.contains(".qwen/.env") => {
            format!("{reason} (no terminal: qwen never starts a browser login here)")
        }
        _ => format!("{reason}; {NON_INTERACTIVE_HINT}"),
    }
}

/// Whether an OPENAI_API_KEY reaches this client: its environment, else the folder's `.env`
/// (which never overrides a key the environment has, even an empty one).
async fn openai_key_here(channel: &Channel, ctx: &ClientContext) -> bool {
    if let Some(v) = ctx.env.get("OPENAI_API_KEY") {
        return !v.is_empty();
    }
    crate::context::resolve_env(channel, ctx)
        .await
        .is_ok_and(|r| {
            r.vars
                .iter()
                .any(|v| v.key == "OPENAI_API_KEY" && !v.value.is_empty())
        })
}
