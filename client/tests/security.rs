//! SECURITY.md's promises that no other test file owns, through the real binaries: a socket
//! directory someone else could control (another owner, open modes, a symbolic link) is
//! refused by the daemon and by the client; every file that holds a secret is 0600 in a
//! 0700 directory after real use; and the suite-wide secret scan (tests/common/secrets.rs)
//! really catches a leak.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use common::oauth_mock::{DEVICE_PATH, Reply as OAuthReply, TOKEN_PATH};
use common::openai_mock::OpenAiMock;
use common::*;
use expectrl::Expect;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The daemon started by hand in the foreground on `env`'s socket: it must refuse at once.
fn daemon_refuses(env: &TestEnv, what: &str, must_name: &[&str]) {
    let out = env.qwend_cmd(&["--foreground"]).output().unwrap();
    let err = text(&out.stderr);
    env.capture("the daemon's stderr", &out.stderr);
    assert!(!out.status.success(), "{what}: the daemon started:\n{err}");
    for s in must_name {
        assert!(
            err.contains(s),
            "{what}: the daemon should name {s:?}:\n{err}"
        );
    }
}

/// Nothing was created in `dir`: no socket, no lock.
fn left_empty(dir: &Path, what: &str) {
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(names.is_empty(), "{what}: created {names:?}");
}

#[test]
fn a_symlinked_socket_dir_is_refused_by_the_daemon_and_the_client() {
    let env = TestEnv::new();
    // The link's target is private and ours: only the link itself is wrong (whoever can
    // rewrite it can point it at their own directory between our check and our connect).
    let target = env.root.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    chmod(&target, 0o700);
    let dir = env.socket.parent().unwrap();
    std::os::unix::fs::symlink(&target, dir).unwrap();
    let name = dir.display().to_string();
    daemon_refuses(&env, "symlinked dir", &[&name, "symbolic link"]);
    for args in [
        &["env", "--json"][..],
        &["auth", "token"],
        &["daemon", "status"],
    ] {
        let out = env.qwen(args);
        assert_refused(&out, &args.join(" "), &[&name, "symbolic link"]);
    }
    left_empty(&target, "symlinked dir");
    // Dangling: the target must not be created either.
    std::fs::remove_file(dir).unwrap();
    let nowhere = env.root.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, dir).unwrap();
    daemon_refuses(&env, "dangling symlink", &[&name, "symbolic link"]);
    assert_refused(
        &env.qwen(&["env", "--json"]),
        "dangling",
        &["symbolic link"],
    );
    assert!(!nowhere.exists(), "the link's target was created");
}

#[test]
fn a_group_or_world_writable_socket_dir_is_refused_by_the_daemon_and_the_client() {
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    let name = dir.display().to_string();
    for mode in [0o770, 0o777, 0o730, 0o703, 0o1777] {
        chmod(dir, mode);
        let what = format!("socket dir mode {mode:o}");
        daemon_refuses(&env, &what, &[&name, "chmod 700"]);
        assert_refused(&env.qwen(&["env", "--json"]), &what, &[&name, "chmod 700"]);
        left_empty(dir, &what);
    }
    // Fixed as the message says, the same directory is used.
    chmod(dir, 0o700);
    let out = env.qwen(&["env", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_socket_dir_owned_by_another_user_is_refused_by_the_daemon_and_the_client() {
    if !require_root("making a directory owned by the user nobody") {
        return;
    }
    let env = TestEnv::new();
    let dir = env.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    chmod(dir, 0o700);
    rustix::fs::chown(
        dir,
        Some(rustix::process::Uid::from_raw(NOBODY)),
        Some(rustix::process::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let name = dir.display().to_string();
    // Root could write there anyway: the owner alone decides.
    daemon_refuses(&env, "foreign dir", &[&name, "uid 65534"]);
    for args in [
        &["env", "--json"][..],
        &["auth", "token"],
        &["daemon", "status"],
    ] {
        let out = env.qwen(args);
        assert_refused(&out, &args.join(" "), &[&name, "uid 65534"]);
    }
    left_empty(dir, "foreign dir");
}

/// Every directory under `root` is 0700 and every file 0600 (sockets included), except the
/// names in `skip` (files the test itself wrote). Returns what was checked, for the report.
fn assert_private_tree(root: &Path, skip: &[&str]) -> Vec<String> {
    let mut checked = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    assert_eq!(mode(root), 0o700, "{}", root.display());
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if skip.contains(&name.as_str()) {
                continue;
            }
            let ft = e.file_type().unwrap();
            let want = if ft.is_dir() { 0o700 } else { 0o600 };
            assert!(!ft.is_symlink(), "{} is a symlink", path.display());
            assert_eq!(
                mode(&path),
                want,
                "{} has mode {:o}",
                path.display(),
                mode(&path)
            );
            checked.push(path.strip_prefix(root).unwrap().display().to_string());
            if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    checked.sort();
    checked
}

/// After a device login, a prompt (a token and a quota permit), an interactive session and
/// a proxied run: credentials (ours and Qwen Code's), the account and quota state, the
/// ledger, the session history, the log and the socket are all 0600 in 0700 directories.
#[test]
fn files_holding_secrets_are_0600_in_0700_dirs_after_a_login_a_permit_a_session_and_a_proxy_run() {
    let s = oauth_setup(&[("QWEND_OAUTH_TIME_UNIT_MS", "10")]);
    let api = OpenAiMock::start();
    s.mock
        .push(DEVICE_PATH, OAuthReply::device_code(600, Some(1)));
    s.mock.set_default(
        TOKEN_PATH,
        OAuthReply::json(
            200,
            serde_json::json!({
                "access_token": "at-private-files", "refresh_token": "rt-private-files",
                "token_type": "Bearer", "expires_in": 3600,
                "resource_url": format!("http://127.0.0.1:{}", api.port),
            }),
        ),
    );
    let env = &s.env;
    // A home as a user has it (0755): only what we create must be private.
    chmod(&env.home, 0o755);

    // Login, on a terminal.
    let mut tty = pty::spawn(env.qwen_cmd(&["auth", "login", "--no-browser"]));
    let screen = pty::rest(&mut tty);
    assert_eq!(pty::exit_code(&tty), 0, "{screen}");
    env.capture("the login's screen", screen.as_bytes());

    // A prompt: the token and a permit from the daemon, then the API.
    let out = env.qwen(&["-p", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");

    // An interactive session, which writes the history.
    let mut cmd = env.qwen_cmd(&[]);
    cmd.current_dir(&env.home).env("TERM", "xterm");
    let mut session = pty::spawn(cmd);
    pty::expect(&mut session, "qwen> ");
    session.send("a message to remember\r").unwrap();
    pty::expect(&mut session, "Hello, world!");
    pty::expect(&mut session, "qwen> ");
    session.send("\x04").unwrap();
    let screen = pty::rest(&mut session);
    assert_eq!(pty::exit_code(&session), 0, "{screen}");
    env.capture("the session's screen", screen.as_bytes());

    // A proxied run: the child gets the proxy's secret and address, and uses them.
    let mut child = env
        .qwen_cmd(&[
            "exec",
            "--",
            "sh",
            "-c",
            r#"printf '%s\n%s\n' "$OPENAI_API_KEY" "$OPENAI_BASE_URL"; read _"#,
        ])
        .current_dir(&env.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let secret = lines.next().unwrap().unwrap();
    let base_url = lines.next().unwrap().unwrap();
    assert!(secret.starts_with("qwend-proxy-"), "not a proxy run");
    env.plant("proxy secret", &secret);
    let status = s.rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{base_url}/chat/completions"))
            .bearer_auth(&secret)
            .header("content-type", "application/json")
            .body(r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.capture("the stderr of `qwen exec`", &out.stderr);
    let reqs = api.requests();
    assert_eq!(reqs.len(), 3, "prompt, session and proxied request");
    assert!(reqs.iter().all(|r| r.bearer() == Some("at-private-files")));

    // Everything written, now at rest.
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = assert_private_tree(&env.state, &[]);
    for expected in ["qwend.log", "history", "credentials/credentials.json"] {
        assert!(
            state.iter().any(|p| p == expected),
            "{expected} missing: {state:?}"
        );
    }
    assert!(
        state
            .iter()
            .any(|p| p.contains("quota") || p.contains("ledger")),
        "no quota ledger: {state:?}"
    );
    let qwen_home = assert_private_tree(&env.home.join(".qwen"), &[]);
    assert!(
        qwen_home.iter().any(|p| p == "oauth_creds.json"),
        "{qwen_home:?}"
    );
    assert_eq!(mode(env.socket.parent().unwrap()), 0o700);
    eprintln!("private: state {state:?}, ~/.qwen {qwen_home:?}");
}

/// The scan that runs on every `TestEnv` drop finds a secret put in a log, in captured
/// output, in a `.env` file and by its shape, and names only its kind.
#[test]
fn the_secret_scan_catches_planted_secrets_and_never_prints_them() {
    let env = TestEnv::new();
    env.status();
    assert!(env.secret_leaks().is_empty(), "{:?}", env.secret_leaks());

    let by_hand = "sk-scan-canary-by-hand-0001";
    let from_dotenv = "sk-scan-canary-from-dotenv-0002";
    let from_var = "sk-scan-canary-from-a-var-0003";
    let proxy = format!("qwend-proxy-{}", "Ab3_".repeat(11));
    env.plant("test canary", by_hand);
    let proj = env.root.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join(".env"),
        format!("OPENAI_API_KEY=\"{from_dotenv}\"\n"),
    )
    .unwrap();
    let env = {
        // vars are fixed at construction: a second environment for that source.
        let mut e = env;
        e.vars.push(("MY_SERVICE_TOKEN".into(), from_var.into()));
        e
    };
    let log = env.state.join("qwend.log");
    let clean = std::fs::read_to_string(&log).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "TRACE leak: key={by_hand} dotenv={from_dotenv}").unwrap();
    writeln!(f, "TRACE leak: var={from_var} proxy={proxy}").unwrap();
    drop(f);
    env.capture("a captured stderr", format!("oops {by_hand}").as_bytes());

    let leaks = env.secret_leaks();
    let report = leaks.join("\n");
    for kind in [
        "test canary",
        "API key in a .env file",
        "API key given in the environment",
        "proxy secret",
    ] {
        assert!(
            leaks
                .iter()
                .any(|l| l.contains(kind) && l.contains("qwend.log")),
            "{kind} not reported:\n{report}"
        );
    }
    assert!(
        leaks.iter().any(|l| l.contains("a captured stderr")),
        "{report}"
    );
    for secret in [by_hand, from_dotenv, from_var, proxy.as_str()] {
        assert!(!report.contains(secret), "the report printed a secret");
    }
    assert!(
        report.contains("<test canary>"),
        "masked, not dropped: {report}"
    );

    // Clean again, so this environment's own scan on drop passes.
    std::fs::write(&log, clean).unwrap();
    env.forget_captured();
}

/// And the scan on drop fails the test: a leak planted on purpose must panic there.
#[test]
#[should_panic(expected = "secret scan: 1 leak(s)")]
fn a_leak_in_the_daemon_log_fails_the_test_when_its_environment_is_dropped() {
    let env = TestEnv::new();
    env.status();
    env.plant("test canary", "sk-scan-canary-on-drop-0004");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.state.join("qwend.log"))
        .unwrap();
    writeln!(f, "DEBUG a careless line: sk-scan-canary-on-drop-0004").unwrap();
}

/// What the scan relies on: the suite's daemons really log at trace level, and the OAuth
/// mock really records what it issued.
#[test]
fn the_suites_daemons_log_at_trace_level_and_the_mock_records_its_secrets() {
    let s = oauth_setup(&[]);
    std::fs::create_dir_all(s.env.home.join(".qwen")).unwrap();
    std::fs::write(
        s.env.home.join(".qwen/oauth_creds.json"),
        format!(
            r#"{{"access_token":"at-trace-old","refresh_token":"rt-trace-old","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":{}}}"#,
            now_ms() - 1000
        ),
    )
    .unwrap();
    std::fs::write(
        s.env.home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    s.mock.push(TOKEN_PATH, OAuthReply::refresh_rotate());
    let out = s
        .env
        .qwen_cmd(&["auth", "token"])
        .current_dir(&s.env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "at-refreshed");
    let log = s.env.log();
    assert!(
        log.lines().any(|l| l.contains("TRACE")),
        "no trace line in the daemon's log:\n{log}"
    );
    let kinds: Vec<_> = s.mock.secrets();
    for (kind, value) in [
        ("refresh token", "rt-trace-old"),
        ("access token", "at-refreshed"),
        ("refresh token", "rt-rotated"),
    ] {
        assert!(
            kinds.iter().any(|(k, v)| *k == kind && v == value),
            "{kind} {value} not recorded: {kinds:?}"
        );
    }
}
