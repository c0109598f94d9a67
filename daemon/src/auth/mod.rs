//! The selected auth method and what each method resolves to for a client: Qwen OAuth
//! credentials from the store (imported from Qwen Code's file when it changes), or the
//! OpenAI-compatible settings from the client's environment, its `.env` and settings.
//!
//! Each request builds one [`Caller`] (the client's settings view and, when needed, its
//! `.env`) and every decision for that request reads it; its warnings go back to the
//! client with the answer.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;

use crate::clock::SharedClock;
use crate::dotenv::Resolver;
use crate::settings::{Edit, Settings, SettingsError};
use crate::store::{LogoutReport, LogoutTarget, StoreError, StoreKind};
use crate::tokens::{TokenError, TokenManager};
use qwend_shared::api::{self, event::Kind};

mod method;
mod openai;
mod runtime;
#[cfg(test)]
mod tests;

pub use crate::settings::AuthType;
pub use method::{Caller, DEFAULT_OAUTH_MODEL, OAUTH_MODELS};
pub use openai::{DEFAULT_OPENAI_BASE_URL, DEFAULT_OPENAI_MODEL, OpenAiConfig};
pub use runtime::OAuthSettings;

/// Warnings that explain an error (say, a settings file left out), shown after it.
#[derive(Debug, Clone, Default)]
pub struct Notes(pub Vec<String>);

impl std::fmt::Display for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.0.is_empty() {
            write!(f, " (warning: {})", self.0.join("; warning: "))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(
        "cannot switch to openai: no OPENAI_API_KEY for {cwd}. Set it in the environment (export OPENAI_API_KEY=...) or in a .env file (.qwen/.env in the project, or ~/.qwen/.env); OPENAI_BASE_URL and OPENAI_MODEL are optional{notes}"
    )]
    NoApiKey { cwd: String, notes: Notes },
    #[error(
        "no authentication is configured. Log in with Qwen OAuth (`qwen auth login`), or set OPENAI_API_KEY (optionally OPENAI_BASE_URL and OPENAI_MODEL) in the environment or in a .env file (.qwen/.env in the project, or ~/.qwen/.env){notes}"
    )]
    NothingConfigured { notes: Notes },
    #[error(
        "no OPENAI_API_KEY for {cwd}. Set it in the environment (export OPENAI_API_KEY=...) or in a .env file (.qwen/.env in the project, or ~/.qwen/.env); OPENAI_BASE_URL and OPENAI_MODEL are optional{notes}"
    )]
    MissingApiKey { cwd: String, notes: Notes },
    #[error("not logged in to Qwen OAuth; run `qwen auth login`")]
    NotLoggedIn,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("credential store: {0}")]
    Store(#[from] StoreError),
}

/// Who is asking: their working directory and environment.
#[derive(Debug, Clone, Default)]
pub struct ClientCtx {
    pub cwd: PathBuf,
    pub env: HashMap<String, String>,
}

/// Credentials ready for an OpenAI-compatible request.
#[derive(Debug, Clone)]
pub struct Ready {
    pub auth_type: AuthType,
    pub token: SecretString,
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
    /// The user settings file that holds the caller's selection.
    pub settings_file: Option<PathBuf>,
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
    /// The daemon's own Qwen home: Qwen Code's `oauth_creds.json`, and the settings of
    /// callers that name no home of their own.
    qwen_home: PathBuf,
    resolver: Arc<Resolver>,
    /// The daemon's one settings reader (the resolver's).
    settings: Arc<Settings>,
    oauth: Arc<runtime::OAuth>,
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
        Self {
            oauth: Arc::new(runtime::OAuth::new(&qwen_home, state_dir, choice, clock)),
            settings: resolver.settings().clone(),
            resolver,
            qwen_home,
        }
    }

    fn oauth_mut(&mut self) -> &mut runtime::OAuth {
        Arc::get_mut(&mut self.oauth).expect("configured before it is shared")
    }

    /// Publish login changes (an import from Qwen Code) to `Watch` subscribers.
    pub fn with_events(mut self, hub: Arc<crate::events::Hub>) -> Self {
        self.oauth_mut().events = Some(hub);
        self
    }

    pub fn with_oauth(mut self, settings: OAuthSettings) -> Self {
        self.oauth_mut().settings = settings;
        self
    }

    pub fn oauth_client(&self) -> Result<&crate::oauth::OAuthClient, crate::oauth::OAuthError> {
        self.oauth.client()
    }

    /// Stops the background refresh (daemon shutdown).
    pub fn shutdown(&self) {
        self.oauth.shutdown();
    }

    /// The quota account key of the Qwen OAuth login (see [`crate::account`]).
    pub fn oauth_account(&self) -> Arc<str> {
        self.oauth.account()
    }

    /// Tells `Watch` subscribers about a new login.
    pub fn announce_login_at(&self, expires_at_ms: i64) {
        self.oauth.announce_login_at(expires_at_ms);
    }

    /// Where our copy of the OAuth credentials lives, once the store is open.
    pub fn store_kind(&self) -> Option<StoreKind> {
        self.oauth.store_kind()
    }

    /// The token manager, after adopting a login made meanwhile with Qwen Code.
    pub async fn tokens(&self) -> Result<TokenManager, AuthError> {
        Ok(self.oauth.fresh_runtime().await?.tokens)
    }

    /// Where a logout target keeps the credentials, in words for people.
    pub fn describe_place(&self, target: LogoutTarget) -> String {
        self.oauth.describe_place(target)
    }

    /// Forgets the Qwen OAuth login everywhere (keyring, our file, Qwen Code's file).
    pub async fn logout(&self) -> Result<LogoutReport, AuthError> {
        self.oauth.logout().await
    }

    /// This request's view of the client (blocking only as far as a few `stat`s).
    pub fn caller<'a>(&'a self, ctx: &'a ClientCtx) -> Caller<'a> {
        Caller::new(
            ctx,
            self.settings
                .view(&ctx.cwd, &ctx.env, Some(&self.qwen_home)),
            &self.resolver,
        )
    }

    /// The method for a caller (the quota's question). With the method in the settings,
    /// a few `stat`s of cached files; otherwise the `.env` may be read.
    pub fn method_for(&self, ctx: &ClientCtx) -> Option<AuthType> {
        self.caller(ctx).method()
    }

    /// After a Qwen OAuth login: select the method when none is selected yet, as Qwen
    /// Code's `/auth` does. An explicit choice of openai is kept. A login has no client, so
    /// this is the daemon's own user settings. Returns whether the selection changed.
    pub fn select_after_login(&self) -> Result<bool, AuthError> {
        let mut edit = Edit::open(&self.qwen_home.join("settings.json"))?;
        if edit.method().is_some() {
            return Ok(false);
        }
        edit.set_selected_type(AuthType::QwenOAuth);
        edit.save()?;
        if let Some(hub) = &self.oauth.events {
            hub.publish(Kind::AuthSwitched(api::AuthSwitched {
                auth_type: api::AuthType::QwenOauth as i32,
            }));
        }
        Ok(true)
    }

    /// The user settings file of a caller (where a switch writes).
    fn settings_file(&self, caller: &Caller<'_>) -> PathBuf {
        caller
            .settings
            .user_file()
            .map_or_else(|| self.qwen_home.join("settings.json"), PathBuf::from)
    }

    /// The method in effect for a caller and whether it can be used (blocking).
    pub fn status(&self, ctx: &ClientCtx) -> Status {
        self.status_of(&self.caller(ctx))
    }

    fn status_of(&self, caller: &Caller<'_>) -> Status {
        let mut st = Status {
            auth_type: caller.method(),
            settings_file: Some(self.settings_file(caller)),
            ..Status::default()
        };
        match st.auth_type {
            Some(AuthType::OpenAi) => {
                let cfg = caller.openai_config();
                st.logged_in = cfg.api_key.is_some();
                st.base_url = Some(cfg.base_url);
                st.model = Some(cfg.model);
            }
            Some(AuthType::QwenOAuth) => {
                self.oauth.status_into(&mut st);
                st.model = Some(caller.oauth_model(None, &mut st.warnings));
            }
            None => {}
        }
        let mut warnings = caller.warnings();
        warnings.append(&mut st.warnings);
        st.warnings = warnings;
        st
    }

    /// Persist the method in the caller's `security.auth.selectedType`, keeping every
    /// other key. An invalid settings file is refused before anything else.
    pub fn switch(&self, to: AuthType, ctx: &ClientCtx) -> Result<Status, AuthError> {
        let caller = self.caller(ctx);
        let path = self.settings_file(&caller);
        let mut edit = Edit::open(&path)?;
        if to == AuthType::OpenAi && caller.openai_config().api_key.is_none() {
            return Err(AuthError::NoApiKey {
                cwd: ctx.cwd.display().to_string(),
                notes: Notes(caller.warnings()),
            });
        }
        edit.set_selected_type(to);
        edit.save()?;
        let fresh = self
            .settings
            .view(&ctx.cwd, &ctx.env, Some(&self.qwen_home));
        Ok(self.status_of(&caller.with_settings(fresh)))
    }

    /// What the caller's method needs: everything for openai; for Qwen OAuth, the model
    /// (the token comes from the token manager). `model`: the caller's `--model`.
    pub fn plan(&self, caller: &Caller<'_>, model: Option<&str>) -> Result<Plan, AuthError> {
        match caller.method() {
            None => Err(AuthError::NothingConfigured {
                notes: Notes(caller.warnings()),
            }),
            Some(AuthType::OpenAi) => {
                let cfg = caller.openai_config();
                let token = cfg.api_key.ok_or_else(|| AuthError::MissingApiKey {
                    cwd: caller.ctx.cwd.display().to_string(),
                    notes: Notes(caller.warnings()),
                })?;
                Ok(Plan::Ready(Ready {
                    auth_type: AuthType::OpenAi,
                    token,
                    base_url: cfg.base_url,
                    model: model.map_or(cfg.model, String::from),
                    expires_at_ms: None,
                    warnings: caller.warnings(),
                }))
            }
            Some(AuthType::QwenOAuth) => {
                let mut warnings = caller.warnings();
                let model = caller.oauth_model(model, &mut warnings);
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
                let caller = this.caller(&ctx);
                Ok::<_, AuthError>(match this.plan(&caller, model.as_deref())? {
                    Plan::Ready(r) => Err(r),
                    Plan::QwenOAuth { model, warnings } => {
                        Ok((model, warnings, this.oauth.runtime_and_import()?))
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
        self.oauth.adopt_imported(&rt, imported).await;
        let creds = match rejected {
            Some(r) => rt.tokens.get_replacing(&r).await,
            None => rt.tokens.get(false).await,
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
}
