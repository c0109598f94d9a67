//! A quota permit before each model request, so every client of the account shares one
//! budget. Refused: wait as the daemon says (spinner on a terminal), or exit 4 with
//! `--no-wait`. A used-up day is never waited for: it means hours.
use std::time::{Duration, Instant};

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AcquirePermitRequest, AcquirePermitResponse, ClientContext};
use tonic::transport::Channel;

use crate::error::ClientError;
use crate::term;

/// How long one `AcquirePermit` call may be held by the daemon; the client asks again
/// after that, so a wedged wait never outlives a minute.
const WAIT_SLICE_MS: u64 = 60_000;

pub async fn acquire(
    channel: &Channel,
    ctx: &ClientContext,
    no_wait: bool,
) -> Result<(), ClientError> {
    let quota = QuotaClient::new(channel.clone());
    let ask = |wait_ms| {
        let mut q = quota.clone();
        let req = AcquirePermitRequest {
            client: Some(ctx.clone()),
            wait_ms,
        };
        async move { q.acquire_permit(req).await.map(tonic::Response::into_inner) }
    };
    let first = ask(0).await?;
    if first.granted {
        return Ok(());
    }
    if no_wait || first.reason == "day" {
        return Err(ClientError::Quota(refusal(&first)));
    }
    let spinner = term::spinner(waiting(&first, first.retry_after_ms));
    if spinner.is_none() {
        eprintln!("qwen: {}; waiting", refusal(&first));
    }
    let mut last = first;
    loop {
        let until = Instant::now() + Duration::from_millis(last.retry_after_ms);
        let call = ask(WAIT_SLICE_MS);
        tokio::pin!(call);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let r = loop {
            tokio::select! {
                r = &mut call => break r?,
                _ = tick.tick() => if let Some(s) = &spinner {
                    let left = until.saturating_duration_since(Instant::now()).as_millis() as u64;
                    s.set_message(waiting(&last, left));
                }
            }
        };
        if r.granted {
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            return Ok(());
        }
        if r.reason == "day" {
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            return Err(ClientError::Quota(refusal(&r)));
        }
        last = r;
    }
}

fn why(r: &AcquirePermitResponse) -> String {
    let q = r.quota.clone().unwrap_or_default();
    let m = q.minute.unwrap_or_default();
    let d = q.day.unwrap_or_default();
    match r.reason.as_str() {
        "minute" => format!(
            "the per-minute quota is used up ({} / {} in the last 60 s)",
            m.used,
            m.limit.unwrap_or(m.used)
        ),
        "day" => format!(
            "the daily quota is used up ({} / {}; resets {})",
            d.used,
            d.limit.unwrap_or(d.used),
            d.resets_at
        ),
        "cool_down" => "the model API asked to slow down (HTTP 429)".to_string(),
        other => format!("the quota refused ({other})"),
    }
}

fn refusal(r: &AcquirePermitResponse) -> String {
    if r.reason == "day" {
        return why(r);
    }
    format!(
        "{}; next request possible in {}",
        why(r),
        term::human_duration(r.retry_after_ms)
    )
}

fn waiting(r: &AcquirePermitResponse, left_ms: u64) -> String {
    format!(
        "{}; waiting about {} (Ctrl-C to stop, --no-wait to fail instead)",
        why(r),
        term::human_duration(left_ms)
    )
}
