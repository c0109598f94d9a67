//! Quota benchmark (prints a table):
//! `cargo build --release -p qwen -p qwend && cargo bench -p qwen --bench quota`
//!
//! - permit decisions per second, 64 concurrent clients over the socket, limits high
//!   enough never to refuse (every decision is a durable grant); target ≥ 20,000/s;
//! - the same with limits that refuse almost everything (decisions without a write);
//! - the durable-write cost per grant seen by one sequential client.
//!
//! Each row also prints a `BENCH quota.<key>` line for bench/run.
#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AcquirePermitRequest, ClientContext};

const CLIENTS: usize = 64;

fn daemon(qwen: &Path, dir: &Path, name: &str, vars: &[(&str, &str)]) -> std::path::PathBuf {
    let socket = dir.join(name).join("qwend.sock");
    let st = Command::new(qwen)
        .env("QWEND_SOCKET", &socket)
        .env("QWEND_STATE_DIR", dir.join(name).join("state"))
        .env("QWEND_BIN", qwen.with_file_name("qwend"))
        .env("HOME", dir)
        .env("QWEN_CREDENTIAL_STORE", "file")
        .envs(vars.iter().copied())
        .args(["daemon", "start"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    socket
}

/// The daemon's CPU time so far: what a permit costs the daemon itself, apart from the
/// load generator sharing the machine.
fn daemon_cpu(socket: &Path) -> Duration {
    support::daemon::cpu(support::daemon::pid(socket))
}

async fn storm(socket: &Path, home: &Path, per_client: usize) -> (Duration, usize) {
    let ctx = ClientContext {
        cwd: home.display().to_string(),
        env: [("HOME".to_string(), home.display().to_string())].into(),
    };
    support::permits::acquire_permits(socket, &ctx, CLIENTS, per_client).await
}

fn main() {
    let qwen = Path::new(support::daemon::qwen());
    support::daemon::qwend();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    // A configured user: Qwen Code records the method at first login. (Without it, every
    // permit also walks the cwd's .env to infer the method.)
    std::fs::create_dir_all(home.join(".qwen")).unwrap();
    std::fs::write(
        home.join(".qwen/settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(home.join(".qwen/settings.json"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| {:<58} | {:>9} | {:>12} | {:>10} | {:>14} |",
        "measure", "requests", "per second", "µs each", "daemon CPU µs"
    );
    println!(
        "|{:-<60}|{:-<11}|{:-<14}|{:-<12}|{:-<16}|",
        "", "", "", "", ""
    );
    let row = |key: &str, name: &str, n: usize, d: Duration, cpu: Duration| {
        support::stats::record(
            &format!("quota.{key}"),
            &[
                ("n", n as f64),
                ("per_s", n as f64 / d.as_secs_f64()),
                ("cpu_us", cpu.as_secs_f64() * 1e6 / n as f64),
            ],
        );
        println!(
            "| {name:<58} | {n:>9} | {:>12.0} | {:>10.1} | {:>14.1} |",
            n as f64 / d.as_secs_f64(),
            d.as_secs_f64() * 1e6 / n as f64,
            cpu.as_secs_f64() * 1e6 / n as f64
        );
    };

    let per = 500;
    let s = daemon(
        qwen,
        home,
        "grant",
        &[
            ("QWEND_QUOTA_PER_MINUTE", "100000000"),
            ("QWEND_QUOTA_PER_DAY", "100000000"),
        ],
    );
    let cpu0 = daemon_cpu(&s);
    let (d, granted) = rt.block_on(storm(&s, home, per));
    assert_eq!(granted, CLIENTS * per);
    let cpu = daemon_cpu(&s) - cpu0;
    row(
        "durable",
        &format!("{CLIENTS} clients, every permit a durable grant"),
        granted,
        d,
        cpu,
    );
    support::daemon::stop(&s);

    let s = daemon(qwen, home, "refuse", &[("QWEND_QUOTA_PER_MINUTE", "1")]);
    let cpu0 = daemon_cpu(&s);
    let (d, granted) = rt.block_on(storm(&s, home, per));
    assert!(granted <= 1);
    let cpu = daemon_cpu(&s) - cpu0;
    row(
        "decisions",
        &format!("{CLIENTS} clients, limit 1/min (decisions, no writes)"),
        CLIENTS * per,
        d,
        cpu,
    );
    support::daemon::stop(&s);

    let s = daemon(
        qwen,
        home,
        "single",
        &[
            ("QWEND_QUOTA_PER_MINUTE", "100000000"),
            ("QWEND_QUOTA_PER_DAY", "100000000"),
        ],
    );
    let n = 300;
    let cpu0 = daemon_cpu(&s);
    let d = rt.block_on(async {
        let mut c = QuotaClient::new(qwend_shared::transport::connect(&s).await.unwrap());
        let ctx = ClientContext {
            cwd: home.display().to_string(),
            env: [("HOME".to_string(), home.display().to_string())].into(),
        };
        let t = Instant::now();
        for _ in 0..n {
            assert!(
                c.acquire_permit(AcquirePermitRequest {
                    client: Some(ctx.clone()),
                    wait_ms: 0
                })
                .await
                .unwrap()
                .into_inner()
                .granted
            );
        }
        t.elapsed()
    });
    row(
        "sequential",
        "1 client, sequential grants (one fdatasync each)",
        n,
        d,
        daemon_cpu(&s) - cpu0,
    );
    support::daemon::stop(&s);
}
