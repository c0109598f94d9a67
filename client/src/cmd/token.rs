//! `qwen auth token`: the current bearer token on stdout and nothing else, for scripts
//! (`curl -H "Authorization: Bearer $(qwen auth token)"`). Never prompts.
use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use crate::connect;
use crate::error::ClientError;

pub async fn run(as_json: bool) -> Result<ExitCode, ClientError> {
    let channel = connect::daemon().await?;
    let ctx = crate::context::current()?;
    let creds = match super::credentials::fetch(&channel, &ctx, None, None).await {
        Ok(c) => c,
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            let why = super::credentials::explain(&channel, &ctx, s.message(), false).await;
            return Err(ClientError::AuthNeeded(format!(
                "no token to print: {why}. Then `qwen auth token` prints it (`qwen auth status` shows what is in effect)"
            )));
        }
        Err(s) => return Err(s.into()),
    };
    let text = if as_json {
        json!({
            "token": creds.token,
            "auth_type": crate::method::name(creds.auth_type()),
            "base_url": creds.base_url,
            "model": creds.model,
            "expires_at_ms": creds.expires_at_ms,
        })
        .to_string()
    } else {
        creds.token
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| ClientError::Output(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
