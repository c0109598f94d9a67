//! `qwen auth login` through the real binaries, on a pseudo-terminal, against a local
//! authorization server that plays Qwen's: the exact requests, the files written, what the
//! user sees and the exit codes.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use common::oauth_mock::{DEVICE_PATH, Reply, TOKEN_PATH};
use common::pty::{self, Pty};
use common::*;
use expectrl::Expect;
use serde_json::Value;
use sha2::Digest;

fn setup() -> Setup {
    oauth_setup(&[("QWEND_OAUTH_TIME_UNIT_MS", "10")])
}

impl Setup {
    fn login(&self, args: &[&str]) -> Pty {
        let mut all = vec!["auth", "login"];
        all.extend_from_slice(args);
        pty::spawn(self.env.qwen_cmd(&all))
    }

    fn wait_for_requests(&self, n: usize) {
        self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), self.mock.wait_for_requests(n))
                .await
                .expect("the daemon stopped calling the authorization server")
        });
    }

    fn creds_file(&self) -> std::path::PathBuf {
        self.env.home.join(".qwen/oauth_creds.json")
    }
}

fn status_json(env: &TestEnv) -> Value {
    let out = env.qwen(&["auth", "status", "--json"]);
    // 3: the selected method cannot authenticate (not logged in); the document is printed.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait_for_log(env: &TestEnv, needle: &str) {
    wait_for_file(&env.state.join("qwend.log"), |log| log.contains(needle));
}

#[test]
fn without_a_terminal_login_exits_3_and_says_how_to_configure_auth() {
    let s = setup();
    let out = s.env.qwen(&["auth", "login"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for needed in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_MODEL",
        ".qwen/.env",
    ] {
        assert!(err.contains(needed), "{needed} missing from: {err}");
    }
    assert!(out.stdout.is_empty());
    assert!(s.mock.requests().is_empty(), "no flow may start");
}

#[test]
fn device_login_sends_what_qwen_code_sends_and_writes_its_file() {
    let s = setup();
    s.mock.push(DEVICE_PATH, Reply::device_code(600, Some(1)));
    s.mock.push(TOKEN_PATH, Reply::pending());
    s.mock.push(TOKEN_PATH, Reply::pending());
    s.mock.set_default(TOKEN_PATH, Reply::device_token());
    let before = now_ms();

    let mut tty = s.login(&["--no-browser"]);
    let screen = pty::rest(&mut tty);
    let status = pty::exit_code(&tty);
    assert_eq!(status, 0, "{screen}");
    // What the user needs: the link with the code, the code itself, a QR code.
    assert!(
        screen.contains("https://chat.qwen.ai/authorize?user_code=ABCD-EFGH&client=qwen-code"),
        "{screen}"
    );
    assert!(screen.contains("ABCD-EFGH"), "{screen}");
    assert!(
        screen.contains('▀') || screen.contains('▄'),
        "no QR code:\n{screen}"
    );
    assert!(screen.contains("logged in to Qwen OAuth"), "{screen}");

    // The requests, against Qwen Code's own (conformance kit).
    let reqs = s.mock.requests();
    assert_eq!(
        reqs.len(),
        4,
        "device request, two pending polls, the grant"
    );
    let verifier = reqs[1].form_value("code_verifier").unwrap();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    assert_eq!(reqs[0].form_value("code_challenge"), Some(challenge));
    assert_eq!(verifier.len(), 43, "32 random bytes, base64url");
    if let Some(case) = common::oauth_mock::conformance_case("oauth-device-flow-login") {
        let expected = case["requests"].as_array().unwrap();
        common::oauth_mock::assert_request_like(&reqs[0], &expected[0], &["code_challenge"]);
        for r in &reqs[1..] {
            common::oauth_mock::assert_request_like(r, &expected[1], &["code_verifier"]);
        }
    }
    for r in &reqs[1..] {
        assert_eq!(r.form_value("code_verifier").as_deref(), Some(&*verifier));
    }

    // Qwen Code's file, as Qwen Code's login writes it (key order, 0600).
    let raw = std::fs::read_to_string(s.creds_file()).unwrap();
    let keys = top_level_keys(&raw);
    assert_eq!(
        keys,
        [
            "access_token",
            "refresh_token",
            "token_type",
            "resource_url",
            "expiry_date"
        ]
    );
    assert_eq!(mode(&s.creds_file()), 0o600);
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["access_token"], "at-device");
    let expiry = v["expiry_date"].as_i64().unwrap();
    assert!(expiry >= before + 3_600_000 && expiry <= now_ms() + 3_600_000);

    // Every client now sees the login; asking again starts nothing.
    let st = status_json(&s.env);
    assert_eq!(st["logged_in"], true, "{st}");
    assert_eq!(st["base_url"], "https://portal.qwen.ai/v1");
    let mut p = s.login(&["--no-browser"]);
    let screen = pty::rest(&mut p);
    let status = pty::exit_code(&p);
    assert_eq!(status, 0, "{screen}");
    assert!(screen.contains("already logged in"), "{screen}");
    assert_eq!(s.mock.count(DEVICE_PATH), 1);

    // Secrets never reach the daemon's log or the screen.
    let log = s.env.log();
    for secret in ["at-device", "rt-device", "dc-1", verifier.as_str()] {
        assert!(
            !log.contains(secret) && !screen.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn a_login_whose_id_token_names_the_account_counts_quota_for_that_account() {
    let s = setup();
    let claims = serde_json::json!({"iss": "https://chat.qwen.ai", "sub": "carol", "email": "carol@example.com"});
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let id_token = format!(
        "{}.{}.sig",
        b64(&serde_json::json!({"alg": "RS256"})),
        b64(&claims)
    );
    s.mock.push(DEVICE_PATH, Reply::device_code(600, Some(1)));
    s.mock.set_default(
        TOKEN_PATH,
        Reply::json(
            200,
            serde_json::json!({
                "access_token": "at-c", "refresh_token": "rt-c", "token_type": "Bearer",
                "expires_in": 3600, "resource_url": "portal.qwen.ai", "id_token": id_token,
            }),
        ),
    );
    let mut tty = s.login(&["--no-browser"]);
    let screen = pty::rest(&mut tty);
    assert_eq!(pty::exit_code(&tty), 0, "{screen}");

    // The account is the hash of issuer and subject; nothing else of the id_token is kept.
    let digest = sha2::Sha256::new()
        .chain_update("https://chat.qwen.ai")
        .chain_update([0u8])
        .chain_update("carol")
        .finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let out = s.env.qwen(&["quota", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let quota: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(quota["account"], format!("qwen-oauth:{hex}"));
    let raw = std::fs::read_to_string(s.creds_file()).unwrap();
    assert!(
        !raw.contains("id_token") && !raw.contains(&id_token),
        "{raw}"
    );
    let mut everything = s.env.log();
    for entry in walk(&s.env.state) {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    for leak in ["carol", id_token.as_str()] {
        assert!(!everything.contains(leak), "{leak} was kept");
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn denied_and_expired_codes_end_with_different_messages_and_exit_3() {
    let s = setup();
    s.mock.push(DEVICE_PATH, Reply::device_code(600, Some(1)));
    s.mock
        .push(TOKEN_PATH, Reply::oauth_error(400, "access_denied"));
    let mut p = s.login(&["--no-browser"]);
    let denied = pty::rest(&mut p);
    let status = pty::exit_code(&p);
    assert_eq!(status, 3, "{denied}");
    assert!(denied.contains("denied"), "{denied}");

    s.mock.push(DEVICE_PATH, Reply::device_code(600, Some(1)));
    s.mock
        .push(TOKEN_PATH, Reply::oauth_error(400, "expired_token"));
    let mut p = s.login(&["--no-browser"]);
    let expired = pty::rest(&mut p);
    let status = pty::exit_code(&p);
    assert_eq!(status, 3, "{expired}");
    assert!(expired.contains("expired"), "{expired}");
    assert!(!expired.contains("denied"), "{expired}");
    assert!(!s.creds_file().exists());
    assert_eq!(status_json(&s.env)["logged_in"], false);
}

#[test]
fn a_second_login_attaches_and_the_flow_ends_with_its_last_client() {
    let s = setup();
    // A code that lasts (10 minutes here) while the clients come and go, however loaded.
    s.mock
        .push(DEVICE_PATH, Reply::device_code(60_000, Some(1)));
    s.mock.set_default(TOKEN_PATH, Reply::pending());

    let mut first = s.login(&["--no-browser"]);
    pty::expect(&mut first, "ABCD-EFGH");
    let mut second = s.login(&["--no-browser"]);
    pty::expect(&mut second, "already in progress");
    pty::expect(&mut second, "ABCD-EFGH");
    assert_eq!(s.mock.count(DEVICE_PATH), 1, "one flow, shared");

    // The second client leaves; the flow goes on for the first.
    second.send("\x03").unwrap();
    let _ = pty::rest(&mut second);
    let status = pty::exit_code(&second);
    assert_eq!(status, 130);
    let polls = s.mock.requests().len();
    s.wait_for_requests(polls + 20);
    s.mock.set_default(TOKEN_PATH, Reply::device_token());
    let screen = pty::rest(&mut first);
    let status = pty::exit_code(&first);
    assert_eq!(status, 0, "{screen}");
    assert!(screen.contains("logged in"), "{screen}");

    // Ctrl-C in the only client cancels the flow in the daemon.
    s.mock
        .push(DEVICE_PATH, Reply::device_code(60_000, Some(1)));
    s.mock.set_default(TOKEN_PATH, Reply::pending());
    let mut only = s.login(&["--no-browser", "--force"]);
    pty::expect(&mut only, "ABCD-EFGH");
    only.send("\x03").unwrap();
    let screen = pty::rest(&mut only);
    let status = pty::exit_code(&only);
    assert_eq!(status, 130, "{screen}");
    wait_for_log(&s.env, "every client left the pending login; cancelling it");
    wait_for_log(&s.env, "the login was cancelled");
    // The earlier login is untouched.
    assert_eq!(status_json(&s.env)["logged_in"], true);
}

#[test]
fn the_browser_opens_only_on_a_local_desktop() {
    let s = setup();
    let opened = s.env.root.path().join("opened-url");
    let browser = s.env.root.path().join("fake-browser");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let start = |extra: &[(&str, &str)], args: &[&str]| {
        s.mock.push(DEVICE_PATH, Reply::device_code(600, Some(1)));
        let mut all = vec!["auth", "login"];
        all.extend_from_slice(args);
        let mut cmd = s.env.qwen_cmd(&all);
        cmd.env("BROWSER", &browser).env("DISPLAY", ":99");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        pty::spawn(cmd)
    };
    let deny = || {
        s.mock
            .push(TOKEN_PATH, Reply::oauth_error(400, "access_denied"))
    };

    // Over SSH, or when asked not to: never.
    deny();
    pty::rest(&mut start(
        &[("SSH_CONNECTION", "10.0.0.1 5 10.0.0.2 22")],
        &[],
    ));
    deny();
    pty::rest(&mut start(&[], &["--no-browser"]));
    assert!(!opened.exists(), "a browser was opened");

    // A local desktop: the complete URL, code included. The flow stays pending until the
    // browser has written it: a client that ended first would take the launcher down with
    // its terminal session.
    s.mock.set_default(TOKEN_PATH, Reply::pending());
    let mut p = start(&[], &[]);
    let url = wait_for_file(&opened, |url| !url.is_empty());
    deny();
    pty::rest(&mut p);
    assert_eq!(
        url,
        "https://chat.qwen.ai/authorize?user_code=ABCD-EFGH&client=qwen-code"
    );
}
