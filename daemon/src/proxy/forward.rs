//! One proxied request: secret, body, credentials, permit, upstream, outcome, response.
//!
//! The response body is the upstream's body itself (hyper pulls from reqwest only when
//! the tool's socket takes more), so an SSE answer flows chunk by chunk and a tool that
//! reads slowly slows the upstream read instead of growing a buffer here.
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::Proxy;
use crate::auth::{AuthError, AuthType};
use crate::config::OPENAI_ACCOUNT;
use crate::quota::{Decision, Outcome, Reason};
use crate::tokens::TokenError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Error bodies read to find the upstream's error code (OpenAI-style errors are small).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Paths whose JSON body names a model: one that names none gets the method's default.
const MODEL_PATHS: &[&str] = &["/chat/completions", "/completions", "/embeddings"];

/// Why a request is answered by the proxy itself.
#[derive(Debug)]
enum Reject {
    Unauthorized,
    NotFound,
    TooLarge(usize),
    BodyTimeout,
    BadBody(String),
    TooManyInFlight,
    Quota { retry_after_ms: u64, reason: Reason },
    Credentials(AuthError),
    Ledger(String),
    Upstream(String),
}

impl Reject {
    fn into_response(self) -> Response<ProxyBody> {
        use StatusCode as S;
        let (status, kind, code, message) = match self {
            Reject::Unauthorized => (
                S::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided: this proxy accepts only the secret of a running `qwen exec` session".to_string(),
            ),
            Reject::NotFound => (
                S::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                "this proxy serves the OpenAI-compatible API under /v1".to_string(),
            ),
            Reject::TooLarge(limit) => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                format!("the request body is larger than {limit} bytes"),
            ),
            Reject::BodyTimeout => (
                S::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                "the request body did not arrive in time".to_string(),
            ),
            Reject::BadBody(why) => (
                S::BAD_REQUEST,
                "invalid_request_error",
                "bad_request",
                format!("cannot read the request body: {why}"),
            ),
            Reject::TooManyInFlight => (
                S::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                "too many concurrent requests with this session's key".to_string(),
            ),
            Reject::Quota {
                retry_after_ms,
                reason,
            } => {
                let mut r = openai_error(
                    S::TOO_MANY_REQUESTS,
                    "requests",
                    if reason == Reason::Day {
                        "insufficient_quota"
                    } else {
                        "rate_limit_exceeded"
                    },
                    &format!(
                        "qwend's shared quota refused the request ({}); retry in {} s",
                        match reason {
                            Reason::Minute => "requests per minute used up",
                            Reason::Day => "requests per day used up",
                            Reason::CoolDown => "cooling down after the API's 429",
                        },
                        retry_after_ms.div_ceil(1000)
                    ),
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_ms.div_ceil(1000).max(1)),
                );
                return r;
            }
            Reject::Credentials(e) => {
                let status = match &e {
                    AuthError::Token(TokenError::Transient { .. }) => S::SERVICE_UNAVAILABLE,
                    _ => S::UNAUTHORIZED,
                };
                (
                    status,
                    "invalid_request_error",
                    "credentials_unavailable",
                    format!("qwend has no usable credentials: {e}"),
                )
            }
            Reject::Ledger(e) => (
                S::SERVICE_UNAVAILABLE,
                "api_error",
                "quota_unavailable",
                format!("qwend's quota ledger failed: {e}"),
            ),
            Reject::Upstream(e) => (
                S::BAD_GATEWAY,
                "api_error",
                "upstream_unreachable",
                format!("cannot reach the model API: {e}"),
            ),
        };
        openai_error(status, kind, code, &message)
    }
}

fn openai_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<ProxyBody> {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// Headers as they may be logged: credentials left out.
struct Redacted<'a>(&'a HeaderMap);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .filter(|(k, _)| !is_credential(k))
                    .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>"))),
            )
            .finish()
    }
}

fn is_credential(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "api-key" | "x-api-key"
    )
}

/// Connection-level headers (RFC 9110 §7.6.1) are not forwarded either way.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

pub async fn handle(proxy: &Proxy, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    tracing::debug!(%method, %path, headers = ?Redacted(req.headers()), "proxy request");
    let resp = match serve(proxy, req).await {
        Ok(r) => r,
        Err(reject) => reject.into_response(),
    };
    tracing::info!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "proxied"
    );
    resp
}

async fn serve(proxy: &Proxy, req: Request<Incoming>) -> Result<Response<ProxyBody>, Reject> {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let session = key
        .and_then(|k| proxy.secrets.find(k))
        .ok_or(Reject::Unauthorized)?;
    let rest = match req.uri().path().strip_prefix("/v1") {
        Some(r) if r.is_empty() || r.starts_with('/') => r.to_string(),
        _ => return Err(Reject::NotFound),
    };
    let inflight = session
        .inflight
        .clone()
        .try_acquire_owned()
        .map_err(|_| Reject::TooManyInFlight)?;
    let config = &proxy.config;

    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body as u64) {
        return Err(Reject::TooLarge(config.max_body));
    }
    let body = match tokio::time::timeout(
        config.body_timeout,
        Limited::new(body, config.max_body).collect(),
    )
    .await
    {
        Err(_) => return Err(Reject::BodyTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Reject::TooLarge(config.max_body));
        }
        Ok(Err(e)) => return Err(Reject::BadBody(e.to_string())),
        Ok(Ok(c)) => c.to_bytes(),
    };

    let mut ready = proxy
        .auth
        .credentials(session.ctx.clone(), None, None)
        .await
        .map_err(Reject::Credentials)?;
    let body = if parts.method == Method::POST && MODEL_PATHS.contains(&rest.as_str()) {
        with_default_model(body, &ready.model)
    } else {
        body
    };
    let account = match ready.auth_type {
        AuthType::OpenAi => std::sync::Arc::from(OPENAI_ACCOUNT),
        AuthType::QwenOAuth => proxy.auth.oauth_account(),
    };
    let deadline = proxy.clock.now_ms()
        + i64::try_from(config.permit_wait.as_millis()).unwrap_or(i64::MAX / 2);
    match proxy
        .quota
        .acquire_wait(&account, deadline)
        .await
        .map_err(|e| Reject::Ledger(e.to_string()))?
    {
        Decision::Granted(_) => proxy.announce_quota(&account),
        Decision::Refused {
            retry_after_ms,
            reason,
        } => {
            return Err(Reject::Quota {
                retry_after_ms,
                reason,
            });
        }
    }
    proxy
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let http = proxy.http().map_err(Reject::Upstream)?;
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        let drop = is_hop_by_hop(k)
            || is_credential(k)
            || k == header::HOST
            || k == header::CONTENT_LENGTH
            // Uncompressed answers: the outcome check reads error bodies, and on loopback
            // compression buys nothing.
            || k == header::ACCEPT_ENCODING;
        if !drop {
            headers.append(k.clone(), v.clone());
        }
    }
    let mut retried = false;
    let upstream = loop {
        let url = format!("{}{rest}{query}", ready.base_url.trim_end_matches('/'));
        let resp = send(
            http,
            &parts.method,
            &url,
            &headers,
            &ready.token,
            body.clone(),
        )
        .await?;
        // A 401 from Qwen OAuth: the token expired or was revoked early. One refresh
        // through the single flight (many tools seeing the same 401 cause one refresh),
        // one retry; the tool never sees the first answer.
        if resp.status() == StatusCode::UNAUTHORIZED
            && ready.auth_type == AuthType::QwenOAuth
            && !retried
        {
            retried = true;
            match proxy
                .auth
                .credentials(session.ctx.clone(), None, Some(ready.token.clone()))
                .await
            {
                Ok(fresh) if fresh.token.expose_secret() != ready.token.expose_secret() => {
                    tracing::info!("upstream refused the token; retrying with a fresh one");
                    ready = fresh;
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "no fresh token after a 401"),
            }
        }
        break resp;
    };
    let resp = respond(proxy, &account, upstream).await?;
    // The request counts as in flight until its body has been sent (or dropped).
    Ok(resp.map(|body| {
        body.map_frame(move |frame| {
            let _held = &inflight;
            frame
        })
        .boxed()
    }))
}

async fn send(
    http: &reqwest::Client,
    method: &Method,
    url: &str,
    headers: &HeaderMap,
    token: &SecretString,
    body: Bytes,
) -> Result<reqwest::Response, Reject> {
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        .map_err(|_| Reject::Upstream("the bearer token is not a valid header value".into()))?;
    auth.set_sensitive(true);
    http.request(method.clone(), url)
        .headers(headers.clone())
        .header(header::AUTHORIZATION, auth)
        .body(body)
        .send()
        .await
        // Without the URL's query: reqwest's message carries the URL, which is not secret,
        // but keep the error short.
        .map_err(|e| Reject::Upstream(e.without_url().to_string()))
}

/// Reports the outcome to the quota and turns the upstream answer into ours.
async fn respond(
    proxy: &Proxy,
    account: &str,
    upstream: reqwest::Response,
) -> Result<Response<ProxyBody>, Reject> {
    let status = upstream.status();
    let resp: Response<reqwest::Body> = upstream.into();
    let (mut parts, body) = resp.into_parts();
    let hop: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for k in hop {
        parts.headers.remove(k);
    }
    if status != StatusCode::TOO_MANY_REQUESTS {
        proxy.quota.report_outcome(account, Outcome::Success);
        let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
        return Ok(Response::from_parts(parts, body));
    }
    // A 429: read the (small) error body to tell a used-up day from a rate limit, then
    // pass it through as it came.
    let retry_after_ms = parts
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_ms);
    let bytes = match Limited::new(body, ERROR_BODY_LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let code = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from));
    let outcome = if code.as_deref() == Some("insufficient_quota") {
        Outcome::DailyExhausted { retry_after_ms }
    } else {
        Outcome::RateLimited { retry_after_ms }
    };
    tracing::info!(%account, ?outcome, "upstream limit through the proxy");
    proxy.quota.report_outcome(account, outcome);
    proxy.announce_quota(account);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Response::from_parts(parts, full(bytes)))
}

/// `Retry-After` as seconds or an HTTP date, in ms from now.
fn retry_after_ms(v: &str) -> Option<u64> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// The body with `"model"` set when it is a JSON object that names none; anything else
/// is forwarded untouched (the upstream judges it).
fn with_default_model(body: Bytes, model: &str) -> Bytes {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let named = obj
        .get("model")
        .is_some_and(|m| m.as_str().is_some_and(|s| !s.is_empty()));
    if named {
        return body;
    }
    obj.insert("model".into(), Value::String(model.to_string()));
    Bytes::from(Value::Object(obj).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_is_filled_in_and_a_named_one_kept() {
        let b = with_default_model(Bytes::from(r#"{"messages":[],"stream":true}"#), "m");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["stream"], true);
        for (body, model) in [
            (r#"{"model":"x","messages":[]}"#, "x"),
            (r#"{"model":"","messages":[]}"#, "m"),
            (r#"{"model":null}"#, "m"),
        ] {
            let v: Value =
                serde_json::from_slice(&with_default_model(Bytes::from(body), "m")).unwrap();
            assert_eq!(v["model"], model, "{body}");
        }
        for body in ["not json", "[1,2]", ""] {
            assert_eq!(with_default_model(Bytes::from(body), "m"), body);
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after_ms("7"), Some(7000));
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(120);
        let ms = retry_after_ms(&httpdate::fmt_http_date(later)).unwrap();
        assert!((100_000..=120_000).contains(&ms), "{ms}");
        assert_eq!(retry_after_ms("soon"), None);
    }

    #[test]
    fn logged_headers_leave_credentials_out() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        h.insert("x-api-key", HeaderValue::from_static("s3cret"));
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("OpenAI/Python"),
        );
        let shown = format!("{:?}", Redacted(&h));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("OpenAI/Python"));
    }
}
