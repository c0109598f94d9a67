//! `qwen quota`: used / remaining / reset, per minute and per day.
use std::process::ExitCode;

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{GetQuotaRequest, QuotaStatus, QuotaWindow};
use serde_json::{Value, json};

use crate::connect;
use crate::error::ClientError;

pub async fn fetch() -> Result<QuotaStatus, ClientError> {
    let channel = connect::ensure(&qwend_shared::paths::socket_path()).await?;
    Ok(QuotaClient::new(channel)
        .get_quota(GetQuotaRequest {
            client: Some(super::env::context()?),
        })
        .await?
        .into_inner())
}

pub async fn run(as_json: bool) -> Result<ExitCode, ClientError> {
    let q = fetch().await?;
    if as_json {
        println!("{}", to_json(&q));
    } else {
        print!("{}", human(&q));
    }
    Ok(ExitCode::SUCCESS)
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
        s += "          the daily quota is used up\n";
    }
    if q.cool_down_ms > 0 {
        s += &format!(
            "cool-down {:.0}s left (the server answered 429)\n",
            (q.cool_down_ms as f64 / 1000.0).ceil()
        );
    }
    s
}
