//! The Qwen OAuth credential set, as Qwen Code keeps it in `~/.qwen/oauth_creds.json`.
//! Tokens are `SecretString`s: zeroized on drop, never printed by `Debug`.
use secrecy::{ExposeSecret, SecretString};

use crate::account::AccountId;

/// Qwen Code refuses a token that expires within this window; so do we.
pub const EXPIRY_BUFFER_MS: i64 = 30_000;

/// Used when the credentials carry no `resource_url`.
pub const DEFAULT_API_BASE: &str = "https://dashscope.aliyuncs.com/compatible-mode/v1";

#[derive(Clone)]
pub struct Credentials {
    pub access_token: SecretString,
    pub refresh_token: SecretString,
    pub token_type: String,
    /// Milliseconds since the Unix epoch.
    pub expiry_date: i64,
    /// Host (or URL) of the model API this account uses.
    pub resource_url: Option<String>,
    /// The account these tokens belong to, when the server named it. Not part of Qwen
    /// Code's file; derived from the token answer or from a JWT access token.
    pub account: Option<AccountId>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expiry_date", &self.expiry_date)
            .field("resource_url", &self.resource_url)
            .field("account", &self.account)
            .finish()
    }
}

/// Equal tokens are the same login: `account` is derived from them (or was learnt with
/// them), so a copy read back from a file that cannot hold it still compares equal.
impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        self.access_token.expose_secret() == other.access_token.expose_secret()
            && self.refresh_token.expose_secret() == other.refresh_token.expose_secret()
            && self.token_type == other.token_type
            && self.expiry_date == other.expiry_date
            && self.resource_url == other.resource_url
    }
}

impl Credentials {
    /// True when the access token is usable for at least the 30 s buffer at `now_ms`.
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        self.expiry_date - EXPIRY_BUFFER_MS > now_ms
    }

    /// The OpenAI-compatible API base for this account, following Qwen Code: a bare host
    /// becomes `https://<host>/v1`; a value with a scheme is kept and gets `/v1` unless it
    /// already ends with it.
    pub fn api_base_url(&self) -> String {
        api_base_url(self.resource_url.as_deref())
    }
}

pub fn api_base_url(resource_url: Option<&str>) -> String {
    let Some(raw) = resource_url.map(str::trim).filter(|s| !s.is_empty()) else {
        return DEFAULT_API_BASE.to_string();
    };
    let with_scheme = if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let trimmed = with_scheme.trim_end_matches('/');
    if trimmed.ends_with("/v1") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(expiry: i64, resource: Option<&str>) -> Credentials {
        Credentials {
            access_token: SecretString::from("at-secret"),
            refresh_token: SecretString::from("rt-secret"),
            token_type: "Bearer".into(),
            expiry_date: expiry,
            resource_url: resource.map(String::from),
            account: None,
        }
    }

    #[test]
    fn debug_never_shows_tokens() {
        let s = format!("{:?}", creds(1, None));
        assert!(!s.contains("at-secret") && !s.contains("rt-secret"), "{s}");
        assert!(s.contains("[redacted]"));
    }

    #[test]
    fn validity_honours_the_30s_buffer() {
        let c = creds(100_000, None);
        assert!(c.is_valid_at(69_999));
        assert!(!c.is_valid_at(70_000));
    }

    #[test]
    fn base_url_rules() {
        assert_eq!(api_base_url(None), DEFAULT_API_BASE);
        assert_eq!(api_base_url(Some("")), DEFAULT_API_BASE);
        assert_eq!(
            api_base_url(Some("portal.qwen.ai")),
            "https://portal.qwen.ai/v1"
        );
        assert_eq!(
            api_base_url(Some("http://127.0.0.1:8080")),
            "http://127.0.0.1:8080/v1"
        );
        assert_eq!(
            api_base_url(Some("http://127.0.0.1:8080/v1/")),
            "http://127.0.0.1:8080/v1"
        );
    }
}
