//! What `qwen` writes on stdout: a closed stdout ends any command quietly (issue 13), and
//! every subcommand has its man page (issue 15).
mod common;

use std::process::Stdio;

use common::*;

/// Runs `qwen args` with a stdout whose reader is already gone: every write fails with
/// EPIPE, deterministically (no race with a `| true` that may or may not have exited).
fn with_closed_stdout(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    env.qwen_cmd(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();
    std::fs::write(
        env.home.join(".qwen/.env"),
        "OPENAI_API_KEY=sk-pipe-0123456789\n",
    )
    .unwrap();
    env.status();
    for args in [
        &["auth", "status"][..],
        &["auth", "status", "--json"],
        &["auth", "token"],
        &["quota"],
        &["quota", "--json"],
        &["daemon", "status"],
        &["daemon", "status", "--json"],
        &["env"],
        &["env", "--export"],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["man"],
        &["man", "daemon"],
    ] {
        let out = with_closed_stdout(&env, args);
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "qwen {args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "qwen {args:?}: {err}");
        assert!(
            !err.to_lowercase().contains("broken pipe"),
            "qwen {args:?}: {err}"
        );
    }
}

#[test]
fn every_subcommand_has_a_man_page() {
    let env = TestEnv::new();
    let top = env.qwen(&["man"]);
    assert!(top.status.success());
    let top = text(&top.stdout);
    for sub in [
        "auth",
        "quota",
        "env",
        "daemon",
        "exec",
        "completions",
        "man",
    ] {
        assert!(
            top.contains(&format!("qwen\\-{sub}(1)")),
            "qwen(1) lacks {sub}"
        );
        let out = env.qwen(&["man", sub]);
        assert!(out.status.success(), "{sub}: {}", text(&out.stderr));
        let page = text(&out.stdout);
        assert!(page.contains(&format!(".TH qwen-{sub} 1")), "{sub}: {page}");
    }
    let out = env.qwen(&["man", "daemon", "restart"]);
    assert!(text(&out.stdout).contains(".TH qwen-daemon-restart 1"));
    let out = env.qwen(&["man", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("auth, quota"),
        "{}",
        text(&out.stderr)
    );

    // All at once, for packagers; `man` itself reads them.
    let dir = env.root.path().join("man1");
    let out = env.qwen(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in [
        "qwen.1",
        "qwen-auth.1",
        "qwen-auth-status.1",
        "qwen-daemon.1",
        "qwen-daemon-stop.1",
        "qwen-exec.1",
        "qwen-env.1",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing");
        assert!(text(&out.stdout).contains(name));
    }
}
