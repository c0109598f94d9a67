//! Starting and stopping the daemon: detaching, the one-daemon-per-socket lock, readiness,
//! signals and a clean exit that removes the socket.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use qwend_shared::paths;
use qwend_shared::transport::{BoundSocket, DaemonLock, TransportError};
use tokio::sync::Notify;

use crate::cli::Cli;
use crate::server;

/// The line a detached child prints on stdout once it accepts connections.
const READY: &str = "ready";
/// How long in-flight calls may run on after a stop request.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// Prefix of the line it prints instead when it cannot start.
const FAILED: &str = "error: ";

/// How long the runtime's shutdown waits for blocking jobs still running (a read stuck in
/// a filesystem that does not answer): past it the process exits without them.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

pub fn main(cli: Cli) -> ExitCode {
    if !cli.foreground && !cli.detached_child {
        return detach(&cli);
    }
    // Process hygiene first, in this order (see docs/hardening.md). 1: claim the socket a
    // service manager passed, then close every other inherited descriptor, before
    // anything in this process opens one (and could get one of those numbers).
    let socket = absolute(cli.socket_path());
    let inherited = crate::activation::take_inherited(socket.clone());
    let keep: Vec<std::os::fd::RawFd> = match &inherited {
        Ok(Some(i)) => vec![std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
            i,
        ))],
        _ => Vec::new(),
    };
    let closed = crate::hygiene::close_inherited_fds(&keep);
    // 2: no core files and no same-user ptrace, before any secret is in memory.
    let no_cores = crate::hygiene::deny_core_dumps();
    // 3: the detached daemon leaves the caller's session and terminal. (The parent did not
    // make it a process group leader, which setsid refuses.)
    let session = if cli.detached_child {
        crate::hygiene::new_session()
    } else {
        Ok(())
    };
    if cli.foreground {
        crate::logging::to_stderr();
    } else {
        crate::logging::to_file(paths::state_dir().as_deref());
    }
    if closed > 0 {
        tracing::debug!("closed {closed} inherited file descriptors");
    }
    if let Err(e) = session {
        tracing::warn!("cannot start a new session: {e}");
    }
    let result = match no_cores {
        Err(e) => Err(anyhow::anyhow!(
            "cannot turn off core dumps ({e}); refusing to hold credentials"
        )),
        Ok(()) => run(&cli, socket, inherited),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            if cli.detached_child {
                report_to_parent(&format!("{FAILED}{e:#}"));
            } else {
                eprintln!("qwend: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Start a copy of ourselves in its own session and return once it is serving (exit 0) or
/// has said why it cannot (exit 1). The `qwen` client relies on this: when `qwend` returns
/// 0, the socket answers. No polling, no sleeps.
fn detach(cli: &Cli) -> ExitCode {
    // Absolute: the daemon works from `/`.
    let socket = absolute(cli.socket_path());
    match spawn_detached(&socket) {
        Ok(pid) => {
            eprintln!("qwend: listening on {} (pid {pid})", socket.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qwend: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn spawn_detached(socket: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find the qwend executable")?;
    let mut child = Command::new(exe)
        .arg("--detached-child")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // No process group of its own: it calls setsid (new session, new group, no
        // terminal) first thing, which a group leader cannot.
        .spawn()
        .context("cannot start the daemon process")?;
    let pid = child.id();
    let out = child.stdout.take().context("no pipe to the daemon")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).ok();
    let line = line.trim_end();
    if line == READY {
        return Ok(pid);
    }
    let _ = child.wait();
    match line.strip_prefix(FAILED) {
        Some(msg) => anyhow::bail!("{msg}"),
        None => anyhow::bail!(
            "the daemon exited before it was ready; see {}",
            paths::state_dir()
                .map(|d| d.join(crate::logging::LOG_FILE).display().to_string())
                .unwrap_or_else(|| "its log".into())
        ),
    }
}

fn report_to_parent(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// After signalling readiness the detached child must not keep the parent's pipe open
/// (the parent would never see EOF, and a later write could raise SIGPIPE).
fn silence_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

/// `path` made absolute against the current directory (lexically; nothing is resolved),
/// as it is when the daemon has moved to `/`.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

fn run(
    cli: &Cli,
    socket: PathBuf,
    inherited: Result<Option<crate::activation::Inherited>, crate::activation::ActivationError>,
) -> anyhow::Result<()> {
    let inherited = inherited?;
    // Every path from the environment is made absolute before we leave the directory
    // that relative ones were meant against.
    let config = absolute_config(crate::config::Config::from_env()?);
    // Like every setting, a bad value stops the start with its name rather than being
    // replaced by a default nobody asked for.
    let limits = server::ConnectionLimits::from_env().map_err(anyhow::Error::msg)?;
    crate::hygiene::leave_working_dir().context("cannot change directory to /")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(crate::blocking::MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // On a worker, not on this thread: `block_on` would poll the server (and so every new
    // connection) here, and a connection would then wait for this thread to wake up and
    // hand it to a worker, a second wake-up on the path of every fresh `qwen` command.
    let cli = cli.clone();
    let result = runtime.block_on(async move {
        tokio::spawn(async move { serve(&cli, socket, inherited, config, limits).await })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    });
    // Dropping the runtime would wait for every blocking job, forever for one stuck in a
    // read; the process must end all the same.
    runtime.shutdown_timeout(BLOCKING_GRACE);
    // Released last: `qwen daemon stop` returns when it is, so by then we are exiting.
    drop(result?);
    tracing::info!("qwend stopped");
    Ok(())
}

fn absolute_config(mut c: crate::config::Config) -> crate::config::Config {
    c.qwen_home = absolute(c.qwen_home);
    c.state_dir = c.state_dir.map(absolute);
    c
}

/// Serves until a stop; returns the daemon lock, still held.
async fn serve(
    cli: &Cli,
    socket: PathBuf,
    inherited: Option<crate::activation::Inherited>,
    config: crate::config::Config,
    limits: server::ConnectionLimits,
) -> anyhow::Result<DaemonLock> {
    let dir = socket
        .parent()
        .ok_or_else(|| TransportError::NoParent(socket.clone()))?;
    qwend_shared::transport::ensure_private_dir(dir)?;
    let lock = DaemonLock::acquire(&paths::lock_path_for(&socket))?;
    // Handlers before readiness: a SIGTERM sent the moment we report ready must still
    // take the clean path instead of killing the process.
    let signals = Signals::install().context("cannot install signal handlers")?;
    let bound = match inherited {
        Some(inherited) => {
            let b = inherited.into_bound()?;
            tracing::info!(socket = %b.path.display(), "using the socket passed by the service manager");
            b
        }
        None => BoundSocket::bind(&socket)?,
    };
    let socket = bound.path.clone();
    let (listener, guard) = bound.into_parts();
    let connections = crate::idle::Connections::new();

    let shutdown = Arc::new(Notify::new());
    let services = Services::open_with(config).await?;
    let state = server::DaemonState {
        started: Instant::now(),
        socket: socket.clone(),
        shutdown: shutdown.clone(),
        resolver: services.resolver,
        auth: services.auth,
        quota: services.quota,
        clock: services.clock,
        hub: services.hub.clone(),
        login: services.login.clone(),
    };
    let (auth, login) = (state.auth.clone(), services.login);
    let hub = services.hub;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), version = qwend_shared::VERSION, "qwend serving");
    if cli.detached_child {
        report_to_parent(READY);
        silence_stdout();
    }

    let idle = (cli.idle_timeout > 0).then(|| {
        let conns = connections.clone();
        let timeout = std::time::Duration::from_secs(cli.idle_timeout);
        async move { conns.idle_for(timeout).await }
    });
    let stopping = Arc::new(Notify::new());
    let stop = {
        let stopping = stopping.clone();
        async move {
            let reason = signals.wait(&shutdown, idle).await;
            // Plugins hear it first; their Watch streams then end by themselves.
            hub.publish(qwend_shared::api::event::Kind::ShuttingDown(
                qwend_shared::api::ShuttingDown {},
            ));
            login.shutdown();
            auth.shutdown();
            // Unlink first: from now on clients see "not running" (and may start a
            // successor, which waits for our lock) while we finish the calls in flight.
            drop(guard);
            tracing::info!("shutting down ({reason}); finishing in-flight calls");
            stopping.notify_one();
        }
    };
    // In-flight calls get a grace period; a client that keeps a connection or a stream
    // open must not keep the daemon alive forever.
    let grace = async {
        stopping.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        res = server::serve(state, listener, connections, limits, stop) => res?,
        _ = grace => tracing::warn!(
            "in-flight calls still running after {}s; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    Ok(lock)
}

/// The daemon's long-lived state, built from the environment.
pub struct Services {
    pub hub: Arc<crate::events::Hub>,
    pub resolver: Arc<crate::dotenv::Resolver>,
    pub auth: Arc<crate::auth::AuthState>,
    pub quota: Arc<crate::quota::Quota>,
    pub clock: crate::clock::SharedClock,
    pub login: Arc<crate::login::LoginCoordinator>,
}

impl Services {
    pub async fn open() -> anyhow::Result<Self> {
        Self::open_with(crate::config::Config::from_env()?).await
    }

    pub async fn open_with(config: crate::config::Config) -> anyhow::Result<Self> {
        let clock: crate::clock::SharedClock = Arc::new(crate::clock::SystemClock);
        let resolver = Arc::new(crate::dotenv::Resolver::default());
        let hub = Arc::new(crate::events::Hub::new(clock.clone()));
        let auth = Arc::new(
            crate::auth::AuthState::new(
                config.qwen_home.clone(),
                config.state_dir.clone(),
                config.store,
                clock.clone(),
                resolver.clone(),
            )
            .with_events(hub.clone())
            .with_oauth(crate::auth::OAuthSettings {
                config: crate::oauth::OAuthConfig::with_base_url(config.oauth_base_url.clone()),
                tokens: crate::tokens::TokenManagerConfig::default(),
                sync_qwen_file: config.sync_qwen_file,
            }),
        );
        let login = Arc::new(crate::login::LoginCoordinator::new(
            auth.clone(),
            clock.clone(),
            crate::oauth::DeviceFlowConfig {
                time_unit: config.oauth_time_unit,
                ..Default::default()
            },
        ));
        // Temp files that a write killed in an earlier run left beside Qwen Code's file
        // hold refresh tokens (our own store sweeps its directory when it opens). On its
        // own task: it waits for `oauth_creds.lock`, which Qwen Code may be holding.
        {
            let qwen = crate::store::QwenCredsFile::new(config.qwen_home.clone(), clock.clone());
            tokio::spawn(async move {
                let swept = crate::blocking::run(
                    "sweeping temp files",
                    crate::blocking::STORE_DEADLINE,
                    move || qwen.sweep_abandoned_temp_files(),
                )
                .await;
                match swept {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("cannot remove abandoned temp files: {e}"),
                    Err(e) => tracing::warn!("{e}"),
                }
            });
        }
        // Open the store and start the proactive refresh now, not on the first request.
        {
            let auth = auth.clone();
            tokio::spawn(async move {
                if let Err(e) = auth.tokens().await {
                    tracing::warn!("Qwen OAuth credentials unavailable: {e}");
                }
            });
        }
        let quota = {
            let (cfg, clock, dir) = (
                config.quota.clone(),
                clock.clone(),
                config.state_dir.clone(),
            );
            tokio::task::spawn_blocking(move || open_quota(dir, cfg, clock)).await??
        };
        Ok(Self {
            hub,
            resolver,
            auth,
            quota: Arc::new(quota),
            clock,
            login,
        })
    }
}

/// The durable ledger in `<state>/quota`; without a writable state dir the counters live
/// in memory (and say so in the log), so the daemon still serves everything else.
fn open_quota(
    dir: Option<PathBuf>,
    cfg: crate::quota::QuotaConfig,
    clock: crate::clock::SharedClock,
) -> anyhow::Result<crate::quota::Quota> {
    if let Some(dir) = dir {
        match crate::quota::Quota::open(&dir.join("quota"), cfg.clone(), clock.clone()) {
            Ok((q, warnings)) => {
                for w in warnings {
                    tracing::warn!("quota ledger: {w}");
                }
                return Ok(q);
            }
            Err(e) => tracing::warn!("quota ledger unavailable ({e}); counting in memory only"),
        }
    }
    Ok(crate::quota::Quota::in_memory(cfg, clock)?)
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(
        mut self,
        shutdown: &Notify,
        idle: Option<impl std::future::Future<Output = ()>>,
    ) -> &'static str {
        let idle = async {
            match idle {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = shutdown.notified() => "Shutdown requested",
            _ = idle => "idle timeout",
        }
    }
}
