//! `qwend.v1.Quota`: permits, outcomes and usage for the caller's account.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

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
use crate::dotenv::{FileCache, Loaded};
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
    selection: Arc<Selections>,
    /// The `openai` account key, allocated once.
    openai: Arc<str>,
}

impl QuotaService {
    pub fn new(quota: Arc<Quota>, auth: Arc<AuthState>, clock: SharedClock, hub: Arc<Hub>) -> Self {
        Self {
            selection: Arc::new(Selections::new(auth.settings_path())),
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
        let method = match self.selection.explicit(&ctx.cwd) {
            Some(method) => Some(method),
            None => self.auth.selected_for(&ctx),
        };
        Ok(match method {
            Some(AuthType::OpenAi) => self.openai.clone(),
            _ => self.auth.oauth_account(),
        })
    }

    fn status(&self, account: &str) -> api::QuotaStatus {
        snapshot_to_api(account, &self.quota.snapshot(account, self.clock.now_ms()))
    }
}

/// The two settings keys that name the method, as found in one settings file.
#[derive(Debug, Default)]
struct SelectionKeys {
    selected_type: Option<Value>,
    selected_auth_type: Option<Value>,
}

/// The method as the settings files name it, answered from the few keys that decide it.
///
/// Most users have the method recorded in their settings (Qwen Code writes it at login), and
/// then the caller's environment and `.env` play no part. `AuthState::selected_for` answers
/// the same question by cloning whole parsed settings documents and joining paths on every
/// call: on the permit path that was a tenth of the daemon's instructions. Here each file
/// is re-validated by the same one-`stat` cache (so an edited or replaced settings file is
/// seen on the next permit), but only the two keys are kept. Anything unusual (no explicit
/// method, an unreadable or invalid file) returns `None` and the caller asks `AuthState`,
/// which stays the authority; the tests check the two agree.
#[derive(Debug)]
struct Selections {
    user: PathBuf,
    files: FileCache<Option<SelectionKeys>>,
}

impl Selections {
    fn new(user: PathBuf) -> Self {
        Self {
            user,
            files: FileCache::new(256, 4 * 1024 * 1024),
        }
    }

    /// `Ok(None)`: no such file; `Err`: anything the fast path does not handle.
    fn keys(&self, path: &Path) -> Result<Option<Arc<Option<SelectionKeys>>>, ()> {
        let loaded = self.files.get(path, |bytes| {
            let doc = crate::qwen_settings::parse(path, &String::from_utf8_lossy(bytes)).ok()?;
            let (selected_type, selected_auth_type) = crate::auth::selection_keys(&doc);
            Some(SelectionKeys {
                selected_type: selected_type.cloned(),
                selected_auth_type: selected_auth_type.cloned(),
            })
        });
        match loaded {
            Ok(Loaded::Value(keys)) if keys.is_some() => Ok(Some(keys)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            _ => Err(()),
        }
    }

    /// The method the settings select for a caller in `cwd`, when they select one.
    fn explicit(&self, cwd: &Path) -> Option<AuthType> {
        let user = self.keys(&self.user).ok()?;
        let ws_path = cwd.join(".qwen/settings.json");
        let ws = if ws_path == self.user {
            None
        } else {
            self.keys(&ws_path).ok()?
        };
        let docs = [ws.as_deref(), user.as_deref()];
        crate::auth::explicit_method(
            docs.iter()
                .filter_map(|d| d.and_then(Option::as_ref))
                .map(|k| (k.selected_type.as_ref(), k.selected_auth_type.as_ref())),
        )
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
    use crate::store::StoreKind;
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    const QWEN: &str = r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#;
    const OPENAI: &str = r#"{"security": {"auth": {"selectedType": "openai"}}}"#;

    fn auth(home: &Path) -> AuthState {
        AuthState::new(
            home.join(".qwen"),
            None,
            Some(StoreKind::File),
            Arc::new(SystemClock),
            Arc::new(Resolver::default()),
        )
    }

    /// Writes `text` (or removes the file) and dates it `age` back, old enough for the
    /// file cache to trust its stamp.
    fn put(path: &Path, text: Option<&str>, age: Duration) {
        match text {
            Some(text) => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
                std::fs::File::options()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_modified(SystemTime::now() - age)
                    .unwrap();
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn ctx(cwd: &Path, env: &[(&str, &str)]) -> ClientCtx {
        ClientCtx {
            cwd: cwd.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        }
    }

    #[test]
    fn the_fast_path_agrees_with_auth_state_whenever_it_answers() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        let proj = home.join("proj");
        std::fs::create_dir_all(&proj).unwrap();
        let auth = auth(home);
        let sel = Selections::new(auth.settings_path());
        let docs: [Option<&str>; 8] = [
            None,
            Some(QWEN),
            Some(OPENAI),
            Some(r#"{"selectedAuthType": "openai"}"#),
            Some("// Qwen Code allows comments\n{\"selectedAuthType\": \"qwen-oauth\"}"),
            // The key's presence decides, so a bogus selectedType hides selectedAuthType.
            Some(
                r#"{"security": {"auth": {"selectedType": "bogus"}}, "selectedAuthType": "openai"}"#,
            ),
            Some(r#"{"security": {"auth": {"selectedType": 7}}}"#),
            Some("{ not json"),
        ];
        // Two callers whose environments infer opposite methods: wherever the fast path
        // answers, the answer must not depend on the environment.
        let envs: [&[(&str, &str)]; 2] = [&[("OPENAI_API_KEY", "k")], &[("QWEN_OAUTH", "1")]];
        let user_path = auth.settings_path();
        let ws_path = proj.join(".qwen/settings.json");
        let mut answered = 0;
        for user in docs {
            for ws in docs {
                put(&user_path, user, Duration::from_secs(60));
                put(&ws_path, ws, Duration::from_secs(60));
                for cwd in [&proj, &home.to_path_buf()] {
                    let fast = sel.explicit(cwd);
                    for env in envs {
                        let slow = auth.selected_for(&ctx(cwd, env));
                        if fast.is_some() {
                            assert_eq!(fast, slow, "user {user:?}, workspace {ws:?}, cwd {cwd:?}");
                        }
                    }
                    answered += usize::from(fast.is_some());
                }
            }
        }
        // Explicit choices answered without AuthState: the common case must be fast.
        put(&user_path, Some(QWEN), Duration::from_secs(60));
        put(&ws_path, Some(OPENAI), Duration::from_secs(60));
        assert_eq!(sel.explicit(&proj), Some(AuthType::OpenAi));
        assert_eq!(sel.explicit(home), Some(AuthType::QwenOAuth));
        put(&ws_path, Some("{ not json"), Duration::from_secs(60));
        assert_eq!(sel.explicit(&proj), None, "unusual files go to AuthState");
        assert!(
            answered > 40,
            "the fast path answered only {answered} cases"
        );
    }

    #[test]
    fn a_changed_settings_file_is_seen_by_the_next_permit() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        let auth = auth(home);
        let sel = Selections::new(auth.settings_path());
        let user = auth.settings_path();
        put(&user, Some(QWEN), Duration::from_secs(120));
        assert_eq!(sel.explicit(home), Some(AuthType::QwenOAuth));
        assert_eq!(
            sel.explicit(home),
            Some(AuthType::QwenOAuth),
            "from the cache"
        );
        // Rewritten in place to the same size with the same mtime: only the status
        // change time differs, and that must be enough.
        let openai = format!("{OPENAI:<width$}", width = QWEN.len());
        assert_eq!(openai.len(), QWEN.len());
        let mtime = std::fs::metadata(&user).unwrap().modified().unwrap();
        std::fs::write(&user, &openai).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&user)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(sel.explicit(home), Some(AuthType::OpenAi));
        // Replaced by rename, as Qwen Code and `qwen auth switch` write it.
        let tmp = home.join("settings.tmp");
        put(&tmp, Some(QWEN), Duration::from_secs(60));
        std::fs::rename(&tmp, &user).unwrap();
        assert_eq!(sel.explicit(home), Some(AuthType::QwenOAuth));
        // Removed: nothing explicit, so AuthState decides (and may infer).
        put(&user, None, Duration::ZERO);
        assert_eq!(sel.explicit(home), None);
    }

    #[test]
    fn a_workspace_choice_is_per_directory_and_follows_its_file() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        let (a, b) = (home.join("a"), home.join("b"));
        let auth = auth(home);
        let sel = Selections::new(auth.settings_path());
        put(&auth.settings_path(), Some(QWEN), Duration::from_secs(60));
        put(
            &a.join(".qwen/settings.json"),
            Some(OPENAI),
            Duration::from_secs(60),
        );
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(sel.explicit(&a), Some(AuthType::OpenAi));
        assert_eq!(sel.explicit(&b), Some(AuthType::QwenOAuth));
        put(
            &b.join(".qwen/settings.json"),
            Some(OPENAI),
            Duration::from_secs(60),
        );
        put(&a.join(".qwen/settings.json"), None, Duration::ZERO);
        assert_eq!(sel.explicit(&a), Some(AuthType::QwenOAuth));
        assert_eq!(sel.explicit(&b), Some(AuthType::OpenAi));
    }
}
