//! Refresh storm: N concurrent `get`s with an expired token against the local mock
//! authorization server. Prints how many requests went upstream and how long until every
//! caller held the new token; then the same storm for Qwen Code: N fresh `node` processes
//! (the conformance kit's `oauth-oracle.mjs get`, Qwen Code 0.24.4's SharedTokenManager)
//! sharing one expired `oauth_creds.json`, against the same mock.
//!
//!     cargo bench -p qwend --bench refresh_storm
//!
//! Rounds: `QWEN_BENCH_STORM_rounds` (40). Qwen Code's process counts:
//! `QWEN_BENCH_STORM_NODE` (comma-separated, default `10,50`): every process is a node
//! start that loads the bundle (about 0.5 s of CPU and 60 MB each), so 10,000 of them
//! cannot run on a 2-core machine; the printed figures say which N ran.
#[path = "../src/oauth/mock.rs"]
mod mock;

#[path = "../../client/benches/support/peer.rs"]
mod peer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mock::{MockServer, Reply, TOKEN_PATH};
use qwend::clock::{SharedClock, SystemClock};
use qwend::credentials::Credentials;
use qwend::oauth::{OAuthClient, OAuthConfig};
use qwend::tokens::{PersistenceError, TokenManager, TokenManagerConfig, TokenPersistence};
use secrecy::{ExposeSecret, SecretString};

struct NoStore;

#[async_trait]
impl TokenPersistence for NoStore {
    async fn save(&self, _: &Credentials) -> Result<(), PersistenceError> {
        Ok(())
    }
    async fn clear(&self, _: &str) -> Result<(), PersistenceError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("QWEN_BENCH_STORM_rounds")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(40, |n: usize| n.max(1));
    let clock: SharedClock = Arc::new(SystemClock);
    println!(
        "| concurrent gets | upstream latency | upstream requests (max/round) | all have the new token: median | p95 | max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for latency_ms in [0u64, 50] {
        for n in [10usize, 100, 1_000, 10_000] {
            let mut times = Vec::with_capacity(rounds);
            let mut max_requests = 0;
            for _ in 0..rounds {
                let server = MockServer::start().await;
                server.set_default(
                    TOKEN_PATH,
                    Reply::refresh_ok().delayed(Duration::from_millis(latency_ms)),
                );
                let client =
                    OAuthClient::new(OAuthConfig::with_base_url(server.base_url())).unwrap();
                let expired = Credentials {
                    access_token: SecretString::from("at-old"),
                    refresh_token: SecretString::from("rt-old"),
                    token_type: "Bearer".into(),
                    expiry_date: clock.now_ms() - 1_000,
                    resource_url: None,
                    account: None,
                };
                let manager = TokenManager::new(
                    Some(expired),
                    Arc::new(client),
                    Arc::new(NoStore),
                    clock.clone(),
                    TokenManagerConfig::default(),
                );
                let start = Instant::now();
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..n {
                    let m = manager.clone();
                    set.spawn(async move { m.get(false).await });
                }
                for r in set.join_all().await {
                    assert_eq!(r.unwrap().access_token.expose_secret(), "at-refreshed");
                }
                times.push(start.elapsed());
                max_requests = max_requests.max(server.count(TOKEN_PATH));
            }
            times.sort();
            let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
            println!(
                "BENCH storm.ours.{n}.{latency_ms}ms requests={max_requests} p50_us={:.1} p95_us={:.1} max_us={:.1}",
                times[rounds / 2].as_secs_f64() * 1e6,
                times[rounds * 95 / 100].as_secs_f64() * 1e6,
                times[rounds - 1].as_secs_f64() * 1e6,
            );
            println!(
                "| {n} | {latency_ms} ms | {max_requests} | {} | {} | {} |",
                ms(times[rounds / 2]),
                ms(times[rounds * 95 / 100]),
                ms(times[rounds - 1]),
            );
        }
    }
    qwen_code_storm().await;
}

/// N Qwen Code processes started at once on one expired credential file.
async fn qwen_code_storm() {
    let ns: Vec<usize> = std::env::var("QWEN_BENCH_STORM_NODE")
        .unwrap_or_else(|_| "10,50".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let (kit, pkg) = match (peer::conformance_dir(), peer::package("0.24.4")) {
        (Some(kit), Ok(pkg)) => (kit, pkg),
        (None, _) => return println!("\nQwen Code storm skipped: the conformance kit is missing"),
        (_, Err(why)) => return println!("\nQwen Code storm skipped: {why}"),
    };
    println!(
        "\n| Qwen Code processes | upstream requests | all have the new token (node start included) |"
    );
    println!("|---:|---:|---:|");
    for n in ns {
        let server = MockServer::start().await;
        server.set_default(TOKEN_PATH, Reply::refresh_ok());
        let home = tempfile::Builder::new()
            .prefix("qwen-bench-storm")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(home.path().join(".qwen")).unwrap();
        std::fs::write(
            home.path().join(".qwen/oauth_creds.json"),
            r#"{"access_token":"at-old","refresh_token":"rt-old","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":1000}"#,
        )
        .unwrap();
        let start = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|_| {
                tokio::process::Command::new("node")
                    .arg(kit.join("oauth/oauth-oracle.mjs"))
                    .args(["get", "--idp", &server.base_url()])
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .env("HOME", home.path())
                    .env("QWEN_PEER_PKG", &pkg)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
            })
            .collect();
        let mut ok = 0;
        for out in futures_join(children).await {
            let out = out.expect("node");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("at-refreshed")
            {
                ok += 1;
            }
        }
        let took = start.elapsed();
        let requests = server.count(TOKEN_PATH);
        println!(
            "| {n} | {requests} | {:.0} ms ({ok} of {n} got the new token) |",
            took.as_secs_f64() * 1e3
        );
        println!(
            "BENCH storm.qwen_code.{n} requests={requests} all_us={:.1} ok={ok}",
            took.as_secs_f64() * 1e6
        );
    }
}

/// Awaits every future (started together: tokio's `output()` spawns on the first poll, so
/// they are spawned as tasks first).
async fn futures_join<F>(futs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
