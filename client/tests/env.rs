//! `qwen env` through the real binaries: the daemon resolves for the client's cwd, HOME and
//! environment (the full Qwen Code conformance kit runs from .ci/run).
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn write(p: &Path, body: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn env_json(env: &TestEnv, cwd: &Path, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = env.qwen_cmd(&["env", "--json"]);
    cmd.current_dir(cwd).envs(extra.iter().copied());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn json_follows_the_contract_for_the_clients_cwd_home_and_environment() {
    let env = TestEnv::new();
    let proj = env.root.path().join("work/proj");
    write(
        &proj.join(".env"),
        "OPENAI_API_KEY=sk-proj\nDEBUG=1\nPRESET=file\nEMPTY_PRESET=file\n",
    );
    std::fs::create_dir_all(proj.join("sub")).unwrap();
    let v = env_json(
        &env,
        &proj.join("sub"),
        &[("PRESET", "shell"), ("EMPTY_PRESET", "")],
    );
    let real = std::fs::canonicalize(&proj).unwrap();
    assert_eq!(v["file"], real.join(".env").display().to_string());
    assert_eq!(v["vars"], serde_json::json!({"OPENAI_API_KEY": "sk-proj"}));

    // Outside any project: the fallback uses the CLIENT's HOME, not the daemon's.
    let other_home = env.root.path().join("other-home");
    write(&other_home.join(".qwen/.env"), "WHO=other-home\n");
    let outside = env.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let v = env_json(&env, &outside, &[("HOME", other_home.to_str().unwrap())]);
    assert_eq!(v["vars"], serde_json::json!({"WHO": "other-home"}));
    let v = env_json(&env, &outside, &[]);
    assert_eq!(v["file"], serde_json::Value::Null);
}

#[test]
fn cwd_flag_relative_and_missing() {
    let env = TestEnv::new();
    let proj = env.root.path().join("p");
    write(&proj.join(".qwen/.env"), "A=1\n");
    let out = env
        .qwen_cmd(&["env", "--json", "--cwd", "p"])
        .current_dir(env.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vars"]["A"], "1");

    let out = env
        .qwen_cmd(&["env", "--cwd", "/definitely/not/here"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/definitely/not/here") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1);
}

#[test]
fn human_view_masks_secrets_unless_asked() {
    let env = TestEnv::new();
    let proj = env.root.path().join("p");
    write(
        &proj.join(".env"),
        "OPENAI_API_KEY=sk-abcdefghijklmnop\nOPENAI_MODEL=qwen3\n",
    );
    let run = |args: &[&str]| {
        let out = env.qwen_cmd(args).current_dir(&proj).output().unwrap();
        assert!(out.status.success());
        text(&out.stdout)
    };
    let masked = run(&["env"]);
    assert!(!masked.contains("sk-abcdefghijklmnop"), "{masked}");
    assert!(masked.contains("qwen3"));
    assert!(run(&["env", "--show-secrets"]).contains("sk-abcdefghijklmnop"));
}

#[test]
fn export_lines_load_into_a_shell_unchanged() {
    let env = TestEnv::new();
    let proj = env.root.path().join("p");
    write(
        &proj.join(".env"),
        "A=\"multi\\nline\"\nB='it''s $HOME `x`'\nC=plain value\nbad-name=1\n",
    );
    let out = env
        .qwen_cmd(&["env", "--export"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("bad-name"),
        "invalid names are reported"
    );
    let script = format!(
        "{}\nprintf '%s|%s|%s' \"$A\" \"$B\" \"$C\"",
        text(&out.stdout)
    );
    let sh = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert_eq!(text(&sh.stdout), "multi\nline|it''s $HOME `x`|plain value");
}

#[test]
fn bad_files_get_warnings_and_the_daemon_keeps_serving() {
    let env = TestEnv::new();
    let big = env.root.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    // 100 MiB (sparse), over the 64 MiB bound: refused without being read into memory.
    let f = std::fs::File::create(big.join(".env")).unwrap();
    f.set_len(100 * 1024 * 1024).unwrap();
    let out = env
        .qwen_cmd(&["env", "--json"])
        .current_dir(&big)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("limit"), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["vars"], serde_json::json!({}));

    let dir_env = env.root.path().join("direnv");
    std::fs::create_dir_all(dir_env.join(".env")).unwrap();
    let v = env_json(&env, &dir_env, &[]);
    assert!(v["file"].as_str().unwrap().ends_with("direnv/.env"));
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cannot be read")
    );

    let loop_dir = env.root.path().join("loop");
    std::os::unix::fs::symlink(&loop_dir, &loop_dir).unwrap();
    let out = env
        .qwen_cmd(&["env", "--cwd", loop_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&out.stderr).contains("panicked"));

    // Still serving.
    let ok = env.root.path().join("ok");
    write(&ok.join(".env"), "FINE=1\n");
    assert_eq!(env_json(&env, &ok, &[])["vars"]["FINE"], "1");
}

#[test]
fn export_comments_out_keys_that_run_code_unless_allowed() {
    let env = TestEnv::new();
    let proj = env.root.path().join("p");
    write(
        &proj.join(".env"),
        "SAFE=1\nLD_PRELOAD=/tmp/evil.so\nNODE_OPTIONS=--require /tmp/evil.js\nGIT_DIR=/tmp/evil/.git\nBASH_ENV=\"/dev/null\ntouch /tmp/pwned\"\n",
    );
    let out = env
        .qwen_cmd(&["env", "--export"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let err = text(&out.stderr);
    for k in ["LD_PRELOAD", "NODE_OPTIONS", "GIT_DIR", "BASH_ENV"] {
        assert!(
            stdout.contains(&format!("# not exported: {k} ")),
            "{k}: {stdout}"
        );
        assert!(!stdout.contains(&format!("export {k}=")), "{k}: {stdout}");
        assert!(
            err.lines()
                .any(|l| l.contains("warning") && l.contains(&format!("not exporting {k} "))),
            "{k}: {err}"
        );
    }
    // No value of a refused key is printed: a newline in it would escape the comment.
    assert!(!stdout.contains("evil"), "{stdout}");
    assert!(!stdout.contains("pwned"), "{stdout}");
    let script = format!(
        "{stdout}\nprintf '%s|%s|%s' \"$SAFE\" \"${{LD_PRELOAD-unset}}\" \"${{BASH_ENV-unset}}\""
    );
    let sh = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert_eq!(text(&sh.stdout), "1|unset|unset");

    let out = env
        .qwen_cmd(&["env", "--export", "--allow-unsafe-env"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("export LD_PRELOAD='/tmp/evil.so'"),
        "{stdout}"
    );
    assert!(stdout.contains("export GIT_DIR="), "{stdout}");
    assert!(!text(&out.stderr).contains("not exporting"));

    // The human view shows the file as it is, and says which keys exec and --export skip.
    let out = env.qwen_cmd(&["env"]).current_dir(&proj).output().unwrap();
    let human = text(&out.stdout);
    let line = human.lines().find(|l| l.contains("LD_PRELOAD")).unwrap();
    assert!(
        line.contains("/tmp/evil.so") && line.contains("can run code"),
        "{human}"
    );
    let line = human.lines().find(|l| l.contains("SAFE")).unwrap();
    assert!(!line.contains("can run code"), "{human}");

    // The flag means nothing without --export.
    assert_eq!(
        env.qwen(&["env", "--allow-unsafe-env"]).status.code(),
        Some(2)
    );
}

#[test]
fn export_trusts_the_users_own_env_file() {
    let env = TestEnv::new();
    write(
        &env.home.join(".qwen/.env"),
        "NODE_OPTIONS=--max-old-space-size=64\n",
    );
    let outside = env.root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = env
        .qwen_cmd(&["env", "--export"])
        .current_dir(&outside)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "export NODE_OPTIONS='--max-old-space-size=64'\n"
    );
    assert!(!text(&out.stderr).contains("not exporting"));
}
