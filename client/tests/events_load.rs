//! Watch under load: 100 subscribers that never read, a burst of 10,000 events.
mod common;
#[path = "../benches/support/permits.rs"]
mod permits;

use common::*;
use qwend_shared::api::events_client::EventsClient;
use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{ClientContext, GetQuotaRequest, WatchRequest};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_idle_subscribers_and_ten_thousand_events_stay_bounded() {
    let env = TestEnv::new();
    let out = env
        .qwen_cmd(&["daemon", "status", "--json"])
        .env("QWEND_QUOTA_PER_MINUTE", "1000000")
        .env("QWEND_QUOTA_PER_DAY", "1000000")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = v["pid"].as_u64().unwrap() as u32;
    // Subscribers that never read, each on its own connection like separate plugins.
    let mut idle = Vec::new();
    for _ in 0..100 {
        let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
        idle.push(
            EventsClient::new(ch)
                .watch(WatchRequest {})
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let before = rss_kib(pid);
    let ctx = ClientContext {
        cwd: env.home.display().to_string(),
        env: [("HOME".to_string(), env.home.display().to_string())].into(),
    };
    // Eight clients with their own connections (as separate processes would be).
    let (_, granted) = permits::acquire_permits(&env.socket, &ctx, 8, 1250).await;
    assert_eq!(granted, 10_000);
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let st = QuotaClient::new(ch)
        .get_quota(GetQuotaRequest { client: Some(ctx) })
        .await
        .unwrap()
        .into_inner();
    // Every grant was an event for 100 lagging subscribers; the daemon still answers.
    assert_eq!(st.minute.unwrap().used, 10_000);
    let after = rss_kib(pid);
    eprintln!("rss {before} -> {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB"
    );
    drop(idle);
}
