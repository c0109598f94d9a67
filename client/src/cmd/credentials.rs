//! Credentials for a model request, from the daemon. When nothing usable is configured:
//! on a terminal, offer Qwen Code's `/auth` choice; without one, never start a browser
//! login and say exactly what to set (Qwen Code's non-interactive rule).
use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{ClientContext, CredentialsReply, GetCredentialsRequest};
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::term;

/// What a script must set: the variables and the places they are read from.
pub const NON_INTERACTIVE_HINT: &str = "without a terminal qwen never starts a browser login: set OPENAI_API_KEY (optionally OPENAI_BASE_URL and OPENAI_MODEL) in the environment or in a .env file (.qwen/.env in the project, or ~/.qwen/.env), or log in once on a terminal with `qwen auth login`";

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
            if !term::interactive() {
                return Err(ClientError::AuthNeeded(non_interactive(s.message())));
            }
            eprintln!("qwen: {}", s.message());
            super::first_run::choose(channel, ctx).await?;
            Ok(fetch(channel, ctx, model, None).await?)
        }
        Err(s) => Err(s.into()),
    }
}

/// The daemon's reason, completed so it always names the variables and the files.
fn non_interactive(reason: &str) -> String {
    if reason.contains("OPENAI_API_KEY") && reason.contains(".qwen/.env") {
        format!("{reason} (no terminal: qwen never starts a browser login here)")
    } else {
        format!("{reason}; {NON_INTERACTIVE_HINT}")
    }
}

/// After an HTTP 401: ask for a token other than the refused one (the daemon refreshes
/// once for every client that saw the same 401).
pub async fn replace(
    channel: &Channel,
    ctx: &ClientContext,
    model: Option<&str>,
    rejected: &str,
) -> Result<CredentialsReply, ClientError> {
    Ok(fetch(channel, ctx, model, Some(rejected.to_string())).await?)
}
