//! `qwen quota`: used / remaining / reset, per minute and per day; `qwen quota reset`.
use std::process::ExitCode;

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{GetQuotaRequest, QuotaStatus, QuotaWindow, ResetQuotaRequest};
use serde_json::{Value, json};

use crate::cli::QuotaAction;
use crate::connect;
use crate::error::ClientError;

pub async fn fetch() -> Result<QuotaStatus, ClientError> {
    let channel = connect::daemon().await?;
    Ok(QuotaClient::new(channel)
        .get_quota(GetQuotaRequest {
            client: Some(crate::context::current()?),
        })
        .await?
        .into_inner())
}

pub async fn run(action: Option<QuotaAction>, as_json: bool) -> Result<ExitCode, ClientError> {
    let (q, reset) = match action {
        None => (fetch().await?, false),
        Some(QuotaAction::Reset { account }) => (reset(account).await?, true),
    };
    if as_json {
        println!("{}", to_json(&q));
    } else {
        if reset {
            println!("reset the quota of {}", q.account);
        }
        print!("{}", human(&q));
    }
    for w in &q.warnings {
        eprintln!("qwen: warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn reset(account: Option<String>) -> Result<QuotaStatus, ClientError> {
    let channel = connect::daemon().await?;
    Ok(QuotaClient::new(channel)
        .reset_quota(ResetQuotaRequest {
            client: Some(crate::context::current()?),
            account,
        })
        .await?
        .into_inner()
        .quota
        .unwrap_or_default())
}

pub fn to_json(q: &QuotaStatus) -> Value {
    let m = q.minute.clone().unwrap_or_default();
    let d = q.day.clone().unwrap_or_default();
    json!({
        "account": q.account,
        "minute": {"used": m.used, "limit": m.limit, "reset_in_ms": m.reset_in_ms},
        "day": {"used": d.used, "limit": d.limit, "resets_at": d.resets_at, "exhausted": d.exhausted},
        "cool_down_ms": q.cool_down_ms,
        "waiting": q.waiting,
        "warnings": q.warnings,
    })
}

fn left(w: &QuotaWindow) -> String {
    match w.limit {
        Some(l) => format!("{} / {l} used, {} left", w.used, l.saturating_sub(w.used)),
        None => format!("{} used, no limit", w.used),
    }
}

pub fn human(q: &QuotaStatus) -> String {
    let m = q.minute.clone().unwrap_or_default();
    let d = q.day.clone().unwrap_or_default();
    let mut s = format!("account   {}\n", q.account);
    s += &format!("minute    {}", left(&m));
    if m.used > 0 && m.limit.is_some() {
        s += &format!(
            "; frees up in {:.0}s",
            (m.reset_in_ms as f64 / 1000.0).ceil()
        );
    }
    s += &format!("\nday       {}; resets {}\n", left(&d), d.resets_at);
    if d.exhausted {
        s += "          the daily quota is used up (`qwen quota reset` if you know better)\n";
    }
    if q.cool_down_ms > 0 {
        s += &format!(
            "cool-down {:.0}s left (the server answered 429; `qwen quota reset` clears it)\n",
            (q.cool_down_ms as f64 / 1000.0).ceil()
        );
    }
    s
}
