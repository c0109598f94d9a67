use std::path::Path;

use super::*;
use crate::clock::SystemClock;

fn state(t: &Path) -> AuthState {
    AuthState::new(
        t.join("home/.qwen"),
        Some(t.join("state")),
        Some(StoreKind::File),
        Arc::new(SystemClock),
        Arc::new(Resolver::default()),
    )
}

fn ctx(t: &Path, env: &[(&str, &str)]) -> ClientCtx {
    let mut e: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    e.insert("HOME".into(), t.join("home").display().to_string());
    std::fs::create_dir_all(t.join("home")).unwrap();
    let cwd = t.join("proj");
    std::fs::create_dir_all(&cwd).unwrap();
    ClientCtx { cwd, env: e }
}

fn user_settings(t: &Path) -> PathBuf {
    t.join("home/.qwen/settings.json")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn selection_and_inference() {
    let t = tempfile::tempdir().unwrap();
    let s = state(t.path());
    assert_eq!(s.status(&ctx(t.path(), &[])).auth_type, None);
    let c = ctx(t.path(), &[("OPENAI_API_KEY", "sk-x")]);
    let st = s.status(&c);
    assert_eq!(st.auth_type, Some(AuthType::OpenAi));
    assert!(st.logged_in);
    assert_eq!(st.base_url.as_deref(), Some(DEFAULT_OPENAI_BASE_URL));
    assert_eq!(st.model.as_deref(), Some(DEFAULT_OPENAI_MODEL));
    assert_eq!(st.settings_file, Some(user_settings(t.path())));
    // Legacy top-level key, then the nested one wins.
    write(
        &user_settings(t.path()),
        r#"{"selectedAuthType": "qwen-oauth"}"#,
    );
    assert_eq!(s.status(&c).auth_type, Some(AuthType::QwenOAuth));
    // Inferred from the .env when the environment says nothing.
    write(&user_settings(t.path()), "{}");
    let c = ctx(t.path(), &[]);
    write(&c.cwd.join(".env"), "QWEN_OAUTH=1\n");
    assert_eq!(s.method_for(&c), Some(AuthType::QwenOAuth));
}

#[test]
fn switch_to_openai_needs_a_key_from_env_or_dotenv() {
    let t = tempfile::tempdir().unwrap();
    let s = state(t.path());
    let c = ctx(t.path(), &[]);
    let e = s.switch(AuthType::OpenAi, &c).unwrap_err();
    assert!(e.to_string().contains(".qwen/.env"), "{e}");
    assert!(
        !user_settings(t.path()).exists(),
        "nothing written on refusal"
    );
    write(
        &c.cwd.join(".qwen/.env"),
        "OPENAI_API_KEY=sk-dot\nOPENAI_MODEL=m1\n",
    );
    let st = s.switch(AuthType::OpenAi, &c).unwrap();
    assert_eq!(st.auth_type, Some(AuthType::OpenAi));
    assert_eq!(st.model.as_deref(), Some("m1"));
    let st = s.switch(AuthType::QwenOAuth, &c).unwrap();
    assert_eq!(
        st.auth_type,
        Some(AuthType::QwenOAuth),
        "the new file is read"
    );
}

/// The same broken file everywhere: status and credentials go on without it and say so,
/// naming the file and line; only the writer refuses it.
#[test]
fn an_invalid_settings_file_is_a_warning_for_readers_and_an_error_for_the_writer() {
    let t = tempfile::tempdir().unwrap();
    let s = state(t.path());
    let bad = "{\n  \"model\": {\"name\": \"m2\"},\n}\n";
    write(&user_settings(t.path()), bad);
    let named = |w: &[String]| {
        w.iter()
            .filter(|w| w.contains("settings.json") && w.contains("line 3"))
            .count()
    };
    let c = ctx(t.path(), &[("OPENAI_API_KEY", "sk-x")]);
    let st = s.status(&c);
    assert_eq!(st.auth_type, Some(AuthType::OpenAi));
    assert_eq!(named(&st.warnings), 1, "{:?}", st.warnings);
    let caller = s.caller(&c);
    match s.plan(&caller, None).unwrap() {
        Plan::Ready(r) => {
            assert_eq!(
                r.model, DEFAULT_OPENAI_MODEL,
                "the broken file's model is not used"
            );
            assert_eq!(named(&r.warnings), 1, "{:?}", r.warnings);
        }
        other => panic!("{other:?}"),
    }
    // Nothing else configured: the error itself carries the warning.
    let c = ctx(t.path(), &[]);
    let e = s.plan(&s.caller(&c), None).unwrap_err();
    assert!(matches!(e, AuthError::NothingConfigured { .. }), "{e}");
    assert!(e.to_string().contains("line 3"), "{e}");
    for to in [AuthType::QwenOAuth, AuthType::OpenAi] {
        let e = s
            .switch(to, &ctx(t.path(), &[("OPENAI_API_KEY", "sk-x")]))
            .unwrap_err();
        assert!(matches!(e, AuthError::Settings(_)), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
    }
    assert_eq!(
        std::fs::read_to_string(user_settings(t.path())).unwrap(),
        bad
    );
    assert!(matches!(
        s.select_after_login().unwrap_err(),
        AuthError::Settings(_)
    ));
}

/// `.env` problems reach the client, once: the request reads its `.env` once.
#[test]
fn dotenv_warnings_reach_the_caller_once() {
    let t = tempfile::tempdir().unwrap();
    let s = state(t.path());
    let c = ctx(t.path(), &[]);
    std::fs::create_dir_all(c.cwd.join(".env")).unwrap();
    let st = s.status(&c);
    assert_eq!(st.auth_type, None);
    let unreadable: Vec<_> = st
        .warnings
        .iter()
        .filter(|w| w.contains("cannot be read"))
        .collect();
    assert_eq!(unreadable.len(), 1, "{:?}", st.warnings);
    let c = ctx(t.path(), &[("OPENAI_API_KEY", "sk-x")]);
    match s.plan(&s.caller(&c), None).unwrap() {
        Plan::Ready(r) => assert_eq!(
            r.warnings
                .iter()
                .filter(|w| w.contains("cannot be read"))
                .count(),
            1,
            "{:?}",
            r.warnings
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_login_selects_qwen_oauth_only_when_nothing_is_selected() {
    let t = tempfile::tempdir().unwrap();
    let s = state(t.path());
    assert!(s.select_after_login().unwrap());
    assert!(!s.select_after_login().unwrap());
    write(
        &user_settings(t.path()),
        r#"{"selectedAuthType": "openai"}"#,
    );
    assert!(!s.select_after_login().unwrap());
    write(&user_settings(t.path()), r#"{"selectedAuthType": "bogus"}"#);
    assert!(
        s.select_after_login().unwrap(),
        "an invalid value selects nothing"
    );
}

#[test]
fn debug_hides_the_api_key() {
    let cfg = OpenAiConfig {
        api_key: Some("sk-hidden".to_string().into()),
        ..Default::default()
    };
    assert!(!format!("{cfg:?}").contains("sk-hidden"));
}
