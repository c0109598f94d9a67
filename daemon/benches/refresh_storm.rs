//! Refresh storm: N concurrent `get`s with an expired token against the local mock
//! authorization server. Prints how many requests went upstream and how long until every
//! caller held the new token.
//!
//!     cargo bench -p qwend --bench refresh_storm
#[path = "../src/oauth/mock.rs"]
mod mock;

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

const ROUNDS: usize = 40;

#[tokio::main]
async fn main() {
    let clock: SharedClock = Arc::new(SystemClock);
    println!(
        "| concurrent gets | upstream latency | upstream requests (max/round) | all have the new token: median | p95 | max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for latency_ms in [0u64, 50] {
        for n in [1usize, 10, 100, 1_000, 10_000] {
            let mut times = Vec::with_capacity(ROUNDS);
            let mut max_requests = 0;
            for _ in 0..ROUNDS {
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
                "| {n} | {latency_ms} ms | {max_requests} | {} | {} | {} |",
                ms(times[ROUNDS / 2]),
                ms(times[ROUNDS * 95 / 100]),
                ms(times[ROUNDS - 1]),
            );
        }
    }
}
