//! Qwen Code's settings.json through the real binaries: one rule for every command that
//! reads it (whose file, what a broken one does), and the one writer.
mod common;

use std::path::Path;
use std::process::Output;

use common::openai_mock::OpenAiMock;
use common::*;
use serde_json::Value;

const KEY: &str = "sk-settings-test-0123456789";

fn run(env: &TestEnv, cwd: &Path, vars: &[(&str, String)], args: &[&str]) -> Output {
    env.qwen_cmd(args)
        .current_dir(cwd)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
}

fn warnings(v: &Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings in {v}"))
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect()
}

/// A trailing comma in the user's settings.json: `qwen env`, `qwen auth status` and
/// `qwen -p` all go on without the file and say the same thing about it, naming the file
/// and the line; `qwen auth switch` refuses to write over it.
#[test]
fn a_broken_settings_file_is_the_same_warning_everywhere_and_only_the_writer_refuses() {
    let env = TestEnv::new();
    let settings = env.home.join(".qwen/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let broken = "{\n  \"ui\": {\"theme\": \"dark\"},\n}\n";
    std::fs::write(&settings, broken).unwrap();
    let proj = env.root.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join(".env"), "FROM_DOTENV=1\n").unwrap();
    let mock = OpenAiMock::start();
    let openai = vec![
        ("OPENAI_API_KEY", KEY.to_string()),
        ("OPENAI_BASE_URL", mock.base_url()),
    ];

    let out = run(&env, &proj, &[], &["env", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = json_of(&out);
    assert_eq!(v["vars"]["FROM_DOTENV"], "1");
    let from_env = warnings(&v);
    assert_eq!(from_env.len(), 1, "{from_env:?}");
    let warning = &from_env[0];
    assert!(
        warning.contains(&settings.display().to_string()) && warning.contains("line 3"),
        "{warning}"
    );

    let out = run(&env, &proj, &openai, &["auth", "status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v = json_of(&out);
    assert_eq!(v["auth_type"], "openai");
    assert_eq!(v["logged_in"], true);
    assert!(warnings(&v).contains(warning), "{v}");

    let out = run(&env, &proj, &openai, &["-p", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert!(
        text(&out.stderr).contains(warning.as_str()),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(mock.requests().len(), 1);

    // `qwen exec` asks twice (the `.env`, then the credentials): the warning shows once.
    let out = run(&env, &proj, &openai, &["exec", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).matches(warning.as_str()).count(),
        1,
        "{}",
        text(&out.stderr)
    );

    // With nothing else configured the answer is "authentication needed" (exit 3), and
    // it still names the broken file.
    let out = run(&env, &proj, &[], &["auth", "status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(warnings(&json_of(&out)).contains(warning));
    let out = run(&env, &proj, &[], &["-p", "hello"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 3"),
        "{}",
        text(&out.stderr)
    );

    for method in ["qwen-oauth", "openai"] {
        let out = run(&env, &proj, &openai, &["auth", "switch", method]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&settings.display().to_string()) && err.contains("line 3"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), broken);
    assert!(!env.log().contains(KEY));
}

/// A client that names its own Qwen home gets its settings for everything: the method,
/// the `.env` exclusions and the file a switch writes.
#[test]
fn the_clients_qwen_home_holds_its_settings_for_every_reader() {
    let env = TestEnv::new();
    env.status(); // the daemon runs with the default home
    let alt = env.root.path().join("alt-qwen");
    std::fs::create_dir_all(&alt).unwrap();
    std::fs::write(
        alt.join("settings.json"),
        r#"{"security": {"auth": {"selectedType": "openai"}}, "advanced": {"excludedEnvVars": ["FOO"]}}"#,
    )
    .unwrap();
    let proj = env.root.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join(".env"),
        format!("FOO=1\nDEBUG=1\nOPENAI_API_KEY={KEY}\n"),
    )
    .unwrap();
    let vars = [("QWEN_HOME", alt.display().to_string())];

    let v = json_of(&run(&env, &proj, &vars, &["env", "--json"]));
    assert_eq!(v["vars"].get("FOO"), None, "{v}");
    assert_eq!(v["vars"]["DEBUG"], "1", "the list replaces the default");
    let v = json_of(&run(&env, &proj, &vars, &["auth", "status", "--json"]));
    assert_eq!(v["auth_type"], "openai");
    assert_eq!(v["logged_in"], true);
    assert_eq!(
        v["settings_file"],
        alt.join("settings.json").display().to_string()
    );
    // Without QWEN_HOME the same client is back on ~/.qwen: nothing selected there, and
    // the key in the .env infers openai.
    let v = json_of(&run(&env, &proj, &[], &["env", "--json"]));
    assert_eq!(v["vars"]["FOO"], "1");
    assert_eq!(v["vars"].get("DEBUG"), None);

    let out = run(&env, &proj, &vars, &["auth", "switch", "qwen-oauth"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(alt.join("settings.json")).unwrap()).unwrap();
    assert_eq!(doc["security"]["auth"]["selectedType"], "qwen-oauth");
    assert_eq!(doc["advanced"]["excludedEnvVars"][0], "FOO");
    assert!(!env.home.join(".qwen/settings.json").exists());
}
