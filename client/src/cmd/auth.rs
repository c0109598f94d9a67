//! `qwen auth status|switch|logout`.
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{
    AuthStatus, AuthStatusRequest, AuthType, LogoutRequest, SwitchAuthRequest,
};
use serde_json::json;

use crate::cli::{AuthAction, Method};
use crate::connect;
use crate::error::ClientError;

pub async fn run(action: AuthAction, as_json: bool) -> Result<ExitCode, ClientError> {
    // Refused before starting a daemon: a script cannot complete a browser login.
    if matches!(action, AuthAction::Login { .. }) && !super::login::interactive() {
        return Err(ClientError::AuthNeeded(
            super::login::NON_INTERACTIVE_HELP.to_string(),
        ));
    }
    let channel = connect::ensure(&qwend_shared::paths::socket_path()).await?;
    let mut client = AuthClient::new(channel.clone());
    let ctx = super::env::context()?;
    match action {
        AuthAction::Login { no_browser, force } => {
            let args = super::login::LoginArgs { no_browser, force };
            return super::login::run(channel, args, as_json).await;
        }
        AuthAction::Status => {
            let st = client
                .get_auth_status(AuthStatusRequest { client: Some(ctx) })
                .await?
                .into_inner();
            print_status(&st, as_json).await?;
        }
        AuthAction::Switch { method } => {
            let method = match method {
                Some(m) => m,
                None => pick()?,
            };
            let auth_type = match method {
                Method::QwenOauth => AuthType::QwenOauth,
                Method::Openai => AuthType::Openai,
            };
            let st = client
                .switch_auth(SwitchAuthRequest {
                    auth_type: auth_type as i32,
                    client: Some(ctx),
                })
                .await?
                .into_inner();
            if as_json {
                println!("{}", status_json(&st, None));
            } else {
                println!(
                    "auth method is now {} (saved in {}; every client uses it from now on)",
                    type_name(st.auth_type()).unwrap_or("none"),
                    st.settings_file
                );
                if st.auth_type() == AuthType::QwenOauth && !st.logged_in {
                    println!("not logged in yet: run `qwen auth login`");
                }
            }
        }
        AuthAction::Token => return super::token::run(as_json).await,
        AuthAction::Logout => {
            let r = client.logout(LogoutRequest {}).await?.into_inner();
            if as_json {
                println!("{}", json!({"removed": r.removed, "failed": r.failed}));
            } else if r.removed.is_empty() {
                println!("no Qwen OAuth credentials were stored; you are logged out");
            } else {
                println!(
                    "logged out: removed credentials from {}",
                    r.removed.join(", ")
                );
            }
            if !r.failed.is_empty() {
                return Err(ClientError::Rpc(format!(
                    "could not remove credentials from: {}",
                    r.failed.join("; ")
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `/auth` of Qwen Code: choose on a terminal; scripts must name the method.
fn pick() -> Result<Method, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "name the method: qwen auth switch qwen-oauth|openai".into(),
        ));
    }
    let mut out = std::io::stderr();
    let _ = writeln!(out, "Choose how to authenticate:");
    let _ = writeln!(
        out,
        "  1) Qwen OAuth (log in at qwen.ai; free: 60 requests/min, 2,000/day)"
    );
    let _ = writeln!(
        out,
        "  2) OpenAI-compatible API key (OPENAI_API_KEY, optional OPENAI_BASE_URL, OPENAI_MODEL)"
    );
    let _ = write!(out, "> ");
    let _ = out.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    match line.trim() {
        "1" | "qwen-oauth" => Ok(Method::QwenOauth),
        "2" | "openai" => Ok(Method::Openai),
        other => Err(ClientError::Usage(format!("no such choice: {other:?}"))),
    }
}

fn type_name(t: AuthType) -> Option<&'static str> {
    match t {
        AuthType::QwenOauth => Some("qwen-oauth"),
        AuthType::Openai => Some("openai"),
        AuthType::Unspecified => None,
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn status_json(st: &AuthStatus, quota: Option<serde_json::Value>) -> serde_json::Value {
    let mut v = json!({
        "auth_type": type_name(st.auth_type()),
        "logged_in": st.logged_in,
        "expires_at": st.expires_at_ms.and_then(rfc3339),
        "store": st.store,
        "base_url": st.base_url,
        "model": st.model,
        "settings_file": st.settings_file,
        "warnings": st.warnings,
    });
    if let Some(q) = quota {
        v["quota"] = q;
    }
    v
}

async fn print_status(st: &AuthStatus, as_json: bool) -> Result<(), ClientError> {
    let quota = super::quota::fetch().await.ok();
    let proxy = super::proxy::fetch_status().await;
    if as_json {
        let mut v = status_json(st, quota.as_ref().map(super::quota::to_json));
        if let Some(p) = &proxy {
            v["proxy"] = super::proxy::to_json(p);
        }
        println!("{v}");
        return Ok(());
    }
    match type_name(st.auth_type()) {
        None => {
            println!("no auth method configured");
            println!("  Qwen OAuth:  qwen auth switch qwen-oauth && qwen auth login");
            println!(
                "  API key:     set OPENAI_API_KEY (environment or .qwen/.env), then qwen auth switch openai"
            );
        }
        Some(name) => {
            println!("method     {name}");
            let expiry = st
                .expires_at_ms
                .and_then(rfc3339)
                .map(|t| format!(" (token expires {t})"))
                .unwrap_or_default();
            println!(
                "logged in  {}{expiry}",
                if st.logged_in { "yes" } else { "no" }
            );
            if let Some(s) = &st.store {
                println!("store      {s}");
            }
            if let Some(b) = &st.base_url {
                println!("base URL   {b}");
            }
            if let Some(m) = &st.model {
                println!("model      {m}");
            }
            if let Some(q) = &quota {
                for line in super::quota::human(q).lines().skip(1) {
                    println!("quota      {}", line.trim_start());
                }
            }
            if let Some(p) = &proxy {
                println!("proxy      {}", super::proxy::human(p));
            }
        }
    }
    for w in &st.warnings {
        eprintln!("qwen: warning: {w}");
    }
    Ok(())
}
