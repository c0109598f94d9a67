//! The interactive session's latency (prints a table):
//!
//! ```sh
//! cargo build --release --workspace && cargo bench -p qwen --bench session
//! ```
//!
//! - `qwen` start to the first prompt shown, under a pseudo-terminal, daemon running.
//! - Enter to the first streamed byte of the answer, in an open session, against the local
//!   mock model; next to the same request made directly to the mock (a fresh connection,
//!   as the session makes one per message). The difference is the session's own overhead:
//!   credentials and a quota permit from the daemon, the outcome reported, the terminal.
//!
//! Targets on the 2-core reference machine: first prompt p50 < 50 ms; overhead p50 < 5 ms.
//! The pty is read by a busy loop (expectrl), which takes one core while waiting.
//! Runs: `QWEN_BENCH_RUNS` (30 starts, 100 messages).
#[path = "support/mod.rs"]
mod support;

#[path = "../tests/common/openai_mock.rs"]
#[allow(dead_code)]
mod openai_mock;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use expectrl::Expect;
use support::stats::{self, ms};

const PROMPT: &str = "qwen> ";
const FIRST_PIECE: &str = "Hello";

fn runs(default: usize) -> usize {
    stats::runs("QWEN_BENCH_RUNS", default)
}

struct Env<'a> {
    dir: &'a Path,
    qwen: &'a str,
    qwend: std::path::PathBuf,
    base_url: String,
}

impl Env<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.qwen);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.join("home"))
            .env("QWEND_SOCKET", self.dir.join("run/qwend.sock"))
            .env("QWEND_STATE_DIR", self.dir.join("state"))
            .env("QWEND_BIN", &self.qwend)
            .env("QWEN_CREDENTIAL_STORE", "file")
            .env("OPENAI_API_KEY", "sk-bench")
            .env("OPENAI_BASE_URL", &self.base_url)
            .env("OPENAI_MODEL", "m-bench")
            .env("TERM", "xterm")
            .current_dir(self.dir)
            .args(args);
        c
    }

    fn session(&self) -> expectrl::session::OsSession {
        let mut s = expectrl::Session::spawn(self.cmd(&[])).expect("cannot spawn under a pty");
        s.set_expect_timeout(Some(Duration::from_secs(30)));
        s
    }
}

fn leave(mut s: expectrl::session::OsSession) {
    s.send("\x04").unwrap();
    let _ = s.expect(expectrl::Eof);
    let _ = s.get_process().wait();
}

fn first_prompt(env: &Env) -> Vec<Duration> {
    (0..runs(30))
        .map(|_| {
            let t = Instant::now();
            let mut s = env.session();
            s.expect(PROMPT).expect("no prompt");
            let d = t.elapsed();
            leave(s);
            d
        })
        .collect()
}

fn enter_to_first_byte(env: &Env) -> Vec<Duration> {
    let mut s = env.session();
    s.expect(PROMPT).expect("no prompt");
    let samples = (0..runs(100))
        .map(|i| {
            // /clear keeps every request the same size.
            s.send("/clear\r").unwrap();
            s.expect(PROMPT).unwrap();
            let t = Instant::now();
            s.send(format!("message {i}\r")).unwrap();
            s.expect(FIRST_PIECE).expect("no answer");
            let d = t.elapsed();
            s.expect(PROMPT).unwrap();
            d
        })
        .collect();
    leave(s);
    samples
}

/// The same request straight to the mock: connect, POST, read until the first piece.
fn direct(port: u16) -> Vec<Duration> {
    let body = serde_json::json!({
        "model": "m-bench",
        "messages": [{"role": "user", "content": "message 0"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-bench\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (0..runs(100))
        .map(|_| {
            let t = Instant::now();
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_nodelay(true).unwrap();
            c.write_all(req.as_bytes()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains(FIRST_PIECE) {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "the mock closed before answering");
                got.extend_from_slice(&buf[..n]);
            }
            let d = t.elapsed();
            // Read the rest, as the session does, before the next request.
            while c.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
            d
        })
        .collect()
}

fn main() {
    let qwen = support::daemon::qwen();
    let qwend = support::daemon::qwend();
    let dir = tempfile::Builder::new()
        .prefix("qwen-bench-session")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    let mock = openai_mock::OpenAiMock::start();
    let env = Env {
        dir: dir.path(),
        qwen,
        qwend,
        base_url: mock.base_url(),
    };
    // Start the daemon (not measured).
    let st = env
        .cmd(&["daemon", "start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "qwen daemon start failed");

    stats::header();
    stats::row(
        "session.first_prompt",
        "`qwen` start to the first prompt (daemon running)",
        first_prompt(&env),
        "p50 < 50",
    );
    let session = stats::row(
        "session.enter_to_first_byte",
        "session: Enter to the first streamed byte",
        enter_to_first_byte(&env),
        "",
    )
    .p50;
    let baseline = stats::row(
        "session.direct",
        "the same request straight to the mock",
        direct(mock.port),
        "",
    )
    .p50;
    println!(
        "\nThe session's own overhead per message (p50): {:.2} ms (target < 5 ms).",
        ms(session.saturating_sub(baseline))
    );
    let _ = env
        .cmd(&["daemon", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
}
