//! The interactive session (`qwen` alone on a terminal, `qwen -i`) under a pseudo-terminal,
//! against the local mock model and the mock authorization server: the first-run choice,
//! `/auth` switching for the next message, a switch made by another client announced and
//! used, Ctrl-C and Ctrl-D, history across sessions. Every wait is on output, never a sleep.
mod common;

use common::openai_mock::{OpenAiMock, Reply};
use common::*;
use expectrl::Expect;

const PROMPT: &str = "qwen> ";

fn pty_qwen(env: &TestEnv, args: &[&str]) -> std::process::Command {
    let mut cmd = env.qwen_cmd(args);
    cmd.current_dir(env.root.path()).env("TERM", "xterm");
    cmd
}

/// [`pty_qwen`] with an OpenAI-compatible key and base URL in the environment.
fn pty_qwen_with_key(
    env: &TestEnv,
    args: &[&str],
    key: &str,
    base_url: impl AsRef<std::ffi::OsStr>,
) -> std::process::Command {
    let mut cmd = pty_qwen(env, args);
    cmd.env("OPENAI_API_KEY", key)
        .env("OPENAI_BASE_URL", base_url);
    cmd
}

/// A Qwen OAuth login held by the daemon's store (as Qwen Code writes it), whose API host is
/// `api`, and `selected` as the method.
fn oauth_login(env: &TestEnv, api: &OpenAiMock, selected: &str) {
    let dir = env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"at-session-secret","refresh_token":"rt-session-secret","token_type":"Bearer","resource_url":"http://127.0.0.1:{}","expiry_date":{}}}"#,
            api.port,
            now_ms() + 3_600_000
        ),
    )
    .unwrap();
    select(env, selected);
}

fn select(env: &TestEnv, method: &str) {
    let dir = env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("settings.json"),
        format!(r#"{{"security":{{"auth":{{"selectedType":"{method}"}}}}}}"#),
    )
    .unwrap();
}

/// A project `.qwen/.env` in the session's working directory.
fn project_key(env: &TestEnv, key: &str, api: &OpenAiMock) {
    let dir = env.root.path().join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        format!(
            "OPENAI_API_KEY={key}\nOPENAI_BASE_URL={}\nOPENAI_MODEL=m-env\n",
            api.base_url()
        ),
    )
    .unwrap();
}

/// Type a line as a person does (Enter is a carriage return on a terminal).
fn say(s: &mut pty::Pty, text: &str) {
    s.send(format!("{text}\r")).unwrap();
}

fn no_secrets(seen: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!seen.contains(secret), "{secret} was shown: {seen}");
    }
}

/// Leave with Ctrl-D and collect the rest.
fn leave(s: &mut pty::Pty) -> String {
    s.send("\x04").unwrap();
    let rest = pty::rest(s);
    assert_eq!(pty::exit_code(s), 0, "{rest}");
    rest
}

#[test]
fn first_run_picker_then_api_key_then_streamed_answers_with_the_conversation_as_context() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let mut s = pty::spawn(pty_qwen(&env, &[]));
    let mut seen = pty::expect(&mut s, "Choice [1/2]: ");
    assert!(
        seen.contains("Qwen OAuth") && seen.contains("API key"),
        "{seen}"
    );
    say(&mut s, "2");
    seen += &pty::expect(&mut s, "API key (input hidden): ");
    s.send_line("sk-session-typed").unwrap();
    seen += &pty::expect(&mut s, "Base URL");
    s.send_line(mock.base_url()).unwrap();
    seen += &pty::expect(&mut s, "Model");
    s.send_line("m-typed").unwrap();
    seen += &pty::expect(&mut s, "openai · model m-typed");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "hi");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    mock.push(Reply::stream(&["Second", " answer"]));
    say(&mut s, "and then?");
    seen += &pty::expect(&mut s, "Second answer");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    no_secrets(&seen, &["sk-session-typed"]);

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].bearer(), Some("sk-session-typed"));
    assert_eq!(reqs[0].body["model"], "m-typed");
    assert_eq!(
        reqs[1].body["messages"],
        serde_json::json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello, world!"},
            {"role": "user", "content": "and then?"},
        ])
    );
}

#[test]
fn auth_qwen_oauth_with_a_login_present_sends_the_next_message_with_the_oauth_token() {
    let env = TestEnv::new();
    let key_api = OpenAiMock::start();
    let oauth_api = OpenAiMock::start();
    oauth_login(&env, &oauth_api, "openai");
    let cmd = pty_qwen_with_key(&env, &[], "sk-env-secret", key_api.base_url());
    let mut s = pty::spawn(cmd);
    let mut seen = pty::expect(&mut s, PROMPT);
    assert!(seen.contains("openai"), "{seen}");
    say(&mut s, "one");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "/auth qwen-oauth");
    seen += &pty::expect(&mut s, "auth method is now qwen-oauth");
    seen += &pty::expect(&mut s, PROMPT);
    oauth_api.push(Reply::stream(&["From", " OAuth"]));
    say(&mut s, "two");
    seen += &pty::expect(&mut s, "From OAuth");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    no_secrets(
        &seen,
        &["sk-env-secret", "at-session-secret", "rt-session-secret"],
    );
    assert!(
        !seen.contains("by another client"),
        "its own switch is not announced as someone else's: {seen}"
    );

    assert_eq!(key_api.requests().len(), 1);
    assert_eq!(key_api.requests()[0].bearer(), Some("sk-env-secret"));
    let r = &oauth_api.requests()[0];
    assert_eq!(r.bearer(), Some("at-session-secret"));
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.body["model"], "coder-model");
    let settings = std::fs::read_to_string(env.home.join(".qwen/settings.json")).unwrap();
    assert!(settings.contains("qwen-oauth"), "{settings}");
}

#[test]
fn auth_openai_with_the_key_in_the_project_env_sends_the_next_message_with_it() {
    let env = TestEnv::new();
    let oauth_api = OpenAiMock::start();
    let key_api = OpenAiMock::start();
    oauth_login(&env, &oauth_api, "qwen-oauth");
    project_key(&env, "sk-project-secret", &key_api);
    let mut s = pty::spawn(pty_qwen(&env, &[]));
    let mut seen = pty::expect(&mut s, PROMPT);
    assert!(seen.contains("qwen-oauth"), "{seen}");
    say(&mut s, "one");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "/auth");
    seen += &pty::expect(&mut s, "Choice [1/2]: ");
    say(&mut s, "2");
    seen += &pty::expect(&mut s, "auth method is now openai");
    seen += &pty::expect(&mut s, PROMPT);
    key_api.push(Reply::stream(&["With", " the key"]));
    say(&mut s, "two");
    seen += &pty::expect(&mut s, "With the key");
    seen += &pty::expect(&mut s, PROMPT);
    // The .env shown in the session hides the key.
    say(&mut s, "/env");
    seen += &pty::expect(&mut s, "OPENAI_BASE_URL");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    no_secrets(&seen, &["sk-project-secret", "at-session-secret"]);

    assert_eq!(oauth_api.requests()[0].bearer(), Some("at-session-secret"));
    let r = &key_api.requests()[0];
    assert_eq!(r.bearer(), Some("sk-project-secret"));
    assert_eq!(r.body["model"], "m-env");
    // The conversation goes on across the switch.
    assert_eq!(r.body["messages"].as_array().unwrap().len(), 3);
}

#[test]
fn switching_to_a_method_that_cannot_work_says_what_is_missing_and_offers_the_fix() {
    let env = TestEnv::new();
    let oauth_api = OpenAiMock::start();
    let key_api = OpenAiMock::start();
    oauth_login(&env, &oauth_api, "qwen-oauth");
    let mut s = pty::spawn(pty_qwen(&env, &[]));
    let mut seen = pty::expect(&mut s, PROMPT);
    say(&mut s, "/auth openai");
    seen += &pty::expect(&mut s, "cannot switch to openai");
    seen += &pty::expect(&mut s, "Enter an API key now");
    say(&mut s, "y");
    seen += &pty::expect(&mut s, "API key (input hidden): ");
    s.send_line("sk-offered-secret").unwrap();
    seen += &pty::expect(&mut s, "Base URL");
    s.send_line(key_api.base_url()).unwrap();
    seen += &pty::expect(&mut s, "Model");
    s.send_line("").unwrap();
    seen += &pty::expect(&mut s, "auth method is now openai");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "hi");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    no_secrets(&seen, &["sk-offered-secret", "at-session-secret"]);
    assert_eq!(key_api.requests()[0].bearer(), Some("sk-offered-secret"));
    assert!(oauth_api.requests().is_empty());
}

#[test]
fn a_switch_made_by_another_client_is_announced_and_used_for_the_next_message() {
    let env = TestEnv::new();
    let key_api = OpenAiMock::start();
    let oauth_api = OpenAiMock::start();
    oauth_login(&env, &oauth_api, "openai");
    let cmd = pty_qwen_with_key(&env, &[], "sk-env-secret", key_api.base_url());
    let mut s = pty::spawn(cmd);
    let mut seen = pty::expect(&mut s, PROMPT);

    let out = env
        .qwen_cmd(&["auth", "switch", "qwen-oauth"])
        .current_dir(env.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen += &pty::expect(&mut s, "switched to qwen-oauth by another client");
    say(&mut s, "hi");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    no_secrets(&seen, &["sk-env-secret", "at-session-secret"]);
    assert!(key_api.requests().is_empty());
    assert_eq!(oauth_api.requests()[0].bearer(), Some("at-session-secret"));
}

#[test]
fn ctrl_c_cancels_the_answer_being_streamed_and_the_session_goes_on() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::Stream {
        pieces: vec!["Partial".into(), " never".into()],
        gate_after: Some(1),
    });
    let cmd = pty_qwen_with_key(
        &env,
        &["-i", "tell me a long story"],
        "sk-x",
        mock.base_url(),
    );
    let mut s = pty::spawn(cmd);
    let mut seen = pty::expect(&mut s, "Partial");
    s.send("\x03").unwrap();
    seen += &pty::expect(&mut s, "(cancelled)");
    seen += &pty::expect(&mut s, PROMPT);
    // That Ctrl-C is spent: one more at the prompt is a first one (the hint), not the
    // second that leaves.
    s.send("\x03").unwrap();
    seen += &pty::expect(&mut s, "(Ctrl-C again, Ctrl-D or /quit to leave)");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "short one");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    assert!(!seen.contains("never"), "{seen}");
    let reqs = mock.requests();
    assert_eq!(
        reqs[0].body["messages"][0]["content"],
        "tell me a long story"
    );
    // The cancelled exchange is not part of the conversation.
    assert_eq!(
        reqs[1].body["messages"],
        serde_json::json!([{"role": "user", "content": "short one"}])
    );
}

/// `stty -a` after the session: echo and line editing are back as they were.
fn restored_after(keys: &[&str]) {
    let env = TestEnv::new();
    let mut cmd = std::process::Command::new("sh");
    env.apply(&mut cmd);
    cmd.args(["-c", "\"$0\"; echo \"exit=$?\"; stty -a; echo END"])
        .arg(qwen_bin())
        .env("OPENAI_API_KEY", "sk-x")
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env("TERM", "xterm")
        .current_dir(env.root.path());
    let mut s = pty::spawn(cmd);
    pty::expect(&mut s, PROMPT);
    for (i, k) in keys.iter().enumerate() {
        s.send(k).unwrap();
        // A first Ctrl-C on an empty line only says how to leave. The next key waits for
        // the prompt: a Ctrl-C typed before the session takes the terminal again is a
        // SIGINT, which would kill the `sh -c` around it (the session itself takes it as
        // the key: see `a_second_ctrl_c_sent_before_the_prompt_is_back_still_leaves`).
        if *k == "\x03" && i + 1 < keys.len() {
            pty::expect(&mut s, "(Ctrl-C again, Ctrl-D or /quit to leave)");
            pty::expect(&mut s, PROMPT);
        }
    }
    let out = pty::expect(&mut s, "END");
    assert!(out.contains("exit=0"), "{out}");
    let flags: Vec<&str> = out.split_whitespace().collect();
    for f in ["echo", "icanon", "isig", "icrnl", "opost"] {
        assert!(flags.contains(&f), "{f} not restored: {out}");
    }
}

#[test]
fn ctrl_d_leaves_with_the_terminal_restored() {
    restored_after(&["\x04"]);
}

#[test]
fn ctrl_c_twice_on_an_empty_line_leaves_with_the_terminal_restored() {
    restored_after(&["\x03", "\x03"]);
}

/// The second Ctrl-C sent the moment the hint appears: the line editor has left raw mode
/// and may not be back yet, so the key can arrive as a SIGINT instead of a key. Either way
/// the session leaves (it used to swallow the signal and wait at the prompt).
#[test]
fn a_second_ctrl_c_sent_before_the_prompt_is_back_still_leaves() {
    let env = TestEnv::new();
    // Spawned directly, not under `sh -c`: a SIGINT goes to the whole foreground group,
    // and a non-interactive shell would die of it (an interactive one ignores it).
    let cmd = pty_qwen_with_key(&env, &[], "sk-x", "http://127.0.0.1:9/v1");
    let mut s = pty::spawn(cmd);
    pty::expect(&mut s, PROMPT);
    s.send("\x03").unwrap();
    pty::expect(&mut s, "(Ctrl-C again, Ctrl-D or /quit to leave)");
    s.send("\x03").unwrap();
    let rest = pty::rest(&mut s);
    assert_eq!(pty::exit_code(&s), 0, "{rest}");
}

#[test]
fn history_survives_a_restart_of_the_session_and_is_private() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let session = || {
        let cmd = pty_qwen_with_key(&env, &[], "sk-x", mock.base_url());
        pty::spawn(cmd)
    };
    let mut s = session();
    pty::expect(&mut s, PROMPT);
    say(&mut s, "remember this question");
    pty::expect(&mut s, "Hello, world!");
    pty::expect(&mut s, PROMPT);
    leave(&mut s);

    let history = env.state.join("history");
    assert_eq!(mode(&history), 0o600);
    let mut s = session();
    pty::expect(&mut s, PROMPT);
    // Up arrow, then Enter: the previous session's message again.
    s.send("\x1b[A").unwrap();
    pty::expect(&mut s, "remember this question");
    s.send("\r").unwrap();
    pty::expect(&mut s, "Hello, world!");
    pty::expect(&mut s, PROMPT);
    leave(&mut s);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].body["messages"][0]["content"],
        "remember this question"
    );
}

#[test]
fn errors_are_one_line_and_slash_commands_complete_on_tab() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(
        500,
        &[],
        r#"{"error":{"message":"upstream\nexploded for sk-x-secret"}}"#,
    ));
    let mut cmd = pty_qwen_with_key(&env, &[], "sk-x-secret", mock.base_url());
    cmd.env("OPENAI_MODEL", "m-one");
    let mut s = pty::spawn(cmd);
    let mut seen = pty::expect(&mut s, PROMPT);
    say(&mut s, "hi");
    let err = pty::expect(&mut s, PROMPT);
    assert!(
        err.contains("HTTP 500: upstream exploded for [redacted]"),
        "{err}"
    );
    seen += &err;
    // Tab completes `/sta` to `/status`.
    s.send("/sta\t").unwrap();
    seen += &pty::expect(&mut s, "/status");
    s.send("\r").unwrap();
    seen += &pty::expect(&mut s, "method     openai");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "/model m-two");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "again");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::expect(&mut s, PROMPT);
    say(&mut s, "/quit");
    seen += &pty::rest(&mut s);
    assert_eq!(pty::exit_code(&s), 0, "{seen}");
    no_secrets(&seen, &["sk-x-secret"]);
    assert_eq!(mock.requests()[1].body["model"], "m-two");
}

/// The session retries as `qwen -p` does (one implementation): a refused key once, and a
/// key whose quota the provider says is used up is named as such, not retried.
#[test]
fn a_refused_key_is_retried_once_and_a_used_up_key_is_named_as_in_prompt_mode() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let refused = r#"{"error":{"message":"bad key"}}"#;
    mock.push(Reply::status(401, &[], refused));
    mock.push(Reply::status(401, &[], refused));
    let mut cmd = pty_qwen_with_key(&env, &[], "sk-r-secret", mock.base_url());
    cmd.env("OPENAI_MODEL", "m-one");
    let mut s = pty::spawn(cmd);
    let mut seen = pty::expect(&mut s, PROMPT);
    say(&mut s, "hi");
    let err = pty::expect(&mut s, PROMPT);
    assert!(
        err.contains("HTTP 401")
            && err.contains("refused twice (check OPENAI_API_KEY and OPENAI_BASE_URL (/env shows"),
        "{err}"
    );
    assert_eq!(mock.requests().len(), 2, "one retry after the first 401");
    seen += &err;
    mock.push(Reply::status(
        429,
        &[],
        r#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#,
    ));
    say(&mut s, "again");
    let err = pty::expect(&mut s, PROMPT);
    assert!(
        err.contains("You exceeded your current quota")
            && err.contains("check its plan or billing"),
        "{err}"
    );
    assert_eq!(mock.requests().len(), 3, "a used-up key is not retried");
    seen += &err;
    seen += &leave(&mut s);
    no_secrets(&seen, &["sk-r-secret"]);
}

#[test]
fn first_run_oauth_login_in_the_session_can_be_cancelled_back_to_the_picker() {
    use common::oauth_mock::{DEVICE_PATH, Reply as IdpReply, TOKEN_PATH};
    let s = oauth_setup(&[("QWEND_OAUTH_TIME_UNIT_MS", "10")]);
    let api = OpenAiMock::start();
    s.mock
        .push(DEVICE_PATH, IdpReply::device_code(60_000, Some(1)));
    s.mock
        .push(DEVICE_PATH, IdpReply::device_code(60_000, Some(1)));
    s.mock.set_default(TOKEN_PATH, IdpReply::pending());
    let mut p = pty::spawn(pty_qwen(&s.env, &[]));
    let mut seen = pty::expect(&mut p, "Choice [1/2]: ");
    say(&mut p, "1");
    seen += &pty::expect(&mut p, "ABCD-EFGH");
    p.send("\x03").unwrap();
    seen += &pty::expect(&mut p, "login cancelled");
    seen += &pty::expect(&mut p, "Choice [1/2]: ");
    s.mock.set_default(
        TOKEN_PATH,
        IdpReply::json(
            200,
            serde_json::json!({
                "access_token": "at-picked-secret", "refresh_token": "rt-picked-secret",
                "token_type": "Bearer", "expires_in": 3600, "resource_url": api.base_url(),
            }),
        ),
    );
    say(&mut p, "1");
    seen += &pty::expect(&mut p, "logged in to Qwen OAuth");
    seen += &pty::expect(&mut p, "qwen-oauth · model coder-model");
    seen += &pty::expect(&mut p, PROMPT);
    say(&mut p, "hi");
    seen += &pty::expect(&mut p, "Hello, world!");
    seen += &pty::expect(&mut p, PROMPT);
    seen += &leave(&mut p);
    no_secrets(&seen, &["at-picked-secret", "rt-picked-secret"]);
    assert!(!seen.contains("by another client"), "{seen}");
    assert_eq!(api.requests()[0].bearer(), Some("at-picked-secret"));
}

#[test]
fn a_logout_made_elsewhere_is_announced_and_the_next_message_says_what_to_do() {
    let env = TestEnv::new();
    let api = OpenAiMock::start();
    oauth_login(&env, &api, "qwen-oauth");
    let mut s = pty::spawn(pty_qwen(&env, &[]));
    let mut seen = pty::expect(&mut s, PROMPT);
    let out = env.qwen(&["auth", "logout"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen += &pty::expect(&mut s, "logged out of Qwen OAuth");
    say(&mut s, "hi");
    seen += &pty::expect(&mut s, "/auth to set up");
    seen += &pty::expect(&mut s, PROMPT);
    seen += &leave(&mut s);
    no_secrets(&seen, &["at-session-secret", "rt-session-secret"]);
    assert!(api.requests().is_empty());
}

#[test]
fn a_daemon_that_stops_is_announced_and_started_again_by_the_next_message() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let cmd = pty_qwen_with_key(&env, &[], "sk-x", mock.base_url());
    let mut s = pty::spawn(cmd);
    pty::expect(&mut s, PROMPT);
    let first = env.daemon_pid();
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    pty::expect(&mut s, "the daemon is stopping");
    say(&mut s, "hi");
    pty::expect(&mut s, "Hello, world!");
    pty::expect(&mut s, PROMPT);
    leave(&mut s);
    assert_ne!(env.daemon_pid(), first);
}
