//! Soak: many concurrent clients mixing every RPC against one real `qwend` for minutes, and
//! the daemon's descriptors, threads and memory compared between minute 1 and the end.
//!
//! ```sh
//! bench/soak --minutes 5                      # builds, then runs this with the flags given
//! cargo bench -p qwen --bench soak -- --minutes 5 --clients 200
//! ```
//!
//! Everything is local: a temp HOME and socket, the mock OAuth server (refreshes) and the
//! mock model server (proxied and direct completions) on 127.0.0.1. Each client is a task
//! with its own connection that loops over a weighted mix of `Daemon.Status`,
//! `Auth.{GetAuthStatus, GetCredentials (plain and after a 401, so the daemon refreshes and
//! saves), SwitchAuth, Login}`, `Quota.{AcquirePermit + ReportOutcome, GetQuota}`,
//! `Env.ResolveEnv`, `Events.Watch`, `Proxy.{OpenSession + a streamed completion through
//! the proxy, GetProxyStatus}` and real `qwen` processes (`qwen -p`, `qwen exec`); a
//! quarter of the clients also hold an `Events.Watch` stream for the whole run. Every call
//! has a deadline; a call that errs, times out or answers nonsense is a failed call.
//!
//! The daemon is sampled from /proc at minute 1 (or a fifth of a shorter run) and at the
//! end, each time with the load paused and in-flight calls finished (a write lock every
//! call holds a read guard of), every proxy session revoked and idle blocking-pool threads
//! gone (11 s), so both samples see the same steady state. It fails (exit 1)
//! on any failed call, a daemon restart, or growth beyond the tolerances printed with the
//! figures (descriptors +16, threads +8, RSS +25 % or +8 MB, whichever is larger).
//!
//! Flags: `--minutes M` (5; fractions allowed), `--seconds S` (overrides), `--clients N`
//! (200), `--pause-ms P` (20: each client's pause between calls, so 200 clients on a
//! 2-core machine measure the daemon and not the scheduler), `--seed N` (random).
#[path = "../../daemon/src/oauth/mock.rs"]
mod oauth_mock;
#[path = "../tests/common/openai_mock.rs"]
#[allow(dead_code)]
mod openai_mock;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qwend_shared::api::auth_client::AuthClient;
use qwend_shared::api::daemon_client::DaemonClient;
use qwend_shared::api::env_client::EnvClient;
use qwend_shared::api::events_client::EventsClient;
use qwend_shared::api::proxy_client::ProxyClient;
use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{
    AcquirePermitRequest, AuthStatusRequest, AuthType, ClientContext, GetCredentialsRequest,
    GetQuotaRequest, LoginRequest, OpenProxySessionRequest, ProxyStatusRequest,
    ReportOutcomeRequest, ResolveEnvRequest, StatusRequest, SwitchAuthRequest, WatchRequest,
    login_event, login_result, proxy_session_event,
};
use tokio::sync::RwLock;
use tonic::transport::Channel;

/// The deadline of one call (a proxied completion or a `qwen` process included).
const DEADLINE: Duration = Duration::from_secs(20);
const KEY: &str = "sk-soak-openai-key";

/// Tokio's default keep-alive of an idle blocking-pool thread (10 s), and a margin.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(11);

/// Tolerated growth between the first sample and the last.
const FD_TOLERANCE: u64 = 16;
const THREAD_TOLERANCE: u64 = 8;
const RSS_TOLERANCE_PCT: u64 = 25;
const RSS_TOLERANCE_MIN_KB: u64 = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Status,
    AuthStatus,
    Credentials,
    Refresh,
    Permit,
    Quota,
    Env,
    Switch,
    Watch,
    Proxy,
    ProxyStatus,
    Login,
    Process,
}

/// The mix: (operation, weight).
const MIX: &[(Op, u32)] = &[
    (Op::Status, 12),
    (Op::AuthStatus, 10),
    (Op::Credentials, 14),
    (Op::Refresh, 1),
    (Op::Permit, 14),
    (Op::Quota, 8),
    (Op::Env, 10),
    (Op::Switch, 1),
    (Op::Watch, 4),
    (Op::Proxy, 10),
    (Op::ProxyStatus, 4),
    (Op::Login, 2),
    (Op::Process, 1),
];

const OPS: usize = 13;

fn index(op: Op) -> usize {
    MIX.iter().position(|(o, _)| *o == op).unwrap()
}

#[path = "../tests/reliability/rng.rs"]
mod rng;
use rng::Rng;

/// Draws an operation by the weights of [`MIX`].
trait Pick {
    fn pick(&mut self) -> Op;
}

impl Pick for Rng {
    fn pick(&mut self) -> Op {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut r = self.below(u64::from(total)) as u32;
        for (op, w) in MIX {
            if r < *w {
                return *op;
            }
            r -= w;
        }
        unreachable!()
    }
}

struct Config {
    duration: Duration,
    clients: usize,
    pause: Duration,
    seed: u64,
}

fn parse_args() -> Config {
    let mut cfg = Config {
        duration: Duration::from_secs(300),
        clients: 200,
        pause: Duration::from_millis(20),
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> f64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--minutes" => cfg.duration = Duration::from_secs_f64(value("--minutes") * 60.0),
            "--seconds" => cfg.duration = Duration::from_secs_f64(value("--seconds")),
            "--clients" => cfg.clients = value("--clients") as usize,
            "--pause-ms" => cfg.pause = Duration::from_millis(value("--pause-ms") as u64),
            "--seed" => cfg.seed = value("--seed") as u64,
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => panic!("unknown flag {other} (see the top of client/benches/soak.rs)"),
        }
    }
    cfg
}

#[derive(Default)]
struct Stats {
    ok: [AtomicU64; OPS],
    failed: [AtomicU64; OPS],
    failures: Mutex<Vec<String>>,
    /// Microseconds of each successful call, per operation.
    times: [Mutex<Vec<u32>>; OPS],
}

impl Stats {
    fn record(&self, op: Op, result: Result<(), String>) {
        self.record_timed(op, result, Duration::ZERO);
    }

    fn record_timed(&self, op: Op, result: Result<(), String>, took: Duration) {
        let i = index(op);
        match result {
            Ok(()) => {
                self.ok[i].fetch_add(1, Ordering::Relaxed);
                if !took.is_zero() {
                    let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
                    self.times[i].lock().unwrap().push(us);
                }
            }
            Err(e) => {
                self.failed[i].fetch_add(1, Ordering::Relaxed);
                let mut f = self.failures.lock().unwrap();
                if f.len() < 10 {
                    f.push(format!("{op:?}: {e}"));
                }
            }
        }
    }

    fn totals(&self) -> (u64, u64) {
        let sum = |a: &[AtomicU64; OPS]| a.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        (sum(&self.ok), sum(&self.failed))
    }
}

/// The daemon's figures from /proc.
#[derive(Clone, Copy, Debug)]
struct Sample {
    fds: u64,
    threads: u64,
    rss_kb: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon gone");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
        threads: field("Threads:"),
        rss_kb: field("VmRSS:"),
    }
}

struct World {
    socket: PathBuf,
    home: PathBuf,
    state: PathBuf,
    qwen: PathBuf,
    qwend: PathBuf,
    model_base: String,
    oauth_base: String,
    /// Whether `curl` is there for the `qwen exec` calls.
    curl: bool,
    dirs: Vec<PathBuf>,
}

impl World {
    fn ctx(&self, cwd: &Path) -> ClientContext {
        ClientContext {
            cwd: cwd.display().to_string(),
            env: HashMap::from([
                ("HOME".to_string(), self.home.display().to_string()),
                ("OPENAI_API_KEY".to_string(), KEY.to_string()),
                ("OPENAI_BASE_URL".to_string(), self.model_base.clone()),
                ("OPENAI_MODEL".to_string(), "soak-model".to_string()),
            ]),
        }
    }

    fn qwen_cmd(&self, args: &[&str], cwd: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.qwen);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("QWEND_SOCKET", &self.socket)
            .env("QWEND_STATE_DIR", &self.state)
            .env("QWEND_BIN", &self.qwend)
            .env("QWEN_CREDENTIAL_STORE", "file")
            .env("QWEN_OAUTH_BASE_URL", &self.oauth_base)
            .env("QWEND_QUOTA_PER_MINUTE", "1000000000")
            .env("QWEND_QUOTA_PER_DAY", "1000000000")
            .env("QWEND_OPENAI_QUOTA_PER_MINUTE", "1000000000")
            .env("QWEND_OPENAI_QUOTA_PER_DAY", "1000000000")
            .env("QWEND_PROXY_MAX_CONCURRENT", "1024")
            .env("QWEN_LOG", "info")
            .env("OPENAI_API_KEY", KEY)
            .env("OPENAI_BASE_URL", &self.model_base)
            .env("OPENAI_MODEL", "soak-model")
            .current_dir(cwd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }
}

fn fail<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .map_err(|_| format!("{what}: no answer within {DEADLINE:?}"))?
}

/// The tool `qwen exec` runs: one streamed completion with the key and base URL exec gave
/// it, which must end in `[DONE]`.
const EXEC_CURL: &str = r#"curl -sfN --max-time 15 -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hi"}],"stream":true}' "$OPENAI_BASE_URL/chat/completions" | grep -q '^data: \[DONE\]'"#;

const BODY: &str =
    r#"{"model":"soak-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// One streamed completion, read to its end: the text must be the mock's and end in [DONE].
async fn completion(http: &reqwest::Client, base: &str, key: &str) -> Result<(), String> {
    let mut resp = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .map_err(fail("proxy request"))?;
    if resp.status() != 200 {
        let st = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("proxy answered {st}: {body}"));
    }
    let mut all = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(fail("proxy stream"))? {
        all.extend_from_slice(&c);
    }
    let text = String::from_utf8_lossy(&all);
    if !text.ends_with("data: [DONE]\n\n") || !text.contains("world") {
        return Err(format!("proxied stream incomplete: {text}"));
    }
    Ok(())
}

/// One permit, and the outcome reported as a model request would.
async fn permit(ch: &Channel, ctx: ClientContext) -> Result<(), String> {
    let mut q = QuotaClient::new(ch.clone());
    let r = q
        .acquire_permit(AcquirePermitRequest {
            client: Some(ctx.clone()),
            wait_ms: 0,
        })
        .await
        .map_err(fail("AcquirePermit"))?
        .into_inner();
    if !r.granted {
        return Err(format!("permit refused: {r:?}"));
    }
    q.report_outcome(ReportOutcomeRequest {
        client: Some(ctx),
        http_status: 200,
        retry_after_ms: None,
        daily_exhausted: false,
    })
    .await
    .map_err(fail("ReportOutcome"))?;
    Ok(())
}

struct Client {
    world: Arc<World>,
    ch: Channel,
    http: reqwest::Client,
    rng: Rng,
    cwd: PathBuf,
    token: String,
    daemon_pid: u32,
}

impl Client {
    async fn run(&mut self, op: Op) -> Result<(), String> {
        let ctx = self.world.ctx(&self.cwd);
        match op {
            Op::Status => {
                let r = DaemonClient::new(self.ch.clone())
                    .status(StatusRequest::default())
                    .await
                    .map_err(fail("Status"))?
                    .into_inner();
                if r.pid != self.daemon_pid {
                    return Err(format!(
                        "the daemon restarted: pid {} became {}",
                        self.daemon_pid, r.pid
                    ));
                }
            }
            Op::AuthStatus => {
                let r = AuthClient::new(self.ch.clone())
                    .get_auth_status(AuthStatusRequest { client: Some(ctx) })
                    .await
                    .map_err(fail("GetAuthStatus"))?
                    .into_inner();
                if !r.logged_in {
                    return Err(format!("not logged in: {r:?}"));
                }
            }
            Op::Credentials | Op::Refresh => {
                let rejected =
                    (op == Op::Refresh && !self.token.is_empty()).then(|| self.token.clone());
                let r = AuthClient::new(self.ch.clone())
                    .get_credentials(GetCredentialsRequest {
                        client: Some(ctx),
                        rejected_token: rejected,
                        model: None,
                    })
                    .await
                    .map_err(fail("GetCredentials"))?
                    .into_inner();
                if r.token.is_empty() || r.base_url.is_empty() {
                    return Err("empty credentials".into());
                }
                self.token = r.token;
            }
            Op::Permit => permit(&self.ch, ctx).await?,
            Op::Quota => {
                let r = QuotaClient::new(self.ch.clone())
                    .get_quota(GetQuotaRequest { client: Some(ctx) })
                    .await
                    .map_err(fail("GetQuota"))?
                    .into_inner();
                if r.day.is_none() || r.minute.is_none() {
                    return Err(format!("quota without its windows: {r:?}"));
                }
            }
            Op::Env => {
                let r = EnvClient::new(self.ch.clone())
                    .resolve_env(ResolveEnvRequest {
                        cwd: ctx.cwd,
                        env: ctx.env,
                    })
                    .await
                    .map_err(fail("ResolveEnv"))?
                    .into_inner();
                if !r.vars.iter().any(|v| v.key == "SOAK_DIR") {
                    return Err(format!("the .env was not found: {r:?}"));
                }
            }
            Op::Switch => {
                let to = if self.rng.below(2) == 0 {
                    AuthType::QwenOauth
                } else {
                    AuthType::Openai
                };
                let r = AuthClient::new(self.ch.clone())
                    .switch_auth(SwitchAuthRequest {
                        auth_type: to as i32,
                        client: Some(ctx),
                    })
                    .await
                    .map_err(fail("SwitchAuth"))?
                    .into_inner();
                if !r.logged_in {
                    return Err(format!("switched to an unusable method: {r:?}"));
                }
            }
            Op::Watch => {
                // A subscriber that comes and goes: subscribe, cause an event, see one.
                let mut stream = EventsClient::new(self.ch.clone())
                    .watch(WatchRequest {})
                    .await
                    .map_err(fail("Watch"))?
                    .into_inner();
                permit(&self.ch, ctx).await?;
                match stream.message().await.map_err(fail("Watch stream"))? {
                    Some(ev) if ev.kind.is_some() => {}
                    other => return Err(format!("Watch: no event but {other:?}")),
                }
            }
            Op::Proxy => {
                let mut stream = ProxyClient::new(self.ch.clone())
                    .open_session(OpenProxySessionRequest { client: Some(ctx) })
                    .await
                    .map_err(fail("OpenSession"))?
                    .into_inner();
                let opened = match stream.message().await.map_err(fail("OpenSession stream"))? {
                    Some(ev) => match ev.kind {
                        Some(proxy_session_event::Kind::Opened(o)) => o,
                        None => return Err("OpenSession: an empty event".into()),
                    },
                    None => return Err("OpenSession: the stream ended at once".into()),
                };
                completion(&self.http, &opened.base_url, &opened.secret).await?;
                drop(stream);
            }
            Op::ProxyStatus => {
                ProxyClient::new(self.ch.clone())
                    .get_proxy_status(ProxyStatusRequest {
                        wait_until_live_at_most: None,
                        wait_ms: 0,
                    })
                    .await
                    .map_err(fail("GetProxyStatus"))?;
            }
            Op::Login => {
                let mut stream = AuthClient::new(self.ch.clone())
                    .login(LoginRequest { force: false })
                    .await
                    .map_err(fail("Login"))?
                    .into_inner();
                let mut last = None;
                while let Some(ev) = stream.message().await.map_err(fail("Login stream"))? {
                    last = ev.kind;
                }
                match last {
                    Some(login_event::Kind::Result(r))
                        if r.outcome == login_result::Outcome::AlreadyLoggedIn as i32 => {}
                    other => return Err(format!("Login while logged in ended with {other:?}")),
                }
            }
            Op::Process => {
                // `qwen -p`, or a streamed completion through `qwen exec`'s proxy session
                // (curl as the tool; without curl, a tool that only checks its key).
                let args: &[&str] = match (self.rng.below(2), self.world.curl) {
                    (0, _) => &["-p", "hi", "--no-wait"],
                    (_, true) => &["exec", "--", "sh", "-c", EXEC_CURL],
                    (_, false) => &["exec", "--", "sh", "-c", r#"test -n "$OPENAI_API_KEY""#],
                };
                let out = self
                    .world
                    .qwen_cmd(args, &self.cwd)
                    .output()
                    .await
                    .map_err(fail("spawn qwen"))?;
                if !out.status.success() {
                    return Err(format!(
                        "qwen {args:?} exited {:?}: {}",
                        out.status.code(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A subscriber for the whole run: it must see events and never lose the stream.
async fn watcher(ch: Channel, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let result = async {
        let mut stream = EventsClient::new(ch)
            .watch(WatchRequest {})
            .await
            .map_err(fail("Watch"))?
            .into_inner();
        let mut seen = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => {}
                Ok(Ok(Some(_))) => seen += 1,
                Ok(Ok(None)) => return Err("the long-lived Watch stream ended".to_string()),
                Ok(Err(e)) => return Err(format!("the long-lived Watch stream failed: {e}")),
            }
        }
        if seen == 0 {
            return Err("the long-lived Watch stream saw no event".into());
        }
        Ok(())
    }
    .await;
    stats.record(Op::Watch, result);
}

fn write_setup(root: &Path, model_port: u16) -> (PathBuf, Vec<PathBuf>) {
    let home = root.join("home");
    let qwen_dir = home.join(".qwen");
    std::fs::create_dir_all(&qwen_dir).unwrap();
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 24 * 3_600_000;
    std::fs::write(
        qwen_dir.join("oauth_creds.json"),
        format!(
            r#"{{"access_token":"at-soak","refresh_token":"rt-soak","token_type":"Bearer","resource_url":"http://127.0.0.1:{model_port}","expiry_date":{expiry}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        qwen_dir.join("settings.json"),
        r#"{"security":{"auth":{"selectedType":"qwen-oauth"}}}"#,
    )
    .unwrap();
    // Projects at different depths, each with its .env (some in .qwen/), for ResolveEnv.
    let mut dirs = Vec::new();
    for p in 0..20 {
        let project = root.join(format!("work/p{p}"));
        let deep = project.join("src/a/b/c".split('/').take(p % 5).collect::<PathBuf>());
        std::fs::create_dir_all(&deep).unwrap();
        let env_file = if p % 3 == 0 {
            std::fs::create_dir_all(project.join(".qwen")).unwrap();
            project.join(".qwen/.env")
        } else {
            project.join(".env")
        };
        std::fs::write(
            env_file,
            format!("SOAK_DIR=p{p}\nDEBUG=1\nexport X_{p}=\"v\"\n"),
        )
        .unwrap();
        dirs.push(deep);
    }
    (home, dirs)
}

fn main() {
    let cfg = parse_args();
    // 200 clients, their proxy connections and both mock servers live in this process.
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    );
    let qwen = PathBuf::from(env!("CARGO_BIN_EXE_qwen"));
    let qwend = qwen.with_file_name("qwend");
    assert!(
        qwend.is_file(),
        "{} is missing: build qwend with the same profile first (bench/soak does)",
        qwend.display()
    );
    let root = tempfile::Builder::new()
        .prefix("qwend-soak")
        .tempdir()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let model = openai_mock::OpenAiMock::start();
    let oauth = rt.block_on(oauth_mock::MockServer::start());
    // Every forced refresh rotates both tokens, so each one saves both credential files.
    oauth.set_default(
        oauth_mock::TOKEN_PATH,
        oauth_mock::Reply::json(
            200,
            serde_json::json!({
                "access_token": "at-soak-refreshed", "refresh_token": "rt-soak-rotated",
                "token_type": "Bearer", "expires_in": 86400,
                "resource_url": format!("http://127.0.0.1:{}", model.port),
            }),
        ),
    );
    let (home, dirs) = write_setup(root.path(), model.port);
    let curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !curl {
        println!("no curl: `qwen exec` runs a tool that only checks its key");
    }
    let world = Arc::new(World {
        socket: root.path().join("run/qwend.sock"),
        state: root.path().join("state"),
        home,
        qwen,
        qwend,
        model_base: model.base_url(),
        oauth_base: oauth.base_url(),
        curl,
        dirs,
    });
    println!(
        "soak: {} clients for {:.1} min, pause {:?} between calls, seed {} (--seed to repeat)",
        cfg.clients,
        cfg.duration.as_secs_f64() / 60.0,
        cfg.pause,
        cfg.seed
    );
    let ok = rt.block_on(soak(&cfg, world.clone(), &oauth));
    // The daemon goes with the run, whatever happened.
    let _ = std::process::Command::new(&world.qwen)
        .env_clear()
        .env("HOME", &world.home)
        .env("QWEND_SOCKET", &world.socket)
        .args(["daemon", "stop"])
        .stdout(std::process::Stdio::null())
        .status();
    if !ok {
        std::process::exit(1);
    }
}

async fn soak(cfg: &Config, world: Arc<World>, oauth: &oauth_mock::MockServer) -> bool {
    // The first client starts the daemon, as `qwen` does for a user.
    let out = world
        .qwen_cmd(&["daemon", "status", "--json"], &world.home)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = status["pid"].as_u64().unwrap() as u32;
    println!("daemon pid {pid}, socket {}", world.socket.display());

    let stats = Arc::new(Stats::default());
    let gate = Arc::new(RwLock::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let mut seeder = Rng(cfg.seed);
    for i in 0..cfg.clients {
        let ch =
            match tokio::time::timeout(DEADLINE, qwend_shared::transport::connect(&world.socket))
                .await
            {
                Ok(Ok(ch)) => ch,
                other => panic!("client {i} cannot connect: {other:?}"),
            };
        if i % 4 == 0 {
            tasks.spawn(watcher(ch.clone(), stop.clone(), stats.clone()));
        }
        let mut client = Client {
            cwd: world.dirs[i % world.dirs.len()].clone(),
            world: world.clone(),
            ch,
            // No idle connections kept to the proxy: the daemon's descriptors then depend
            // on the calls in flight, not on which clients happened to use the proxy.
            http: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            rng: Rng(seeder.next()),
            token: String::new(),
            daemon_pid: pid,
        };
        let (stats, gate, stop, pause) = (stats.clone(), gate.clone(), stop.clone(), cfg.pause);
        tasks.spawn(async move {
            // Spread the start so the clients do not march in step.
            tokio::time::sleep(Duration::from_millis(client.rng.below(1000))).await;
            while !stop.load(Ordering::Relaxed) {
                let op = client.rng.pick();
                {
                    let _running = gate.read().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let t = Instant::now();
                    let r = bounded(&format!("{op:?}"), client.run(op)).await;
                    stats.record_timed(op, r, t.elapsed());
                }
                let jitter = client.rng.below(pause.as_millis() as u64 + 1);
                tokio::time::sleep(pause / 2 + Duration::from_millis(jitter)).await;
            }
        });
    }

    let started = Instant::now();
    let first_at = Duration::from_secs(60).min(cfg.duration / 5);
    let mut first: Option<Sample> = None;
    let mut minute = 1u64;
    let quiesced_sample = |label: String| {
        let (gate, world) = (gate.clone(), world.clone());
        async move {
            let guard = gate.write().await;
            // Proxy sessions closed by their callers are revoked asynchronously: wait (an
            // event, bounded) until none is live, so both samples see the same state.
            if let Ok(ch) = qwend_shared::transport::connect(&world.socket).await {
                let _ = tokio::time::timeout(
                    DEADLINE,
                    ProxyClient::new(ch).get_proxy_status(ProxyStatusRequest {
                        wait_until_live_at_most: Some(0),
                        wait_ms: 10_000,
                    }),
                )
                .await;
            }
            // The runtime's blocking-pool threads (file writes, the credential lock) exit
            // after 10 s idle: let them, so the thread count is the daemon's standing one
            // and not how many happened to be busy just before the pause.
            tokio::time::sleep(BLOCKING_KEEP_ALIVE).await;
            let s = sample(pid);
            drop(guard);
            println!(
                "{label}: fds {}, threads {}, RSS {:.1} MB",
                s.fds,
                s.threads,
                s.rss_kb as f64 / 1024.0
            );
            s
        }
    };
    let last_report = std::cell::Cell::new((0u64, Duration::ZERO));
    let report = |stats: &Stats, at: Duration| {
        let (ok, failed) = stats.totals();
        let (before, then) = last_report.replace((ok, at));
        println!(
            "t={:>5.1}s: {ok} calls ok, {failed} failed ({:.0} calls/s since the last line)",
            at.as_secs_f64(),
            (ok - before) as f64 / (at - then).as_secs_f64()
        );
    };
    loop {
        let next_minute = Duration::from_secs(60 * minute);
        let wake = if first.is_none() {
            first_at
        } else {
            next_minute.min(cfg.duration)
        };
        tokio::time::sleep(wake.saturating_sub(started.elapsed())).await;
        let at = started.elapsed();
        report(&stats, at);
        if first.is_none() {
            first = Some(quiesced_sample(format!("sample 1 at {:.0} s", at.as_secs_f64())).await);
            minute = first_at.as_secs() / 60 + 1;
            continue;
        }
        if at >= cfg.duration {
            break;
        }
        let s = sample(pid);
        println!(
            "  (under load: fds {}, threads {}, RSS {:.1} MB)",
            s.fds,
            s.threads,
            s.rss_kb as f64 / 1024.0
        );
        minute += 1;
    }
    let last = quiesced_sample(format!(
        "sample 2 at {:.0} s",
        started.elapsed().as_secs_f64()
    ))
    .await;
    stop.store(true, Ordering::Relaxed);
    let drain = tokio::time::timeout(DEADLINE * 2, async {
        while let Some(r) = tasks.join_next().await {
            r.expect("a client task panicked");
        }
    })
    .await;
    let elapsed = started.elapsed();

    println!(
        "\n| {:<12} | {:>9} | {:>6} | {:>8} | {:>8} |",
        "operation", "ok", "failed", "p50 ms", "p99 ms"
    );
    println!(
        "| {:-<12} | {:->9} | {:->6} | {:->8} | {:->8} |",
        "", "", "", "", ""
    );
    for (i, (op, _)) in MIX.iter().enumerate() {
        let mut t = std::mem::take(&mut *stats.times[i].lock().unwrap());
        t.sort_unstable();
        let pct = |p: usize| t.get((t.len() * p / 100).min(t.len().saturating_sub(1)));
        let ms =
            |v: Option<&u32>| v.map_or("-".to_string(), |us| format!("{:.1}", *us as f64 / 1000.0));
        println!(
            "| {:<12} | {:>9} | {:>6} | {:>8} | {:>8} |",
            format!("{op:?}"),
            stats.ok[i].load(Ordering::Relaxed),
            stats.failed[i].load(Ordering::Relaxed),
            ms(pct(50)),
            ms(pct(99)),
        );
    }
    let (ok, failed) = stats.totals();
    println!(
        "total: {ok} calls ok, {failed} failed in {:.1} s ({:.0} calls/s); {} refreshes upstream",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        oauth.count(oauth_mock::TOKEN_PATH)
    );
    let first = first.expect("a first sample");
    let rss_limit =
        first.rss_kb + (first.rss_kb * RSS_TOLERANCE_PCT / 100).max(RSS_TOLERANCE_MIN_KB);
    println!(
        "\n| daemon  | {:>10} | {:>10} | tolerance |",
        "first", "last"
    );
    println!("| {:-<7} | {:->10} | {:->10} | {:-<9} |", "", "", "", "");
    println!(
        "| fds     | {:>10} | {:>10} | +{FD_TOLERANCE:<8} |",
        first.fds, last.fds
    );
    println!(
        "| threads | {:>10} | {:>10} | +{THREAD_TOLERANCE:<8} |",
        first.threads, last.threads
    );
    println!(
        "| RSS MB  | {:>10.1} | {:>10.1} | <= {:<6.1} |",
        first.rss_kb as f64 / 1024.0,
        last.rss_kb as f64 / 1024.0,
        rss_limit as f64 / 1024.0
    );

    let mut verdict = Vec::new();
    if failed > 0 {
        verdict.push(format!("{failed} failed calls"));
        for f in stats.failures.lock().unwrap().iter() {
            println!("  failed: {f}");
        }
    }
    if drain.is_err() {
        verdict.push("clients still busy past the deadline after the stop".into());
    }
    if last.fds > first.fds + FD_TOLERANCE {
        verdict.push(format!("descriptors grew {} -> {}", first.fds, last.fds));
    }
    if last.threads > first.threads + THREAD_TOLERANCE {
        verdict.push(format!(
            "threads grew {} -> {}",
            first.threads, last.threads
        ));
    }
    if last.rss_kb > rss_limit {
        verdict.push(format!("RSS grew {} -> {} kB", first.rss_kb, last.rss_kb));
    }
    if verdict.is_empty() {
        println!("\nsoak PASSED: zero failed calls, no growth beyond the tolerances");
        true
    } else {
        println!("\nsoak FAILED: {}", verdict.join("; "));
        false
    }
}
