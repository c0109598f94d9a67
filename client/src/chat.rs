//! One OpenAI-compatible chat completion, streamed (`stream: true`, server-sent events).
//! The bearer token is a secret: it never appears in an error, and anything the server
//! sends back is scrubbed of it before it is shown.
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::sse::SseParser;

/// What to send. Not `Debug`: it holds the token.
pub struct ChatRequest<'a> {
    pub base_url: &'a str,
    pub token: &'a str,
    pub model: &'a str,
    /// The conversation so far, the newest user message last.
    pub messages: &'a [Message],
}

/// One turn of a conversation, as the API takes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// The assembled answer.
#[derive(Debug, Default)]
pub struct Completion {
    pub content: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    /// The model the server says answered (may differ from the one requested).
    pub model: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A non-2xx answer; `detail` is the server's message, scrubbed of the token.
    #[error("the model API at {url} answered HTTP {status}{}", detail_suffix(.detail))]
    Http {
        url: String,
        status: u16,
        retry_after_ms: Option<u64>,
        daily_exhausted: bool,
        detail: String,
    },
    #[error("cannot reach the model API at {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("the model API reported an error mid-answer: {0}")]
    Stream(String),
    #[error("the model API sent something that is not a chat completion stream: {0}")]
    Malformed(String),
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

pub fn client() -> Result<reqwest::Client, ChatError> {
    reqwest::Client::builder()
        .user_agent(concat!("qwen/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(20))
        // Streams can be long; a silent connection is what must fail, not a long answer.
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| ChatError::Network {
            url: String::new(),
            reason: innermost(&e),
        })
}

pub fn endpoint(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// Send the request; `on_token` gets each piece of content as it arrives.
pub async fn send(
    http: &reqwest::Client,
    req: &ChatRequest<'_>,
    mut on_token: impl FnMut(&str),
) -> Result<Completion, ChatError> {
    let url = endpoint(req.base_url);
    let body = json!({
        "model": req.model,
        "messages": req.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let network = |e: reqwest::Error| ChatError::Network {
        url: url.clone(),
        reason: scrub(&innermost(&e), req.token),
    };
    let mut resp = http
        .post(&url)
        .bearer_auth(req.token)
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(network)?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after_ms = retry_after_ms(resp.headers(), SystemTime::now());
        let text = read_limited(&mut resp, 64 * 1024).await;
        let (detail, code) = error_detail(&text);
        return Err(ChatError::Http {
            url,
            status: status.as_u16(),
            retry_after_ms,
            daily_exhausted: status.as_u16() == 429
                && code.as_deref() == Some("insufficient_quota"),
            detail: scrub(&detail, req.token),
        });
    }
    let mut parser = SseParser::default();
    let mut done = Completion::default();
    let mut finished = false;
    while !finished {
        let events = match resp.chunk().await.map_err(network)? {
            Some(bytes) => parser.feed(&bytes),
            None => {
                finished = true;
                parser.finish()
            }
        };
        for data in events {
            if data.trim() == "[DONE]" {
                return Ok(done);
            }
            apply_event(&data, &mut done, &mut on_token).map_err(|e| match e {
                ChatError::Stream(m) => ChatError::Stream(scrub(&m, req.token)),
                ChatError::Malformed(m) => ChatError::Malformed(scrub(&m, req.token)),
                other => other,
            })?;
        }
    }
    // Some servers close without `[DONE]`; what arrived is the answer, if anything did.
    if done.finish_reason.is_none() && done.content.is_empty() {
        return Err(ChatError::Malformed(
            "the stream ended before any answer".into(),
        ));
    }
    Ok(done)
}

fn apply_event(
    data: &str,
    done: &mut Completion,
    on_token: &mut impl FnMut(&str),
) -> Result<(), ChatError> {
    let v: Value = serde_json::from_str(data)
        .map_err(|_| ChatError::Malformed(format!("not JSON: {}", truncate(data, 120))))?;
    if let Some(err) = v.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Err(ChatError::Stream(truncate(&msg, 300)));
    }
    if let Some(m) = v.get("model").and_then(Value::as_str) {
        done.model = Some(m.to_string());
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        done.usage = Some(u.clone());
    }
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        if let Some(t) = choice
            .get("delta")
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            done.content.push_str(t);
            on_token(t);
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            done.finish_reason = Some(r.to_string());
        }
    }
    Ok(())
}

async fn read_limited(resp: &mut reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(b)) => buf.extend_from_slice(&b),
            _ => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The server's message and error code from an OpenAI-style error body
/// (`{"error": {"message", "code"|"type"}}`), else the first line of the text.
fn error_detail(body: &str) -> (String, Option<String>) {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let err = v.get("error").unwrap_or(&v);
        let code = ["code", "type"]
            .iter()
            .find_map(|k| err.get(k).and_then(Value::as_str))
            .map(str::to_string);
        if let Some(m) = err.get("message").and_then(Value::as_str) {
            return (truncate(m, 300), code);
        }
        return (truncate(&err.to_string(), 300), code);
    }
    let line = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    (truncate(line.trim(), 300), None)
}

/// `retry-after-ms` (OpenAI), else `Retry-After` in seconds or as an HTTP date.
pub fn retry_after_ms(h: &reqwest::header::HeaderMap, now: SystemTime) -> Option<u64> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(ms.ceil() as u64);
    }
    let v = get("retry-after")?;
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).ceil() as u64);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default().as_millis() as u64)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

/// Replace the token wherever it appears (servers echo rejected keys).
pub fn scrub(text: &str, token: &str) -> String {
    if token.len() < 4 {
        return text.to_string();
    }
    text.replace(token, "[redacted]")
}

/// The root cause of a reqwest error ("Connection refused"), which says more than its
/// outer "error sending request".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    let root = cur.to_string();
    if e.to_string().contains("timed out") && !root.contains("timed out") {
        return format!("timed out ({root})");
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_ms(&h, now), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_ms(&h, now), Some(7000));
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(now + Duration::from_secs(30))).unwrap(),
        );
        assert_eq!(retry_after_ms(&h, now), Some(30_000));
        h.insert("retry-after-ms", HeaderValue::from_static("1500.2"));
        assert_eq!(retry_after_ms(&h, now), Some(1501));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after_ms(&h, now), None);
    }

    #[test]
    fn error_bodies() {
        let (m, c) = error_detail(
            r#"{"error":{"message":"Free allocated quota exceeded.","code":"insufficient_quota"}}"#,
        );
        assert_eq!(m, "Free allocated quota exceeded.");
        assert_eq!(c.as_deref(), Some("insufficient_quota"));
        let (m, c) = error_detail("\n  upstream crashed\nstack...");
        assert_eq!((m.as_str(), c), ("upstream crashed", None));
    }

    #[test]
    fn messages_serialise_as_the_api_takes_them() {
        let m = [Message::user("hi"), Message::assistant("hello")];
        assert_eq!(
            serde_json::to_value(m).unwrap(),
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        );
    }

    #[test]
    fn tokens_are_scrubbed() {
        assert_eq!(
            scrub("Incorrect API key provided: sk-abcdef.", "sk-abcdef"),
            "Incorrect API key provided: [redacted]."
        );
    }

    #[test]
    fn deltas_usage_and_errors() {
        let mut done = Completion::default();
        let mut seen = String::new();
        let mut tok = |t: &str| seen.push_str(t);
        apply_event(
            r#"{"model":"m","choices":[{"delta":{"role":"assistant","content":"Hi"}}]}"#,
            &mut done,
            &mut tok,
        )
        .unwrap();
        apply_event(
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            &mut done,
            &mut tok,
        )
        .unwrap();
        apply_event(
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
            &mut done,
            &mut tok,
        )
        .unwrap();
        let e =
            apply_event(r#"{"error":{"message":"overloaded"}}"#, &mut done, &mut tok).unwrap_err();
        assert_eq!(seen, "Hi");
        assert_eq!(done.content, "Hi");
        assert_eq!(done.finish_reason.as_deref(), Some("stop"));
        assert_eq!(done.usage.unwrap()["total_tokens"], 3);
        assert!(e.to_string().contains("overloaded"));
    }
}
