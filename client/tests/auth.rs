//! `qwen auth status|switch|logout` through the real binaries, with Qwen Code's own
//! credential file in a temporary HOME.
mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn write_qwen_creds(home: &Path, expiry_ms: i64) {
    let dir = home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"at-secret-1","refresh_token":"rt-secret-1","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":{expiry_ms}}}"#
        ),
    )
    .unwrap();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn json(env: &TestEnv, args: &[&str], cwd: &Path) -> Value {
    let out = env.qwen_cmd(args).current_dir(cwd).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `qwen auth status --json`: the exit code and the document (printed whatever the code).
fn status(env: &TestEnv, cwd: &Path) -> (Option<i32>, Value) {
    let out = env
        .qwen_cmd(&["auth", "status", "--json"])
        .current_dir(cwd)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    (out.status.code(), v)
}

#[test]
fn qwen_code_credentials_are_used_without_any_login() {
    let env = TestEnv::new();
    let expiry = now_ms() + 3_600_000;
    write_qwen_creds(&env.home, expiry);
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}, "ui": {"theme": "x"}}"#,
    )
    .unwrap();
    let v = json(&env, &["auth", "status", "--json"], &env.home);
    assert_eq!(v["auth_type"], "qwen-oauth");
    assert_eq!(v["logged_in"], true);
    assert_eq!(v["store"], "file");
    assert_eq!(v["base_url"], "https://portal.qwen.ai/v1");
    assert_eq!(v["model"], "coder-model");
    let expires = v["expires_at"].as_str().unwrap();
    assert!(expires.ends_with('Z') && expires.contains('T'), "{expires}");
    assert_eq!(v["quota"]["minute"]["limit"], 60);
    assert_eq!(v["quota"]["day"]["limit"], 2000);
    // Imported into our own store (0600), never printed.
    let ours = env.state.join("credentials");
    let stored: Vec<_> = std::fs::read_dir(&ours).unwrap().collect();
    assert!(!stored.is_empty());
    let all = format!("{v}{}", env.log());
    assert!(!all.contains("at-secret-1") && !all.contains("rt-secret-1"));
}

#[test]
fn switch_needs_a_key_for_openai_and_keeps_other_settings() {
    let env = TestEnv::new();
    let proj = env.root.path().join("proj");
    std::fs::create_dir_all(proj.join(".qwen")).unwrap();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();
    let settings = env.home.join(".qwen/settings.json");
    std::fs::write(
        &settings,
        r#"{"ui": {"theme": "dark"}, "model": {"name": "m-user"}}"#,
    )
    .unwrap();

    let out = env
        .qwen_cmd(&["auth", "switch", "openai"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("OPENAI_API_KEY") && err.contains(".qwen/.env"),
        "{err}"
    );
    assert!(
        !std::fs::read_to_string(&settings)
            .unwrap()
            .contains("selectedType")
    );

    std::fs::write(
        proj.join(".qwen/.env"),
        "OPENAI_API_KEY=sk-proj\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\n",
    )
    .unwrap();
    let v = json(&env, &["auth", "switch", "openai", "--json"], &proj);
    assert_eq!(v["auth_type"], "openai");
    assert_eq!(v["base_url"], "http://127.0.0.1:9/v1");
    assert_eq!(v["model"], "m-user", "model.name applies to openai");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(doc["security"]["auth"]["selectedType"], "openai");
    assert_eq!(doc["ui"]["theme"], "dark");

    // Every client sees it at once, without a restart.
    let v = json(&env, &["auth", "status", "--json"], &proj);
    assert_eq!(v["auth_type"], "openai");
    assert_eq!(v["logged_in"], true);
    let v = json(&env, &["auth", "switch", "qwen-oauth", "--json"], &proj);
    assert_eq!(v["auth_type"], "qwen-oauth");
    assert_eq!(v["logged_in"], false);
}

#[test]
fn switch_without_a_method_and_no_terminal_is_a_usage_error() {
    let env = TestEnv::new();
    let out = env.qwen(&["auth", "switch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("qwen-oauth|openai"));
}

#[test]
fn invalid_settings_are_named_and_left_alone() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();
    let settings = env.home.join(".qwen/settings.json");
    std::fs::write(&settings, "{\n  \"ui\": {,\n}").unwrap();
    let out = env.qwen(&["auth", "switch", "qwen-oauth"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("settings.json") && err.contains("line 2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&settings).unwrap(),
        "{\n  \"ui\": {,\n}"
    );
}

#[test]
fn logout_forgets_everywhere_and_status_says_logged_out() {
    let env = TestEnv::new();
    write_qwen_creds(&env.home, now_ms() + 3_600_000);
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    assert_eq!(
        json(&env, &["auth", "status", "--json"], &env.home)["logged_in"],
        true
    );
    let v = json(&env, &["auth", "logout", "--json"], &env.home);
    let removed: Vec<&str> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        removed.contains(&"file") && removed.contains(&"qwen-code-file"),
        "{v}"
    );
    assert!(!env.home.join(".qwen/oauth_creds.json").exists());
    let (code, v) = status(&env, &env.home);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["logged_in"], false);
    assert_eq!(v["expires_at"], Value::Null);
}

#[test]
fn a_login_made_with_qwen_code_while_the_daemon_runs_is_picked_up() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    assert_eq!(status(&env, &env.home).1["logged_in"], false);
    write_qwen_creds(&env.home, now_ms() + 7_200_000);
    let v = json(&env, &["auth", "status", "--json"], &env.home);
    assert_eq!(v["logged_in"], true);
}

#[test]
fn status_exits_3_when_the_selected_method_cannot_authenticate() {
    let env = TestEnv::new();
    let proj = env.root.path().join("proj");
    let elsewhere = env.root.path().join("elsewhere");
    std::fs::create_dir_all(proj.join(".qwen")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(env.home.join(".qwen")).unwrap();

    // Nothing configured.
    let (code, v) = status(&env, &proj);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(v["usable"], false);
    assert!(
        v["reason"].as_str().unwrap().contains("qwen auth login"),
        "{v}"
    );

    // Qwen OAuth selected, not logged in; then logged in.
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    let (code, v) = status(&env, &proj);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(
        (v["auth_type"].as_str(), &v["usable"]),
        (Some("qwen-oauth"), &Value::Bool(false))
    );
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("not logged in") && reason.contains("qwen auth login"),
        "{reason}"
    );
    let out = env
        .qwen_cmd(&["auth", "status"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("logged in  no"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("cannot authenticate"),
        "{}",
        text(&out.stderr)
    );
    write_qwen_creds(&env.home, now_ms() + 3_600_000);
    let (code, v) = status(&env, &proj);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (&v["usable"], &v["reason"]),
        (&Value::Bool(true), &Value::Null)
    );

    // openai: usable where a key resolves, not elsewhere.
    std::fs::write(proj.join(".qwen/.env"), "OPENAI_API_KEY=sk-proj\n").unwrap();
    let out = env
        .qwen_cmd(&["auth", "switch", "openai"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("openai works here; elsewhere it needs OPENAI_API_KEY"),
        "{said}"
    );
    let (code, v) = status(&env, &proj);
    assert_eq!((code, &v["usable"]), (Some(0), &Value::Bool(true)), "{v}");
    let (code, v) = status(&env, &elsewhere);
    assert_eq!(code, Some(3), "{v}");
    assert_eq!(
        (v["auth_type"].as_str(), &v["usable"]),
        (Some("openai"), &Value::Bool(false))
    );
    assert!(
        v["reason"].as_str().unwrap().contains("OPENAI_API_KEY"),
        "{v}"
    );
    // The same key in the environment makes it usable there too.
    let out = env
        .qwen_cmd(&["auth", "status", "--json"])
        .env("OPENAI_API_KEY", "sk-env")
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn logout_names_the_places_in_words() {
    let env = TestEnv::new();
    write_qwen_creds(&env.home, now_ms() + 3_600_000);
    std::fs::write(
        env.home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    assert_eq!(status(&env, &env.home).0, Some(0), "imported and usable");
    let out = env
        .qwen_cmd(&["auth", "logout"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let qwen_file = env.home.join(".qwen/oauth_creds.json");
    assert!(
        said.contains(&format!(
            "Qwen Code's oauth_creds.json ({})",
            qwen_file.display()
        )),
        "{said}"
    );
    assert!(said.contains("qwend's credentials file ("), "{said}");
    assert!(
        said.contains(&env.state.join("credentials").display().to_string()),
        "{said}"
    );
    assert!(!said.contains("qwen-code-file"), "{said}");
    let out = env
        .qwen_cmd(&["auth", "logout"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("you are logged out"),
        "{}",
        text(&out.stdout)
    );
}
