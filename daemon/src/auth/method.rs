//! One request's view of a client (its settings, its `.env`, the warnings about both) and
//! the choices made from it: the method and the Qwen OAuth model.
use std::cell::OnceCell;

use super::ClientCtx;
use crate::dotenv::{EnvRequest, Resolver};
use crate::settings::{AuthType, View};

pub const DEFAULT_OAUTH_MODEL: &str = "coder-model";
/// Models the Qwen OAuth tier serves.
pub const OAUTH_MODELS: [&str; 2] = ["coder-model", "vision-model"];

/// What the client's `.env` sets (values are secrets; never printed).
struct DotEnv {
    vars: Vec<(String, String)>,
    warnings: Vec<String>,
}

/// Who asks and what applies to them, built once per request: the settings view, and the
/// `.env` resolved on first need (at most once; not at all when the settings decide).
pub struct Caller<'a> {
    pub ctx: &'a ClientCtx,
    pub settings: View,
    resolver: &'a Resolver,
    dotenv: OnceCell<DotEnv>,
}

impl<'a> Caller<'a> {
    pub fn new(ctx: &'a ClientCtx, settings: View, resolver: &'a Resolver) -> Self {
        Self {
            ctx,
            settings,
            resolver,
            dotenv: OnceCell::new(),
        }
    }

    /// The same caller with its settings read again (after a write); the `.env` stays.
    pub fn with_settings(self, settings: View) -> Self {
        Self { settings, ..self }
    }

    fn dotenv(&self) -> &DotEnv {
        self.dotenv.get_or_init(|| {
            if !self.ctx.cwd.is_absolute() {
                return DotEnv {
                    vars: Vec::new(),
                    warnings: Vec::new(),
                };
            }
            let req = EnvRequest {
                cwd: &self.ctx.cwd,
                client_env: &self.ctx.env,
            };
            match self.resolver.resolve_with(&req, &self.settings) {
                Ok(res) => DotEnv {
                    vars: res.vars,
                    warnings: res.warnings,
                },
                Err(e) => DotEnv {
                    vars: Vec::new(),
                    warnings: vec![e.to_string()],
                },
            }
        })
    }

    /// A variable as the client sees it: its environment, then its `.env` for keys it
    /// lacks. Empty counts as unset.
    pub fn var(&self, key: &str) -> Option<&str> {
        let value = match self.ctx.env.get(key) {
            Some(v) => v.as_str(),
            None => self
                .dotenv()
                .vars
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())?,
        };
        Some(value).filter(|v| !v.is_empty())
    }

    fn in_own_env(&self, key: &str) -> bool {
        self.ctx.env.get(key).is_some_and(|v| !v.is_empty())
    }

    /// Everything worth telling the client: settings files left out, then `.env`
    /// problems (when it was read).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.settings.warnings().to_vec();
        if let Some(d) = self.dotenv.get() {
            w.extend(d.warnings.iter().cloned());
        }
        w
    }

    /// The selected method: `security.auth.selectedType` (or the older top-level
    /// `selectedAuthType`); with none, inferred from the environment as the seed says:
    /// `QWEN_OAUTH` → qwen-oauth, an `OPENAI_API_KEY` (environment or `.env`) → openai.
    pub fn method(&self) -> Option<AuthType> {
        if let Some(m) = self.settings.method() {
            return Some(m);
        }
        // The caller's own environment decides without touching the filesystem.
        if self.in_own_env("QWEN_OAUTH") {
            return Some(AuthType::QwenOAuth);
        }
        if self.in_own_env("OPENAI_API_KEY") {
            return Some(AuthType::OpenAi);
        }
        if self.var("QWEN_OAUTH").is_some() {
            Some(AuthType::QwenOAuth)
        } else if self.var("OPENAI_API_KEY").is_some() {
            Some(AuthType::OpenAi)
        } else {
            None
        }
    }

    /// The model for a Qwen OAuth request: the caller's choice or `model.name` when the
    /// OAuth tier serves it, else the default, with a warning naming the refused model.
    pub fn oauth_model(&self, requested: Option<&str>, warnings: &mut Vec<String>) -> String {
        match requested.or_else(|| self.settings.model()) {
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
}
