//! Quota through the real binaries: small limits, permits over the socket, persistence
//! across a kill -9.
mod common;

use std::time::Duration;

use common::*;
use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AcquirePermitRequest, ClientContext, ReportOutcomeRequest};

fn ctx(env: &TestEnv) -> ClientContext {
    ClientContext {
        cwd: env.home.display().to_string(),
        env: [("HOME".to_string(), env.home.display().to_string())].into(),
    }
}

/// Start the daemon with the given extra environment (limits) through the client.
fn start_with(env: &TestEnv, vars: &[(&str, &str)]) -> u32 {
    let out = env
        .qwen_cmd(&["daemon", "status", "--json"])
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

async fn acquire(env: &TestEnv) -> qwend_shared::api::AcquirePermitResponse {
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    QuotaClient::new(ch)
        .acquire_permit(AcquirePermitRequest {
            client: Some(ctx(env)),
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

fn quota_json(env: &TestEnv) -> serde_json::Value {
    let out = env
        .qwen_cmd(&["quota", "--json"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_sixth_permit_of_five_per_minute_is_refused_with_a_retry_after() {
    let env = TestEnv::new();
    start_with(&env, &[("QWEND_QUOTA_PER_MINUTE", "5")]);
    for i in 0..5 {
        let r = acquire(&env).await;
        assert!(r.granted, "permit {i} refused: {r:?}");
    }
    let r = acquire(&env).await;
    assert!(!r.granted);
    assert_eq!(r.reason, "minute");
    assert!(
        r.retry_after_ms > 0 && r.retry_after_ms <= 60_000,
        "{}",
        r.retry_after_ms
    );
    let v = quota_json(&env);
    assert_eq!(v["account"], "qwen-oauth");
    assert_eq!(v["minute"]["used"], 5);
    assert_eq!(v["minute"]["limit"], 5);
    assert!(v["minute"]["reset_in_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(
        v["day"]["used"], 5,
        "a minute refusal charges nothing to the day"
    );
    assert_eq!(v["day"]["limit"], 2000);
    assert!(
        v["day"]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z")
    );
}

#[tokio::test]
async fn a_429_puts_every_client_into_the_cool_down() {
    let env = TestEnv::new();
    start_with(&env, &[]);
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    QuotaClient::new(ch)
        .report_outcome(ReportOutcomeRequest {
            client: Some(ctx(&env)),
            http_status: 429,
            retry_after_ms: Some(30_000),
            daily_exhausted: false,
        })
        .await
        .unwrap();
    let r = acquire(&env).await;
    assert!(!r.granted);
    assert_eq!(r.reason, "cool_down");
    assert!(r.retry_after_ms > 25_000 && r.retry_after_ms <= 30_000);
    assert!(quota_json(&env)["cool_down_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn day_window_follows_the_configured_offset() {
    let env = TestEnv::new();
    start_with(
        &env,
        &[
            ("QWEND_QUOTA_DAY_OFFSET", "+08:00"),
            ("QWEND_QUOTA_PER_DAY", "3"),
        ],
    );
    let v = quota_json(&env);
    assert!(
        v["day"]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00+08:00"),
        "{v}"
    );
    assert_eq!(v["day"]["limit"], 3);
}

#[test]
fn grants_survive_kill_minus_nine() {
    let env = TestEnv::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut granted = 0u64;
    for round in 0..5 {
        let pid = start_with(&env, &[("QWEND_QUOTA_PER_MINUTE", "1000")]);
        for _ in 0..(round + 3) {
            assert!(rt.block_on(acquire(&env)).granted);
            granted += 1;
        }
        kill(pid, "KILL");
        wait_gone(pid, Duration::from_secs(30), "the killed daemon");
        let used = {
            start_with(&env, &[("QWEND_QUOTA_PER_MINUTE", "1000")]);
            quota_json(&env)["minute"]["used"].as_u64().unwrap()
        };
        assert!(
            used >= granted,
            "round {round}: ledger shows {used}, {granted} were granted"
        );
        let pid = start_with(&env, &[]);
        kill(pid, "KILL");
        wait_gone(pid, Duration::from_secs(30), "the killed daemon");
    }
}

/// An unsigned JWT naming `sub`, as a Qwen access token or `id_token` could be.
fn jwt(sub: &str) -> String {
    use base64::Engine;
    let enc = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.sig",
        enc(serde_json::json!({"alg": "none"})),
        enc(serde_json::json!({"iss": "https://chat.qwen.ai", "sub": sub}))
    )
}

/// A login made with Qwen Code: its credential file, replaced as Qwen Code replaces it.
fn qwen_code_login(env: &TestEnv, access: &str, refresh: &str, expiry_ms: i64) {
    let dir = env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join("oauth_creds.json.tmp");
    std::fs::write(
        &tmp,
        serde_json::json!({
            "access_token": access, "refresh_token": refresh, "token_type": "Bearer",
            "resource_url": "portal.qwen.ai", "expiry_date": expiry_ms,
        })
        .to_string(),
    )
    .unwrap();
    std::fs::rename(tmp, dir.join("oauth_creds.json")).unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
}

/// The bearer token every client gets now (which makes the daemon look at the file).
fn bearer(env: &TestEnv) -> String {
    let out = env.qwen(&["auth", "token"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn each_qwen_account_has_its_own_counters_and_keeps_them_across_logins() {
    let env = TestEnv::new();
    let limit = [("QWEND_QUOTA_PER_MINUTE", "2")];
    let hour = 3_600_000;
    qwen_code_login(&env, &jwt("alice"), "rt-alice", now_ms() + hour);
    start_with(&env, &limit);
    assert_eq!(bearer(&env), jwt("alice"));
    let alice = quota_json(&env)["account"].as_str().unwrap().to_string();
    assert!(alice.starts_with("qwen-oauth:"), "{alice}");
    assert!(!alice.contains("alice"), "only a hash names the account");
    for _ in 0..2 {
        assert!(acquire(&env).await.granted);
    }
    assert!(!acquire(&env).await.granted, "alice's minute is used up");

    // Bob logs in with Qwen Code: a new account, fresh counters.
    qwen_code_login(&env, &jwt("bob"), "rt-bob", now_ms() + 2 * hour);
    assert_eq!(bearer(&env), jwt("bob"));
    let bob = quota_json(&env)["account"].as_str().unwrap().to_string();
    assert_ne!(bob, alice);
    assert_eq!(quota_json(&env)["minute"]["used"], 0);
    for _ in 0..2 {
        assert!(acquire(&env).await.granted, "bob has his own minute");
    }
    assert!(!acquire(&env).await.granted);

    // A login whose tokens name nobody keeps counting on the last known account.
    qwen_code_login(&env, "opaque-token", "rt-opaque", now_ms() + 3 * hour);
    assert_eq!(bearer(&env), "opaque-token");
    assert_eq!(quota_json(&env)["account"], bob.as_str());
    assert!(!acquire(&env).await.granted);

    // A restart remembers whose counters apply.
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    start_with(&env, &limit);
    assert_eq!(quota_json(&env)["account"], bob.as_str());
    assert!(!acquire(&env).await.granted, "a restart resets nothing");

    // Alice again: her usage is still there.
    qwen_code_login(&env, &jwt("alice"), "rt-alice-2", now_ms() + 4 * hour);
    assert_eq!(bearer(&env), jwt("alice"));
    let v = quota_json(&env);
    assert_eq!(v["account"], alice.as_str());
    assert_eq!(v["minute"]["used"], 2);
    assert!(!acquire(&env).await.granted);
}

// Hardening: cool-downs capped, insufficient_quota on openai, `qwen quota reset`, a
// read-only ledger.

use common::openai_mock::{OpenAiMock, Reply};

const KEY: &str = "sk-test-quota-0123456789";
const CAP_MS: u64 = 15 * 60 * 1000;

fn openai(mock: &OpenAiMock) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", KEY.to_string()),
        ("OPENAI_BASE_URL", mock.base_url()),
        ("OPENAI_MODEL", "m-env".to_string()),
    ]
}

fn run_with(env: &TestEnv, vars: &[(&str, String)], args: &[&str]) -> std::process::Output {
    env.qwen_cmd(args)
        .current_dir(&env.home)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_huge_retry_after_from_the_model_server_cools_down_for_at_most_the_cap() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(
        429,
        &[("Retry-After", "99999999999")],
        r#"{"error":{"message":"go away","code":"rate_limit"}}"#,
    ));
    let out = run_with(&env, &openai(&mock), &["-p", "hi", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let q = json_of(&run_with(&env, &openai(&mock), &["quota", "--json"]));
    assert_eq!(q["account"], "openai");
    let cool = q["cool_down_ms"].as_u64().unwrap();
    assert!(cool > CAP_MS - 60_000 && cool <= CAP_MS, "{q}");
    // The same through the RPC with the largest value it can carry.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
        let r = QuotaClient::new(ch)
            .report_outcome(ReportOutcomeRequest {
                client: Some(ctx(&env)),
                http_status: 429,
                retry_after_ms: Some(u64::MAX),
                daily_exhausted: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.quota.unwrap().cool_down_ms <= CAP_MS);
    });
    let r = rt.block_on(acquire(&env));
    assert!(!r.granted && r.retry_after_ms <= CAP_MS, "{r:?}");
    // The cap is configurable, and a restart reads the stored cool-down bounded by it.
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    start_with(&env, &[("QWEND_QUOTA_MAX_COOL_DOWN_MS", "5000")]);
    let r = rt.block_on(acquire(&env));
    assert!(!r.granted && r.retry_after_ms <= 5_000, "{r:?}");
    // `qwen quota reset` clears it.
    let out = env
        .qwen_cmd(&["quota", "reset"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("reset the quota of qwen-oauth"),
        "{}",
        text(&out.stdout)
    );
    assert!(rt.block_on(acquire(&env)).granted);
}

#[test]
fn insufficient_quota_on_openai_reports_the_provider_and_locks_nothing() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    mock.push(Reply::status(
        429,
        &[],
        r#"{"error":{"message":"You exceeded your current quota, please check your plan.","code":"insufficient_quota"}}"#,
    ));
    let out = run_with(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(4));
    let err = text(&out.stderr);
    assert!(
        err.contains("You exceeded your current quota") && err.contains("insufficient_quota"),
        "{err}"
    );
    assert!(!err.contains("daily quota"), "{err}");
    let q = json_of(&run_with(&env, &openai(&mock), &["quota", "--json"]));
    assert_eq!(q["day"]["exhausted"], false, "{q}");
    assert_eq!(q["day"]["limit"], serde_json::Value::Null, "{q}");
    assert_eq!(q["cool_down_ms"], 0, "{q}");
    // The next request goes to the server, which may have been topped up meanwhile.
    let out = run_with(&env, &openai(&mock), &["-p", "hi", "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mock.requests().len(), 2);

    // With a Retry-After, that long (capped) and no longer.
    mock.push(Reply::status(
        429,
        &[("Retry-After", "20")],
        r#"{"error":{"message":"quota","code":"insufficient_quota"}}"#,
    ));
    let out = run_with(&env, &openai(&mock), &["-p", "hi"]);
    assert_eq!(out.status.code(), Some(4));
    let q = json_of(&run_with(&env, &openai(&mock), &["quota", "--json"]));
    let cool = q["cool_down_ms"].as_u64().unwrap();
    assert!(cool > 10_000 && cool <= 20_000, "{q}");
    assert_eq!(q["day"]["exhausted"], false, "{q}");
}

#[test]
fn quota_reset_clears_an_account_for_good_and_names_others() {
    let env = TestEnv::new();
    let mock = OpenAiMock::start();
    let limits = [("QWEND_QUOTA_PER_MINUTE", "3")];
    start_with(&env, &limits);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..3 {
        assert!(rt.block_on(acquire(&env)).granted);
    }
    assert!(!rt.block_on(acquire(&env)).granted);
    // Another account blocked: the openai one, after a 429.
    mock.push(Reply::status(429, &[("Retry-After", "600")], "slow down"));
    let out = run_with(&env, &openai(&mock), &["-p", "hi", "--no-wait"]);
    assert_eq!(out.status.code(), Some(4));

    let out = env
        .qwen_cmd(&["quota", "reset", "--json"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(
        (v["account"].as_str(), v["minute"]["used"].as_u64()),
        (Some("qwen-oauth"), Some(0))
    );
    // Durable: a restart does not bring the counts back.
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    start_with(&env, &limits);
    assert_eq!(quota_json(&env)["minute"]["used"], 0);
    assert!(rt.block_on(acquire(&env)).granted);
    // The openai account is still cooling down until named.
    let q = json_of(&run_with(&env, &openai(&mock), &["quota", "--json"]));
    assert!(q["cool_down_ms"].as_u64().unwrap() > 500_000, "{q}");
    let out = env
        .qwen_cmd(&["quota", "reset", "--account", "openai"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let q = json_of(&run_with(&env, &openai(&mock), &["quota", "--json"]));
    assert_eq!(q["cool_down_ms"], 0, "{q}");
    assert_eq!(
        quota_json(&env)["minute"]["used"],
        1,
        "qwen-oauth untouched"
    );
    // A name that cannot be an account is refused clearly.
    let out = env.qwen(&["quota", "reset", "--account", &"x".repeat(500)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an account name"),
        "{}",
        text(&out.stderr)
    );
}

/// `qwen` (and the daemon it starts) without root's power to write where the modes say
/// no, so a read-only dir is read-only for the daemon even when the tests run as root.
fn qwen_obeying_modes(env: &TestEnv, args: &[&str]) -> std::process::Command {
    if !is_root() {
        return env.qwen_cmd(args);
    }
    let mut cmd = std::process::Command::new("setpriv");
    env.apply(&mut cmd);
    cmd.args(["--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(qwen_bin())
        .args(args);
    cmd
}

#[test]
fn a_read_only_ledger_is_counted_from_and_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    qwend_bin();
    let dir = env.state.join("quota");
    std::fs::create_dir_all(&dir).unwrap();
    // 50 grants a moment ago, against a day limit of 60.
    let t = now_ms() - 1_000;
    let ledger: String = (0..50)
        .map(|i| format!("{{\"k\":\"g\",\"a\":\"qwen-oauth\",\"t\":{}}}\n", t + i))
        .collect();
    let path = dir.join("ledger.jsonl");
    std::fs::write(&path, &ledger).unwrap();
    let set = |p: &std::path::Path, m| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    set(&path, 0o400);
    set(&dir, 0o500);
    let vars = [
        ("QWEND_QUOTA_PER_DAY", "60"),
        ("QWEND_QUOTA_PER_MINUTE", "1000"),
    ];
    let start = || {
        let out = qwen_obeying_modes(&env, &["daemon", "start"])
            .envs(vars)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut granted = 0;
    while rt.block_on(acquire(&env)).granted {
        granted += 1;
        assert!(granted <= 60, "the ledger's grants were not counted");
    }
    assert_eq!(granted, 10, "only what the day had left");

    let out = env
        .qwen_cmd(&["quota"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot write the quota ledger") && err.contains("in memory"),
        "{err}"
    );
    let v = quota_json(&env);
    assert_eq!(v["day"]["used"], 60);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{v}"
    );
    let out = env
        .qwen_cmd(&["auth", "status", "--json"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        st["warnings"]
            .to_string()
            .contains("cannot write the quota ledger"),
        "{st}"
    );
    let out = env
        .qwen_cmd(&["auth", "status"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("cannot write the quota ledger"),
        "{}",
        text(&out.stderr)
    );

    // Nothing was written; a restart counts from the ledger again (the 10 in memory are
    // gone, as the warning said).
    set(&dir, 0o700);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), ledger);
    set(&dir, 0o500);
    let out = env.qwen(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    start();
    assert_eq!(quota_json(&env)["day"]["used"], 50);
    set(&dir, 0o700);
}

#[test]
fn a_fifo_ledger_does_not_hang_the_daemon() {
    let env = TestEnv::new();
    let dir = env.state.join("quota");
    std::fs::create_dir_all(&dir).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("ledger.jsonl"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    start_with(&env, &[("QWEND_QUOTA_PER_MINUTE", "2")]);
    let out = env
        .qwen_cmd(&["quota"])
        .current_dir(&env.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("a FIFO, not a regular file"),
        "{}",
        text(&out.stderr)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(acquire(&env)).granted);
    assert!(rt.block_on(acquire(&env)).granted);
    assert!(
        !rt.block_on(acquire(&env)).granted,
        "still counted, in memory"
    );
}

#[tokio::test]
async fn quota_reset_publishes_quota_changed() {
    use qwend_shared::api::WatchRequest;
    use qwend_shared::api::event::Kind;
    use qwend_shared::api::events_client::EventsClient;
    let env = TestEnv::new();
    start_with(&env, &[]);
    assert!(acquire(&env).await.granted);
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let mut stream = EventsClient::new(ch)
        .watch(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut reset = env.qwen_cmd(&["quota", "reset"]);
    reset.current_dir(&env.home);
    let out = tokio::task::spawn_blocking(move || reset.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    loop {
        let ev = stream.message().await.unwrap().expect("stream ended");
        if let Some(Kind::QuotaChanged(q)) = ev.kind {
            assert_eq!(q.account, "qwen-oauth");
            assert_eq!((q.minute_used, q.day_used, q.cool_down_ms), (0, 0, 0));
            break;
        }
    }
}
