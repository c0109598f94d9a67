//! The selected auth method and what each method resolves to for a client: Qwen OAuth
//! credentials from the store (imported from Qwen Code's file when it changes), or the
//! OpenAI-compatible settings from the client's environment, its `.env` and settings.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::account::{AccountId, AccountTracker};
use crate::clock::SharedClock;
use crate::credentials::Credentials;
use crate::dotenv::{EnvRequest, FileCache, Loaded, Resolver};
use crate::oauth::{OAuthClient, OAuthConfig};
use crate::qwen_settings::{self, SettingsError};
use crate::store::{
    ImportPolicy, KeyringConfig, LogoutReport, QwenCredsFile, QwenFileWatch, StoreConfig,
    StoreError, StoreKind, StorePersistence, Stores,
};
use crate::tokens::{TokenError, TokenManager, TokenManagerConfig, TokenStatus};
use qwend_shared::api::{self, event::Kind};

pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_OPENAI_MODEL: &str = "qwen3.5-plus";
pub const DEFAULT_OAUTH_MODEL: &str = "coder-model";
/// Models the Qwen OAuth tier serves.
pub const OAUTH_MODELS: [&str; 2] = ["coder-model", "vision-model"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    QwenOAuth,
    OpenAi,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QwenOAuth => "qwen-oauth",
            Self::OpenAi => "openai",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qwen-oauth" => Some(Self::QwenOAuth),
            "openai" => Some(Self::OpenAi),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "cannot switch to openai: no OPENAI_API_KEY for {cwd}. Set it in the environment (export OPENAI_API_KEY=...) or in a .env file (.qwen/.env in the project, or ~/.qwen/.env); OPENAI_BASE_URL and OPENAI_MODEL are optional"
    )]
    NoApiKey { cwd: String },
    #[error(
        "no authentication is configured. Log in with Qwen OAuth (`qwen auth login`), or set OPENAI_API_KEY (optionally OPENAI_BASE_URL and OPENAI_MODEL) in the environment or in a .env file (.qwen/.env in the project, or ~/.qwen/.env)"
    )]
    NothingConfigured,
    #[error(
        "no OPENAI_API_KEY for {cwd}. Set it in the environment (export OPENAI_API_KEY=...) or in a .env file (.qwen/.env in the project, or ~/.qwen/.env); OPENAI_BASE_URL and OPENAI_MODEL are optional"
    )]
    MissingApiKey { cwd: String },
    #[error("not logged in to Qwen OAuth; run `qwen auth login`")]
    NotLoggedIn,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Env(#[from] crate::dotenv::EnvError),
    #[error("credential store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who is asking: their working directory and environment.
#[derive(Debug, Clone, Default)]
pub struct ClientCtx {
    pub cwd: PathBuf,
    pub env: HashMap<String, String>,
}

/// The OpenAI-compatible configuration for a client. The key is a secret: `Debug` hides it.
#[derive(Clone, Default)]
pub struct OpenAiConfig {
    pub api_key: Option<secrecy::SecretString>,
    pub base_url: String,
    pub model: String,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish()
    }
}

/// Credentials ready for an OpenAI-compatible request.
#[derive(Debug, Clone)]
pub struct Ready {
    pub auth_type: AuthType,
    pub token: secrecy::SecretString,
    pub base_url: String,
    pub model: String,
    pub expires_at_ms: Option<i64>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub auth_type: Option<AuthType>,
    pub logged_in: bool,
    pub expires_at_ms: Option<i64>,
    pub store: Option<StoreKind>,
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub warnings: Vec<String>,
}

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

/// The token manager and the store behind it, created on first use.
#[derive(Clone)]
struct OAuthRuntime {
    tokens: TokenManager,
    persistence: Arc<StorePersistence>,
    stores: Arc<Stores>,
}

/// What [`AuthState::plan`] decided for a caller.
#[derive(Debug)]
pub enum Plan {
    /// Everything is known (openai).
    Ready(Ready),
    /// A Qwen OAuth token is needed; the rest is decided.
    QwenOAuth {
        model: String,
        warnings: Vec<String>,
    },
}

pub struct AuthState {
    qwen_home: PathBuf,
    state_dir: Option<PathBuf>,
    choice: Option<StoreKind>,
    clock: SharedClock,
    resolver: Arc<Resolver>,
    qwen_file: QwenCredsFile,
    /// Opened on first use: probing the keyring must not slow the daemon's start.
    stores: Mutex<Option<Arc<Stores>>>,
    watch: Arc<Mutex<QwenFileWatch>>,
    oauth_settings: OAuthSettings,
    oauth_client: std::sync::OnceLock<OAuthClient>,
    oauth: Mutex<Option<OAuthRuntime>>,
    /// Stops the background refresh.
    cancel: CancellationToken,
    /// Parsed settings files: every permit asks which method applies, so re-reading and
    /// re-parsing them each time would dominate the quota path.
    settings_cache: FileCache<Result<Value, SettingsError>>,
    events: Option<Arc<crate::events::Hub>>,
    /// The Qwen account the quota counts for.
    accounts: Arc<AccountTracker>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("qwen_home", &self.qwen_home)
            .finish_non_exhaustive()
    }
}

impl AuthState {
    pub fn new(
        qwen_home: PathBuf,
        state_dir: Option<PathBuf>,
        choice: Option<StoreKind>,
        clock: SharedClock,
        resolver: Arc<Resolver>,
    ) -> Self {
        let accounts = Arc::new(AccountTracker::open(
            Self::own_dir(state_dir.as_deref(), &qwen_home).join("oauth_account"),
        ));
        Self {
            qwen_file: QwenCredsFile::new(&qwen_home, clock.clone()),
            accounts,
            qwen_home,
            state_dir,
            choice,
            clock,
            resolver,
            stores: Mutex::new(None),
            watch: Arc::new(Mutex::new(QwenFileWatch::new())),
            oauth_settings: OAuthSettings::default(),
            oauth_client: std::sync::OnceLock::new(),
            oauth: Mutex::new(None),
            cancel: CancellationToken::new(),
            settings_cache: FileCache::new(256, 4 * 1024 * 1024),
            events: None,
        }
    }

    /// Publish login changes (an import from Qwen Code) to `Watch` subscribers.
    pub fn with_events(mut self, hub: Arc<crate::events::Hub>) -> Self {
        self.events = Some(hub);
        self
    }

    pub fn with_oauth(mut self, settings: OAuthSettings) -> Self {
        self.oauth_settings = settings;
        self
    }

    pub fn oauth_client(&self) -> Result<&OAuthClient, crate::oauth::OAuthError> {
        if let Some(c) = self.oauth_client.get() {
            return Ok(c);
        }
        let client = OAuthClient::new(self.oauth_settings.config.clone())?;
        Ok(self.oauth_client.get_or_init(|| client))
    }

    /// Stops the background refresh (daemon shutdown).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    pub fn settings_path(&self) -> PathBuf {
        self.qwen_home.join("settings.json")
    }

    /// The daemon's own state: the configured state dir, else `<qwen home>/qwend`.
    fn own_dir(state_dir: Option<&Path>, qwen_home: &Path) -> PathBuf {
        state_dir.map_or_else(|| qwen_home.join("qwend"), Path::to_path_buf)
    }

    /// The quota account key of the Qwen OAuth login (see [`crate::account`]).
    pub fn oauth_account(&self) -> Arc<str> {
        self.accounts.key()
    }

    /// Credentials of `account` are about to be used.
    pub fn observe_account(&self, account: Option<&AccountId>) {
        self.accounts.observe(account);
    }

    fn stores(&self) -> Result<Arc<Stores>, StoreError> {
        let mut guard = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let dir = Self::own_dir(self.state_dir.as_deref(), &self.qwen_home).join("credentials");
        let stores = Arc::new(Stores::open(StoreConfig {
            choice: self.choice,
            file_dir: dir,
            keyring: KeyringConfig::default(),
            clock: self.clock.clone(),
        })?);
        if let Some(why) = stores.fallback_reason() {
            tracing::warn!("no usable OS keyring ({why}); credentials are kept in a 0600 file");
        }
        *guard = Some(stores.clone());
        Ok(stores)
    }

    /// The token manager, created on first use from what the store holds (after importing
    /// Qwen Code's credentials when they are newer). Blocks: call it off the async threads.
    fn runtime(&self) -> Result<OAuthRuntime, StoreError> {
        let mut slot = self.oauth.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = slot.as_ref() {
            return Ok(rt.clone());
        }
        let stores = self.stores()?;
        if let Some(c) = self.import_if_changed(&stores) {
            self.announce_login(&c);
        }
        let initial = match stores.selected().load() {
            Ok(c) => c,
            // Already moved aside by the store, with a warning; nothing usable is left.
            Err(StoreError::Corrupt { .. }) => None,
            Err(e) => return Err(e),
        };
        self.observe_account(initial.as_ref().and_then(|c| c.account.as_ref()));
        let persistence = Arc::new(StorePersistence::new(
            stores.clone(),
            self.qwen_file.clone(),
            self.oauth_settings.sync_qwen_file,
            self.watch.clone(),
        ));
        let tokens = TokenManager::new(
            initial,
            Arc::new(LazyRefresher {
                config: self.oauth_settings.config.clone(),
                client: Default::default(),
                accounts: self.accounts.clone(),
            }),
            Arc::new(persistence.clone()),
            self.clock.clone(),
            self.oauth_settings.tokens.clone(),
        );
        // Without a runtime (synchronous unit tests) there is nothing to schedule on.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let _enter = handle.enter();
            tokens.spawn_scheduler(self.cancel.child_token());
            handle.spawn(forward_token_events(
                tokens.clone(),
                self.events.clone(),
                self.accounts.clone(),
                self.cancel.child_token(),
            ));
        }
        let rt = OAuthRuntime {
            tokens,
            persistence,
            stores,
        };
        *slot = Some(rt.clone());
        Ok(rt)
    }

    /// Credentials Qwen Code wrote since we last looked (the user logged in with it, or it
    /// refreshed), once they are in our store.
    fn import_if_changed(&self, stores: &Stores) -> Option<Credentials> {
        let changed = {
            let mut w = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            w.changed(&self.qwen_file).unwrap_or(true)
        };
        if !changed {
            return None;
        }
        match stores.import_from_qwen(&self.qwen_file, ImportPolicy::IfNewer) {
            Ok(crate::store::ImportOutcome::Imported(c)) => {
                tracing::info!("imported Qwen Code's credentials from oauth_creds.json");
                self.observe_account(c.account.as_ref());
                Some(c)
            }
            Ok(_) => None,
            // A bad Qwen Code file never costs us our own credentials.
            Err(e) => {
                tracing::warn!("not importing Qwen Code's credentials: {e}");
                None
            }
        }
    }

    fn announce_login(&self, c: &Credentials) {
        self.announce_login_at(c.expiry_date);
    }

    /// After a Qwen OAuth login: select the method when none is selected yet, as Qwen
    /// Code's `/auth` does. An explicit choice of openai is kept (the caller says so).
    /// Returns whether the selection changed.
    pub fn select_after_login(&self) -> Result<bool, AuthError> {
        let user = self.settings_file(&self.settings_path())?;
        let docs: Vec<Value> = user.into_iter().collect();
        let explicit = explicit_method(docs.iter().map(selection_keys));
        if explicit.is_some() {
            return Ok(false);
        }
        write_selected_type(&self.settings_path(), AuthType::QwenOAuth)?;
        if let Some(hub) = &self.events {
            hub.publish(Kind::AuthSwitched(api::AuthSwitched {
                auth_type: api::AuthType::QwenOauth as i32,
            }));
        }
        Ok(true)
    }

    /// Tells `Watch` subscribers about a new login.
    pub fn announce_login_at(&self, expires_at_ms: i64) {
        if let Some(hub) = &self.events {
            hub.publish(Kind::LoggedIn(api::LoggedIn { expires_at_ms }));
        }
    }

    /// The OAuth runtime and what Qwen Code wrote since we last looked (blocking).
    fn runtime_and_import(&self) -> Result<(OAuthRuntime, Option<Credentials>), StoreError> {
        let rt = self.runtime()?;
        let imported = self.import_if_changed(&rt.stores);
        Ok((rt, imported))
    }

    /// Hands a login made meanwhile with Qwen Code to the token manager.
    async fn adopt_imported(&self, rt: &OAuthRuntime, imported: Option<Credentials>) {
        if let Some(c) = imported {
            rt.tokens.adopt(Some(c.clone())).await;
            self.announce_login(&c);
        }
    }

    /// The OAuth runtime, after adopting a login made meanwhile with Qwen Code.
    async fn fresh_runtime(self: &Arc<Self>) -> Result<OAuthRuntime, AuthError> {
        let this = self.clone();
        let (rt, imported) = crate::blocking::run(
            "opening the credential store",
            crate::blocking::STORE_DEADLINE,
            move || this.runtime_and_import(),
        )
        .await
        .map_err(|e| AuthError::Task(e.to_string()))??;
        self.adopt_imported(&rt, imported).await;
        Ok(rt)
    }

    /// The token manager, after adopting a login made meanwhile with Qwen Code.
    pub async fn tokens(self: &Arc<Self>) -> Result<TokenManager, AuthError> {
        Ok(self.fresh_runtime().await?.tokens)
    }

    /// Where our copy of the OAuth credentials lives, once the store is open.
    pub fn store_kind(&self) -> Option<StoreKind> {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.kind())
    }

    /// User settings (this daemon's Qwen home) and the client's workspace settings.
    fn settings(&self, ctx: &ClientCtx) -> Result<Vec<Value>, SettingsError> {
        let mut docs = Vec::new();
        if let Some(user) = self.settings_file(&self.settings_path())? {
            docs.push(user);
        }
        let ws = ctx.cwd.join(".qwen").join("settings.json");
        if ws != self.settings_path()
            && let Ok(Some(doc)) = self.settings_file(&ws)
        {
            docs.push(doc);
        }
        Ok(docs)
    }

    fn settings_file(&self, path: &Path) -> Result<Option<Value>, SettingsError> {
        let loaded = self.settings_cache.get(path, |bytes| {
            qwen_settings::parse(path, &String::from_utf8_lossy(bytes))
        });
        match loaded {
            Ok(Loaded::Value(doc)) => match &*doc {
                Ok(v) => Ok(Some(v.clone())),
                // Re-parse for an owned error (the cached one is shared).
                Err(_) => qwen_settings::read_file(path),
            },
            Ok(Loaded::TooLarge { .. }) => qwen_settings::read_file(path),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(_) => qwen_settings::read_file(path),
        }
    }

    /// A setting, the workspace overriding the user (last document wins).
    fn setting<'a>(docs: &'a [Value], path: &[&str]) -> Option<&'a Value> {
        docs.iter().rev().find_map(|d| qwen_settings::get(d, path))
    }

    /// The variables a client sees: its environment, then its `.env` for keys it lacks.
    fn client_vars(&self, ctx: &ClientCtx) -> (HashMap<String, String>, Vec<String>) {
        let mut vars = ctx.env.clone();
        let mut warnings = Vec::new();
        if ctx.cwd.is_absolute() {
            match self.resolver.resolve(&EnvRequest {
                cwd: &ctx.cwd,
                client_env: &ctx.env,
            }) {
                Ok(res) => {
                    warnings.extend(res.warnings);
                    vars.extend(res.vars);
                }
                Err(e) => warnings.push(e.to_string()),
            }
        }
        (vars, warnings)
    }

    pub fn openai_config(&self, ctx: &ClientCtx, docs: &[Value]) -> OpenAiConfig {
        let (vars, _) = self.client_vars(ctx);
        let var = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let set = |p: &[&str]| {
            Self::setting(docs, p)
                .and_then(Value::as_str)
                .map(String::from)
        };
        OpenAiConfig {
            api_key: var("OPENAI_API_KEY")
                .or_else(|| set(&["security", "auth", "apiKey"]))
                .map(secrecy::SecretString::from),
            base_url: var("OPENAI_BASE_URL")
                .or_else(|| set(&["security", "auth", "baseUrl"]))
                .unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.to_string()),
            model: var("OPENAI_MODEL")
                .or_else(|| var("QWEN_MODEL"))
                .or_else(|| set(&["model", "name"]))
                .unwrap_or_else(|| DEFAULT_OPENAI_MODEL.to_string()),
        }
    }

    /// The selected method: `security.auth.selectedType` (or the older top-level
    /// `selectedAuthType`); with none, inferred from the environment as the seed says:
    /// `QWEN_OAUTH` → qwen-oauth, an `OPENAI_API_KEY` (environment or `.env`) → openai.
    pub fn selected(&self, ctx: &ClientCtx, docs: &[Value]) -> Option<AuthType> {
        let explicit = explicit_method(docs.iter().rev().map(selection_keys));
        if explicit.is_some() {
            return explicit;
        }
        // The caller's own environment decides without touching the filesystem.
        let set =
            |vars: &HashMap<String, String>, k: &str| vars.get(k).is_some_and(|v| !v.is_empty());
        if set(&ctx.env, "QWEN_OAUTH") {
            return Some(AuthType::QwenOAuth);
        }
        if set(&ctx.env, "OPENAI_API_KEY") {
            return Some(AuthType::OpenAi);
        }
        let (vars, _) = self.client_vars(ctx);
        if vars.get("QWEN_OAUTH").is_some_and(|v| !v.is_empty()) {
            Some(AuthType::QwenOAuth)
        } else if vars.get("OPENAI_API_KEY").is_some_and(|v| !v.is_empty()) {
            Some(AuthType::OpenAi)
        } else {
            None
        }
    }

    /// The method for a caller, settings errors counting as "none selected".
    pub fn selected_for(&self, ctx: &ClientCtx) -> Option<AuthType> {
        let docs = self.settings(ctx).unwrap_or_default();
        self.selected(ctx, &docs)
    }

    pub fn status(&self, ctx: &ClientCtx) -> Result<Status, AuthError> {
        let docs = self.settings(ctx)?;
        let mut st = Status {
            auth_type: self.selected(ctx, &docs),
            ..Status::default()
        };
        match st.auth_type {
            Some(AuthType::OpenAi) => {
                let cfg = self.openai_config(ctx, &docs);
                st.logged_in = cfg.api_key.is_some();
                st.base_url = Some(cfg.base_url);
                st.model = Some(cfg.model);
            }
            Some(AuthType::QwenOAuth) => {
                match self.runtime() {
                    Ok(rt) => {
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
                    Err(e) => st.warnings.push(format!("credential store: {e}")),
                }
                st.model = Some(oauth_model(&docs, &mut st.warnings));
            }
            None => {}
        }
        Ok(st)
    }

    /// Persist the method in `security.auth.selectedType`, keeping every other key.
    pub fn switch(&self, to: AuthType, ctx: &ClientCtx) -> Result<Status, AuthError> {
        if to == AuthType::OpenAi {
            let docs = self.settings(ctx)?;
            if self.openai_config(ctx, &docs).api_key.is_none() {
                return Err(AuthError::NoApiKey {
                    cwd: ctx.cwd.display().to_string(),
                });
            }
        }
        write_selected_type(&self.settings_path(), to)?;
        self.status(ctx)
    }

    /// What the caller's method needs: everything for openai; for Qwen OAuth, the model
    /// (the token comes from [`AuthState::oauth_ready`]). `model`: the caller's `--model`.
    pub fn plan(&self, ctx: &ClientCtx, model: Option<&str>) -> Result<Plan, AuthError> {
        let docs = self.settings(ctx)?;
        match self.selected(ctx, &docs) {
            None => Err(AuthError::NothingConfigured),
            Some(AuthType::OpenAi) => {
                let cfg = self.openai_config(ctx, &docs);
                let token = cfg.api_key.ok_or_else(|| AuthError::MissingApiKey {
                    cwd: ctx.cwd.display().to_string(),
                })?;
                Ok(Plan::Ready(Ready {
                    auth_type: AuthType::OpenAi,
                    token,
                    base_url: cfg.base_url,
                    model: model.map_or(cfg.model, String::from),
                    expires_at_ms: None,
                    warnings: Vec::new(),
                }))
            }
            Some(AuthType::QwenOAuth) => {
                let mut warnings = Vec::new();
                let model = oauth_model_for(model, &docs, &mut warnings);
                Ok(Plan::QwenOAuth { model, warnings })
            }
        }
    }

    /// Ready-to-use credentials for the caller's method, refreshing the Qwen OAuth token
    /// first when needed. `rejected`: a token the API has just refused (HTTP 401).
    pub async fn credentials(
        self: &Arc<Self>,
        ctx: ClientCtx,
        model: Option<String>,
        rejected: Option<SecretString>,
    ) -> Result<Ready, AuthError> {
        // One trip to the blocking pool: the plan and, for Qwen OAuth, the token manager.
        let this = self.clone();
        let prepared = crate::blocking::run(
            "preparing credentials",
            crate::blocking::STORE_DEADLINE,
            move || {
                Ok::<_, AuthError>(match this.plan(&ctx, model.as_deref())? {
                    Plan::Ready(r) => Err(r),
                    Plan::QwenOAuth { model, warnings } => {
                        Ok((model, warnings, this.runtime_and_import()?))
                    }
                })
            },
        )
        .await
        .map_err(|e| AuthError::Task(e.to_string()))??;
        let (model, warnings, (rt, imported)) = match prepared {
            Err(ready) => return Ok(ready),
            Ok(oauth) => oauth,
        };
        self.adopt_imported(&rt, imported).await;
        let tokens = rt.tokens;
        let creds = match rejected {
            Some(r) => tokens.get_replacing(&r).await,
            None => tokens.get(false).await,
        }?;
        Ok(Ready {
            auth_type: AuthType::QwenOAuth,
            base_url: creds.api_base_url(),
            expires_at_ms: Some(creds.expiry_date),
            token: creds.access_token,
            model,
            warnings,
        })
    }

    /// Where a logout target keeps the credentials, in words for people.
    pub fn describe_place(&self, target: crate::store::LogoutTarget) -> String {
        use crate::store::LogoutTarget;
        match target {
            LogoutTarget::Keyring => "the OS keyring".to_string(),
            LogoutTarget::File => {
                let dir = Self::own_dir(self.state_dir.as_deref(), &self.qwen_home);
                let path = match self.stores() {
                    Ok(s) => s.file_store().path().to_path_buf(),
                    Err(_) => dir.join("credentials").join(crate::store::FILE_STORE_NAME),
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

    /// Forgets the Qwen OAuth login everywhere (keyring, our file, Qwen Code's file).
    pub async fn logout(self: &Arc<Self>) -> Result<LogoutReport, AuthError> {
        let rt = self.fresh_runtime().await?;
        // A failure is in the report too, which is what the caller shows.
        if let Err(e) = rt.tokens.logout("logged out").await {
            tracing::warn!(error = %e, "logout incomplete");
        }
        Ok(rt.persistence.take_clear_report().unwrap_or_default())
    }
}

/// A settings document's two keys that name the method: `security.auth.selectedType` and
/// the older top-level `selectedAuthType`.
pub fn selection_keys(doc: &Value) -> (Option<&Value>, Option<&Value>) {
    (
        qwen_settings::get(doc, &["security", "auth", "selectedType"]),
        qwen_settings::get(doc, &["selectedAuthType"]),
    )
}

/// The method the settings select. `keys` gives each document's [`selection_keys`], the
/// workspace's before the user's. As in Qwen Code the presence of a key, not its validity,
/// decides which value counts: a workspace `selectedType` hides the user's, and any
/// `selectedType` hides every `selectedAuthType`.
pub fn explicit_method<'a>(
    keys: impl Iterator<Item = (Option<&'a Value>, Option<&'a Value>)> + Clone,
) -> Option<AuthType> {
    keys.clone()
        .find_map(|(selected_type, _)| selected_type)
        .or_else(|| {
            keys.clone()
                .find_map(|(_, selected_auth_type)| selected_auth_type)
        })
        .and_then(Value::as_str)
        .and_then(AuthType::parse)
}

/// The refresh grant through an HTTP client built on the first refresh.
struct LazyRefresher {
    config: OAuthConfig,
    client: std::sync::OnceLock<OAuthClient>,
    accounts: Arc<AccountTracker>,
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
        let answer = client.refresh(refresh_token).await?;
        self.accounts.observe(answer.account.as_ref());
        Ok(answer)
    }
}

/// Turns token-manager changes into `Watch` events: refreshes, and logins that ended
/// upstream. (Logins and logouts are announced where they happen.) Also tells the account
/// tracker about credentials that arrived by other ways than a login, refresh or import
/// (a refresh that found Qwen Code's newer file under the lock).
async fn forward_token_events(
    tokens: TokenManager,
    hub: Option<Arc<crate::events::Hub>>,
    accounts: Arc<AccountTracker>,
    cancel: CancellationToken,
) {
    let mut rx = tokens.subscribe();
    let mut prev = rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let now = rx.borrow_and_update().clone();
        if matches!(now, TokenStatus::Active { .. }) {
            accounts.observe(tokens.peek().and_then(|c| c.account).as_ref());
        }
        let Some(hub) = &hub else {
            prev = now;
            continue;
        };
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

fn oauth_model(docs: &[Value], warnings: &mut Vec<String>) -> String {
    oauth_model_for(None, docs, warnings)
}

/// The model for a Qwen OAuth request: the caller's choice or `model.name` when the OAuth
/// tier serves it, else the default, with a warning naming the refused model.
fn oauth_model_for(requested: Option<&str>, docs: &[Value], warnings: &mut Vec<String>) -> String {
    let wanted =
        requested.or_else(|| AuthState::setting(docs, &["model", "name"]).and_then(Value::as_str));
    match wanted {
        Some(m) if OAUTH_MODELS.contains(&m) => m.to_string(),
        Some(m) => {
            warnings.push(format!(
                "model {m:?} is not served by Qwen OAuth; using {DEFAULT_OAUTH_MODEL}"
            ));
            DEFAULT_OAUTH_MODEL.to_string()
        }
        None => DEFAULT_OAUTH_MODEL.to_string(),
    }
}

/// Read-modify-write of the user settings. Invalid JSON is an error naming the file and
/// line, and nothing is written. Like Qwen Code's own settings writer, the result is plain
/// JSON: when the file had comments, the original is kept beside it as `settings.json.orig`.
pub fn write_selected_type(path: &Path, to: AuthType) -> Result<(), AuthError> {
    let (mut doc, original) = match qwen_settings::read_bytes(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            (qwen_settings::parse(path, &text)?, Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (Value::Object(Default::default()), None)
        }
        Err(source) => {
            return Err(AuthError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let obj = doc.as_object_mut().expect("parse guarantees an object");
    let security = obj
        .entry("security")
        .or_insert_with(|| Value::Object(Default::default()));
    if !security.is_object() {
        *security = Value::Object(Default::default());
    }
    let auth = security
        .as_object_mut()
        .expect("object")
        .entry("auth")
        .or_insert_with(|| Value::Object(Default::default()));
    if !auth.is_object() {
        *auth = Value::Object(Default::default());
    }
    auth.as_object_mut()
        .expect("object")
        .insert("selectedType".into(), Value::String(to.as_str().into()));
    let werr = |source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(orig) = &original
        && qwen_settings::strip_json_comments(orig) != *orig
    {
        std::fs::write(path.with_extension("json.orig"), orig).map_err(werr)?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(werr)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(werr)?;
    let mut text = serde_json::to_string_pretty(&doc).expect("a Value always serializes");
    text.push('\n');
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    // settings.json may hold an API key (security.auth.apiKey): keep it private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn state(t: &Path) -> AuthState {
        AuthState::new(
            t.join("home/.qwen"),
            Some(t.join("state")),
            Some(StoreKind::File),
            Arc::new(SystemClock),
            Arc::new(Resolver::default()),
        )
    }

    fn ctx(t: &Path, env: &[(&str, &str)]) -> ClientCtx {
        let mut e: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        e.insert("HOME".into(), t.join("home").display().to_string());
        std::fs::create_dir_all(t.join("home")).unwrap();
        let cwd = t.join("proj");
        std::fs::create_dir_all(&cwd).unwrap();
        ClientCtx { cwd, env: e }
    }

    #[test]
    fn switch_writes_the_nested_key_and_keeps_everything_else() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("settings.json");
        std::fs::write(
            &p,
            "{\n  // mine\n  \"ui\": {\"theme\": \"dark\"},\n  \"selectedAuthType\": \"openai\"\n}",
        )
        .unwrap();
        write_selected_type(&p, AuthType::QwenOAuth).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["security"]["auth"]["selectedType"], "qwen-oauth");
        assert_eq!(v["ui"]["theme"], "dark");
        assert_eq!(v["selectedAuthType"], "openai");
        assert!(
            std::fs::read_to_string(p.with_extension("json.orig"))
                .unwrap()
                .contains("// mine")
        );
    }

    #[test]
    fn invalid_settings_are_reported_and_never_overwritten() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("settings.json");
        std::fs::write(&p, "{\n  \"a\": 1,\n  oops\n}").unwrap();
        let e = write_selected_type(&p, AuthType::OpenAi).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("settings.json") && msg.contains("line 3"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\n  \"a\": 1,\n  oops\n}"
        );
    }

    #[test]
    fn selection_and_inference() {
        let t = tempfile::tempdir().unwrap();
        let s = state(t.path());
        assert_eq!(s.status(&ctx(t.path(), &[])).unwrap().auth_type, None);
        let c = ctx(t.path(), &[("OPENAI_API_KEY", "sk-x")]);
        let st = s.status(&c).unwrap();
        assert_eq!(st.auth_type, Some(AuthType::OpenAi));
        assert!(st.logged_in);
        assert_eq!(st.base_url.as_deref(), Some(DEFAULT_OPENAI_BASE_URL));
        assert_eq!(st.model.as_deref(), Some(DEFAULT_OPENAI_MODEL));
        // Legacy top-level key, then the nested one wins.
        std::fs::create_dir_all(t.path().join("home/.qwen")).unwrap();
        std::fs::write(s.settings_path(), r#"{"selectedAuthType": "qwen-oauth"}"#).unwrap();
        assert_eq!(s.status(&c).unwrap().auth_type, Some(AuthType::QwenOAuth));
    }

    #[test]
    fn switch_to_openai_needs_a_key_from_env_or_dotenv() {
        let t = tempfile::tempdir().unwrap();
        let s = state(t.path());
        let c = ctx(t.path(), &[]);
        let e = s.switch(AuthType::OpenAi, &c).unwrap_err();
        assert!(e.to_string().contains(".qwen/.env"), "{e}");
        assert!(!s.settings_path().exists(), "nothing written on refusal");
        std::fs::create_dir_all(c.cwd.join(".qwen")).unwrap();
        std::fs::write(
            c.cwd.join(".qwen/.env"),
            "OPENAI_API_KEY=sk-dot\nOPENAI_MODEL=m1\n",
        )
        .unwrap();
        let st = s.switch(AuthType::OpenAi, &c).unwrap();
        assert_eq!(st.auth_type, Some(AuthType::OpenAi));
        assert_eq!(st.model.as_deref(), Some("m1"));
    }

    #[test]
    fn debug_hides_the_api_key() {
        let cfg = OpenAiConfig {
            api_key: Some("sk-hidden".to_string().into()),
            ..Default::default()
        };
        assert!(!format!("{cfg:?}").contains("sk-hidden"));
    }
}
