//! `qwen exec`: the child's environment (credentials, `.env`, unsafe keys), exit codes,
//! signals, and a real third-party client (the official `openai` Python package).
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::openai_mock::OpenAiMock;
use common::*;
use expectrl::Expect;

const KEY: &str = "sk-exec-0123456789";

fn child_env(out: &Output) -> HashMap<String, String> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn project(env: &TestEnv, dotenv: &str) -> PathBuf {
    let proj = env.root.path().join("proj");
    std::fs::create_dir_all(proj.join(".qwen")).unwrap();
    std::fs::write(proj.join(".qwen/.env"), dotenv).unwrap();
    proj
}

const UNSAFE: &[&str] = &[
    "LD_PRELOAD",
    "NODE_OPTIONS",
    "BASH_ENV",
    "PYTHONPATH",
    "GIT_SSH_COMMAND",
    "GIT_DIR",
    "XDG_CONFIG_HOME",
    "npm_config_userconfig",
    "CARGO_HOME",
    "PIP_CONFIG_FILE",
];

#[test]
fn the_child_gets_the_env_file_and_the_login_but_not_code_injection_keys() {
    let env = TestEnv::new();
    let proj = project(
        &env,
        &format!(
            "OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\nFOO=bar baz\nLD_PRELOAD=\nNODE_OPTIONS=--max-old-space-size=64\nBASH_ENV=/dev/null\nPYTHONPATH=/nowhere\nGIT_SSH_COMMAND=true\nGIT_DIR=/nowhere/.git\nXDG_CONFIG_HOME=/nowhere\nnpm_config_userconfig=/nowhere/.npmrc\nCARGO_HOME=/nowhere\nPIP_CONFIG_FILE=/nowhere/pip.conf\nPYTHONUNBUFFERED=1\nPRESET=from-file\n"
        ),
    );
    let out = env
        .qwen_cmd(&[
            "exec",
            "--cwd",
            proj.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo CWD=$(pwd); env",
        ])
        .env("PRESET", "from-env")
        .output()
        .unwrap();
    let vars = child_env(&out);
    assert_eq!(vars["OPENAI_API_KEY"], KEY);
    assert_eq!(vars["OPENAI_BASE_URL"], "http://127.0.0.1:9/v1");
    assert_eq!(vars["OPENAI_MODEL"], "qwen3.5-plus");
    assert_eq!(vars["FOO"], "bar baz");
    assert_eq!(
        vars["PYTHONUNBUFFERED"], "1",
        "a harmless flag in a denied family"
    );
    assert_eq!(
        vars["PRESET"], "from-env",
        "the environment wins over the file"
    );
    assert_eq!(Path::new(&vars["CWD"]), proj.canonicalize().unwrap());
    let err = text(&out.stderr);
    for k in UNSAFE {
        assert!(!vars.contains_key(*k), "{k} reached the child");
        assert!(
            err.lines()
                .any(|l| l.contains("warning") && l.contains(&format!("not setting {k} "))),
            "no warning for {k}: {err}"
        );
    }
    assert!(!err.contains(KEY));

    let out = env
        .qwen_cmd(&[
            "exec",
            "--allow-unsafe-env",
            "--cwd",
            proj.to_str().unwrap(),
            "--",
            "env",
        ])
        .output()
        .unwrap();
    let vars = child_env(&out);
    for k in UNSAFE {
        assert!(vars.contains_key(*k), "{k} missing with --allow-unsafe-env");
    }
    assert_eq!(vars["NODE_OPTIONS"], "--max-old-space-size=64");
    assert!(!text(&out.stderr).contains("not setting"));
}

/// Issue 13: a repository's `.env` with `GIT_DIR` pointing at a repository whose config
/// sets `core.fsmonitor` ran that command on `qwen exec -- git status`.
#[test]
fn a_project_git_dir_cannot_make_git_run_its_fsmonitor_hook() {
    if !require_program("git", ".ci/run's image has it; apt-get install git") {
        return;
    }
    let env = TestEnv::new();
    let evil = env.root.path().join("evil");
    let marker = env.root.path().join("fsmonitor-ran");
    let hook = env.root.path().join("hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let git = |args: &[&str]| {
        let mut c = std::process::Command::new("git");
        env.apply(&mut c);
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    };
    git(&["init", "-q", evil.to_str().unwrap()]);
    git(&[
        "-C",
        evil.to_str().unwrap(),
        "config",
        "core.fsmonitor",
        hook.to_str().unwrap(),
    ]);
    let proj = project(
        &env,
        &format!(
            "OPENAI_API_KEY={KEY}\nGIT_DIR={}\n",
            evil.join(".git").display()
        ),
    );
    let run = |extra: &[&str]| {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--cwd", proj.to_str().unwrap(), "--", "git", "status"]);
        env.qwen_cmd(&args).output().unwrap()
    };
    let out = run(&[]);
    assert!(
        !marker.exists(),
        "the project's GIT_DIR made git run core.fsmonitor"
    );
    let err = text(&out.stderr);
    assert!(err.contains("not setting GIT_DIR"), "{err}");

    // The same repository with the user's consent: the hook does run, so the check above
    // is a real one.
    let _ = run(&["--allow-unsafe-env"]);
    assert!(marker.exists(), "the attack did not work at all");
}

#[test]
fn the_users_own_env_file_is_trusted() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();
    std::fs::write(
        env.home.join(".qwen/.env"),
        format!("OPENAI_API_KEY={KEY}\nNODE_OPTIONS=--max-old-space-size=64\n"),
    )
    .unwrap();
    let out = env
        .qwen_cmd(&["exec", "--", "env"])
        .current_dir(env.root.path())
        .output()
        .unwrap();
    let vars = child_env(&out);
    assert_eq!(vars["NODE_OPTIONS"], "--max-old-space-size=64");
    assert_eq!(vars["OPENAI_API_KEY"], KEY);
    assert!(!text(&out.stderr).contains("not setting"));
}

#[test]
fn with_qwen_oauth_and_direct_the_child_gets_the_access_token_and_the_portal_base() {
    let env = TestEnv::new();
    let dir = env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(r#"{{"access_token":"at-x","refresh_token":"r","token_type":"Bearer","resource_url":"http://127.0.0.1:4567","expiry_date":{}}}"#, now + 3_600_000),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
    let out = env
        .qwen_cmd(&["exec", "--direct", "--", "env"])
        .current_dir(&env.home)
        // The daemon's login wins over a stale key in the environment.
        .env("OPENAI_API_KEY", "sk-stale")
        .output()
        .unwrap();
    let vars = child_env(&out);
    assert_eq!(vars["OPENAI_API_KEY"], "at-x");
    assert_eq!(vars["OPENAI_BASE_URL"], "http://127.0.0.1:4567/v1");
    assert_eq!(vars["OPENAI_MODEL"], "coder-model");
}

#[test]
fn exit_codes_pass_through() {
    let env = TestEnv::new();
    let run = |args: &[&str]| {
        let mut a = vec!["exec", "--"];
        a.extend_from_slice(args);
        env.qwen_cmd(&a)
            .env("OPENAI_API_KEY", KEY)
            .output()
            .unwrap()
    };
    assert_eq!(run(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(run(&["true"]).status.code(), Some(0));
    assert_eq!(
        run(&["sh", "-c", "kill -KILL $$"]).status.code(),
        Some(128 + 9)
    );
    assert_eq!(
        run(&["sh", "-c", "kill -TERM $$"]).status.code(),
        Some(128 + 15)
    );
    let out = run(&["no-such-command-qwen-test"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("no-such-command-qwen-test"));
    let out = env.qwen_cmd(&["exec", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "no credentials: nothing is run");
    assert_eq!(env.qwen(&["exec"]).status.code(), Some(2));
}

/// A child that traps `sig`, says it is ready, and exits 42 when the signal comes.
fn trapping_child(env: &TestEnv, sig: &str) -> std::process::Child {
    let script =
        format!("trap 'echo got-{sig}; exit 42' {sig}; echo ready; while :; do sleep 0.05; done");
    env.qwen_cmd(&["exec", "--", "sh", "-c", &script])
        .env("OPENAI_API_KEY", KEY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn signals_sent_to_qwen_reach_the_child() {
    let env = TestEnv::new();
    for sig in ["TERM", "INT", "HUP", "QUIT"] {
        let mut child = trapping_child(&env, sig);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        kill(child.id(), sig);
        assert_eq!(lines.next().unwrap().unwrap(), format!("got-{sig}"));
        assert_eq!(child.wait().unwrap().code(), Some(42), "{sig}");
    }
}

#[test]
fn ctrl_c_on_a_terminal_reaches_the_child_once() {
    let env = TestEnv::new();
    let script = "n=0; trap 'n=$((n+1)); echo got-INT' INT; trap 'echo ints=$n; exit 5' TERM; echo ready; while :; do sleep 0.05; done";
    let mut cmd = env.qwen_cmd(&["exec", "--", "sh", "-c", script]);
    cmd.env("OPENAI_API_KEY", KEY);
    let mut s = pty::spawn(cmd);
    pty::expect(&mut s, "ready");
    // The terminal sends SIGINT to the whole foreground group: child and qwen. qwen must
    // not send it again.
    s.send(expectrl::ControlCode::EndOfText).unwrap();
    pty::expect(&mut s, "got-INT");
    let qwen_pid = s.get_process().pid().as_raw() as u32;
    kill(qwen_pid, "TERM");
    let out = pty::expect(&mut s, "ints=");
    let rest = pty::rest(&mut s);
    assert!(rest.trim_start().starts_with('1'), "{out}{rest}");
    assert_eq!(pty::exit_code(&s), 5);
}

#[test]
fn the_official_openai_python_client_works_through_exec() {
    let Some(python) = python_with(&["openai"]) else {
        return;
    };
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let proj = project(
        &env,
        &format!(
            "OPENAI_API_KEY={KEY}\nOPENAI_BASE_URL={}\nOPENAI_MODEL=m-py\n",
            mock.base_url()
        ),
    );
    let script = r#"
import os, openai
client = openai.OpenAI(max_retries=0)
stream = client.chat.completions.create(
    model=os.environ["OPENAI_MODEL"],
    messages=[{"role": "user", "content": "hi from python"}],
    stream=True,
)
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
"#;
    let out = env
        .qwen_cmd(&[
            "exec",
            "--cwd",
            proj.to_str().unwrap(),
            "--",
            python.to_str().unwrap(),
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].bearer(), Some(KEY));
    assert_eq!(reqs[0].body["model"], "m-py");
    assert_eq!(reqs[0].body["messages"][0]["content"], "hi from python");
    assert!(
        reqs[0].headers["user-agent"].starts_with("OpenAI/Python"),
        "{:?}",
        reqs[0].headers
    );
}
