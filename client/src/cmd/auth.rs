//! `qwen auth status|switch|logout`.
use std::io::IsTerminal;
use std::process::ExitCode;

use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::{
    AuthStatus, AuthStatusRequest, AuthType, LogoutRequest, SwitchAuthRequest,
};
use serde_json::json;

use crate::cli::AuthAction;
use crate::connect;
use crate::error::ClientError;
use crate::method::{self, Method};

pub async fn run(action: AuthAction, as_json: bool) -> Result<ExitCode, ClientError> {
    // Refused before starting a daemon: a script cannot complete a browser login.
    if matches!(action, AuthAction::Login { .. }) && !crate::term::on_terminal() {
        return Err(ClientError::AuthNeeded(
            super::login::NON_INTERACTIVE_HELP.to_string(),
        ));
    }
    let channel = connect::daemon().await?;
    let mut client = AuthClient::new(channel.clone());
    let ctx = crate::context::current()?;
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
            // Like `gh auth status`: scripts can test whether a prompt would authenticate.
            if unusable_reason(&st).is_some() {
                return Err(ClientError::Exit(ExitCode::from(
                    crate::error::code::AUTH_NEEDED,
                )));
            }
        }
        AuthAction::Switch { method } => {
            let method = match method {
                Some(m) => m,
                None => pick().await?,
            };
            let st = client
                .switch_auth(SwitchAuthRequest {
                    auth_type: method.auth_type() as i32,
                    client: Some(ctx),
                })
                .await?
                .into_inner();
            if as_json {
                println!("{}", status_json(&st, None));
            } else {
                println!(
                    "auth method is now {} (saved in {}; every client uses it from now on)",
                    method::name(st.auth_type()).unwrap_or("none"),
                    st.settings_file
                );
                if st.auth_type() == AuthType::QwenOauth && !st.logged_in {
                    println!("not logged in yet: run `qwen auth login`");
                }
                // Checked against this folder only; the method applies in every folder.
                if st.auth_type() == AuthType::Openai {
                    println!(
                        "openai works here; elsewhere it needs OPENAI_API_KEY (in the environment or a .env file that applies there)"
                    );
                }
            }
        }
        AuthAction::Token => return super::token::run(as_json).await,
        AuthAction::Logout => {
            let r = client.logout(LogoutRequest {}).await?.into_inner();
            if as_json {
                println!(
                    "{}",
                    json!({"removed": r.removed, "removed_from": r.removed_from, "failed": r.failed})
                );
            } else if r.removed.is_empty() {
                println!("no Qwen OAuth credentials were stored; you are logged out");
            } else {
                let places = if r.removed_from.len() == r.removed.len() {
                    &r.removed_from
                } else {
                    // An older daemon sends only the short names.
                    &r.removed
                };
                println!("logged out: removed the Qwen OAuth credentials from");
                for p in places {
                    println!("  {p}");
                }
            }
            if !r.failed.is_empty() {
                return Err(ClientError::Rpc(format!(
                    "could not remove the credentials from {}",
                    r.failed.join("; ")
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `/auth` of Qwen Code: choose on a terminal; scripts must name the method.
async fn pick() -> Result<Method, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "name the method: qwen auth switch qwen-oauth|openai".into(),
        ));
    }
    super::menu::pick_on_stdin().await
}

/// Why the selected method cannot authenticate here, and the next step; `None` when it can.
fn unusable_reason(st: &AuthStatus) -> Option<String> {
    match st.auth_type() {
        AuthType::Unspecified => Some(
            "no auth method is selected, and none can be inferred (no OPENAI_API_KEY in the environment or the .env for this folder): run `qwen auth login`, or set OPENAI_API_KEY".into(),
        ),
        AuthType::QwenOauth if !st.logged_in => Some(
            "Qwen OAuth is selected but not logged in: run `qwen auth login`, or `qwen auth switch openai` to use an OPENAI_API_KEY".into(),
        ),
        AuthType::Openai if !st.logged_in => Some(
            "openai is selected but no OPENAI_API_KEY resolves for this folder: set it in the environment or a .env file (.qwen/.env in the project, or ~/.qwen/.env)".into(),
        ),
        _ => None,
    }
}

fn status_json(st: &AuthStatus, quota: Option<serde_json::Value>) -> serde_json::Value {
    let reason = unusable_reason(st);
    let mut v = json!({
        "auth_type": method::name(st.auth_type()),
        "logged_in": st.logged_in,
        "expires_at": st.expires_at_ms.and_then(crate::term::rfc3339),
        "store": st.store,
        "base_url": st.base_url,
        "model": st.model,
        "usable": reason.is_none(),
        "reason": reason,
        "settings_file": st.settings_file,
        "warnings": st.warnings,
    });
    if let Some(q) = quota {
        v["quota"] = q;
    }
    v
}

/// `logged in  yes (token expires …)`, as `qwen auth status` and the session's `/status`
/// show it.
pub(super) fn logged_in_line(st: &AuthStatus) -> String {
    let expiry = st
        .expires_at_ms
        .and_then(crate::term::rfc3339)
        .map(|t| format!(" (token expires {t})"))
        .unwrap_or_default();
    let yes = if st.logged_in { "yes" } else { "no" };
    format!("logged in  {yes}{expiry}")
}

async fn print_status(st: &AuthStatus, as_json: bool) -> Result<(), ClientError> {
    let quota = super::quota::fetch().await.ok();
    // The quota's own troubles (an unwritable ledger) belong with the other warnings.
    let mut st = st.clone();
    st.warnings
        .extend(quota.iter().flat_map(|q| q.warnings.iter().cloned()));
    let st = &st;
    let proxy = super::proxy::fetch_status().await;
    if as_json {
        let mut v = status_json(st, quota.as_ref().map(super::quota::to_json));
        if let Some(p) = &proxy {
            v["proxy"] = super::proxy::to_json(p);
        }
        println!("{v}");
        return Ok(());
    }
    match method::name(st.auth_type()) {
        None => {
            println!("no auth method configured");
            println!("  Qwen OAuth:  qwen auth switch qwen-oauth && qwen auth login");
            println!(
                "  API key:     set OPENAI_API_KEY (environment or .qwen/.env), then qwen auth switch openai"
            );
        }
        Some(name) => {
            println!("method     {name}");
            println!("{}", logged_in_line(st));
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
    if st.auth_type() != AuthType::Unspecified
        && let Some(reason) = unusable_reason(st)
    {
        eprintln!("qwen: cannot authenticate: {reason}");
    }
    Ok(())
}
