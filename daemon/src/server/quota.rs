//! `qwend.v1.Quota`: permits, outcomes and usage for the caller's account.
use std::sync::Arc;

use qwend_shared::api::quota_server::Quota as QuotaRpc;
use qwend_shared::api::{
    self as api, AcquirePermitRequest, AcquirePermitResponse, GetQuotaRequest,
    ReportOutcomeRequest, ReportOutcomeResponse, ResetQuotaRequest, ResetQuotaResponse,
};
use tonic::{Request, Response, Status};

use super::validate::client_ctx;
use crate::auth::{AuthState, AuthType, ClientCtx};
use crate::clock::SharedClock;
use crate::config::OPENAI_ACCOUNT;
use crate::events::Hub;
use crate::quota::{Decision, Outcome, Quota, Reason, Snapshot};
use qwend_shared::api::event::Kind;

/// Longest a caller may ask the daemon to hold an `AcquirePermit` call.
const MAX_WAIT_MS: u64 = 10 * 60 * 1000;

/// Longest account name `ResetQuota` accepts (real ones are under 30 bytes).
const MAX_ACCOUNT_LEN: usize = 128;

#[derive(Debug, Clone)]
pub struct QuotaService {
    quota: Arc<Quota>,
    auth: Arc<AuthState>,
    clock: SharedClock,
    hub: Arc<Hub>,
    /// The `openai` account key, allocated once.
    openai: Arc<str>,
}

impl QuotaService {
    pub fn new(quota: Arc<Quota>, auth: Arc<AuthState>, clock: SharedClock, hub: Arc<Hub>) -> Self {
        Self {
            openai: Arc::from(OPENAI_ACCOUNT),
            quota,
            auth,
            clock,
            hub,
        }
    }

    fn announce(&self, q: &api::QuotaStatus) {
        self.hub.publish(Kind::QuotaChanged(api::QuotaChanged {
            account: q.account.clone(),
            minute_used: q.minute.as_ref().map_or(0, |m| m.used),
            day_used: q.day.as_ref().map_or(0, |d| d.used),
            cool_down_ms: q.cool_down_ms,
        }));
    }

    /// The account whose counters apply: the caller's method (Qwen OAuth when none is
    /// configured: that is the tier with a quota), and for Qwen OAuth the account logged in
    /// (see [`crate::account`]).
    ///
    /// Inline rather than on the blocking pool: with warm caches this is a few `stat`s,
    /// and the thread hop would cost more than the work on the permit hot path.
    async fn account(&self, ctx: ClientCtx) -> Result<Arc<str>, Status> {
        Ok(match self.auth.method_for(&ctx) {
            Some(AuthType::OpenAi) => self.openai.clone(),
            _ => self.auth.oauth_account(),
        })
    }

    fn status(&self, account: &str) -> api::QuotaStatus {
        snapshot_to_api(account, &self.quota.snapshot(account, self.clock.now_ms()))
    }
}

pub fn snapshot_to_api(account: &str, s: &Snapshot) -> api::QuotaStatus {
    api::QuotaStatus {
        account: account.to_string(),
        minute: Some(api::QuotaWindow {
            used: s.minute.used,
            limit: s.minute.limit,
            reset_in_ms: s.minute.reset_in_ms,
            resets_at: String::new(),
            exhausted: s.minute.limit.is_some_and(|l| s.minute.used >= l),
        }),
        day: Some(api::QuotaWindow {
            used: s.day.used,
            limit: s.day.limit,
            reset_in_ms: 0,
            resets_at: s.day.resets_at.clone(),
            exhausted: s.day.exhausted || s.day.limit.is_some_and(|l| s.day.used >= l),
        }),
        cool_down_ms: s.cool_down.as_ref().map_or(0, |c| c.remaining_ms),
        waiting: s.waiting as u32,
        warnings: s.warnings.clone(),
    }
}

fn reason_name(r: Reason) -> &'static str {
    match r {
        Reason::Minute => "minute",
        Reason::Day => "day",
        Reason::CoolDown => "cool_down",
    }
}

#[tonic::async_trait]
impl QuotaRpc for QuotaService {
    async fn acquire_permit(
        &self,
        req: Request<AcquirePermitRequest>,
    ) -> Result<Response<AcquirePermitResponse>, Status> {
        let req = req.into_inner();
        let account = self.account(client_ctx(req.client)?).await?;
        let deadline = self.clock.now_ms() + req.wait_ms.min(MAX_WAIT_MS) as i64;
        let decision = self
            .quota
            .acquire_wait(&account, deadline)
            .await
            .map_err(|e| Status::unavailable(format!("quota ledger: {e}")))?;
        let (granted, retry_after_ms, reason) = match decision {
            Decision::Granted(_) => (true, 0, String::new()),
            Decision::Refused {
                retry_after_ms,
                reason,
            } => (false, retry_after_ms, reason_name(reason).to_string()),
        };
        let quota = self.status(&account);
        if granted {
            self.announce(&quota);
        }
        Ok(Response::new(AcquirePermitResponse {
            granted,
            retry_after_ms,
            reason,
            quota: Some(quota),
        }))
    }

    async fn report_outcome(
        &self,
        req: Request<ReportOutcomeRequest>,
    ) -> Result<Response<ReportOutcomeResponse>, Status> {
        let req = req.into_inner();
        let account = self.account(client_ctx(req.client)?).await?;
        let outcome = if req.daily_exhausted {
            Outcome::DailyExhausted {
                retry_after_ms: req.retry_after_ms,
            }
        } else if req.http_status == 429 {
            Outcome::RateLimited {
                retry_after_ms: req.retry_after_ms,
            }
        } else {
            Outcome::Success
        };
        if outcome != Outcome::Success {
            tracing::info!(%account, ?outcome, "upstream limit reported");
        }
        self.quota.report_outcome(&account, outcome);
        let quota = self.status(&account);
        if outcome != Outcome::Success {
            self.announce(&quota);
        }
        Ok(Response::new(ReportOutcomeResponse { quota: Some(quota) }))
    }

    async fn get_quota(
        &self,
        req: Request<GetQuotaRequest>,
    ) -> Result<Response<api::QuotaStatus>, Status> {
        let account = self.account(client_ctx(req.into_inner().client)?).await?;
        Ok(Response::new(self.status(&account)))
    }

    async fn reset_quota(
        &self,
        req: Request<ResetQuotaRequest>,
    ) -> Result<Response<ResetQuotaResponse>, Status> {
        let req = req.into_inner();
        let account: Arc<str> = match req.account.as_deref().map(str::trim) {
            Some(named) if !named.is_empty() => {
                if named.len() > MAX_ACCOUNT_LEN || named.chars().any(char::is_control) {
                    let prefix: String = named.chars().take(40).collect();
                    return Err(Status::invalid_argument(format!(
                        "not an account name: {prefix:?}"
                    )));
                }
                Arc::from(named)
            }
            _ => self.account(client_ctx(req.client)?).await?,
        };
        self.quota
            .reset(&account)
            .await
            .map_err(|e| Status::unavailable(format!("quota ledger: {e}")))?;
        tracing::info!(%account, "quota reset");
        let quota = self.status(&account);
        self.announce(&quota);
        Ok(Response::new(ResetQuotaResponse { quota: Some(quota) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::dotenv::Resolver;
    use crate::quota::QuotaConfig;
    use crate::store::StoreKind;
    use std::collections::HashMap;

    /// The permit's account follows the same settings rule as every other reader: the
    /// caller's files, a broken one left out rather than failing the permit.
    #[tokio::test]
    async fn the_account_follows_the_callers_settings() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        let proj = t.path().join("proj");
        std::fs::create_dir_all(home.join(".qwen")).unwrap();
        std::fs::create_dir_all(proj.join(".qwen")).unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let auth = Arc::new(AuthState::new(
            t.path().join("daemon-qwen"),
            Some(t.path().join("state")),
            Some(StoreKind::File),
            clock.clone(),
            Arc::new(Resolver::default()),
        ));
        let quota = Arc::new(Quota::in_memory(QuotaConfig::default(), clock.clone()).unwrap());
        let hub = Arc::new(Hub::new(clock.clone()));
        let svc = QuotaService::new(quota, auth.clone(), clock, hub);
        let ctx = |env: &[(&str, &str)]| ClientCtx {
            cwd: proj.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("HOME".to_string(), home.display().to_string())])
                .collect::<HashMap<_, _>>(),
        };
        let oauth = auth.oauth_account();
        assert_eq!(svc.account(ctx(&[])).await.unwrap(), oauth);
        std::fs::write(
            proj.join(".qwen/settings.json"),
            r#"{"security": {"auth": {"selectedType": "openai"}}}"#,
        )
        .unwrap();
        assert_eq!(&*svc.account(ctx(&[])).await.unwrap(), OPENAI_ACCOUNT);
        // A broken workspace file is left out: the user's choice applies.
        std::fs::write(proj.join(".qwen/settings.json"), "{,}").unwrap();
        std::fs::write(
            home.join(".qwen/settings.json"),
            r#"{"selectedAuthType": "qwen-oauth"}"#,
        )
        .unwrap();
        assert_eq!(
            svc.account(ctx(&[("OPENAI_API_KEY", "k")])).await.unwrap(),
            oauth
        );
        // And a broken user file too: the environment decides.
        std::fs::write(home.join(".qwen/settings.json"), "{,}").unwrap();
        assert_eq!(
            &*svc.account(ctx(&[("OPENAI_API_KEY", "k")])).await.unwrap(),
            OPENAI_ACCOUNT
        );
    }
}
