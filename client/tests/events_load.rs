//! The socket under load: 100 Watch subscribers that never read and a burst of 10,000
//! events; thousands of concurrent calls multiplexed on one connection.
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
    // Counted in the day window: on a loaded machine the grants take longer than a
    // minute, and the rolling minute would already have let the first ones go.
    assert_eq!(st.day.unwrap().used, 10_000);
    let after = rss_kib(pid);
    eprintln!("rss {before} -> {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB"
    );
    drop(idle);
}

/// An editor plugin keeps one channel and may fire thousands of calls at once: every one is
/// answered (h2 used to close such a connection with GOAWAY `too_many_data_frames`; the
/// daemon now bounds open streams per connection and the client queues the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_with_five_thousand_concurrent_calls_gets_every_answer() {
    const CALLS: usize = 5_000;
    let env = TestEnv::new().with_var("QWEND_QUOTA_PER_MINUTE", "7");
    assert!(env.qwen(&["daemon", "status"]).status.success());
    let ctx = ClientContext {
        cwd: env.home.display().to_string(),
        env: [("HOME".to_string(), env.home.display().to_string())].into(),
    };
    let ch = qwend_shared::transport::connect(&env.socket).await.unwrap();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mut client = QuotaClient::new(ch.clone());
            let ctx = ctx.clone();
            tokio::spawn(async move {
                client
                    .get_quota(GetQuotaRequest { client: Some(ctx) })
                    .await
                    .map(|r| r.into_inner().minute.and_then(|w| w.limit))
            })
        })
        .collect();
    let mut answers = 0;
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(limit) => {
                assert_eq!(limit, Some(7));
                answers += 1;
            }
            Err(e) => *failures.entry(e.message().to_string()).or_default() += 1,
        }
    }
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert_eq!(answers, CALLS);
}
