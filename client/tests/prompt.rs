//! `qwen -p` against a local OpenAI-compatible server: streaming, headers, retries on 401,
//! 429 and the shared quota, failures and exit codes, the non-interactive rule, and
//! `qwen auth token`. Real binaries; stdin and stdout are not terminals here.
mod common;

use std::io::Read;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::openai_mock::{OpenAiMock, Reply};
use common::*;
use serde_json::Value;

const KEY: &str = "sk-test-0123456789abcdef";

fn openai(mock: &OpenAiMock) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", KEY.to_string()),
        ("OPENAI_BASE_URL", mock.base_url()),
        ("OPENAI_MODEL", "m-env".to_string()),
    ]
}

fn run(env: &TestEnv, vars: &[(&str, String)], args: &[&str]) -> Output {
    env.qwen_cmd(args)
        .current_dir(&env.home)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// Start the daemon with extra environment (quota limits), as the first client would.
fn start_daemon(env: &TestEnv, vars: &[(&str, &str)]) {
    let out = env
        .qwen_cmd(&["daemon", "start"])
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn write_oauth(env: &TestEnv, mock: &OpenAiMock) {
    let dir = env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"at-oauth-secret","refresh_token":"r","token_type":"Bearer","resource_url":"http://127.0.0.1:{}","expiry_date":{}}}"#,
            mock.port,
            now_ms() + 3_600_000
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
}

#[test]
fn tokens_are_printed_as_they_arrive_with_the_daemons_key_and_model() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::Stream {
        pieces: ["Hello", ", ", "world", "!"].map(String::from).to_vec(),
        gate_after: Some(2),
    });
    let mut child = env
        .qwen_cmd(&["-p", "say hello"])
        .current_dir(&env.home)
        .envs(openai(&mock))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // The server holds the rest of the answer until the first half has been printed: a
    // client that buffered the answer would never get here (and fail on the timeout).
    let mut seen = String::new();
    while !seen.contains("Hello, ") {
        let chunk = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the first tokens were not printed while the stream was still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(seen, "Hello, ", "nothing beyond what the server sent yet");
    mock.release();
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(30)) {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(seen, "Hello, world!\n");
    assert!(!err.contains(KEY));

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(r.bearer(), Some(KEY));
    assert_eq!(r.body["model"], "m-env");
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["messages"][0]["role"], "user");
    assert_eq!(r.body["messages"][0]["content"], "say hello");
    assert!(r.headers["accept"].contains("text/event-stream"));
}

#[test]
fn model_flag_overrides_and_json_prints_the_message_and_usage() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let out = run(
        &env,
        &openai(&mock),
        &["-p", "hi", "--model", "m-flag", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON document, no streamed text: {stdout}"
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["content"], "Hello, world!");
    assert_eq!(v["model"], "m-flag");
    assert_eq!(v["auth_type"], "openai");
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 11);
    assert_eq!(mock.requests()[0].body["model"], "m-flag");
}

#[test]
fn the_prompt_comes_from_arguments_or_stdin() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let out = run(&env, &openai(&mock), &["explain", "this", "code"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut child = env
        .qwen_cmd(&[])
        .current_dir(&env.home)
        .envs(openai(&mock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"from stdin\nline two\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    let reqs = mock.requests();
    assert_eq!(reqs[0].body["messages"][0]["content"], "explain this code");
    assert_eq!(
        reqs[1].body["messages"][0]["content"],
        "from stdin\nline two\n"
    );

    let out = env
        .qwen_cmd(&["-p", "   "])
        .envs(openai(&mock))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_typed_command_is_a_usage_error_and_nothing_is_sent() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    // No daemon yet: a typed command must not even start one.
    let out = run(&env, &openai(&mock), &["login"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("did you mean: qwen auth login"), "{err}");
    assert!(err.contains("qwen -p"), "says how to send it anyway: {err}");
    assert!(out.stdout.is_empty());
    assert!(!env.socket.exists(), "no daemon was started");

    start_daemon(&env, &[]);
    for (word, meant) in [
        ("logout", "qwen auth logout"),
        ("status", "qwen auth status"),
        ("token", "qwen auth token"),
        ("switch", "qwen auth switch"),
        ("statuss", "qwen auth status"),
        ("quot", "qwen quota"),
    ] {
        let out = run(&env, &openai(&mock), &[word]);
        assert_eq!(out.status.code(), Some(2), "{word}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("did you mean: {meant}")), "{err}");
    }
    assert!(mock.requests().is_empty(), "nothing reached the model");
    let q = run(&env, &openai(&mock), &["quota", "--json"]);
    let q: Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(q["minute"]["used"], 0, "no quota spent: {q}");

    // -p sends any text; so do several words and an ordinary word.
    for args in [&["-p", "status"][..], &["status", "please"], &["hello"]] {
        let out = run(&env, &openai(&mock), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let sent: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| r.body["messages"][0]["content"].clone())
        .collect();
    assert_eq!(sent, ["status", "status please", "hello"]);
}

#[test]
fn piped_input_follows_the_prompt_after_a_blank_line() {
    use std::io::Write;
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let send = |args: &[&str], input: &[u8]| {
        let mut child = env
            .qwen_cmd(args)
            .current_dir(&env.home)
            .envs(openai(&mock))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    send(&["-p", "review this"], b"diff --git a/x b/x\n+new line\n");
    send(&["review", "this"], b"diff\n");
    // Empty piped input (or /dev/null) leaves the prompt alone.
    send(&["-p", "just this"], b"");
    let sent: Vec<Value> = mock
        .requests()
        .iter()
        .map(|r| r.body["messages"][0]["content"].clone())
        .collect();
    // More than a prompt can carry is refused, not cut.
    let mut child = env
        .qwen_cmd(&["-p", "too much"])
        .current_dir(&env.home)
        .envs(openai(&mock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..9 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("8 MiB"), "{}", text(&out.stderr));
    assert_eq!(
        sent,
        [
            "review this\n\ndiff --git a/x b/x\n+new line\n",
            "review this\n\ndiff\n",
            "just this"
        ]
    );

    // A pipe nobody writes to or closes (an editor's) does not hold the prompt up.
    let mut child = env
        .qwen_cmd(&["-p", "alone"])
        .current_dir(&env.home)
        .envs(openai(&mock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let open_stdin = child.stdin.take().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(open_stdin);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mock.requests()[3].body["messages"][0]["content"], "alone");
}

#[test]
fn a_401_gets_credentials_again_and_one_retry() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let unauthorized = || {
        Reply::status(
            401,
            &[],
            &format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {KEY}","code":"invalid_api_key"}}}}"#
            ),
        )
    };
    mock.push(unauthorized());
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert_eq!(mock.requests().len(), 2);

    // Refused twice: authentication needed, and the echoed key is not shown.
    mock.push(unauthorized());
    mock.push(unauthorized());
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("HTTP 401") && err.contains("OPENAI_API_KEY"),
        "{err}"
    );
    assert!(!err.contains(KEY), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(mock.requests().len(), 4, "exactly one retry");
}

#[test]
fn a_429_is_reported_and_no_wait_exits_4() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(
        429,
        &[("Retry-After", "30")],
        r#"{"error":{"message":"Requests rate limit exceeded","code":"rate_limit"}}"#,
    ));
    let out = run(&env, &openai(&mock), &["-p", "hi", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("HTTP 429"));
    assert_eq!(mock.requests().len(), 1);
    // The daemon now holds every client back for the Retry-After.
    let q = run(&env, &openai(&mock), &["quota", "--json"]);
    let q: Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(q["account"], "openai");
    let cool = q["cool_down_ms"].as_u64().unwrap();
    assert!(cool > 20_000 && cool <= 30_000, "{q}");
    // ... so the next prompt does not even reach the server.
    let out = run(&env, &openai(&mock), &["-p", "hi", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("slow down"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn a_429_waits_as_the_server_says_then_succeeds() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(429, &[("Retry-After", "1")], "slow down"));
    let t = Instant::now();
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "did not wait for Retry-After"
    );
    assert!(text(&out.stderr).contains("HTTP 429"));
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn a_daily_quota_error_ends_at_once_with_4() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(
        429,
        &[],
        r#"{"error":{"message":"Free allocated quota exceeded.","code":"insufficient_quota"}}"#,
    ));
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("insufficient_quota"));
    // The openai method has no day of ours to mark used up (client/tests/quota.rs).
    let q = run(&env, &openai(&mock), &["quota", "--json"]);
    let q: Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(q["day"]["exhausted"], false, "{q}");
}

#[test]
fn the_shared_quota_refuses_before_any_request() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    start_daemon(&env, &[("QWEND_OPENAI_QUOTA_PER_MINUTE", "1")]);
    let out = run(&env, &openai(&mock), &["-p", "one"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&env, &openai(&mock), &["-p", "two", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4));
    let err = text(&out.stderr);
    assert!(err.contains("per-minute") && err.contains("1 / 1"), "{err}");
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn server_errors_and_network_errors_are_one_line_and_exit_1() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(
        500,
        &[],
        &format!(r#"{{"error":{{"message":"internal failure for key {KEY}"}}}}"#),
    ));
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("HTTP 500") && err.contains("internal failure"),
        "{err}"
    );
    assert!(!err.contains(KEY), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());

    // An error event in the middle of the stream.
    mock.push(Reply::RawSse(
        "data: {\"choices\":[{\"delta\":{\"content\":\"par\"}}]}\n\ndata: {\"error\":{\"message\":\"model overloaded\"}}\n\n".into(),
    ));
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("model overloaded"));
    assert_eq!(text(&out.stdout), "par\n");

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut vars = openai(&mock);
    vars[1].1 = format!("http://127.0.0.1:{port}/v1");
    let out = run(&env, &vars, &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.contains(&port.to_string()),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains(KEY));
}

#[test]
fn without_a_terminal_and_nothing_configured_it_says_what_to_set() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let out = run(&env, &[], &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    for needle in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_MODEL",
        ".qwen/.env",
        "~/.qwen/.env",
        "environment",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
    assert!(!err.contains("Choice"), "no question without a terminal");
    assert!(mock.requests().is_empty());

    // An OPENAI_API_KEY in the project's .qwen/.env is enough.
    std::fs::create_dir_all(env.home.join("proj/.qwen")).unwrap();
    std::fs::write(
        env.home.join("proj/.qwen/.env"),
        format!(
            "OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL={}\n",
            mock.base_url()
        ),
    )
    .unwrap();
    let out = env
        .qwen_cmd(&["-p", "hi"])
        .current_dir(env.home.join("proj"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = &mock.requests()[0];
    assert_eq!(r.bearer(), Some(KEY));
    assert_eq!(
        r.body["model"], "qwen3.5-plus",
        "the documented default model"
    );
}

#[test]
fn oauth_selected_without_a_login_names_the_switch_not_the_variable() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
    let out = run(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for needle in [
        "Qwen OAuth is the selected auth method",
        "qwen auth switch openai",
        "qwen auth login",
        "OPENAI_API_KEY set here",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
    assert!(!err.contains(KEY));
    // Without a key anywhere it says to set one and switch.
    let out = run(&env, &[], &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("set OPENAI_API_KEY") && err.contains("qwen auth switch openai"),
        "{err}"
    );
    // `qwen auth token` gives the same next steps.
    let out = run(&env, &openai(&mock), &["auth", "token"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("qwen auth login") && err.contains("qwen auth switch openai"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(mock.requests().is_empty());

    // openai selected where no key resolves: the key and the files, no talk of browsers.
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security":{"auth":{"selectedType":"openai"}}}"#,
    )
    .unwrap();
    let out = run(&env, &[], &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("OPENAI_API_KEY") && err.contains(".qwen/.env"),
        "{err}"
    );
    assert!(!err.contains("browser"), "{err}");
}

#[test]
fn qwen_oauth_uses_the_stored_token_the_portal_base_and_the_quota() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    write_oauth(&env, &mock);
    start_daemon(&env, &[("QWEND_QUOTA_PER_MINUTE", "2")]);
    let out = run(&env, &[], &["-p", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    let r = &mock.requests()[0];
    assert_eq!(r.bearer(), Some("at-oauth-secret"));
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.body["model"], "coder-model");

    // A model the OAuth tier does not serve: the default, with a warning.
    let out = run(&env, &[], &["-p", "hi", "--model", "gpt-4o"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("gpt-4o"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(mock.requests()[1].body["model"], "coder-model");

    let q = run(&env, &[], &["quota", "--json"]);
    let q: Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(q["account"], "qwen-oauth");
    assert_eq!(q["minute"]["used"], 2);
    let out = run(&env, &[], &["-p", "hi", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(mock.requests().len(), 2);
    assert!(!env.log().contains("at-oauth-secret"));
}

#[test]
fn auth_token_prints_the_token_and_nothing_else() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let out = run(&env, &openai(&mock), &["auth", "token"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{KEY}\n"));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = run(&env, &[], &["auth", "token"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("no token to print"), "{err}");
    assert!(
        err.contains("OPENAI_API_KEY") && err.contains("qwen auth login"),
        "{err}"
    );
    assert!(err.contains("qwen auth status"), "the next step: {err}");

    write_oauth(&env, &mock);
    let out = run(&env, &[], &["auth", "token"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "at-oauth-secret\n");
    let out = run(&env, &[], &["auth", "token", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token"], "at-oauth-secret");
    assert_eq!(v["auth_type"], "qwen-oauth");
    assert_eq!(v["base_url"], mock.base_url());
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = env.qwen(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let s = text(&out.stdout);
        assert!(s.contains("exec") && s.contains("no-wait"), "{shell}: {s}");
    }
    let out = env.qwen(&["man"]);
    assert!(out.status.success());
    let roff = text(&out.stdout);
    assert!(roff.contains(".TH qwen 1"), "{roff}");
    assert!(roff.contains("exec") && roff.contains("completions"));
    let out = env.qwen(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}
