use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::*;

const QWEN: &str = r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#;
const OPENAI: &str = r#"{"security": {"auth": {"selectedType": "openai"}}}"#;

/// Writes `text` (or removes the file) and dates it `age` back, old enough for the file
/// cache to trust its stamp.
fn put(path: &Path, text: Option<&str>, age: Duration) {
    match text {
        Some(text) => {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(SystemTime::now() - age)
                .unwrap();
        }
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn env(pairs: &[(&str, &Path)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect()
}

fn values(text: &str) -> FileValues {
    FileValues::parse(Path::new("s.json"), text.as_bytes()).unwrap()
}

#[test]
fn comments_are_blanked_and_strings_kept() {
    let src = "{\n  // line\n  \"a\": \"x//y\", /* block\n */ \"b\": 1\n}";
    let v = parse(Path::new("s.json"), src).unwrap();
    assert_eq!(v, json!({"a": "x//y", "b": 1}));
    assert_eq!(
        strip_json_comments(src).lines().count(),
        src.lines().count()
    );
}

#[test]
fn syntax_errors_name_file_and_line() {
    let e = parse(Path::new("/h/.qwen/settings.json"), "{\n  \"a\": 1,\n}").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/h/.qwen/settings.json") && msg.contains("line 3"),
        "{msg}"
    );
    assert!(matches!(
        parse(Path::new("x"), "[1]").unwrap_err(),
        SettingsError::NotAnObject { .. }
    ));
}

#[test]
fn the_api_key_never_shows_in_debug() {
    let v = values(r#"{"security": {"auth": {"apiKey": "sk-hidden"}}}"#);
    assert!(!format!("{v:?}").contains("sk-hidden"));
}

#[test]
fn a_keys_presence_decides_which_file_counts() {
    let mk = |ws: &str, user: &str| {
        let mut v = View::default();
        v.workspace = Some(Arc::new(Ok(values(ws))));
        v.user = Some(Arc::new(Ok(values(user))));
        v
    };
    assert_eq!(mk("{}", QWEN).method(), Some(AuthType::QwenOAuth));
    assert_eq!(mk(OPENAI, QWEN).method(), Some(AuthType::OpenAi));
    // Any selectedType hides every selectedAuthType, valid or not.
    let v = mk(
        r#"{"selectedAuthType": "openai"}"#,
        r#"{"security": {"auth": {"selectedType": "bogus"}}}"#,
    );
    assert_eq!(v.method(), None);
    assert_eq!(
        mk(r#"{"selectedAuthType": "openai"}"#, "{}").method(),
        Some(AuthType::OpenAi)
    );
    let v = mk(
        r#"{"model": {"name": 7}}"#,
        r#"{"model": {"name": "m"}, "security": {"auth": {"baseUrl": "u", "apiKey": "k"}}}"#,
    );
    assert_eq!(
        v.model(),
        None,
        "the workspace's key hides the user's value"
    );
    assert_eq!(v.base_url(), Some("u"));
    assert!(v.api_key().is_some());
}

#[test]
fn exclusions_union_and_default() {
    let mk = |user: Value, ws: Value| {
        let mut v = View::default();
        v.user = Some(Arc::new(Ok(FileValues::of(&user))));
        v.workspace = Some(Arc::new(Ok(FileValues::of(&ws))));
        v
    };
    let e = mk(
        json!({"advanced": {"excludedEnvVars": ["FOO", "X"]}}),
        json!({"advanced": {"excludedEnvVars": ["X", "BAR"]}, "unknown": true}),
    )
    .exclusions();
    assert_eq!(
        e,
        Exclusions::List(vec!["FOO".into(), "X".into(), "BAR".into()])
    );
    assert!(!e.excludes("DEBUG"));
    assert_eq!(mk(json!({}), json!({})).exclusions(), Exclusions::Default);
    assert!(Exclusions::Default.excludes("DEBUG_MODE"));
    assert!(!Exclusions::Default.excludes("debug"));
    let empty = mk(json!({"advanced": {"excludedEnvVars": []}}), json!({})).exclusions();
    assert!(
        !empty.excludes("DEBUG"),
        "an empty list excludes nothing, as in JS"
    );
    let sub = mk(json!({"advanced": {"excludedEnvVars": "A_B"}}), json!({})).exclusions();
    assert!(sub.excludes("A") && !sub.excludes("C"));
}

#[test]
fn the_clients_qwen_home_then_its_home_then_the_daemons() {
    let t = tempfile::tempdir().unwrap();
    let (home, proj, alt, own) = (
        t.path().join("home"),
        t.path().join("proj"),
        t.path().join("alt"),
        t.path().join("own"),
    );
    std::fs::create_dir_all(&proj).unwrap();
    put(
        &home.join(".qwen/settings.json"),
        Some(QWEN),
        Duration::from_secs(60),
    );
    put(
        &alt.join("settings.json"),
        Some(OPENAI),
        Duration::from_secs(60),
    );
    put(
        &own.join("settings.json"),
        Some(OPENAI),
        Duration::from_secs(60),
    );
    let s = Settings::default();
    let v = s.view(&proj, &env(&[("HOME", &home)]), Some(&own));
    assert_eq!(v.method(), Some(AuthType::QwenOAuth));
    assert_eq!(
        v.user_file(),
        Some(home.join(".qwen/settings.json").as_path())
    );
    let v = s.view(
        &proj,
        &env(&[("HOME", &home), ("QWEN_HOME", &alt)]),
        Some(&own),
    );
    assert_eq!(v.method(), Some(AuthType::OpenAi));
    // A relative QWEN_HOME is taken from the client's cwd, as node's path.resolve does.
    let v = s.view(
        &t.path().join("."),
        &env(&[("QWEN_HOME", Path::new("alt"))]),
        None,
    );
    assert_eq!(v.user_file(), Some(alt.join("settings.json").as_path()));
    assert_eq!(v.method(), Some(AuthType::OpenAi));
    // A client that names neither (a bare gRPC tool) gets the daemon's own.
    let v = s.view(&proj, &HashMap::new(), Some(&own));
    assert_eq!(v.user_file(), Some(own.join("settings.json").as_path()));
    assert_eq!(v.method(), Some(AuthType::OpenAi));
}

#[test]
fn no_workspace_file_when_the_cwd_is_home_even_through_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let alt = t.path().join("alt");
    put(
        &home.join(".qwen/settings.json"),
        Some(QWEN),
        Duration::from_secs(60),
    );
    put(
        &alt.join("settings.json"),
        Some("{}"),
        Duration::from_secs(60),
    );
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&home, &link).unwrap();
    let s = Settings::default();
    // With QWEN_HOME elsewhere, ~/.qwen/settings.json would be the workspace file of a
    // client in HOME; Qwen Code does not read it, whichever path names HOME.
    for cwd in [&home, &link] {
        let v = s.view(cwd, &env(&[("HOME", &home), ("QWEN_HOME", &alt)]), None);
        assert_eq!(v.method(), None, "cwd {}", cwd.display());
        let v = s.view(cwd, &env(&[("HOME", &link), ("QWEN_HOME", &alt)]), None);
        assert_eq!(v.method(), None, "cwd {}, HOME a link", cwd.display());
    }
    // Anywhere else, it is a workspace file.
    let sub = home.join("sub");
    put(
        &sub.join(".qwen/settings.json"),
        Some(OPENAI),
        Duration::from_secs(60),
    );
    let v = s.view(&sub, &env(&[("HOME", &home)]), None);
    assert_eq!(v.method(), Some(AuthType::OpenAi));
}

#[test]
fn an_invalid_file_is_a_warning_naming_its_line_and_the_other_file_still_counts() {
    let t = tempfile::tempdir().unwrap();
    let (home, proj) = (t.path().join("home"), t.path().join("proj"));
    let user = home.join(".qwen/settings.json");
    put(
        &user,
        Some("{\n  \"security\": {\"auth\": {\"selectedType\": \"openai\"}},\n}\n"),
        Duration::from_secs(60),
    );
    put(
        &proj.join(".qwen/settings.json"),
        Some(r#"{"model": {"name": "m1"}}"#),
        Duration::from_secs(60),
    );
    let s = Settings::default();
    for _ in 0..2 {
        // The second time from the cache: the same warning.
        let v = s.view(&proj, &env(&[("HOME", &home)]), None);
        assert_eq!(v.method(), None);
        assert_eq!(v.model(), Some("m1"));
        assert_eq!(v.warnings().len(), 1, "{:?}", v.warnings());
        let w = &v.warnings()[0];
        assert!(
            w.starts_with("settings ignored: ")
                && w.contains(&user.display().to_string())
                && w.contains("line 3"),
            "{w}"
        );
    }
    // Not a regular file: refused without blocking, the same way.
    std::fs::remove_file(&user).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &user,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let v = s.view(&proj, &env(&[("HOME", &home)]), None);
    assert_eq!(v.model(), Some("m1"));
    assert!(v.warnings()[0].contains("FIFO"), "{:?}", v.warnings());
}

#[test]
fn a_changed_file_is_seen_by_the_next_view() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let user = home.join(".qwen/settings.json");
    let e = env(&[("HOME", &home)]);
    let s = Settings::default();
    put(&user, Some(QWEN), Duration::from_secs(120));
    assert_eq!(s.view(&home, &e, None).method(), Some(AuthType::QwenOAuth));
    assert_eq!(
        s.view(&home, &e, None).method(),
        Some(AuthType::QwenOAuth),
        "from the cache"
    );
    // Rewritten in place to the same size with the same mtime: only the status change
    // time differs, and that must be enough.
    let openai = format!("{OPENAI:<width$}", width = QWEN.len());
    let mtime = std::fs::metadata(&user).unwrap().modified().unwrap();
    std::fs::write(&user, &openai).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&user)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(s.view(&home, &e, None).method(), Some(AuthType::OpenAi));
    // Replaced by rename, as Qwen Code and `qwen auth switch` write it.
    let tmp = home.join("settings.tmp");
    put(&tmp, Some(QWEN), Duration::from_secs(60));
    std::fs::rename(&tmp, &user).unwrap();
    assert_eq!(s.view(&home, &e, None).method(), Some(AuthType::QwenOAuth));
    put(&user, None, Duration::ZERO);
    assert_eq!(s.view(&home, &e, None).method(), None);
}

#[test]
fn a_workspace_choice_is_per_directory_and_follows_its_file() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let (a, b) = (home.join("a"), home.join("b"));
    let e = env(&[("HOME", &home)]);
    let s = Settings::default();
    put(
        &home.join(".qwen/settings.json"),
        Some(QWEN),
        Duration::from_secs(60),
    );
    put(
        &a.join(".qwen/settings.json"),
        Some(OPENAI),
        Duration::from_secs(60),
    );
    std::fs::create_dir_all(&b).unwrap();
    assert_eq!(s.view(&a, &e, None).method(), Some(AuthType::OpenAi));
    assert_eq!(s.view(&b, &e, None).method(), Some(AuthType::QwenOAuth));
    put(
        &b.join(".qwen/settings.json"),
        Some(OPENAI),
        Duration::from_secs(60),
    );
    put(&a.join(".qwen/settings.json"), None, Duration::ZERO);
    assert_eq!(s.view(&a, &e, None).method(), Some(AuthType::QwenOAuth));
    assert_eq!(s.view(&b, &e, None).method(), Some(AuthType::OpenAi));
}

#[test]
fn the_writer_sets_the_nested_key_and_keeps_everything_else() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("settings.json");
    std::fs::write(
        &p,
        "{\n  // mine\n  \"ui\": {\"theme\": \"dark\"},\n  \"selectedAuthType\": \"openai\"\n}",
    )
    .unwrap();
    write_selected_type(&p, AuthType::QwenOAuth).unwrap();
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(v["security"]["auth"]["selectedType"], "qwen-oauth");
    assert_eq!(v["ui"]["theme"], "dark");
    assert_eq!(v["selectedAuthType"], "openai");
    assert!(
        std::fs::read_to_string(p.with_extension("json.orig"))
            .unwrap()
            .contains("// mine")
    );
    use std::os::unix::fs::PermissionsExt;
    let fresh = t.path().join("new/settings.json");
    write_selected_type(&fresh, AuthType::OpenAi).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn the_writer_never_overwrites_an_invalid_file() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("settings.json");
    let bad = "{\n  \"a\": 1,\n  oops\n}";
    std::fs::write(&p, bad).unwrap();
    let e = write_selected_type(&p, AuthType::OpenAi).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("settings.json") && msg.contains("line 3"),
        "{msg}"
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), bad);
    assert_eq!(
        Edit::open(&t.path().join("none.json")).unwrap().method(),
        None
    );
    std::fs::write(&p, r#"{"selectedAuthType": "openai"}"#).unwrap();
    assert_eq!(Edit::open(&p).unwrap().method(), Some(AuthType::OpenAi));
}
