//! The Qwen OAuth wire protocol: device authorization with PKCE (RFC 8628 + RFC 7636),
//! device-token polling and token refresh, sending byte for byte what Qwen Code sends
//! (`shared/conformance/oauth/*.json`).
//!
//! Hand-rolled on `reqwest` (rustls, no OpenSSL) rather than built on the `oauth2` crate:
//! Qwen's endpoints want an `x-request-id` on the device request only; on refresh, 400/401
//! must be told apart from every other failure because only those end the login; the poll
//! loop must report progress, retry 5xx and network errors until the code expires, and turn
//! malformed bodies into typed errors. `oauth2`'s device poller does none of that, so the
//! adapter around it would be larger than the three form posts below.
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

use crate::account::AccountId;
use crate::credentials::Credentials;

mod device;
mod pkce;

#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;

pub use device::{DeviceFlow, DeviceFlowConfig, DeviceFlowError, DeviceFlowEvent, DevicePrompt};
pub use pkce::{PkceVerifier, s256_challenge};

pub const DEFAULT_BASE_URL: &str = "https://chat.qwen.ai";
pub const CLIENT_ID: &str = "f0304373b74a44d2b584a3fb70ca9e56";
pub const SCOPE: &str = "openid profile email model.completion";
pub const DEVICE_CODE_PATH: &str = "/api/v1/oauth2/device/code";
pub const TOKEN_PATH: &str = "/api/v1/oauth2/token";
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Qwen Code aborts a refresh after 30 s; we use the same bound for every request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Server-provided text is kept short in errors: it reaches logs and RPC replies.
const MAX_SERVER_TEXT: usize = 200;

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// `https://chat.qwen.ai` unless `QWEN_OAUTH_BASE_URL` says otherwise (read by the caller).
    pub base_url: String,
    pub client_id: String,
    pub request_timeout: Duration,
    pub user_agent: String,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            client_id: CLIENT_ID.to_string(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            user_agent: concat!("qwend/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl OAuthConfig {
    pub fn with_base_url(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }
}

/// Failures of one request to the authorization server. The texts carry HTTP statuses and
/// the server's OAuth error code/description (scrubbed of the secrets we sent), never a
/// token, device code or verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("could not reach the authorization server: {reason}")]
    Network { reason: String },
    #[error("the authorization server did not answer within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("the authorization server failed with HTTP {status}")]
    ServerError { status: u16 },
    #[error("malformed answer from the authorization server (HTTP {status}): {detail}")]
    Malformed { status: u16, detail: String },
    #[error("the authorization server refused the request (HTTP {status}){}", describe(.error, .description))]
    Rejected {
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    #[error("invalid OAuth configuration: {0}")]
    Config(String),
    #[error("the system random generator failed: {0}")]
    Random(String),
}

fn describe(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(": {e}: {d}"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

impl OAuthError {
    /// Worth retrying later with the same grant: the server never judged the request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Network { .. } | Self::Timeout { .. } | Self::ServerError { .. }
        )
    }
}

/// What a refresh attempt means for the stored credentials, following Qwen Code: only an
/// HTTP 400/401 from the token endpoint ends the login (Qwen Code deletes the credential
/// file then); anything else, including other 4xx and garbage bodies, keeps them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("the login has ended, sign in again: {reason}")]
    LoginEnded { status: u16, reason: String },
    #[error("token refresh failed, credentials kept: {0}")]
    Transient(#[from] OAuthError),
}

/// A successful answer from the token endpoint (device grant or refresh).
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: Option<String>,
    pub expires_in_secs: u64,
    pub resource_url: Option<String>,
    /// The account the answer names (its `id_token`, or a JWT access token).
    pub account: Option<AccountId>,
}

impl TokenResponse {
    /// The credentials this answer yields at `now_ms`. As in Qwen Code, a refresh token
    /// replaces the old one only when the server sent one. Where Qwen Code would drop
    /// `resource_url`/`token_type` because the answer lacks them, the previous values are
    /// kept: losing `resource_url` would silently send the account to the default API host.
    pub fn into_credentials(self, previous: Option<&Credentials>, now_ms: i64) -> Credentials {
        let refresh_token = self
            .refresh_token
            .or_else(|| previous.map(|p| p.refresh_token.clone()))
            // A login answer without a refresh token stays usable until it expires; the
            // token manager then asks for a new login, as Qwen Code does.
            .unwrap_or_else(|| SecretString::from(String::new()));
        let token_type = self
            .token_type
            .or_else(|| previous.map(|p| p.token_type.clone()))
            .unwrap_or_else(|| "Bearer".to_string());
        let resource_url = self
            .resource_url
            .or_else(|| previous.and_then(|p| p.resource_url.clone()));
        // A refresh stays with the account it refreshes; a login names its own or none.
        let account = self
            .account
            .or_else(|| previous.and_then(|p| p.account.clone()));
        let lifetime_ms = i64::try_from(self.expires_in_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        Credentials {
            access_token: self.access_token,
            refresh_token,
            token_type,
            expiry_date: now_ms.saturating_add(lifetime_ms),
            resource_url,
            account,
        }
    }
}

/// The device authorization answer (RFC 8628 §3.2).
#[derive(Clone)]
pub struct DeviceAuthorization {
    pub device_code: SecretString,
    pub user_code: String,
    pub verification_uri: String,
    /// Qwen always sends it; when a server does not, the plain URI is used instead.
    pub verification_uri_complete: String,
    pub expires_in_secs: u64,
    pub interval_secs: Option<u64>,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &"[redacted]")
            .field("user_code", &"[redacted]")
            .field("verification_uri", &self.verification_uri)
            .field("expires_in_secs", &self.expires_in_secs)
            .field("interval_secs", &self.interval_secs)
            .finish()
    }
}

/// One device-token poll, classified (RFC 8628 §3.5).
#[derive(Debug)]
pub enum PollOutcome {
    Granted(TokenResponse),
    Pending,
    SlowDown,
    ExpiredToken,
    AccessDenied,
}

/// The HTTP side of Qwen OAuth. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    device_url: String,
    token_url: String,
    client_id: String,
    request_timeout: Duration,
}

/// Token-endpoint answers before the grant-specific reading.
enum TokenReply {
    Token(TokenResponse),
    OAuthError {
        status: u16,
        error: String,
        description: Option<String>,
    },
}

impl OAuthClient {
    pub fn new(config: OAuthConfig) -> Result<Self, OAuthError> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(OAuthError::Config(format!(
                "base URL must start with https:// or http://, got {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            // A redirected POST turns into a GET without its form; a token endpoint that
            // redirects is misconfigured and is reported as such.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        Ok(Self {
            http,
            device_url: format!("{base}{DEVICE_CODE_PATH}"),
            token_url: format!("{base}{TOKEN_PATH}"),
            client_id: config.client_id,
            request_timeout: config.request_timeout,
        })
    }

    /// `POST /api/v1/oauth2/device/code` with the PKCE challenge of `verifier`.
    pub async fn request_device_authorization(
        &self,
        verifier: &PkceVerifier,
    ) -> Result<DeviceAuthorization, OAuthError> {
        let challenge = verifier.challenge();
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", SCOPE),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let (status, body) = self.post(&self.device_url, &form, true).await?;
        let secrets = [verifier.secret().expose_secret()];
        if status >= 500 {
            return Err(OAuthError::ServerError { status });
        }
        let parsed = parse_object(&body);
        let obj = match parsed {
            Ok(obj) if (200..300).contains(&status) && !obj.contains_key("error") => obj,
            Ok(obj) => return Err(rejected(status, &obj, &secrets)),
            Err(detail) if (200..300).contains(&status) => {
                return Err(OAuthError::Malformed { status, detail });
            }
            Err(_) => return Err(rejected(status, &Map::new(), &secrets)),
        };
        let malformed = |detail: &str| OAuthError::Malformed {
            status,
            detail: detail.to_string(),
        };
        let device_code =
            string_field(&obj, "device_code").ok_or_else(|| malformed("missing device_code"))?;
        let user_code =
            string_field(&obj, "user_code").ok_or_else(|| malformed("missing user_code"))?;
        let verification_uri = string_field(&obj, "verification_uri")
            .ok_or_else(|| malformed("missing verification_uri"))?;
        let verification_uri_complete = string_field(&obj, "verification_uri_complete")
            .unwrap_or_else(|| verification_uri.clone());
        let expires_in_secs = seconds_field(&obj, "expires_in")
            .map_err(|d| malformed(&d))?
            .ok_or_else(|| malformed("missing expires_in"))?;
        let interval_secs = seconds_field(&obj, "interval").map_err(|d| malformed(&d))?;
        Ok(DeviceAuthorization {
            device_code: SecretString::from(device_code),
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in_secs,
            interval_secs,
        })
    }

    /// One `POST /api/v1/oauth2/token` with the device-code grant.
    pub async fn poll_device_token(
        &self,
        device_code: &SecretString,
        verifier: &PkceVerifier,
    ) -> Result<PollOutcome, OAuthError> {
        let form = [
            ("grant_type", DEVICE_CODE_GRANT_TYPE),
            ("client_id", self.client_id.as_str()),
            ("device_code", device_code.expose_secret()),
            ("code_verifier", verifier.secret().expose_secret()),
        ];
        let (status, body) = self.post(&self.token_url, &form, false).await?;
        let secrets = [
            device_code.expose_secret(),
            verifier.secret().expose_secret(),
        ];
        // Qwen Code answers slow_down with 429; any 429 is read as "poll less often".
        if status == 429 {
            return Ok(PollOutcome::SlowDown);
        }
        match token_reply(status, &body, &secrets)? {
            TokenReply::Token(t) => Ok(PollOutcome::Granted(t)),
            TokenReply::OAuthError {
                status,
                error,
                description,
            } => match error.as_str() {
                "authorization_pending" => Ok(PollOutcome::Pending),
                "slow_down" => Ok(PollOutcome::SlowDown),
                "expired_token" => Ok(PollOutcome::ExpiredToken),
                "access_denied" => Ok(PollOutcome::AccessDenied),
                _ => Err(OAuthError::Rejected {
                    status,
                    error: Some(error),
                    description,
                }),
            },
        }
    }

    /// `POST /api/v1/oauth2/token` with the refresh grant.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<TokenResponse, RefreshError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("client_id", self.client_id.as_str()),
        ];
        let (status, body) = self.post(&self.token_url, &form, false).await?;
        let secrets = [refresh_token.expose_secret()];
        if status == 400 || status == 401 {
            let obj = parse_object(&body).unwrap_or_default();
            let reason = match rejected(status, &obj, &secrets) {
                OAuthError::Rejected {
                    error, description, ..
                } if error.is_some() || description.is_some() => {
                    format!("HTTP {status}{}", describe(&error, &description))
                }
                _ => format!("HTTP {status}: refresh token expired or invalid"),
            };
            return Err(RefreshError::LoginEnded { status, reason });
        }
        match token_reply(status, &body, &secrets)? {
            TokenReply::Token(t) => Ok(t),
            TokenReply::OAuthError {
                status,
                error,
                description,
            } => Err(RefreshError::Transient(OAuthError::Rejected {
                status,
                error: Some(error),
                description,
            })),
        }
    }

    /// Posts `form`, encoded exactly as Qwen Code's `encodeURIComponent` join does, and
    /// returns the status and the whole body.
    async fn post(
        &self,
        url: &str,
        form: &[(&str, &str)],
        with_request_id: bool,
    ) -> Result<(u16, Vec<u8>), OAuthError> {
        let mut req = self
            .http
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(encode_form(form));
        if with_request_id {
            req = req.header("x-request-id", uuid::Uuid::new_v4().to_string());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Ok((status, body.to_vec()))
    }

    fn transport_error(&self, e: &reqwest::Error) -> OAuthError {
        if e.is_timeout() {
            return OAuthError::Timeout {
                timeout: self.request_timeout,
            };
        }
        // The chain names the cause (refused, DNS, TLS, reset); the request body, where the
        // secrets are, never appears in reqwest's errors.
        let mut reason = if e.is_connect() {
            "connection failed".to_string()
        } else if e.is_body() || e.is_decode() {
            "connection broke while reading the answer".to_string()
        } else {
            "request failed".to_string()
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        OAuthError::Network { reason }
    }
}

/// `application/x-www-form-urlencoded` the way Qwen Code builds it: `encodeURIComponent`
/// on names and values (space as `%20`, not `+`), joined with `&`, in the given order, so
/// the body is byte-identical to the one the server already accepts from Qwen Code.
pub fn encode_form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(k, &mut out);
        out.push('=');
        encode_component(v, &mut out);
    }
    out
}

fn encode_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(b as char),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
}

/// Reads a token-endpoint answer: a token, an OAuth error object, or a typed failure.
fn token_reply(status: u16, body: &[u8], secrets: &[&str]) -> Result<TokenReply, OAuthError> {
    if status >= 500 {
        return Err(OAuthError::ServerError { status });
    }
    let ok = (200..300).contains(&status);
    let obj = match parse_object(body) {
        Ok(obj) => obj,
        Err(detail) if ok => return Err(OAuthError::Malformed { status, detail }),
        Err(_) => return Err(rejected(status, &Map::new(), secrets)),
    };
    if let Some(error) = string_field(&obj, "error") {
        return Ok(TokenReply::OAuthError {
            status,
            error: scrub(&error, secrets),
            description: string_field(&obj, "error_description").map(|d| scrub(&d, secrets)),
        });
    }
    if !ok {
        return Err(rejected(status, &obj, secrets));
    }
    let malformed = |detail: String| OAuthError::Malformed { status, detail };
    let access_token = string_field(&obj, "access_token")
        .ok_or_else(|| malformed("missing access_token".into()))?;
    let expires_in_secs = seconds_field(&obj, "expires_in")
        .map_err(malformed)?
        .ok_or_else(|| malformed("missing expires_in".into()))?;
    // Only the account's hash is kept; the id_token itself is dropped here, as Qwen Code
    // drops it.
    let account = string_field(&obj, "id_token")
        .and_then(|t| AccountId::from_jwt(&t))
        .or_else(|| AccountId::from_jwt(&access_token));
    Ok(TokenReply::Token(TokenResponse {
        account,
        access_token: SecretString::from(access_token),
        refresh_token: string_field(&obj, "refresh_token").map(SecretString::from),
        token_type: string_field(&obj, "token_type"),
        expires_in_secs,
        resource_url: string_field(&obj, "resource_url"),
    }))
}

fn rejected(status: u16, obj: &Map<String, Value>, secrets: &[&str]) -> OAuthError {
    OAuthError::Rejected {
        status,
        error: string_field(obj, "error").map(|e| scrub(&e, secrets)),
        description: string_field(obj, "error_description").map(|d| scrub(&d, secrets)),
    }
}

/// Parses a JSON object. The error text names only the position and kind of the problem:
/// serde_json's own messages may quote the offending value, which can be a token.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("expected a JSON object".to_string()),
        Err(e) if body.is_empty() => Err(format!("empty body ({:?})", e.classify())),
        Err(e) => Err(format!(
            "invalid JSON ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A whole number of seconds; servers differ on number vs numeric string.
fn seconds_field(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    let invalid = || format!("{key} is not a non-negative number");
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(invalid),
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

/// Server text goes into errors; a server that echoes what we sent must not put a secret
/// into our logs through them.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "[redacted]");
    }
    if out.chars().count() > MAX_SERVER_TEXT {
        out = out.chars().take(MAX_SERVER_TEXT).collect::<String>() + "…";
    }
    out
}
