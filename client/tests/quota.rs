//! Quota through the real binaries: small limits, permits over the socket, persistence
//! across a kill -9.
mod common;

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
        while alive(pid) {
            std::thread::yield_now();
        }
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
        while alive(pid) {
            std::thread::yield_now();
        }
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
