//! The Qwen OAuth side: the credential store and the token manager behind it, created on
//! first use (probing the keyring or loading root certificates must not slow the daemon's
//! start), Qwen Code's logins adopted as they appear, and token changes told to `Watch`.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::{AuthError, Status};
use crate::account::AccountTracker;
use crate::clock::SharedClock;
use crate::credentials::Credentials;
use crate::events::Hub;
use crate::oauth::{OAuthClient, OAuthConfig};
use crate::store::{
    KeyringConfig, LogoutReport, LogoutTarget, QwenCredsFile, StoreConfig, StoreError, StoreKind,
    StorePersistence, Stores,
};
use crate::tokens::{TokenManager, TokenManagerConfig, TokenStatus};
use qwend_shared::api::{self, event::Kind};

/// How the daemon talks to the Qwen OAuth server and keeps its tokens.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The HTTP client is built on first use: loading the system's root certificates
    /// would otherwise slow every daemon start, most of which never talk OAuth.
    pub config: OAuthConfig,
    pub tokens: TokenManagerConfig,
    /// Keep Qwen Code's `oauth_creds.json` in step with our logins and refreshes.
    pub sync_qwen_file: bool,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            config: OAuthConfig::default(),
            tokens: TokenManagerConfig::default(),
            sync_qwen_file: true,
        }
    }
}

/// The token manager and the store behind it.
#[derive(Clone)]
pub(super) struct Runtime {
    pub tokens: TokenManager,
    persistence: Arc<StorePersistence>,
    stores: Arc<Stores>,
}

pub(super) struct OAuth {
    /// The daemon's own state: the configured state dir, else `<qwen home>/qwend`.
    own_dir: PathBuf,
    choice: Option<StoreKind>,
    clock: SharedClock,
    qwen_file: QwenCredsFile,
    stores: Mutex<Option<Arc<Stores>>>,
    pub settings: OAuthSettings,
    client: OnceLock<OAuthClient>,
    runtime: Mutex<Option<Runtime>>,
    /// Stops the background refresh.
    cancel: CancellationToken,
    pub events: Option<Arc<Hub>>,
    /// The Qwen account the quota counts for.
    accounts: Arc<AccountTracker>,
}

impl OAuth {
    pub fn new(
        qwen_home: &Path,
        state_dir: Option<PathBuf>,
        choice: Option<StoreKind>,
        clock: SharedClock,
    ) -> Self {
        let own_dir = state_dir.unwrap_or_else(|| qwen_home.join("qwend"));
        Self {
            accounts: Arc::new(AccountTracker::open(own_dir.join("oauth_account"))),
            qwen_file: QwenCredsFile::new(qwen_home, clock.clone()),
            own_dir,
            choice,
            clock,
            stores: Mutex::new(None),
            settings: OAuthSettings::default(),
            client: OnceLock::new(),
            runtime: Mutex::new(None),
            cancel: CancellationToken::new(),
            events: None,
        }
    }

    pub fn client(&self) -> Result<&OAuthClient, crate::oauth::OAuthError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let client = OAuthClient::new(self.settings.config.clone())?;
        Ok(self.client.get_or_init(|| client))
    }

    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// The quota account key of the Qwen OAuth login (see [`crate::account`]).
    pub fn account(&self) -> Arc<str> {
        self.accounts.key()
    }

    /// Tells `Watch` subscribers about a new login.
    pub fn announce_login_at(&self, expires_at_ms: i64) {
        if let Some(hub) = &self.events {
            hub.publish(Kind::LoggedIn(api::LoggedIn { expires_at_ms }));
        }
    }

    fn stores(&self) -> Result<Arc<Stores>, StoreError> {
        let mut guard = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let stores = Arc::new(Stores::open(StoreConfig {
            choice: self.choice,
            file_dir: self.own_dir.join("credentials"),
            keyring: KeyringConfig::default(),
            clock: self.clock.clone(),
        })?);
        if let Some(why) = stores.fallback_reason() {
            tracing::warn!("no usable OS keyring ({why}); credentials are kept in a 0600 file");
        }
        *guard = Some(stores.clone());
        Ok(stores)
    }

    /// Where our copy of the OAuth credentials lives, once the store is open.
    pub fn store_kind(&self) -> Option<StoreKind> {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.kind())
    }

    /// The token manager, created on first use from what the store holds (after importing
    /// Qwen Code's credentials when they are newer). Blocks: call it off the async threads.
    pub fn runtime(&self) -> Result<Runtime, StoreError> {
        let mut slot = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = slot.as_ref() {
            return Ok(rt.clone());
        }
        let stores = self.stores()?;
        let persistence = Arc::new(StorePersistence::new(
            stores.clone(),
            self.qwen_file.clone(),
            self.settings.sync_qwen_file,
        ));
        if let Some(c) = persistence.import_if_changed() {
            self.announce_login_at(c.expiry_date);
        }
        let initial = match stores.selected().load() {
            Ok(c) => c,
            // Already moved aside by the store, with a warning; nothing usable is left.
            Err(StoreError::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        let tokens = TokenManager::new(
            initial,
            Arc::new(LazyRefresher {
                config: self.settings.config.clone(),
                client: Default::default(),
            }),
            Arc::new(persistence.clone()),
            self.clock.clone(),
            self.settings.tokens.clone(),
        )
        .observing(self.accounts.clone());
        // Without a runtime (synchronous unit tests) there is nothing to schedule on.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _enter = handle.enter();
            tokens.spawn_scheduler(self.cancel.child_token());
            handle.spawn(forward_token_events(
                tokens.clone(),
                self.events.clone(),
                self.cancel.child_token(),
            ));
        }
        let rt = Runtime {
            tokens,
            persistence,
            stores,
        };
        *slot = Some(rt.clone());
        Ok(rt)
    }

    /// The runtime and what Qwen Code wrote since we last looked (blocking).
    pub fn runtime_and_import(&self) -> Result<(Runtime, Option<Credentials>), StoreError> {
        let rt = self.runtime()?;
        let imported = rt.persistence.import_if_changed();
        Ok((rt, imported))
    }

    /// [`OAuth::runtime_and_import`] on the blocking pool.
    pub async fn prepare(self: &Arc<Self>) -> Result<(Runtime, Option<Credentials>), AuthError> {
        let this = self.clone();
        crate::blocking::run(
            "opening the credential store",
            crate::blocking::STORE_DEADLINE,
            move || this.runtime_and_import(),
        )
        .await
        .map_err(|e| AuthError::Task(e.to_string()))?
        .map_err(AuthError::from)
    }

    /// Hands a login made meanwhile with Qwen Code to the token manager.
    pub async fn adopt_imported(&self, rt: &Runtime, imported: Option<Credentials>) {
        if let Some(c) = imported {
            rt.tokens.adopt(Some(c.clone())).await;
            self.announce_login_at(c.expiry_date);
        }
    }

    /// The runtime, after adopting a login made meanwhile with Qwen Code.
    pub async fn fresh_runtime(self: &Arc<Self>) -> Result<Runtime, AuthError> {
        let (rt, imported) = self.prepare().await?;
        self.adopt_imported(&rt, imported).await;
        Ok(rt)
    }

    /// The Qwen OAuth part of a status (blocking).
    pub fn status_into(&self, st: &mut Status) {
        let rt = match self.runtime() {
            Ok(rt) => rt,
            Err(e) => {
                st.warnings.push(format!("credential store: {e}"));
                return;
            }
        };
        st.store = Some(rt.stores.kind());
        match rt.tokens.status() {
            TokenStatus::Active {
                expiry_date,
                retrying,
                unsaved,
                ..
            } => {
                if let Some(e) = unsaved {
                    st.warnings.push(format!(
                        "the current token could not be saved ({e}); it is used \
                         from memory and is lost when the daemon stops"
                    ));
                }
                st.logged_in = true;
                st.expires_at_ms = Some(expiry_date);
                st.base_url = rt.tokens.peek().map(|c| c.api_base_url());
                if let Some(r) = retrying {
                    st.warnings.push(format!(
                        "token refresh failing ({} attempts): {}",
                        r.failures, r.last_error
                    ));
                }
            }
            TokenStatus::ReloginNeeded { reason } => st.warnings.push(format!(
                "the Qwen OAuth login has ended ({reason}); run `qwen auth login`"
            )),
            TokenStatus::LoggedOut => {}
        }
    }

    /// Where a logout target keeps the credentials, in words for people.
    pub fn describe_place(&self, target: LogoutTarget) -> String {
        match target {
            LogoutTarget::Keyring => "the OS keyring".to_string(),
            LogoutTarget::File => {
                let path = match self.stores() {
                    Ok(s) => s.file_store().path().to_path_buf(),
                    Err(_) => self
                        .own_dir
                        .join("credentials")
                        .join(crate::store::FILE_STORE_NAME),
                };
                format!("qwend's credentials file ({})", path.display())
            }
            LogoutTarget::QwenCodeFile => {
                format!(
                    "Qwen Code's oauth_creds.json ({})",
                    self.qwen_file.path().display()
                )
            }
        }
    }

    /// Forgets the Qwen OAuth login everywhere (keyring, our file, Qwen Code's file) and
    /// says what was removed.
    pub async fn logout(self: &Arc<Self>) -> Result<LogoutReport, AuthError> {
        let rt = self.fresh_runtime().await?;
        let persistence = rt.persistence.clone();
        let cleared = rt
            .tokens
            .logout_with(async move { persistence.clear_reporting("logged out").await })
            .await;
        Ok(match cleared {
            Ok(report) => {
                if !report.failed.is_empty() {
                    tracing::warn!("logout incomplete: {} place(s) failed", report.failed.len());
                }
                report
            }
            // The store did not answer in time: nothing known removed, nothing known failed.
            Err(e) => {
                tracing::warn!(error = %e, "logout incomplete");
                LogoutReport::default()
            }
        })
    }
}

/// The refresh grant through an HTTP client built on the first refresh.
struct LazyRefresher {
    config: OAuthConfig,
    client: OnceLock<OAuthClient>,
}

#[async_trait::async_trait]
impl crate::tokens::TokenRefresher for LazyRefresher {
    async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<crate::oauth::TokenResponse, crate::oauth::RefreshError> {
        let client = match self.client.get() {
            Some(c) => c,
            None => {
                let c = OAuthClient::new(self.config.clone())
                    .map_err(crate::oauth::RefreshError::Transient)?;
                self.client.get_or_init(|| c)
            }
        };
        client.refresh(refresh_token).await
    }
}

/// Turns token-manager changes into `Watch` events: refreshes, and logins that ended
/// upstream. (Logins and logouts are announced where they happen.)
async fn forward_token_events(
    tokens: TokenManager,
    hub: Option<Arc<Hub>>,
    cancel: CancellationToken,
) {
    let Some(hub) = hub else { return };
    let mut rx = tokens.subscribe();
    let mut prev = rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let now = rx.borrow_and_update().clone();
        match (&prev, &now) {
            (
                TokenStatus::Active { generation: a, .. },
                TokenStatus::Active {
                    generation: b,
                    expiry_date,
                    ..
                },
            ) if b > a => hub.publish(Kind::TokenRefreshed(api::TokenRefreshed {
                expires_at_ms: *expiry_date,
            })),
            (TokenStatus::ReloginNeeded { .. }, _) => {}
            (_, TokenStatus::ReloginNeeded { reason }) => {
                hub.publish(Kind::LoggedOut(api::LoggedOut {
                    relogin_needed: true,
                    reason: reason.clone(),
                }))
            }
            _ => {}
        }
        prev = now;
    }
}
