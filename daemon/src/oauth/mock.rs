//! A scriptable stand-in for Qwen's authorization server on 127.0.0.1:0, for tests and the
//! refresh-storm bench. It records every request and answers each path from a queue of
//! scripted replies, then from that path's default. Self-contained (no `crate::` paths) so
//! a bench can include it with `#[path]`.
#![allow(dead_code)] // tests and the bench each use a different part

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

pub const DEVICE_PATH: &str = "/api/v1/oauth2/device/code";
pub const TOKEN_PATH: &str = "/api/v1/oauth2/token";

/// One request as the server saw it. Header names are lower-case.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// A scripted answer.
#[derive(Clone)]
pub struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    delay: Duration,
    gate: Option<Arc<Semaphore>>,
    abort: bool,
    echo: bool,
}

impl Reply {
    pub fn json(status: u16, value: Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string(),
            delay: Duration::ZERO,
            gate: None,
            abort: false,
            echo: false,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self {
            content_type: "text/plain",
            body: body.to_string(),
            ..Self::json(status, Value::Null)
        }
    }

    /// Sends a 200 header, then breaks the connection: a network error mid-answer.
    pub fn abort() -> Self {
        Self {
            abort: true,
            ..Self::json(200, Value::Null)
        }
    }

    /// An OAuth error whose description repeats the request body: a server that echoes
    /// secrets back, to prove they never reach our errors.
    pub fn echo(status: u16) -> Self {
        Self {
            echo: true,
            ..Self::json(status, Value::Null)
        }
    }

    /// Answer only after this long (the handler sleeps; the test does not).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Answer only once a permit is available in `gate` (the permit is consumed), so a
    /// test decides exactly when a request completes.
    pub fn gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    // The answers the conformance oracle's built-in IdP gives.

    pub fn device_code(expires_in: u64, interval: Option<u64>) -> Self {
        let mut v = json!({
            "device_code": "dc-1",
            "user_code": "ABCD-EFGH",
            "verification_uri": "https://chat.qwen.ai/authorize",
            "verification_uri_complete": "https://chat.qwen.ai/authorize?user_code=ABCD-EFGH&client=qwen-code",
            "expires_in": expires_in,
        });
        if let Some(i) = interval {
            v["interval"] = json!(i);
        }
        Self::json(200, v)
    }

    pub fn pending() -> Self {
        Self::json(400, json!({"error": "authorization_pending"}))
    }

    pub fn slow_down() -> Self {
        Self::json(429, json!({"error": "slow_down"}))
    }

    pub fn oauth_error(status: u16, error: &str) -> Self {
        Self::json(status, json!({"error": error}))
    }

    pub fn device_token() -> Self {
        Self::json(
            200,
            json!({
                "access_token": "at-device", "refresh_token": "rt-device", "token_type": "Bearer",
                "expires_in": 3600, "resource_url": "portal.qwen.ai",
                "scope": "openid profile email model.completion",
            }),
        )
    }

    pub fn refresh_ok() -> Self {
        Self::json(
            200,
            json!({
                "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 3600,
                "resource_url": "portal.qwen.ai",
            }),
        )
    }

    pub fn refresh_rotate() -> Self {
        Self::json(
            200,
            json!({
                "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 3600,
                "resource_url": "portal.qwen.ai", "refresh_token": "rt-rotated",
            }),
        )
    }

    pub fn refresh_400() -> Self {
        Self::json(
            400,
            json!({"error": "invalid_grant", "error_description": "refresh token expired"}),
        )
    }

    pub fn refresh_500() -> Self {
        Self::text(500, "boom")
    }

    /// The oracle's `--mock MODE` for the token endpoint's refresh answers.
    pub fn for_mode(mode: &str) -> Option<Self> {
        match mode {
            "refresh-ok" => Some(Self::refresh_ok()),
            "refresh-rotate" => Some(Self::refresh_rotate()),
            "refresh-400" => Some(Self::refresh_400()),
            "refresh-500" => Some(Self::refresh_500()),
            _ => None,
        }
    }
}

struct Inner {
    queues: Mutex<HashMap<String, VecDeque<Reply>>>,
    defaults: Mutex<HashMap<String, Reply>>,
    log: Mutex<Vec<Recorded>>,
    /// Every secret it handed out or was sent, by kind, so a test can look for them in
    /// logs and outputs (client/tests/common/secrets.rs).
    secrets: Mutex<Vec<(&'static str, String)>>,
    count: watch::Sender<usize>,
}

pub struct MockServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            queues: Mutex::default(),
            defaults: Mutex::default(),
            log: Mutex::default(),
            secrets: Mutex::default(),
            count: watch::channel(0).0,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the mock authorization server");
        let addr = listener.local_addr().expect("mock server address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("mock server");
        });
        Self { addr, inner, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues `reply` for the next request to `path`.
    pub fn push(&self, path: &str, reply: Reply) {
        self.inner
            .queues
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .push_back(reply);
    }

    /// The answer for `path` once its queue is empty.
    pub fn set_default(&self, path: &str, reply: Reply) {
        self.inner
            .defaults
            .lock()
            .unwrap()
            .insert(path.to_string(), reply);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.log.lock().unwrap().clone()
    }

    pub fn count(&self, path: &str) -> usize {
        self.inner
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// The secrets it issued (tokens, device codes) and received (verifiers, device codes,
    /// refresh tokens), each with its kind, in the order seen; duplicates included.
    pub fn secrets(&self) -> Vec<(&'static str, String)> {
        self.inner.secrets.lock().unwrap().clone()
    }

    /// Resolves once `n` requests (to any path) have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        let mut rx = self.inner.count.subscribe();
        rx.wait_for(|c| *c >= n).await.expect("mock server alive");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let recorded = Recorded {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let echoed = recorded.body.clone();
    {
        let mut secrets = inner.secrets.lock().unwrap();
        for (field, value) in recorded.form() {
            if let Some(kind) = secret_kind(&field) {
                secrets.push((kind, value));
            }
        }
    }
    inner.log.lock().unwrap().push(recorded);
    inner.count.send_modify(|c| *c += 1);

    let reply = {
        let queued = inner
            .queues
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(VecDeque::pop_front);
        queued.or_else(|| inner.defaults.lock().unwrap().get(&path).cloned())
    };
    let Some(reply) = reply else {
        return response(
            404,
            "application/json",
            json!({"error": "not_found"}).to_string(),
        );
    };
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&reply.body) {
        let mut secrets = inner.secrets.lock().unwrap();
        for (field, value) in fields {
            if let (Some(kind), Value::String(v)) = (secret_kind(&field), value) {
                secrets.push((kind, v));
            }
        }
    }
    if let Some(gate) = &reply.gate {
        gate.acquire().await.expect("gate open").forget();
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.abort {
        let broken = tokio_stream::iter([Err::<Bytes, std::io::Error>(std::io::Error::other(
            "mock connection reset",
        ))]);
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(broken))
            .expect("abort response");
    }
    if reply.echo {
        let body = json!({"error": "invalid_request", "error_description": echoed});
        return response(reply.status, "application/json", body.to_string());
    }
    response(reply.status, reply.content_type, reply.body)
}

/// What a form or JSON field of the OAuth exchange holds, when it is a secret.
fn secret_kind(field: &str) -> Option<&'static str> {
    Some(match field {
        "access_token" => "access token",
        "refresh_token" => "refresh token",
        "device_code" => "device code",
        "code_verifier" => "PKCE verifier",
        "id_token" => "id token",
        _ => return None,
    })
}

fn response(status: u16, content_type: &str, body: String) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header("content-type", content_type)
        .body(Body::from(body))
        .expect("mock response")
}

// Reading the conformance kit (`shared/conformance/oauth/*.json`, beside the repo).

/// The kit's `oauth/` directory: `QWEND_CONFORMANCE_DIR`, else `oauth/` in
/// `QWEN_CONFORMANCE_DIR` (the variable .ci/run reads), else `shared/conformance` beside the
/// checkout. Missing, the comparisons are left out locally (said once on stderr) and fail
/// in CI (`CI` or `QWEND_REQUIRE_ALL`): no silent skip.
fn conformance_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QWEND_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("QWEN_CONFORMANCE_DIR").map(|d| PathBuf::from(d).join("oauth"))
        })
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/oauth")
        });
    if dir.is_dir() {
        return Some(dir);
    }
    let required = ["CI", "QWEND_REQUIRE_ALL"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false")));
    assert!(
        !required,
        "the OAuth conformance kit is not at {}: CI must compare against it (set QWEN_CONFORMANCE_DIR to the kit)",
        dir.display()
    );
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: comparisons with the OAuth conformance kit (not at {}; set QWEN_CONFORMANCE_DIR)",
            dir.display()
        );
    });
    None
}

/// One recorded scenario, or `None` when the kit is not there outside CI (the tests that
/// use it also hard-code what matters, so they stand alone).
pub fn conformance_case(name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(conformance_dir()?.join(format!("{name}.json"))).ok()?;
    Some(serde_json::from_str(&text).expect("conformance case is JSON"))
}

/// Every recorded scenario, by file stem, sorted.
pub fn conformance_cases() -> Vec<(String, Value)> {
    let Some(Ok(entries)) = conformance_dir().map(std::fs::read_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter_map(|n| n.strip_suffix(".json").map(String::from))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| conformance_case(&n).map(|v| (n, v)))
        .collect()
}

/// `"now+3600s"` / `"now-1s"` (how the kit writes times) or a plain number, against `now_ms`.
pub fn conformance_time(v: &Value, now_ms: i64) -> i64 {
    if let Some(n) = v.as_i64() {
        return n;
    }
    let s = v.as_str().expect("a time");
    let rest = s.strip_prefix("now").expect("now±Ns");
    let secs: i64 = rest.trim_end_matches('s').parse().expect("now±Ns");
    now_ms + secs * 1000
}

/// Checks one request against the kit's record: method, path, every header Qwen Code set
/// (with `x-request-id` exactly where Qwen Code sent one, a UUID), and the form's keys in
/// Qwen Code's order with its values, except the `dynamic` (random) ones.
pub fn assert_request_like(rec: &Recorded, expected: &Value, dynamic: &[&str]) {
    assert_eq!(rec.method, expected["method"].as_str().unwrap(), "method");
    assert_eq!(rec.path, expected["path"].as_str().unwrap(), "path");
    let headers = expected["headers"].as_object().expect("headers");
    for (name, value) in headers {
        let ours = rec
            .header(name)
            .unwrap_or_else(|| panic!("header {name} missing"));
        if value == "<uuid>" {
            assert!(is_uuid(ours), "{name}: {ours} is not a UUID");
        } else {
            assert_eq!(ours, value.as_str().unwrap(), "header {name}");
        }
    }
    if !headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("x-request-id"))
    {
        assert_eq!(
            rec.header("x-request-id"),
            None,
            "x-request-id where Qwen Code sends none"
        );
    }
    let form = expected["form"].as_object().expect("form");
    let ours = rec.form();
    let ours_keys: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = form.keys().map(String::as_str).collect();
    assert_eq!(ours_keys, want_keys, "form keys and their order");
    for (k, v) in &ours {
        if !dynamic.contains(&k.as_str()) {
            assert_eq!(Some(v.as_str()), form[k].as_str(), "form field {k}");
        }
    }
}

pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}
