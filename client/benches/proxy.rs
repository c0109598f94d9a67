//! The loopback proxy's cost, measured against the same local mock model called directly in
//! the same run (prints a table):
//!
//! ```sh
//! cargo build --release -p qwend && cargo bench -p qwen --bench proxy
//! ```
//!
//! - a whole streamed chat completion, request to last byte: direct vs through the proxy
//!   (the difference is the proxy's added latency, p50 and p99);
//! - time to the first streamed byte, direct vs through the proxy;
//! - the daemon's RSS idle, and with 64 streams held open through the proxy at once.
//!
//! Runs: `QWEN_BENCH_RUNS` (300). The mock answers each request on a fresh connection
//! (`Connection: close`), so both sides pay one upstream connect per request.
#[path = "support/mod.rs"]
mod support;

#[path = "../tests/common/openai_mock.rs"]
#[allow(dead_code)]
mod openai_mock;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openai_mock::{OpenAiMock, Reply};
use support::stats::{self, ms};

const STREAMS: usize = 64;

const BODY: &str =
    r#"{"model":"coder-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// Request to first byte and to last byte.
async fn one(http: &reqwest::Client, url: &str, key: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let mut resp = http
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("an empty answer");
    let ttfb = t.elapsed();
    let mut last = first.ends_with(b"[DONE]\n\n");
    while let Some(c) = resp.chunk().await.unwrap() {
        last = c.ends_with(b"[DONE]\n\n");
    }
    assert!(last, "the stream did not end with [DONE]");
    (ttfb, t.elapsed())
}

fn main() {
    let qwen = support::daemon::qwen();
    let qwend = support::daemon::qwend();
    let runs = stats::runs("QWEN_BENCH_RUNS", 300);
    let dir = tempfile::Builder::new()
        .prefix("qwen-bench-proxy")
        .tempdir()
        .unwrap();
    let mock = OpenAiMock::start();
    let home = support::daemon::login_home(
        dir.path(),
        "at-bench",
        &format!("http://127.0.0.1:{}", mock.port),
    );
    let socket = dir.path().join("run/qwend.sock");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(qwen);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("QWEND_SOCKET", &socket)
            .env("QWEND_STATE_DIR", dir.path().join("state"))
            .env("QWEND_BIN", &qwend)
            .env("QWEN_CREDENTIAL_STORE", "file")
            // The bench measures the proxy, not the free tier's 60 a minute.
            .env("QWEND_QUOTA_PER_MINUTE", "100000000")
            .env("QWEND_QUOTA_PER_DAY", "100000000")
            .env("QWEND_PROXY_MAX_CONCURRENT", "1024")
            .current_dir(&home)
            .args(args);
        c
    };
    let mut exec = cmd(&[
        "exec",
        "--",
        "sh",
        "-c",
        r#"printf '%s\n%s\n' "$OPENAI_API_KEY" "$OPENAI_BASE_URL"; read _"#,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(exec.stdout.take().unwrap()).lines();
    let key = lines.next().unwrap().unwrap();
    let base = lines.next().unwrap().unwrap();
    let status = cmd(&["daemon", "status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pid = status["pid"].as_u64().unwrap() as u32;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let direct_url = format!("{}/chat/completions", mock.base_url());
    let proxy_url = format!("{base}/chat/completions");
    let (mut d_first, mut d_all, mut p_first, mut p_all) = (vec![], vec![], vec![], vec![]);
    rt.block_on(async {
        // Warm-up: connection pools, the daemon's first request (HTTP client, settings).
        for _ in 0..20 {
            one(&http, &direct_url, "at-bench").await;
            one(&http, &proxy_url, &key).await;
        }
        // Interleaved, so drift in the machine's load hits both sides alike.
        for _ in 0..runs {
            let (f, a) = one(&http, &direct_url, "at-bench").await;
            d_first.push(f);
            d_all.push(a);
            let (f, a) = one(&http, &proxy_url, &key).await;
            p_first.push(f);
            p_all.push(a);
        }
    });
    stats::header();
    let row = |key: &str, name: &str, samples| {
        let s = stats::row(key, name, samples, "");
        (s.p50, s.p99)
    };
    let (d50, d99) = row(
        "proxy.direct.all",
        "streamed completion, direct to the mock",
        d_all,
    );
    let (p50, p99) = row(
        "proxy.proxied.all",
        "streamed completion, through the proxy",
        p_all,
    );
    let (df50, df99) = row("proxy.direct.ttfb", "first streamed byte, direct", d_first);
    let (pf50, pf99) = row(
        "proxy.proxied.ttfb",
        "first streamed byte, through the proxy",
        p_first,
    );
    println!(
        "\nadded by the proxy: completion p50 {:+.3} ms, p99 {:+.3} ms; first byte p50 {:+.3} ms, p99 {:+.3} ms",
        ms(p50) - ms(d50),
        ms(p99) - ms(d99),
        ms(pf50) - ms(df50),
        ms(pf99) - ms(df99),
    );

    let idle = support::daemon::rss_kb(pid);
    let held = rt.block_on(async {
        for _ in 0..STREAMS {
            mock.push(Reply::Stream {
                pieces: vec!["a".repeat(1024); 32],
                gate_after: Some(1),
            });
        }
        let mut open = Vec::new();
        for _ in 0..STREAMS {
            let mut resp = http
                .post(&proxy_url)
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(BODY)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.chunk().await.unwrap().unwrap();
            open.push(resp);
        }
        let held = support::daemon::rss_kb(pid);
        // A release wakes one gated stream (or the next to reach its gate): keep
        // releasing until every stream has ended.
        let drains: Vec<_> = open
            .into_iter()
            .map(|mut resp| {
                tokio::spawn(async move { while resp.chunk().await.unwrap().is_some() {} })
            })
            .collect();
        while drains.iter().any(|d| !d.is_finished()) {
            mock.release();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        held
    });
    println!(
        "daemon RSS: {:.1} MB after the runs above, {:.1} MB with {STREAMS} streams open through the proxy",
        idle as f64 / 1024.0,
        held as f64 / 1024.0
    );
    stats::record("mem.proxy_after_runs", &[("kb", idle as f64)]);
    stats::record(
        "mem.streams",
        &[("kb", held as f64), ("streams", STREAMS as f64)],
    );
    let _ = exec.stdin.take().unwrap().write_all(b"\n");
    let _ = exec.wait();
    let _ = cmd(&["daemon", "stop"]).stdout(Stdio::null()).status();
}
