//! `qwen auth token`, exec to exit, against a running daemon, next to the real Qwen Code
//! reading the same credential file through its token manager (prints a table):
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p qwen --bench token
//! ```
//!
//! Target: median < 3 ms. Qwen Code's row runs `oauth-oracle.mjs get` from the conformance
//! kit (`$QWEN_CONFORMANCE_DIR`, else `shared/conformance` beside the checkout or one of
//! its parents) with the package that `conformance/env/setup.sh` installs
//! (`QWEN_PEER_PKG`, else `/tmp/qwen-peer-0.24.4`); without node or the package the row is
//! skipped with a note. Runs: `QWEN_BENCH_RUNS` (300) and `QWEN_BENCH_NODE_RUNS` (20).
#[path = "support/stats.rs"]
mod stats;

use stats::{Summary, ms};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "at-bench-0123456789";

fn row(name: &str, samples: Vec<Duration>, target: &str) -> Duration {
    let s = Summary::of(samples);
    println!(
        "| {name:<58} | {:>4} | {:>8.2} | {:>8.2} | {:>8.2} | {target:<8} |",
        s.n,
        ms(s.mean),
        ms(s.p50),
        ms(s.p99),
    );
    s.p50
}

fn runs(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A HOME holding a valid Qwen Code login, as after `qwen` / Qwen Code's own login.
fn home(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".qwen")).unwrap();
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 24 * 3_600_000;
    std::fs::write(
        home.join(".qwen/oauth_creds.json"),
        format!(
            r#"{{"access_token":"{TOKEN}","refresh_token":"rt-bench","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":{expiry}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        home.join(".qwen/settings.json"),
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
    home
}

fn ours(dir: &Path, home: &Path) -> Vec<Duration> {
    let qwen = env!("CARGO_BIN_EXE_qwen");
    let qwend = Path::new(qwen).with_file_name("qwend");
    assert!(
        qwend.is_file(),
        "{} is missing: run `cargo build --release --workspace` first",
        qwend.display()
    );
    let socket = dir.join("run").join("qwend.sock");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(qwen);
        c.env_clear()
            .env("HOME", home)
            .env("QWEND_SOCKET", &socket)
            .env("QWEND_STATE_DIR", dir.join("state"))
            .env("QWEND_BIN", &qwend)
            .env("QWEN_CREDENTIAL_STORE", "file")
            .current_dir(home)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    // The first run starts the daemon and imports the file; not measured.
    let first = cmd(&["auth", "token"]).output().unwrap();
    assert!(first.status.success(), "qwen auth token failed");
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), TOKEN);
    let samples = (0..runs("QWEN_BENCH_RUNS", 300))
        .map(|_| {
            let mut c = cmd(&["auth", "token"]);
            c.stdout(Stdio::null());
            let t = Instant::now();
            assert!(c.status().unwrap().success());
            t.elapsed()
        })
        .collect();
    let _ = cmd(&["daemon", "stop"]).stdout(Stdio::null()).status();
    samples
}

fn conformance_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("QWEN_CONFORMANCE_DIR") {
        return Some(PathBuf::from(d));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/conformance"))
        .find(|d| d.join("oauth/oauth-oracle.mjs").is_file())
}

fn qwen_code(home: &Path) -> Result<Vec<Duration>, String> {
    let kit = conformance_dir().ok_or("conformance kit not found (QWEN_CONFORMANCE_DIR)")?;
    let pkg = std::env::var_os("QWEN_PEER_PKG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/tmp/qwen-peer-0.24.4/node_modules/@qwen-code/qwen-code")
        });
    if !pkg.join("package.json").is_file() {
        return Err(format!(
            "Qwen Code not installed at {} (bash {}/env/setup.sh installs it)",
            pkg.display(),
            kit.display()
        ));
    }
    let cmd = || {
        let mut c = Command::new("node");
        c.arg(kit.join("oauth/oauth-oracle.mjs"))
            // A valid token needs no IdP; a closed port makes sure none is reached.
            .args(["get", "--idp", "http://127.0.0.1:9"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("QWEN_PEER_PKG", &pkg)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let out = cmd()
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(&format!("\"access_token\": \"{TOKEN}\"")) {
        return Err(format!("the oracle did not return the token: {text}"));
    }
    Ok((0..runs("QWEN_BENCH_NODE_RUNS", 20))
        .map(|_| {
            let mut c = cmd();
            c.stdout(Stdio::null());
            let t = Instant::now();
            assert!(c.status().unwrap().success());
            t.elapsed()
        })
        .collect())
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("qwen-bench-token")
        .tempdir()
        .unwrap();
    let home = home(dir.path());
    println!(
        "| {:<58} | {:>4} | {:>8} | {:>8} | {:>8} | {:<8} |",
        "measure", "n", "mean ms", "p50 ms", "p99 ms", "target"
    );
    println!(
        "| {:-<58} | {:->4} | {:->8} | {:->8} | {:->8} | {:-<8} |",
        "", "", "", "", "", ""
    );
    let our_p50 = row(
        "`qwen auth token`, exec to exit, daemon running",
        ours(dir.path(), &home),
        "p50 < 3",
    );
    match qwen_code(&home) {
        Ok(samples) => {
            let their_p50 = row(
                "Qwen Code token manager (`node oauth-oracle.mjs get`)",
                samples,
                "",
            );
            println!(
                "\nQwen Code's token manager takes {:.0}x as long as `qwen auth token` (median).",
                their_p50.as_secs_f64() / our_p50.as_secs_f64()
            );
        }
        Err(why) => println!("\nQwen Code row skipped: {why}"),
    }
}
