//! The daemon's loopback proxy, driven through `qwen exec` by real clients (the official
//! `openai` Python package, the Qwen Code CLI) and by raw HTTP against the local mock model:
//! secrets, token handling, refresh on 401, streaming, backpressure, quota, loopback only.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use common::oauth_mock::{MockServer, Reply as OAuthReply};
use common::openai_mock::{OpenAiMock, Reply};
use common::*;
use qwend_shared::api::event::Kind;
use qwend_shared::api::events_client::EventsClient;
use qwend_shared::api::proxy_client::ProxyClient;
use qwend_shared::api::{ProxyStatus, ProxyStatusRequest, WatchRequest};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "at-proxy-daemon-only";
const KEY: &str = "sk-proxy-openai-key";
/// A guard against a broken build hanging the suite; never how long a step takes.
const HANG: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python_with_openai() -> Option<PathBuf> {
    python_with(&["openai"])
}

/// Qwen Code's `cli.js`, installed by `.ci/run` into target/qwen-code.
fn qwen_code() -> Option<PathBuf> {
    let cli = std::env::var_os("QWEND_TEST_QWEN_CODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace().join("target/qwen-code/node_modules/@qwen-code/qwen-code/cli.js")
        });
    require(
        &format!("node and the Qwen Code CLI at {}", cli.display()),
        runs("node", "--version") && cli.is_file(),
        ".ci/run installs @qwen-code/qwen-code into target/qwen-code",
    )
    .then_some(cli)
}

/// Qwen OAuth selected, logged in with `access`, the API at `mock`.
fn qwen_oauth(env: &TestEnv, access: &str, mock: &OpenAiMock) {
    let dir = env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        json!({"access_token": access, "refresh_token": "rt-proxy", "token_type": "Bearer",
               "resource_url": format!("http://127.0.0.1:{}", mock.port),
               "expiry_date": now_ms() + 3_600_000})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
}

/// A project whose `.env` selects an API key for `base_url`.
fn openai_project(env: &TestEnv, base_url: &str) -> PathBuf {
    let proj = env.root.path().join("proj");
    std::fs::create_dir_all(proj.join(".qwen")).unwrap();
    std::fs::write(
        proj.join(".qwen/.env"),
        format!("OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL={base_url}\nOPENAI_MODEL=m-env\n"),
    )
    .unwrap();
    proj
}

/// A `qwen exec` whose child prints what it was given and waits for its stdin to close.
struct Exec {
    child: Child,
    stdin: Option<ChildStdin>,
    key: String,
    base_url: String,
    model: String,
}

impl Exec {
    fn open(env: &TestEnv, flags: &[&str], cwd: &Path) -> Self {
        let mut args = vec!["exec"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[
            "--",
            "sh",
            "-c",
            r#"printf '%s\n%s\n%s\n' "$OPENAI_API_KEY" "$OPENAI_BASE_URL" "$OPENAI_MODEL"; read _"#,
        ]);
        let mut child = env
            .qwen_cmd(&args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || lines.next().expect("exec printed nothing").unwrap();
        let (key, base_url, model) = (next(), next(), next());
        Self {
            stdin: child.stdin.take(),
            child,
            key,
            base_url,
            model,
        }
    }

    /// Ends the child (and so qwen, and so the session).
    fn close(mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"\n");
        }
        assert!(self.child.wait().unwrap().success());
    }
}

async fn proxy_status(env: &TestEnv, live_at_most: Option<u32>) -> ProxyStatus {
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    ProxyClient::new(ch)
        .get_proxy_status(ProxyStatusRequest {
            wait_until_live_at_most: live_at_most,
            wait_ms: HANG.as_millis() as u64,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn post(base_url: &str, key: Option<&str>, path: &str, body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base_url}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

fn chat_body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "stream": true})
}

async fn error_code(resp: reqwest::Response) -> String {
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_uses_the_proxy_and_never_sees_the_token() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let script = format!(
        r#"
import os, openai
assert not any("{TOKEN}" in v for v in os.environ.values()), "the token reached the child"
print(os.environ["OPENAI_API_KEY"])
client = openai.OpenAI(max_retries=0)
stream = client.chat.completions.create(
    model=os.environ["OPENAI_MODEL"],
    messages=[{{"role": "user", "content": "hi from python"}}],
    stream=True,
)
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
"#
    );
    let out = env
        .qwen_cmd(&["exec", "--", python.to_str().unwrap(), "-c", &script])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (secret, answer) = stdout.split_once('\n').unwrap();
    assert!(secret.starts_with("qwend-proxy-"), "{secret}");
    assert_eq!(answer, "Hello, world!\n");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].bearer(), Some(TOKEN), "the daemon's token upstream");
    assert_eq!(reqs[0].body["model"], "coder-model");
    assert_eq!(reqs[0].body["messages"][0]["content"], "hi from python");
    assert!(reqs[0].headers["user-agent"].starts_with("OpenAI/Python"));
    for r in &reqs {
        for v in r.headers.values() {
            assert!(!v.contains(secret), "the mock saw the secret");
        }
    }
    assert!(!env.log().contains(TOKEN) && !env.log().contains(secret));
    let q = env.qwen(&["quota", "--json"]);
    let q: Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(q["minute"]["used"], 1, "the proxied request is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_mid_run_is_refreshed_without_the_child_seeing_it() {
    let oauth = MockServer::start().await;
    let env = TestEnv::new().with_var("QWEN_OAUTH_BASE_URL", oauth.base_url());
    let mock = OpenAiMock::start();
    qwen_oauth(&env, "at-expired-early", &mock);
    oauth.push(
        "/api/v1/oauth2/token",
        OAuthReply::json(
            200,
            json!({"access_token": "at-fresh", "token_type": "Bearer", "expires_in": 3600,
                   "resource_url": format!("http://127.0.0.1:{}", mock.port)}),
        ),
    );
    let exec = Exec::open(&env, &[], &env.home);
    assert!(!exec.key.contains("at-"), "the child got a token");
    // The token dies while the child runs: the API refuses it.
    mock.push(Reply::status(
        401,
        &[],
        r#"{"error":{"message":"token expired","code":"invalid_api_key"}}"#,
    ));
    let resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 200, "the child never sees the 401");
    let body = resp.text().await.unwrap();
    assert!(body.contains("world") && body.contains("[DONE]"), "{body}");
    let bearers: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| r.bearer().unwrap().to_string())
        .collect();
    assert_eq!(bearers, ["at-expired-early", "at-fresh"]);
    assert_eq!(oauth.count("/api/v1/oauth2/token"), 1, "one refresh");
    // Later requests use the fresh token directly.
    let resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.requests()[2].bearer(), Some("at-fresh"));
    exec.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_missing_and_revoked_secrets_get_401() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let exec = Exec::open(&env, &[], &env.home);
    assert_eq!(exec.model, "coder-model");
    let (key, base) = (exec.key.clone(), exec.base_url.clone());
    assert_eq!(proxy_status(&env, None).await.live_secrets, 1);
    let mut wrong = key.clone().into_bytes();
    let i = wrong.len() - 2;
    wrong[i] = if wrong[i] == b'x' { b'y' } else { b'x' };
    let wrong = String::from_utf8(wrong).unwrap();
    for k in [None, Some(wrong.as_str()), Some(TOKEN), Some("")] {
        let resp = post(&base, k, "/chat/completions", chat_body()).await;
        assert_eq!(resp.status(), 401, "{k:?}");
        assert_eq!(error_code(resp).await, "invalid_api_key");
    }
    assert!(mock.requests().is_empty(), "nothing reached the API");
    let resp = post(&base, Some(&key), "/chat/completions", chat_body()).await;
    assert_eq!(resp.status(), 200);
    exec.close();
    assert_eq!(proxy_status(&env, Some(0)).await.live_secrets, 0);
    let resp = post(&base, Some(&key), "/chat/completions", chat_body()).await;
    assert_eq!(resp.status(), 401, "revoked when the child exited");
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_is_bound_to_loopback_only_and_shown_in_status() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let st = env.status();
    assert_eq!(st["proxy"]["address"], Value::Null, "started lazily");
    let exec = Exec::open(&env, &[], &env.home);
    let st = env.status();
    let addr: std::net::SocketAddr = st["proxy"]["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_eq!(exec.base_url, format!("http://{addr}/v1"));
    let auth = env.qwen(&["auth", "status", "--json"]);
    let auth: Value = serde_json::from_slice(&auth.stdout).unwrap();
    assert_eq!(auth["proxy"]["live_secrets"], 1);
    assert_eq!(auth["proxy"]["base_url"], exec.base_url);
    // Bound to 127.0.0.1 itself, not the wildcard: another address of this host (even
    // another loopback one) finds nothing listening.
    let other = std::net::SocketAddr::from(([127, 0, 0, 2], addr.port()));
    let e = tokio::net::TcpStream::connect(other).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let listening: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .chain(
            std::fs::read_to_string("/proc/net/tcp6")
                .unwrap_or_default()
                .lines(),
        )
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .filter(|local| local.ends_with(&format!(":{:04X}", addr.port())))
        .collect();
    assert_eq!(listening, [format!("0100007F:{:04X}", addr.port())]);
    exec.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_arrives_in_pieces_as_the_api_sends_them() {
    let env = TestEnv::new().with_var("QWEND_PROXY_MAX_CONCURRENT", "1");
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let exec = Exec::open(&env, &[], &env.home);
    // The API sends two pieces and then holds the rest until the test releases it: the
    // first pieces must reach the client before the answer is complete.
    mock.push(Reply::Stream {
        pieces: vec!["early".into(), "-bird".into(), "late".into()],
        gate_after: Some(2),
    });
    let mut resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut reads = 0;
    while !seen.contains("-bird") {
        let chunk = tokio::time::timeout(HANG, resp.chunk())
            .await
            .expect("the proxy held back a streamed piece")
            .unwrap()
            .expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        reads += 1;
    }
    assert!(!seen.contains("late"));
    // The open stream still counts against the secret's concurrency bound.
    let second = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(second.status(), 429);
    assert_eq!(error_code(second).await, "rate_limit_exceeded");
    mock.release();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        reads += 1;
    }
    assert!(reads > 1, "one read");
    assert!(
        seen.contains("late") && seen.ends_with("data: [DONE]\n\n"),
        "{seen}"
    );
    exec.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_every_proxied_request_and_refuses_beyond_the_limit() {
    let env = TestEnv::new()
        .with_var("QWEND_QUOTA_PER_MINUTE", "3")
        .with_var("QWEND_PROXY_PERMIT_WAIT_MS", "0");
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let exec = Exec::open(&env, &[], &env.home);
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let mut events = EventsClient::new(ch)
        .watch(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        let resp = post(
            &exec.base_url,
            Some(&exec.key),
            "/chat/completions",
            chat_body(),
        )
        .await;
        assert_eq!(resp.status(), 200, "request {i}");
        resp.bytes().await.unwrap();
    }
    let resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 429, "the 4th in a minute of 3");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(resp).await, "rate_limit_exceeded");
    assert_eq!(
        mock.requests().len(),
        3,
        "the refused one never left the daemon"
    );
    let q: Value = serde_json::from_slice(&env.qwen(&["quota", "--json"]).stdout).unwrap();
    assert_eq!(q["minute"]["used"], 3);
    assert_eq!(proxy_status(&env, None).await.requests, 3);
    // Plugins watching events see the proxied requests too.
    let mut used = Vec::new();
    while used.last() != Some(&3) {
        let ev = tokio::time::timeout(HANG, events.message())
            .await
            .expect("no QuotaChanged for a proxied request")
            .unwrap()
            .unwrap();
        if let Some(Kind::QuotaChanged(q)) = ev.kind {
            used.push(q.minute_used);
        }
    }
    assert_eq!(used, [1, 2, 3]);
    exec.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_429_cools_everyone_down_and_insufficient_quota_passes_through() {
    let env = TestEnv::new().with_var("QWEND_PROXY_PERMIT_WAIT_MS", "0");
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let exec = Exec::open(&env, &[], &env.home);
    let quota_body = r#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    mock.push(Reply::status(429, &[], quota_body));
    let resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        resp.text().await.unwrap(),
        quota_body,
        "passed through as sent"
    );
    let q: Value = serde_json::from_slice(&env.qwen(&["quota", "--json"]).stdout).unwrap();
    assert_eq!(q["day"]["exhausted"], true, "{q}");
    exec.close();

    // Rate limited with Retry-After: every client cools down, proxied or not.
    let env = TestEnv::new().with_var("QWEND_PROXY_PERMIT_WAIT_MS", "0");
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let exec = Exec::open(&env, &[], &env.home);
    mock.push(Reply::status(
        429,
        &[("Retry-After", "30")],
        r#"{"error":{"message":"slow down","code":"rate_limit_exceeded"}}"#,
    ));
    let resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    let resp = post(
        &exec.base_url,
        Some(&exec.key),
        "/chat/completions",
        chat_body(),
    )
    .await;
    assert_eq!(
        resp.status(),
        429,
        "refused by the cool-down, not by the API"
    );
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=30).contains(&retry), "{retry}");
    assert_eq!(mock.requests().len(), 1);
    let q: Value = serde_json::from_slice(&env.qwen(&["quota", "--json"]).stdout).unwrap();
    assert!(q["cool_down_ms"].as_u64().unwrap() > 25_000, "{q}");
    exec.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_stays_direct_unless_proxy_is_asked_for() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let proj = openai_project(&env, &mock.base_url());
    let direct = Exec::open(&env, &[], &proj);
    assert_eq!(direct.key, KEY);
    assert_eq!(direct.base_url, mock.base_url());
    direct.close();
    let proxied = Exec::open(&env, &["--proxy"], &proj);
    assert!(proxied.key.starts_with("qwend-proxy-"));
    assert_eq!(proxied.model, "m-env");
    let resp = post(
        &proxied.base_url,
        Some(&proxied.key),
        "/chat/completions",
        json!({"messages": [], "stream": true}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let reqs = mock.requests();
    assert_eq!(
        reqs[0].bearer(),
        Some(KEY),
        "the key resolved for the session's cwd"
    );
    assert_eq!(
        reqs[0].body["model"], "m-env",
        "the default model filled in"
    );
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    // Other paths under /v1 are forwarded as they are (the mock answers 404 to them).
    let resp = reqwest::Client::new()
        .get(format!("{}/models?limit=2", proxied.base_url))
        .bearer_auth(&proxied.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(mock.requests()[1].path, "/v1/models?limit=2");
    proxied.close();
    let out = env.qwen(&["exec", "--proxy", "--direct", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "the two flags conflict");
}

#[test]
fn qwen_code_runs_through_the_proxy() {
    let Some(cli) = qwen_code() else {
        return;
    };
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    qwen_oauth(&env, TOKEN, &mock);
    let out = env
        .qwen_cmd(&[
            "exec",
            "--",
            "node",
            cli.to_str().unwrap(),
            "--auth-type",
            "openai",
            "-p",
            "say hello",
        ])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("Hello, world!"),
        "{}",
        text(&out.stdout)
    );
    let reqs = mock.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.bearer(), Some(TOKEN));
    }
    assert_eq!(reqs[0].body["model"], "coder-model");
}

/// An upstream that sends a long answer as fast as its socket takes it, and reports each
/// time the socket is full (the reader behind it stopped reading).
struct Flood {
    port: u16,
    stalls: tokio::sync::mpsc::UnboundedReceiver<Option<u64>>,
}

const FLOOD_TOTAL: u64 = 160 << 20;

impl Flood {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, stalls) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 8192];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let chunk = format!("data: {}\n\n", "x".repeat(64 * 1024 - 8)).into_bytes();
            let mut written = 0u64;
            while written < FLOOD_TOTAL {
                let off = (written % chunk.len() as u64) as usize;
                match conn.try_write(&chunk[off..]) {
                    Ok(n) => written += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let _ = tx.send(Some(written));
                        conn.writable().await.unwrap();
                    }
                    Err(e) => panic!("flood: {e}"),
                }
            }
            let _ = tx.send(None);
            let _ = conn.shutdown().await;
        });
        Self { port, stalls }
    }
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_upstream_back_instead_of_filling_the_daemon() {
    // Socket buffers on both hops (upstream→daemon, daemon→client) may hold a few MiB
    // each on loopback; anything near the whole answer means the daemon buffered it.
    const IN_FLIGHT_BOUND: u64 = 48 << 20;
    const STEP: u64 = 8 << 20;
    let mut flood = Flood::start().await;
    let env = TestEnv::new();
    let proj = openai_project(&env, &format!("http://127.0.0.1:{}/v1", flood.port));
    let exec = Exec::open(&env, &["--proxy"], &proj);
    let addr = exec
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = chat_body().to_string();
    conn.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            exec.key,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut read = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut stalls = 0;
    // Read a step each time the upstream finds its socket full, never more: the upstream
    // can only get ahead of this reader by what the pipe between holds.
    loop {
        let stall = tokio::time::timeout(HANG, flood.stalls.recv())
            .await
            .expect("the upstream neither finished nor stalled")
            .unwrap();
        let Some(written) = stall else { break };
        stalls += 1;
        assert!(
            written.saturating_sub(read) <= IN_FLIGHT_BOUND,
            "the upstream wrote {written} bytes while the client had read {read}"
        );
        // Enough to wake the upstream (a full socket reports room only once a good part
        // of its buffer has drained), never the whole answer.
        let until = read + STEP;
        while read < until {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            read += n as u64;
        }
    }
    assert!(
        FLOOD_TOTAL.saturating_sub(read) <= IN_FLIGHT_BOUND,
        "the upstream finished while the client had read {read} of {FLOOD_TOTAL}"
    );
    assert!(
        stalls > 10,
        "the slow reader held the upstream back only {stalls} times"
    );
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    assert!(
        read > FLOOD_TOTAL,
        "the whole answer arrived in the end ({read})"
    );
    let peak_mb = vm_hwm_kb(env.daemon_pid()) / 1024;
    eprintln!("daemon peak RSS {peak_mb} MB after {stalls} stalls");
    assert!(peak_mb < 100, "the daemon peaked at {peak_mb} MB");
    exec.close();
}
