//! The interactive paths under a pseudo-terminal: Qwen Code's first-run `/auth` choice
//! (API key typed hidden, saved 0600 beside the user's other lines, method switched), the
//! OAuth choice, and the spinner with and without `NO_COLOR`.
mod common;

use common::openai_mock::{OpenAiMock, Reply};
use common::*;
use expectrl::Expect;

fn pty_qwen(env: &TestEnv, args: &[&str]) -> std::process::Command {
    let mut cmd = env.qwen_cmd(args);
    cmd.current_dir(env.root.path()).env("TERM", "xterm");
    cmd
}

#[test]
fn first_run_with_an_api_key_saves_it_hidden_and_switches_to_openai() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let dotenv = env.home.join(".qwen/.env");
    std::fs::create_dir_all(dotenv.parent().unwrap()).unwrap();
    std::fs::write(&dotenv, "# mine\nOTHER=1\n").unwrap();

    let mut s = pty::spawn(pty_qwen(&env, &["-p", "hi"]));
    let mut seen = pty::expect(&mut s, "Choice [1/2]: ");
    assert!(
        seen.contains("Qwen OAuth") && seen.contains("API key"),
        "{seen}"
    );
    s.send_line("2").unwrap();
    seen += &pty::expect(&mut s, "API key (input hidden): ");
    s.send_line("sk-typed-secret").unwrap();
    seen += &pty::expect(&mut s, "Base URL");
    s.send_line(mock.base_url()).unwrap();
    seen += &pty::expect(&mut s, "Model");
    s.send_line("m-typed").unwrap();
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::rest(&mut s);
    assert_eq!(pty::exit_code(&s), 0, "{seen}");
    assert!(
        !seen.contains("sk-typed-secret"),
        "the key was echoed: {seen}"
    );
    assert!(
        seen.contains("2\r\n"),
        "other answers are echoed as usual: {seen}"
    );

    let r = &mock.requests()[0];
    assert_eq!(r.bearer(), Some("sk-typed-secret"));
    assert_eq!(r.body["model"], "m-typed");
    assert_eq!(mode(&dotenv), 0o600);
    let saved = std::fs::read_to_string(&dotenv).unwrap();
    assert!(saved.starts_with("# mine\nOTHER=1\n"), "{saved}");
    assert!(
        saved.contains("OPENAI_API_KEY='sk-typed-secret'\n"),
        "{saved}"
    );
    assert!(saved.contains("OPENAI_MODEL='m-typed'\n"), "{saved}");
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.home.join(".qwen/settings.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(settings["security"]["auth"]["selectedType"], "openai");

    // From now on, scripts work without asking.
    let out = env
        .qwen_cmd(&["-p", "again"])
        .current_dir(env.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mock.requests()[1].bearer(), Some("sk-typed-secret"));
}

#[test]
fn first_run_choosing_qwen_oauth_logs_in_and_goes_on_with_the_prompt() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idp = rt.block_on(oauth_mock::MockServer::start());
    let api = OpenAiMock::start();
    idp.push(
        oauth_mock::DEVICE_PATH,
        oauth_mock::Reply::device_code(600, Some(1)),
    );
    // The account's API host is the local model server.
    idp.push(
        oauth_mock::TOKEN_PATH,
        oauth_mock::Reply::json(
            200,
            serde_json::json!({
                "access_token": "at-first-run", "refresh_token": "rt-first-run",
                "token_type": "Bearer", "expires_in": 3600, "resource_url": api.base_url(),
            }),
        ),
    );
    let env = TestEnv::new()
        .with_var("QWEN_OAUTH_BASE_URL", idp.base_url())
        .with_var("QWEND_OAUTH_TIME_UNIT_MS", "10");
    let mut s = pty::spawn(pty_qwen(&env, &["-p", "hi"]));
    pty::expect(&mut s, "Choice [1/2]: ");
    s.send_line("1").unwrap();
    let mut seen = pty::expect(&mut s, "ABCD-EFGH");
    seen += &pty::expect(&mut s, "Hello, world!");
    seen += &pty::rest(&mut s);
    assert_eq!(pty::exit_code(&s), 0, "{seen}");
    assert!(seen.contains("logged in to Qwen OAuth"), "{seen}");
    assert_eq!(api.requests()[0].bearer(), Some("at-first-run"));
    assert_eq!(api.requests()[0].body["model"], "coder-model");
}

/// Bare `qwen` on a terminal opens the session (tests/session.rs); the setup is offered
/// only when nothing is configured, asked again after a wrong answer, and can be put off.
#[test]
fn bare_qwen_on_a_terminal_offers_the_setup_only_when_nothing_is_configured() {
    let env = TestEnv::new();
    let mut s = pty::spawn(pty_qwen(&env, &[]));
    pty::expect(&mut s, "Choice [1/2]: ");
    s.send("3\r").unwrap();
    let seen = pty::expect(&mut s, "Choice [1/2]: ");
    assert!(seen.contains("no such choice"), "{seen}");
    s.send("\x04").unwrap();
    pty::expect(&mut s, "not set up; type /auth when you are ready");
    pty::expect(&mut s, "qwen> ");
    s.send("\x04").unwrap();
    pty::rest(&mut s);
    assert_eq!(pty::exit_code(&s), 0);

    let mut cmd = pty_qwen(&env, &[]);
    cmd.env("OPENAI_API_KEY", "sk-x");
    let mut s = pty::spawn(cmd);
    let seen = pty::expect(&mut s, "qwen> ");
    assert!(
        seen.contains("openai") && !seen.contains("Choice"),
        "{seen}"
    );
    s.send("\x04").unwrap();
    pty::rest(&mut s);
    assert_eq!(pty::exit_code(&s), 0);
}

/// The spinner shows while the model has not answered yet; coloured unless `NO_COLOR`.
#[test]
fn spinner_on_a_terminal_respects_no_color() {
    for no_color in [false, true] {
        let env = TestEnv::new();
        let mock = OpenAiMock::start();
        mock.push(Reply::Stream {
            pieces: vec!["Hi".into()],
            gate_after: Some(0),
        });
        let mut cmd = pty_qwen(&env, &["-p", "hi"]);
        cmd.env("OPENAI_API_KEY", "sk-x")
            .env("OPENAI_BASE_URL", mock.base_url())
            .env("OPENAI_MODEL", "m-spin");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let mut s = pty::spawn(cmd);
        let before = pty::expect(&mut s, "waiting for m-spin");
        mock.release();
        let after = pty::expect(&mut s, "Hi");
        pty::rest(&mut s);
        assert_eq!(pty::exit_code(&s), 0);
        let all = before + &after;
        // 36 = cyan, the spinner's colour.
        assert_eq!(
            all.contains("\x1b[36m"),
            !no_color,
            "NO_COLOR={no_color}: {all:?}"
        );
    }
}
