//! Chaos: `kill -9` of the real daemon at random moments during login polling, a refresh in
//! flight, a credential save, quota grants and proxied streams, the next client restarting
//! it each time. After every kill:
//! - both credential files (ours and Qwen Code's `oauth_creds.json`) exist once they have
//!   existed, parse, and hold one generation whole (access and refresh token issued
//!   together), never older than before the kill and never one the server did not issue;
//! - the ledger shows at least as many grants as the clients saw granted (permits and
//!   proxied requests answered 200);
//! - every client call ended within its deadline of the kill (none hangs);
//! - a `oauth_creds.lock` left by the killed daemon is taken over by the next write at once
//!   (a forced refresh finishes well inside the 35 s after which the lock would go stale),
//!   and no lock of a dead daemon is left behind.
//!
//! The CI size is 40 iterations with a fixed seed; `bench/chaos` runs 500 with a random one.
//! `QWEND_CHAOS_ITERATIONS` and `QWEND_CHAOS_SEED` set both (the seed is printed).
//! Deterministic: every kill point is an event (a request reaching the mock server, a grant
//! or first streamed byte seen by a client) plus a seeded spin of a few hundred
//! microseconds to land at different points of what follows; nothing sleeps, and every
//! wait has a deadline.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::oauth_mock::{DEVICE_PATH, Reply, TOKEN_PATH};
use common::openai_mock::{OpenAiMock, Reply as ModelReply};
use common::*;
use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::proxy_client::ProxyClient;
use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{
    AcquirePermitRequest, ClientContext, GetCredentialsRequest, GetQuotaRequest, LoginRequest,
    OpenProxySessionRequest, ProxySessionEvent, proxy_session_event,
};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

const CI_ITERATIONS: u64 = 40;
const CI_SEED: u64 = 0x5eed_0c4a_0500_0018;
/// How long after the kill a client may take to notice (its call's deadline).
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the first write after a restart may take when the killed daemon left its lock:
/// far inside the 35 s after which the lock goes stale, so only a takeover passes.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(10);
/// A guard against a broken build hanging the suite; never how long a step takes.
const HANG: Duration = Duration::from_secs(60);
/// `qwen exec`'s tool: one streamed completion with the key and base URL exec gave it,
/// printed as it arrives.
const EXEC_CURL: &str = r#"exec curl -sN --max-time 30 -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hi"}],"stream":true}' "$OPENAI_BASE_URL/chat/completions""#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    LoginPolling,
    Refresh,
    Save,
    Grants,
    ProxyStreams,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario::LoginPolling,
    Scenario::Refresh,
    Scenario::Save,
    Scenario::Grants,
    Scenario::ProxyStreams,
];

#[path = "reliability/rng.rs"]
mod rng;
use rng::Rng;

/// Busy-waits (no sleep: the point is to land inside what the daemon is doing now).
fn spin(us: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

fn env_u64(key: &str) -> Option<u64> {
    let v = std::env::var(key).ok()?;
    let v = v.trim();
    Some(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("a hex number"),
        None => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a number")),
    })
}

/// One credential file: the generation it holds, or what is wrong with it.
fn generation(path: &Path) -> Result<Option<u64>, String> {
    let raw = match std::fs::read_to_string(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: Value =
        serde_json::from_str(&raw).map_err(|e| format!("{} torn: {e}: {raw}", path.display()))?;
    let gen_of = |key: &str, prefix: &str| -> Result<u64, String> {
        v[key]
            .as_str()
            .and_then(|t| t.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{}: {key} is not ours: {raw}", path.display()))
    };
    let (a, r) = (
        gen_of("access_token", "at-g")?,
        gen_of("refresh_token", "rt-g")?,
    );
    if a != r {
        return Err(format!(
            "{}: access token of generation {a} with the refresh token of {r}",
            path.display()
        ));
    }
    Ok(Some(a))
}

fn tokens(g: u64, model_port: u16) -> Value {
    json!({
        "access_token": format!("at-g{g}"), "refresh_token": format!("rt-g{g}"),
        "token_type": "Bearer", "expires_in": 86400,
        "resource_url": format!("http://127.0.0.1:{model_port}"),
    })
}

/// The pid written into a `oauth_creds.lock` by a qwend (`<uuid> qwend pid=N boot=B`).
fn lock_owner(lock: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(lock).ok()?;
    text.split(' ')
        .find_map(|f| f.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

/// Waits for the process's every thread to be gone (bounded).
fn wait_dead(pid: u32) -> Result<(), String> {
    let t = Instant::now();
    while alive(pid) {
        if t.elapsed() > HANG {
            return Err(format!("daemon {pid} still alive {HANG:?} after kill -9"));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Runs `qwen` with a deadline (a client that never exits is a failure, not a hung suite).
fn qwen_bounded(env: &TestEnv, args: &[&str]) -> Result<std::process::Output, String> {
    let mut cmd = env.qwen_cmd(args);
    cmd.current_dir(&env.home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("spawn qwen: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(HANG) {
        Ok(out) => out.map_err(|e| format!("qwen {args:?}: {e}")),
        Err(_) => {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            Err(format!("qwen {args:?} did not exit within {HANG:?}"))
        }
    }
}

/// What the clients of one iteration saw.
#[derive(Default)]
struct Seen {
    granted: AtomicU64,
    /// Calls that ran past their deadline.
    hung: AtomicU64,
    /// Permits refused (the limits are a billion: a bookkeeping error).
    refused: AtomicU64,
}

struct Chaos {
    s: Setup,
    model: OpenAiMock,
    rng: Rng,
    /// The last generation handed to the mock server.
    issued: u64,
    /// All grants the clients have seen, over every iteration.
    granted_total: u64,
    day_resets_at: String,
    failures: Vec<String>,
    counts: BTreeMap<Scenario, u64>,
    locks_left: u64,
    max_restart: Duration,
    max_client_exit: Duration,
    max_takeover: Duration,
    /// `QWEND_CHAOS_ONLY`: the moments to run (all when empty), to chase one failure.
    only: Vec<Scenario>,
    /// Whether curl is there to be `qwen exec`'s tool.
    curl: bool,
    /// Proxied-stream kills made through `qwen exec`.
    exec_streams: u64,
}

impl Chaos {
    fn ctx(&self) -> ClientContext {
        ClientContext {
            cwd: self.s.env.home.display().to_string(),
            env: HashMap::from([("HOME".into(), self.s.env.home.display().to_string())]),
        }
    }

    fn qwen_file(&self) -> PathBuf {
        self.s.env.home.join(".qwen/oauth_creds.json")
    }

    fn our_file(&self) -> PathBuf {
        self.s.env.state.join("credentials/credentials.json")
    }

    fn lock_file(&self) -> PathBuf {
        self.s.env.home.join(".qwen/oauth_creds.lock")
    }

    fn next_tokens(&mut self) -> Reply {
        self.issued += 1;
        Reply::json(200, tokens(self.issued, self.model.port))
    }

    /// Every refresh not scripted otherwise gets a fresh, valid generation.
    fn default_refresh(&mut self) {
        let r = self.next_tokens();
        self.s.mock.set_default(TOKEN_PATH, r);
    }

    /// The next client: starts the daemon (it is down) and tells its pid.
    fn restart(&mut self) -> Result<u32, String> {
        let t = Instant::now();
        let out = qwen_bounded(&self.s.env, &["daemon", "status", "--json"])?;
        if !out.status.success() {
            return Err(format!(
                "the next client could not start the daemon: {}",
                text(&out.stderr)
            ));
        }
        self.max_restart = self.max_restart.max(t.elapsed());
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        v["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| format!("no pid in {v}"))
    }

    fn generations(&self) -> Result<(Option<u64>, Option<u64>), String> {
        Ok((
            generation(&self.qwen_file())?,
            generation(&self.our_file())?,
        ))
    }

    fn run(&mut self, iterations: u64) {
        let mut pid = self.restart().expect("first start");
        // The daemon's own copy appears with the first save; force one.
        self.default_refresh();
        self.forced_refresh().expect("first refresh");
        let q = self.quota().expect("quota");
        self.day_resets_at = q.1;
        for i in 0..iterations {
            let scenario = SCENARIOS[self.rng.below(SCENARIOS.len() as u64) as usize];
            if !self.only.is_empty() && !self.only.contains(&scenario) {
                continue;
            }
            *self.counts.entry(scenario).or_default() += 1;
            if let Err(e) = self.iteration(i, scenario, &mut pid) {
                eprintln!("iteration {i} ({scenario:?}): {e}");
                self.failures
                    .push(format!("iteration {i} ({scenario:?}): {e}"));
                if self.failures.len() >= 10 {
                    break;
                }
                // Carry on from a running daemon, whatever state this one left.
                match self.restart() {
                    Ok(p) => pid = p,
                    Err(e) => {
                        self.failures.push(format!("cannot go on: {e}"));
                        break;
                    }
                }
            }
        }
    }

    fn iteration(&mut self, i: u64, scenario: Scenario, pid: &mut u32) -> Result<(), String> {
        let before = self.generations()?;
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = match scenario {
            Scenario::LoginPolling => self.login_polling(*pid, &seen, &stop),
            Scenario::Refresh | Scenario::Save => {
                self.refresh(*pid, scenario == Scenario::Save, &seen, &stop)
            }
            Scenario::Grants => self.grants(*pid, &seen, &stop),
            Scenario::ProxyStreams => self.proxy_streams(*pid, &seen, &stop),
        };
        stop.store(true, Ordering::Relaxed);
        let (clients, killed_at) = started?;
        wait_dead(*pid)?;
        // Every client notices within its deadline.
        let joined = self.s.rt.block_on(async {
            tokio::time::timeout(CLIENT_DEADLINE + Duration::from_secs(1), async {
                for c in clients {
                    let _ = c.await;
                }
            })
            .await
        });
        let exit = killed_at.elapsed();
        self.max_client_exit = self.max_client_exit.max(exit);
        if joined.is_err() || seen.hung.load(Ordering::Relaxed) > 0 {
            return Err(format!(
                "{} client call(s) still waiting {exit:?} after the kill",
                seen.hung.load(Ordering::Relaxed).max(1)
            ));
        }
        if seen.refused.load(Ordering::Relaxed) > 0 {
            return Err("a permit was refused under limits of a billion".into());
        }
        self.granted_total += seen.granted.load(Ordering::Relaxed);

        // The files: old or new, whole, never gone once written.
        let after = self.generations()?;
        for (name, b, a) in [
            ("Qwen Code's oauth_creds.json", before.0, after.0),
            ("our credential file", before.1, after.1),
        ] {
            match (b, a) {
                (Some(_), None) => return Err(format!("{name} is gone")),
                (Some(b), Some(a)) if a < b => {
                    return Err(format!(
                        "{name} went back from generation {b} to {a} (new credentials lost)"
                    ));
                }
                (_, Some(a)) if a > self.issued => {
                    return Err(format!("{name} holds generation {a}, never issued"));
                }
                _ => {}
            }
        }
        let left = lock_owner(&self.lock_file()) == Some(*pid);
        self.locks_left += u64::from(left);

        // The next client restarts the daemon; its first write takes any dead lock over.
        self.default_refresh();
        *pid = self.restart()?;
        let t = Instant::now();
        self.forced_refresh()?;
        let took = t.elapsed();
        if std::env::var_os("QWEND_CHAOS_DEBUG").is_some() {
            eprintln!("iteration {i} ({scenario:?}): lock left {left}, first write {took:?}");
            if took > Duration::from_secs(1) {
                let log = self.s.env.log();
                let tail: Vec<_> = log.lines().rev().take(12).collect();
                eprintln!("{tail:#?}");
            }
        }
        if left {
            self.max_takeover = self.max_takeover.max(took);
        }
        if took > TAKEOVER_DEADLINE {
            return Err(format!(
                "the first write after the restart took {took:?} (lock left: {left})"
            ));
        }
        if let Some(owner) = lock_owner(&self.lock_file())
            && !alive(owner)
        {
            return Err(format!(
                "oauth_creds.lock still held by dead qwend {owner} after a write"
            ));
        }
        let now = self.generations()?;
        if now.0.is_none() || now.1.is_none() {
            return Err(format!(
                "a credential file is missing after a refresh: {now:?}"
            ));
        }

        // The ledger: never fewer used than the clients saw granted.
        let (used, resets_at) = self.quota()?;
        if resets_at != self.day_resets_at {
            // The day rolled over during the run: count from here.
            self.day_resets_at = resets_at;
            self.granted_total = used;
        } else if used < self.granted_total {
            return Err(format!(
                "the ledger shows {used} used, clients saw {} granted",
                self.granted_total
            ));
        }
        if i % 50 == 49 {
            eprintln!(
                "chaos: {} iterations, {} grants, generation {}",
                i + 1,
                self.granted_total,
                self.issued
            );
        }
        Ok(())
    }

    fn kill(&self, pid: u32) -> Instant {
        let t = Instant::now();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("a pid"),
            rustix::process::Signal::KILL,
        );
        t
    }

    /// Waits (bounded) until the mock server has seen `n` requests in all.
    fn wait_requests(&self, n: usize) -> Result<(), String> {
        self.s.rt.block_on(async {
            tokio::time::timeout(HANG, self.s.mock.wait_for_requests(n))
                .await
                .map_err(|_| {
                    let seen = self.s.mock.requests();
                    let last: Vec<_> = seen.iter().rev().take(3).map(|r| &r.path).collect();
                    let log = self.s.env.log();
                    let tail: Vec<_> = log.lines().rev().take(6).collect();
                    format!(
                        "the mock server never saw {n} requests ({} so far, the last {last:?}); \
                         the daemon's log ends with {tail:#?}",
                        seen.len()
                    )
                })
        })
    }

    /// A refresh through the daemon (the API refused the current token): a write of both
    /// files under `oauth_creds.lock`.
    fn forced_refresh(&self) -> Result<(), String> {
        let ctx = self.ctx();
        self.s.rt.block_on(async {
            tokio::time::timeout(TAKEOVER_DEADLINE, async {
                let ch = qwend_shared::transport::connect(&self.s.env.socket)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut c = AuthClient::new(ch);
                let current = c
                    .get_credentials(GetCredentialsRequest {
                        client: Some(ctx.clone()),
                        rejected_token: None,
                        model: None,
                    })
                    .await
                    .map_err(|e| format!("GetCredentials: {e}"))?
                    .into_inner()
                    .token;
                let fresh = c
                    .get_credentials(GetCredentialsRequest {
                        client: Some(ctx),
                        rejected_token: Some(current.clone()),
                        model: None,
                    })
                    .await
                    .map_err(|e| format!("GetCredentials after a 401: {e}"))?
                    .into_inner()
                    .token;
                if fresh == current {
                    return Err(format!("no refresh: still {current}"));
                }
                Ok(())
            })
            .await
            .map_err(|_| format!("a forced refresh took longer than {TAKEOVER_DEADLINE:?}"))?
        })
    }

    fn quota(&self) -> Result<(u64, String), String> {
        let ctx = self.ctx();
        self.s.rt.block_on(async {
            let ch = qwend_shared::transport::connect(&self.s.env.socket)
                .await
                .map_err(|e| e.to_string())?;
            let q = tokio::time::timeout(
                CLIENT_DEADLINE,
                QuotaClient::new(ch).get_quota(GetQuotaRequest { client: Some(ctx) }),
            )
            .await
            .map_err(|_| "GetQuota hung".to_string())?
            .map_err(|e| format!("GetQuota: {e}"))?
            .into_inner();
            let day = q.day.ok_or("no day window")?;
            Ok((day.used, day.resets_at))
        })
    }

    /// Spawns a client task whose every call is bounded; it ends at its first error (the
    /// kill) or when told to stop.
    fn spawn<F, Fut>(&self, f: F) -> tokio::task::JoinHandle<()>
    where
        F: FnOnce(tonic::transport::Channel) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let socket = self.s.env.socket.clone();
        self.s.rt.spawn(async move {
            if let Ok(ch) = qwend_shared::transport::connect(&socket).await {
                f(ch).await;
            }
        })
    }

    fn login_polling(
        &mut self,
        pid: u32,
        seen: &Arc<Seen>,
        _stop: &Arc<AtomicBool>,
    ) -> Result<(Vec<tokio::task::JoinHandle<()>>, Instant), String> {
        // 1-6 polls answered "pending", then (half the time) the approval; the kill comes
        // once the last of them has arrived: during the polling, or inside the save of the
        // new login. Scripted before the login starts, so no answer races the test.
        let polls = 1 + self.rng.below(6) as usize;
        let approve = self.rng.below(2) == 0;
        self.s.mock.set_default(TOKEN_PATH, Reply::pending());
        for _ in 0..polls {
            self.s.mock.push(TOKEN_PATH, Reply::pending());
        }
        if approve {
            self.issued += 1;
            let ok = Reply::json(200, tokens(self.issued, self.model.port));
            self.s.mock.push(TOKEN_PATH, ok);
        }
        self.s
            .mock
            .push(DEVICE_PATH, Reply::device_code(600_000, Some(3)));
        let base = self.s.mock.requests().len();
        let seen2 = seen.clone();
        let client = self.spawn(move |ch| async move {
            let mut c = AuthClient::new(ch);
            let Some(resp) = bounded(&seen2, c.login(LoginRequest { force: true })).await else {
                return;
            };
            let mut stream = resp.into_inner();
            // Polls every 3 ms: progress comes long before the deadline; the result or the
            // kill ends the stream.
            while let Some(Some(_)) = bounded(&seen2, stream.message()).await {}
        });
        self.wait_requests(base + 1 + polls + usize::from(approve))?;
        spin(self.rng.below(3000));
        let t = self.kill(pid);
        Ok((vec![client], t))
    }

    fn refresh(
        &mut self,
        pid: u32,
        save: bool,
        seen: &Arc<Seen>,
        stop: &Arc<AtomicBool>,
    ) -> Result<(Vec<tokio::task::JoinHandle<()>>, Instant), String> {
        // r refreshes answered at once, the last one held until the test lets it go.
        let r = 1 + self.rng.below(3) as usize;
        for _ in 1..r {
            let reply = self.next_tokens();
            self.s.mock.push(TOKEN_PATH, reply);
        }
        let gate = Arc::new(Semaphore::new(0));
        let held = self.next_tokens().gated(gate.clone());
        self.s.mock.push(TOKEN_PATH, held);
        self.default_refresh();
        let base = self.s.mock.requests().len();
        let mut clients = Vec::new();
        for _ in 0..1 + self.rng.below(3) {
            let (ctx, seen, stop) = (self.ctx(), seen.clone(), stop.clone());
            clients.push(self.spawn(move |ch| async move {
                let mut c = AuthClient::new(ch);
                let mut last: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    // Each answer is rejected at once, as after a 401: refresh after refresh.
                    let req = GetCredentialsRequest {
                        client: Some(ctx.clone()),
                        rejected_token: last.clone(),
                        model: None,
                    };
                    match bounded(&seen, c.get_credentials(req)).await {
                        Some(r) => last = Some(r.into_inner().token),
                        None => return,
                    }
                }
            }));
        }
        self.wait_requests(base + r)?;
        if save {
            // The answer arrives: the daemon saves both files while the test spins.
            gate.add_permits(1);
        }
        spin(self.rng.below(if save { 4000 } else { 500 }));
        let t = self.kill(pid);
        Ok((clients, t))
    }

    fn grants(
        &mut self,
        pid: u32,
        seen: &Arc<Seen>,
        stop: &Arc<AtomicBool>,
    ) -> Result<(Vec<tokio::task::JoinHandle<()>>, Instant), String> {
        let (tx, mut rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let mut clients = Vec::new();
        for _ in 0..1 + self.rng.below(6) {
            let (ctx, seen, stop, tx) = (self.ctx(), seen.clone(), stop.clone(), tx.clone());
            clients.push(self.spawn(move |ch| async move {
                let mut q = QuotaClient::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    let req = AcquirePermitRequest {
                        client: Some(ctx.clone()),
                        wait_ms: 0,
                    };
                    match bounded(&seen, q.acquire_permit(req)).await {
                        Some(r) if r.get_ref().granted => {
                            seen.granted.fetch_add(1, Ordering::Relaxed);
                            tx.send_modify(|n| *n += 1);
                        }
                        Some(r) => {
                            seen.refused.fetch_add(1, Ordering::Relaxed);
                            eprintln!("refused with limits of a billion: {r:?}");
                            return;
                        }
                        None => return,
                    }
                }
            }));
        }
        let k = 1 + self.rng.below(60);
        self.wait_counter(&mut rx, k, "grants")?;
        spin(self.rng.below(2000));
        let t = self.kill(pid);
        Ok((clients, t))
    }

    fn wait_counter(
        &self,
        rx: &mut watch::Receiver<u64>,
        k: u64,
        what: &str,
    ) -> Result<(), String> {
        self.s.rt.block_on(async {
            match tokio::time::timeout(HANG, rx.wait_for(|n| *n >= k)).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(format!("never {k} {what}")),
            }
        })
    }

    /// A tool under `qwen exec` (curl) streaming through exec's proxy session; the kill
    /// comes once its first bytes are out. `qwen exec` must then exit by its deadline.
    fn exec_stream(
        &mut self,
        pid: u32,
        seen: &Arc<Seen>,
    ) -> Result<(Vec<tokio::task::JoinHandle<()>>, Instant), String> {
        use std::io::BufRead;
        let gate_after = 1 + self.rng.below(3) as usize;
        self.model.push(ModelReply::Stream {
            pieces: vec!["chaos".into(); 8],
            gate_after: Some(gate_after),
        });
        let mut cmd = self.s.env.qwen_cmd(&["exec", "--", "sh", "-c", EXEC_CURL]);
        cmd.current_dir(&self.s.env.home)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("spawn qwen exec: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let child_pid = child.id();
        let first = match rx.recv_timeout(HANG) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                return Err(format!("qwen exec streamed nothing within {HANG:?}"));
            }
        };
        if !first.starts_with("data:") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("qwen exec's tool did not stream: {first:?}"));
        }
        // A streamed 200 through the proxy: it took a permit.
        seen.granted.fetch_add(1, Ordering::Relaxed);
        spin(self.rng.below(1000));
        let t = self.kill(pid);
        let seen = seen.clone();
        let waiter = self.s.rt.spawn(async move {
            let wait = tokio::task::spawn_blocking(move || child.wait());
            if tokio::time::timeout(CLIENT_DEADLINE, wait).await.is_err() {
                seen.hung.fetch_add(1, Ordering::Relaxed);
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(child_pid as i32).expect("a pid"),
                    rustix::process::Signal::KILL,
                );
            }
        });
        Ok((vec![waiter], t))
    }

    fn proxy_streams(
        &mut self,
        pid: u32,
        seen: &Arc<Seen>,
        _stop: &Arc<AtomicBool>,
    ) -> Result<(Vec<tokio::task::JoinHandle<()>>, Instant), String> {
        // Half the time through `qwen exec` and a real tool, when curl is there.
        if self.curl && self.rng.below(2) == 0 {
            self.exec_streams += 1;
            return self.exec_stream(pid, seen);
        }
        let streams = 1 + self.rng.below(4);
        for _ in 0..streams {
            // Each stream stops after a piece or three until the kill.
            let gate_after = 1 + self.rng.below(3) as usize;
            self.model.push(ModelReply::Stream {
                pieces: vec!["chaos".into(); 8],
                gate_after: Some(gate_after),
            });
        }
        let (tx, mut rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let (ctx, seen2) = (self.ctx(), seen.clone());
        // One session (as `qwen exec` holds one) with concurrent streamed requests on it.
        let client = self.spawn(move |ch| async move {
            let mut proxy = ProxyClient::new(ch);
            let open = proxy.open_session(OpenProxySessionRequest { client: Some(ctx) });
            let Some(resp) = bounded(&seen2, open).await else {
                return;
            };
            let mut session = resp.into_inner();
            let Some(Some(ProxySessionEvent {
                kind: Some(proxy_session_event::Kind::Opened(o)),
            })) = bounded(&seen2, session.message()).await
            else {
                return;
            };
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let mut tasks = Vec::new();
            for _ in 0..streams {
                let (http, o, seen, tx) = (http.clone(), o.clone(), seen2.clone(), tx.clone());
                tasks.push(tokio::spawn(async move {
                    let send = http
                        .post(format!("{}/chat/completions", o.base_url))
                        .bearer_auth(&o.secret)
                        .header("content-type", "application/json")
                        .body(r#"{"messages":[{"role":"user","content":"hi"}],"stream":true}"#)
                        .send();
                    let Some(mut resp) = bounded(&seen, send).await else {
                        return;
                    };
                    if resp.status() != 200 {
                        return;
                    }
                    // A 200 means the proxy took a permit for it.
                    seen.granted.fetch_add(1, Ordering::Relaxed);
                    let mut first = true;
                    while let Some(Some(_)) = bounded(&seen, resp.chunk()).await {
                        if std::mem::take(&mut first) {
                            tx.send_modify(|n| *n += 1);
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            drop(session);
        });
        self.wait_counter(&mut rx, streams, "streams under way")?;
        spin(self.rng.below(1000));
        let t = self.kill(pid);
        Ok((vec![client], t))
    }
}

/// A client call with its deadline: `None` when it failed (the kill) or hung (counted).
async fn bounded<T, E>(
    seen: &Seen,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(CLIENT_DEADLINE, call).await {
        Err(_) => {
            seen.hung.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ok(r) => r.ok(),
    }
}

#[test]
fn kill_minus_nine_at_random_moments_loses_nothing_and_hangs_no_one() {
    let iterations = env_u64("QWEND_CHAOS_ITERATIONS").unwrap_or(CI_ITERATIONS);
    let seed = env_u64("QWEND_CHAOS_SEED").unwrap_or(CI_SEED);
    eprintln!("chaos: {iterations} iterations, seed {seed:#x} (QWEND_CHAOS_SEED to repeat)");
    let only: Vec<Scenario> = std::env::var("QWEND_CHAOS_ONLY")
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.trim().is_empty())
        .map(|n| {
            *SCENARIOS
                .iter()
                .find(|s| format!("{s:?}").eq_ignore_ascii_case(n.trim()))
                .unwrap_or_else(|| panic!("QWEND_CHAOS_ONLY: {n} is none of {SCENARIOS:?}"))
        })
        .collect();
    // Built before the clock starts (the first call builds it).
    qwend_bin();
    let curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl {
        eprintln!(
            "chaos: no curl, so every proxied stream goes through the Proxy service directly"
        );
    }
    let model = OpenAiMock::start();
    let s = oauth_setup(&[
        // Device-flow seconds become milliseconds: polling every 3 ms.
        ("QWEND_OAUTH_TIME_UNIT_MS", "1"),
        ("QWEND_QUOTA_PER_MINUTE", "1000000000"),
        ("QWEND_QUOTA_PER_DAY", "1000000000"),
        (
            "QWEN_LOG",
            if std::env::var_os("QWEND_CHAOS_DEBUG").is_some() {
                "debug"
            } else {
                "info"
            },
        ),
    ]);
    let dir = s.env.home.join(".qwen");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"at-g0","refresh_token":"rt-g0","token_type":"Bearer","resource_url":"http://127.0.0.1:{}","expiry_date":{}}}"#,
            model.port,
            now_ms() + 86_400_000
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("settings.json"),
        r#"{"security": {"auth": {"selectedType": "qwen-oauth"}}}"#,
    )
    .unwrap();
    let mut chaos = Chaos {
        s,
        model,
        rng: Rng(seed),
        issued: 0,
        granted_total: 0,
        day_resets_at: String::new(),
        failures: Vec::new(),
        counts: BTreeMap::new(),
        locks_left: 0,
        max_restart: Duration::ZERO,
        max_client_exit: Duration::ZERO,
        max_takeover: Duration::ZERO,
        only,
        curl,
        exec_streams: 0,
    };
    let started = Instant::now();
    chaos.run(iterations);
    eprintln!(
        "chaos: {} kills in {:.1} s, seed {seed:#x}: {:?} ({} of the proxied streams through \
         `qwen exec`); {} grants seen (ledger never \
         below); generation {} issued; {} locks left by a killed daemon, each taken over \
         (slowest first write {:?}); slowest restart {:?}; slowest client to notice a kill {:?}",
        chaos.counts.values().sum::<u64>(),
        started.elapsed().as_secs_f64(),
        chaos.counts,
        chaos.exec_streams,
        chaos.granted_total,
        chaos.issued,
        chaos.locks_left,
        chaos.max_takeover,
        chaos.max_restart,
        chaos.max_client_exit,
    );
    assert!(
        chaos.failures.is_empty(),
        "seed {seed:#x}:\n{}",
        chaos.failures.join("\n")
    );
}
