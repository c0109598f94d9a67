//! The loopback OpenAI-compatible proxy: a tool run by `qwen exec` gets a per-run secret
//! and this address instead of the real credentials. Each request is checked against the
//! live secrets, takes a quota permit for the account, gets the current bearer token of the
//! method in effect (refreshed once on a 401, invisibly to the tool) and is streamed to the
//! upstream and back without buffering.
//!
//! The listener binds 127.0.0.1 only and starts on the first session, so a daemon nobody
//! asks for a proxy never opens a TCP port. Other local users can reach a loopback port
//! (unlike the 0700 socket), which is why every request must carry a live secret.
//!
//! Hand-written on hyper rather than a framework router: the whole surface is one handler
//! ("everything under /v1 is forwarded"), and the per-connection limits (header timeout,
//! connection cap) are hyper connection settings that axum's `serve` does not expose.
mod forward;
mod secrets;
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, AuthState, AuthType, ClientCtx};
use crate::clock::SharedClock;
use crate::events::Hub;
use crate::quota::Quota;

pub use secrets::{Guard, PREFIX as SECRET_PREFIX, SecretError};

pub const ENV_PORT: &str = "QWEND_PROXY_PORT";
pub const ENV_PERMIT_WAIT_MS: &str = "QWEND_PROXY_PERMIT_WAIT_MS";
pub const ENV_MAX_BODY: &str = "QWEND_PROXY_MAX_BODY_BYTES";
pub const ENV_MAX_CONCURRENT: &str = "QWEND_PROXY_MAX_CONCURRENT";
pub const ENV_UPSTREAM_IDLE_MS: &str = "QWEND_PROXY_UPSTREAM_IDLE_MS";

/// The proxy's limits. Every one a test must move is a variable; the defaults are the
/// real values.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `QWEND_PROXY_PORT`; 0 (the default) lets the kernel pick a free port.
    pub port: u16,
    /// `QWEND_PROXY_PERMIT_WAIT_MS`: how long a request is held waiting for a quota permit
    /// before it is answered 429 with `Retry-After` (default 60 s: one minute window).
    pub permit_wait: Duration,
    /// `QWEND_PROXY_MAX_BODY_BYTES`: largest request body (default 32 MiB; images in
    /// base64 make chat requests large).
    pub max_body: usize,
    /// `QWEND_PROXY_MAX_CONCURRENT`: requests in flight per secret (default 64).
    pub max_inflight: usize,
    /// `QWEND_PROXY_UPSTREAM_IDLE_MS`: longest silence from the upstream, before the first
    /// byte or between two (default 10 min: a model may think long before answering).
    pub upstream_idle: Duration,
    /// Sessions open at once.
    pub max_sessions: usize,
    /// Connections from tools open at once.
    pub max_connections: usize,
    /// A connection must send a request's headers within this (also ends idle keep-alive
    /// connections).
    pub header_timeout: Duration,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            port: 0,
            permit_wait: Duration::from_secs(60),
            max_body: 32 * 1024 * 1024,
            max_inflight: 64,
            upstream_idle: Duration::from_secs(600),
            max_sessions: 4096,
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{var}={value:?}: {why}")]
pub struct ConfigError {
    var: &'static str,
    value: String,
    why: &'static str,
}

impl ProxyConfig {
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let num = |name: &'static str, why: &'static str| -> Result<Option<u64>, ConfigError> {
            match var(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| ConfigError {
                    var: name,
                    value: v,
                    why,
                }),
            }
        };
        if let Some(p) = num(ENV_PORT, "expected a port number (0 = any free port)")? {
            c.port = u16::try_from(p).map_err(|_| ConfigError {
                var: ENV_PORT,
                value: p.to_string(),
                why: "expected a port number (0 = any free port)",
            })?;
        }
        if let Some(ms) = num(ENV_PERMIT_WAIT_MS, "expected milliseconds")? {
            c.permit_wait = Duration::from_millis(ms);
        }
        if let Some(b) = num(ENV_MAX_BODY, "expected a number of bytes")? {
            c.max_body = usize::try_from(b).unwrap_or(usize::MAX);
        }
        match num(ENV_MAX_CONCURRENT, "expected a positive number of requests")? {
            Some(0) => {
                return Err(ConfigError {
                    var: ENV_MAX_CONCURRENT,
                    value: "0".into(),
                    why: "expected a positive number of requests",
                });
            }
            // Beyond a million the bound means nothing (and the semaphore has a ceiling).
            Some(n) => c.max_inflight = usize::try_from(n.min(1 << 20)).unwrap_or(1 << 20),
            None => {}
        }
        match num(
            ENV_UPSTREAM_IDLE_MS,
            "expected a positive number of milliseconds",
        )? {
            Some(0) => {
                return Err(ConfigError {
                    var: ENV_UPSTREAM_IDLE_MS,
                    value: "0".into(),
                    why: "expected a positive number of milliseconds",
                });
            }
            Some(ms) => c.upstream_idle = Duration::from_millis(ms),
            None => {}
        }
        Ok(c)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy settings: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A session as its opener sees it: hand `base_url` and `secret` to the tool, keep
/// `guard` for as long as the tool runs.
pub struct Opened {
    pub base_url: String,
    pub secret: secrecy::SecretString,
    pub auth_type: AuthType,
    pub model: String,
    pub guard: Guard,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("base_url", &self.base_url)
            .field("auth_type", &self.auth_type)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProxyStatus {
    pub address: Option<SocketAddr>,
    pub live_secrets: usize,
    pub requests: u64,
}

pub struct Proxy {
    config: ProxyConfig,
    /// A bad setting: reported to every session opener, the listener never starts.
    invalid: Option<ConfigError>,
    auth: Arc<AuthState>,
    quota: Arc<Quota>,
    clock: SharedClock,
    hub: Arc<Hub>,
    secrets: Arc<secrets::Secrets>,
    addr: tokio::sync::OnceCell<SocketAddr>,
    /// Built on first use: loading the root certificates costs more than most daemon
    /// starts that never proxy anything.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
    stop: CancellationToken,
    requests: AtomicU64,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr.get())
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy that starts listening on its first session; a bad setting is reported to
    /// that session's caller instead of stopping the daemon.
    pub fn new(
        config: Result<ProxyConfig, ConfigError>,
        auth: Arc<AuthState>,
        quota: Arc<Quota>,
        clock: SharedClock,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> Self {
        let (config, invalid) = match config {
            Ok(c) => (c, None),
            Err(e) => (ProxyConfig::default(), Some(e)),
        };
        Self {
            config,
            invalid,
            auth,
            quota,
            clock,
            hub,
            secrets: Arc::default(),
            addr: tokio::sync::OnceCell::new(),
            http: std::sync::OnceLock::new(),
            stop,
            requests: AtomicU64::new(0),
        }
    }

    /// Configured from the daemon's environment.
    pub fn from_env(
        auth: Arc<AuthState>,
        quota: Arc<Quota>,
        clock: SharedClock,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> Self {
        let config = ProxyConfig::from_lookup(|k| std::env::var(k).ok());
        Self::new(config, auth, quota, clock, hub, stop)
    }

    fn checked(&self) -> Result<&ProxyConfig, ConfigError> {
        match &self.invalid {
            Some(e) => Err(e.clone()),
            None => Ok(&self.config),
        }
    }

    /// Opens a session for `ctx`: checks that its method has usable credentials, starts
    /// the listener if needed and mints a secret that lives as long as the guard.
    pub async fn open_session(self: &Arc<Self>, ctx: ClientCtx) -> Result<Opened, ProxyError> {
        let config = self.checked()?;
        let ready = self.auth.credentials(ctx.clone(), None, None).await?;
        let addr = self.ensure_started().await?;
        let (secret, guard) = self
            .secrets
            .open(ctx, config.max_sessions, config.max_inflight)?;
        tracing::info!(
            method = ready.auth_type.as_str(),
            live = self.secrets.count(),
            "proxy session opened"
        );
        Ok(Opened {
            base_url: format!("http://{addr}/v1"),
            secret: secret.into(),
            auth_type: ready.auth_type,
            model: ready.model,
            guard,
        })
    }

    /// The listening address, binding 127.0.0.1 on the first call.
    pub async fn ensure_started(self: &Arc<Self>) -> Result<SocketAddr, ProxyError> {
        let config = self.checked()?;
        self.addr
            .get_or_try_init(|| async {
                let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
                let listener = tokio::net::TcpListener::bind(bind)
                    .await
                    .map_err(|source| ProxyError::Listen {
                        port: config.port,
                        source,
                    })?;
                let addr = listener.local_addr().map_err(|source| ProxyError::Listen {
                    port: config.port,
                    source,
                })?;
                tracing::info!(%addr, "proxy listening");
                tokio::spawn(server::run(listener, self.clone(), self.stop.clone()));
                Ok(addr)
            })
            .await
            .copied()
    }

    pub fn status(&self) -> ProxyStatus {
        ProxyStatus {
            address: self.addr.get().copied(),
            live_secrets: self.secrets.count(),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    /// Waits (up to `limit`) until at most `n` secrets are live.
    pub async fn wait_live_at_most(&self, n: usize, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.secrets.live_at_most(n)).await;
    }

    /// Ends every session stream (the daemon is stopping).
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.stop.clone().cancelled_owned()
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        let c = &self.config;
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .connect_timeout(c.connect_timeout)
                    .read_timeout(c.upstream_idle)
                    // A redirect would resend the bearer token somewhere else.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Tells `Events.Watch` subscribers about the account's new usage.
    fn announce_quota(&self, account: &str) {
        use qwend_shared::api::{self, event::Kind};
        let s = self.quota.snapshot(account, self.clock.now_ms());
        self.hub.publish(Kind::QuotaChanged(api::QuotaChanged {
            account: account.to_string(),
            minute_used: s.minute.used,
            day_used: s.day.used,
            cool_down_ms: s.cool_down.as_ref().map_or(0, |c| c.remaining_ms),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<ProxyConfig, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn settings_have_real_defaults_and_clear_errors() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.permit_wait, Duration::from_secs(60));
        let c = cfg(&[(ENV_PORT, "8123"), (ENV_PERMIT_WAIT_MS, "0")]).unwrap();
        assert_eq!((c.port, c.permit_wait), (8123, Duration::ZERO));
        for (k, v) in [
            (ENV_PORT, "70000"),
            (ENV_PORT, "x"),
            (ENV_MAX_CONCURRENT, "0"),
            (ENV_UPSTREAM_IDLE_MS, "-1"),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err().to_string();
            assert!(e.starts_with(k) && e.contains(v), "{e}");
        }
    }
}
