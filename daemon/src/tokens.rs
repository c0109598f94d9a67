//! The token lifecycle: hands out an access token valid for at least
//! [`EXPIRY_BUFFER_MS`](crate::credentials::EXPIRY_BUFFER_MS), refreshes it in the
//! background before it runs out, and makes every caller that needs a refresh share one
//! upstream request.
//!
//! Outcomes follow Qwen Code's own token manager (`shared/conformance/oauth/`): HTTP 400/401
//! on refresh ends the login and removes the credentials; any other failure keeps them, and
//! a token that is still valid keeps being served while refreshes are retried.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::account::AccountTracker;
use crate::clock::{SharedClock, millis};
use crate::credentials::Credentials;
use crate::oauth::{OAuthClient, RefreshError, TokenResponse};

#[derive(Debug, Clone)]
pub struct TokenManagerConfig {
    /// Refresh once this share of a token's lifetime has passed...
    pub refresh_fraction: f64,
    /// ...or this long before it expires, whichever comes first.
    pub refresh_lead: Duration,
    /// First retry delay after a failed refresh; it doubles per failure, with jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// The scheduler re-reads the clock at least this often: timers run on monotonic time,
    /// which stands still while a laptop sleeps, but expiry is wall-clock time.
    pub max_sleep: Duration,
}

impl Default for TokenManagerConfig {
    fn default() -> Self {
        Self {
            refresh_fraction: 0.8,
            refresh_lead: Duration::from_secs(5 * 60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(120),
            max_sleep: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not logged in to Qwen OAuth")]
    NotLoggedIn,
    #[error("the access token has expired and there is no refresh token; log in again")]
    NoRefreshToken,
    #[error("the Qwen OAuth login has ended; log in again ({reason})")]
    ReloginNeeded { reason: String },
    #[error("token refresh failed, credentials kept; try again later ({reason})")]
    Transient { reason: String },
    #[error("could not store the credentials: {reason}")]
    Persistence { reason: String },
}

/// A failure of the credential store, as text (the store maps its own errors into it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PersistenceError(pub String);

impl From<crate::blocking::BlockingError> for PersistenceError {
    fn from(e: crate::blocking::BlockingError) -> Self {
        Self(e.to_string())
    }
}

/// Where credentials live between runs (the store, written elsewhere).
#[async_trait]
pub trait TokenPersistence: Send + Sync {
    /// Stores refreshed credentials.
    async fn save(&self, creds: &Credentials) -> Result<(), PersistenceError>;
    /// Stores the credentials of a new login (Qwen Code lays its file out differently for
    /// the two writes).
    async fn save_login(&self, creds: &Credentials) -> Result<(), PersistenceError> {
        self.save(creds).await
    }
    /// The login has ended (`reason` says why) or the user logged out: forget the
    /// credentials everywhere they are kept.
    async fn clear(&self, reason: &str) -> Result<(), PersistenceError>;

    /// Takes the cross-process lock (`oauth_creds.lock`) and reads what the store holds.
    /// Every `save` and `clear` from the manager runs while a guard from here is alive, so
    /// they must not take that lock themselves. Before a refresh request it is taken as
    /// Qwen Code takes it: across the request, and if another process has refreshed
    /// meanwhile its token is used and no request is made; otherwise the stored refresh
    /// token (the live one, when the server rotates them) is. The default takes no lock
    /// and reads nothing.
    async fn lock(&self) -> Result<StoreGuard, PersistenceError> {
        Ok(StoreGuard::default())
    }
}

/// What [`TokenPersistence::lock`] returns.
#[derive(Default)]
pub struct StoreGuard {
    /// The stored credentials, read after taking the lock.
    pub current: Option<Credentials>,
    /// Dropped, releasing the lock, once the store write it covers has run.
    pub lock: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for StoreGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreGuard")
            .field("current", &self.current)
            .field("locked", &self.lock.is_some())
            .finish()
    }
}

/// The refresh grant; [`OAuthClient`] is the real one.
#[async_trait]
pub trait TokenRefresher: Send + Sync {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenResponse, RefreshError>;
}

#[async_trait]
impl TokenRefresher for OAuthClient {
    async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenResponse, RefreshError> {
        OAuthClient::refresh(self, refresh_token).await
    }
}

/// What a Watch RPC forwards: every change of login, token or refresh health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStatus {
    LoggedOut,
    Active {
        /// Milliseconds since the Unix epoch.
        expiry_date: i64,
        /// When the background refresh (or its retry) is due; `None` without a refresh token.
        next_refresh_at: Option<i64>,
        /// Counts the tokens this manager has held; each refresh or login adds one.
        generation: u64,
        /// Set while refreshes fail and the current token is kept.
        retrying: Option<RetryInfo>,
        /// Why the current token could not be written to the store: it is served from
        /// memory, and a restart falls back to what the store still holds.
        unsaved: Option<String>,
    },
    ReloginNeeded {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryInfo {
    pub failures: u32,
    pub last_error: String,
}

/// When a token issued at `issued_at_ms` and expiring at `expiry_ms` is refreshed: at
/// `refresh_fraction` of its lifetime or `refresh_lead` before expiry, whichever is
/// earlier, but never before half its lifetime, so a server handing out tokens shorter
/// than the lead does not make us refresh in a loop.
pub fn refresh_due_at(issued_at_ms: i64, expiry_ms: i64, config: &TokenManagerConfig) -> i64 {
    let lifetime = expiry_ms.saturating_sub(issued_at_ms).max(0);
    let at_fraction = issued_at_ms + (lifetime as f64 * config.refresh_fraction) as i64;
    let before_expiry = expiry_ms.saturating_sub(millis(config.refresh_lead));
    at_fraction
        .min(before_expiry)
        .max(issued_at_ms + lifetime / 2)
}

/// The wait after the `failures`-th consecutive failed refresh. `unit_random` in [0, 1]:
/// half the delay is fixed so retries never bunch at zero, half random so daemons that
/// failed together (an outage) do not come back together.
pub fn retry_delay(failures: u32, config: &TokenManagerConfig, unit_random: f64) -> Duration {
    let doubled = config
        .retry_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = doubled.min(config.retry_max);
    capped / 2 + capped.mul_f64(unit_random.clamp(0.0, 1.0) / 2.0)
}

fn jitter() -> f64 {
    // 53 random bits make a uniform f64 in [0, 1); without randomness, the midpoint.
    getrandom::u64().map_or(0.5, |r| (r >> 11) as f64 / (1u64 << 53) as f64)
}

type Outcome = Result<Credentials, TokenError>;

enum Fresh {
    /// From the refresh request; to be stored.
    Refreshed(Credentials),
    /// Another process refreshed first and stored it.
    Stored(Credentials),
}

enum Failure {
    LoginEnded(String),
    Transient(String),
}

/// The token manager. Clones share one state.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

struct Inner {
    refresher: Arc<dyn TokenRefresher>,
    persistence: Arc<dyn TokenPersistence>,
    clock: SharedClock,
    config: TokenManagerConfig,
    state: Mutex<State>,
    /// Held from "is this still the same login?" through the store write to the state
    /// change, by refreshes and by install/adopt/logout alike: a refresh that finishes
    /// after a new login or a logout can then never overwrite it. Always taken after the
    /// store's own lock, never before, so the two cannot deadlock.
    persist: tokio::sync::Mutex<()>,
    status: watch::Sender<TokenStatus>,
    wake: Notify,
    pokes: AtomicU64,
    /// The last poke the scheduler had seen when it last went to sleep.
    settled: watch::Sender<u64>,
    /// Told whose credentials are in use (see [`TokenManager::observing`]).
    accounts: std::sync::OnceLock<Arc<AccountTracker>>,
}

struct State {
    login: Login,
    /// Changes whenever the login itself does (install, adopt, logout, login ended); a
    /// refresh begun under another epoch is discarded.
    epoch: u64,
    generation: u64,
    /// The refresh in progress: everyone who needs a new token waits on this one.
    flight: Option<watch::Receiver<Option<Outcome>>>,
    last_attempt_at: Option<i64>,
}

enum Login {
    LoggedOut,
    Active(Active),
    Relogin(String),
}

struct Active {
    creds: Credentials,
    /// When we got this token; the proactive refresh is timed from here. For credentials
    /// read from the store the issue time is unknown, and loading time stands in for it.
    issued_at: i64,
    failures: u32,
    retry_at: Option<i64>,
    last_error: Option<String>,
    unsaved: Option<String>,
}

impl Active {
    fn new(creds: Credentials, issued_at: i64) -> Self {
        Self {
            creds,
            issued_at,
            failures: 0,
            retry_at: None,
            last_error: None,
            unsaved: None,
        }
    }

    fn has_refresh_token(&self) -> bool {
        !self.creds.refresh_token.expose_secret().is_empty()
    }
}

impl Login {
    fn error(&self) -> TokenError {
        match self {
            Login::Relogin(reason) => TokenError::ReloginNeeded {
                reason: reason.clone(),
            },
            _ => TokenError::NotLoggedIn,
        }
    }
}

impl State {
    fn next_refresh_at(&self, config: &TokenManagerConfig) -> Option<i64> {
        let Login::Active(a) = &self.login else {
            return None;
        };
        if !a.has_refresh_token() {
            return None;
        }
        let due = match a.retry_at {
            Some(retry_at) => retry_at,
            None => refresh_due_at(a.issued_at, a.creds.expiry_date, config),
        };
        // Whatever a server answers (say `expires_in: 0`), attempts stay at least
        // `retry_base` apart.
        Some(match self.last_attempt_at {
            Some(t) => due.max(t.saturating_add(millis(config.retry_base))),
            None => due,
        })
    }

    fn status(&self, config: &TokenManagerConfig) -> TokenStatus {
        match &self.login {
            Login::LoggedOut => TokenStatus::LoggedOut,
            Login::Relogin(reason) => TokenStatus::ReloginNeeded {
                reason: reason.clone(),
            },
            Login::Active(a) => TokenStatus::Active {
                expiry_date: a.creds.expiry_date,
                next_refresh_at: self.next_refresh_at(config),
                generation: self.generation,
                retrying: a.last_error.as_ref().map(|e| RetryInfo {
                    failures: a.failures,
                    last_error: e.clone(),
                }),
                unsaved: a.unsaved.clone(),
            },
        }
    }
}

impl TokenManager {
    /// `initial`: what the store holds at start-up, if anything.
    pub fn new(
        initial: Option<Credentials>,
        refresher: Arc<dyn TokenRefresher>,
        persistence: Arc<dyn TokenPersistence>,
        clock: SharedClock,
        config: TokenManagerConfig,
    ) -> Self {
        let now = clock.now_ms();
        let (login, generation) = match initial {
            Some(c) => (Login::Active(Active::new(c, now)), 1),
            None => (Login::LoggedOut, 0),
        };
        let state = State {
            login,
            epoch: 0,
            generation,
            flight: None,
            last_attempt_at: None,
        };
        let status = watch::channel(state.status(&config)).0;
        Self {
            inner: Arc::new(Inner {
                refresher,
                persistence,
                clock,
                config,
                state: Mutex::new(state),
                persist: tokio::sync::Mutex::new(()),
                status,
                wake: Notify::new(),
                pokes: AtomicU64::new(0),
                settled: watch::channel(0).0,
                accounts: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Tells `accounts` whose credentials are in use: now, and before any new ones (a
    /// login, an adopted file, a refresh) become usable, so no permit for them counts on
    /// the previous account. The one place the quota's account follows the login.
    pub fn observing(self, accounts: Arc<AccountTracker>) -> Self {
        if let Some(c) = self.peek() {
            accounts.observe(c.account.as_ref());
        }
        let _ = self.inner.accounts.set(accounts);
        self
    }

    /// Credentials whose access token is valid for at least
    /// [`EXPIRY_BUFFER_MS`](crate::credentials::EXPIRY_BUFFER_MS), refreshed first when
    /// needed. `force_refresh` (the API rejected the token) always gets a token newer than
    /// the current one, or an error. However many callers need a refresh at once, one
    /// request goes upstream and all of them get its outcome.
    pub async fn get(&self, force_refresh: bool) -> Result<Credentials, TokenError> {
        let flight = {
            let mut st = self.inner.lock();
            let now = self.inner.clock.now_ms();
            match &st.login {
                Login::Active(a) if !force_refresh && a.creds.is_valid_at(now) => {
                    return Ok(a.creds.clone());
                }
                Login::Active(_) => {}
                other => return Err(other.error()),
            }
            self.inner.join_or_start(&mut st, now)?
        };
        let outcome = wait_flight(flight).await;
        match outcome {
            // Someone else's refresh failed; a token that is still valid serves as well
            // as a new one, unless the caller has just seen it rejected.
            Err(TokenError::Transient { .. }) if !force_refresh => {
                self.inner.valid_now().map_or(outcome, Ok)
            }
            other => other,
        }
    }

    /// For a caller whose API request was refused with `rejected`: a token other than that
    /// one, refreshing only while the manager still holds it. Clients that all saw the same
    /// 401 then cause one refresh between them, not one each as `get(true)` would.
    pub async fn get_replacing(&self, rejected: &SecretString) -> Result<Credentials, TokenError> {
        if let Some(current) = self.inner.valid_now()
            && current.access_token.expose_secret() != rejected.expose_secret()
        {
            return Ok(current);
        }
        self.get(true).await
    }

    /// A login has completed: store `creds` and use them from now on. They are in use even
    /// when storing them fails (the error says so).
    pub async fn install(&self, creds: Credentials) -> Result<(), TokenError> {
        let _guard = self.inner.store_lock("login").await;
        let _persist = self.inner.persist.lock().await;
        let saved = self.inner.persistence.save_login(&creds).await;
        let mut active = Active::new(creds, self.inner.clock.now_ms());
        active.unsaved = saved.as_ref().err().map(|e| e.0.clone());
        let mut st = self.inner.lock();
        st.epoch += 1;
        self.inner.activate(&mut st, active);
        self.inner.publish(&st);
        drop(st);
        tracing::info!("new Qwen OAuth login installed");
        saved.map_err(|e| TokenError::Persistence { reason: e.0 })
    }

    /// The store saw its credentials change underneath us (Qwen Code refreshed or logged
    /// in, or the file went away): use what it holds now, without writing it back.
    pub async fn adopt(&self, creds: Option<Credentials>) {
        let _persist = self.inner.persist.lock().await;
        let mut st = self.inner.lock();
        match (creds, &st.login) {
            (Some(c), Login::Active(a)) if a.creds == c => return,
            // Our own clear removed the file; keep saying why.
            (None, Login::Relogin(_) | Login::LoggedOut) => return,
            (Some(c), _) => {
                let active = Active::new(c, self.inner.clock.now_ms());
                self.inner.activate(&mut st, active);
            }
            (None, _) => st.login = Login::LoggedOut,
        }
        st.epoch += 1;
        self.inner.publish(&st);
    }

    /// Forget the login everywhere.
    pub async fn logout(&self, reason: &str) -> Result<(), TokenError> {
        let persistence = self.inner.persistence.clone();
        self.logout_with(async move { persistence.clear(reason).await })
            .await
            .map_err(|e| TokenError::Persistence { reason: e.0 })
    }

    /// Forget the login, with `clear` removing the stored credentials (under the store's
    /// lock, like every change of the login) and answering what it did: a caller that
    /// reports where credentials were removed from gets its report straight back.
    pub async fn logout_with<T>(&self, clear: impl std::future::Future<Output = T>) -> T {
        let _guard = self.inner.store_lock("logout").await;
        let _persist = self.inner.persist.lock().await;
        let cleared = clear.await;
        let mut st = self.inner.lock();
        st.epoch += 1;
        st.login = Login::LoggedOut;
        self.inner.publish(&st);
        cleared
    }

    /// The credentials held now, as they are (no refresh).
    pub fn peek(&self) -> Option<Credentials> {
        match &self.inner.lock().login {
            Login::Active(a) => Some(a.creds.clone()),
            _ => None,
        }
    }

    pub fn status(&self) -> TokenStatus {
        self.inner.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TokenStatus> {
        self.inner.status.subscribe()
    }

    /// When the background refresh (or its retry) is due, in clock milliseconds.
    pub fn next_refresh_at(&self) -> Option<i64> {
        self.inner.lock().next_refresh_at(&self.inner.config)
    }

    /// Makes the scheduler re-read the clock now (after a resume from sleep, or in tests
    /// that move a manual clock). Returns a number for [`TokenManager::settled`].
    pub fn poke(&self) -> u64 {
        let seq = self.inner.pokes.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.wake.notify_one();
        seq
    }

    /// Resolves once the scheduler has acted on poke `seq` (including any refresh it
    /// started) and is idle again.
    pub async fn settled(&self, seq: u64) {
        let mut rx = self.inner.settled.subscribe();
        // The sender lives in `inner`, which `self` keeps alive.
        let _ = rx.wait_for(|s| *s >= seq).await;
    }

    /// Runs the proactive refresh until `cancel` fires.
    pub fn spawn_scheduler(&self, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.run_scheduler(cancel).await })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's lock for a login's save or a logout's clear. Qwen Code writes those
    /// without its lock, so failing to get it does not stop them.
    async fn store_lock(&self, what: &str) -> Option<StoreGuard> {
        match self.persistence.lock().await {
            Ok(guard) => Some(guard),
            Err(e) => {
                tracing::warn!(error = %e, "{what}: credential store lock not taken; writing anyway");
                None
            }
        }
    }

    /// Makes `active` the login. The account tracker hears of it first (a small file
    /// write when the account changes, rare enough to do under the lock).
    fn activate(&self, st: &mut State, active: Active) {
        if let Some(accounts) = self.accounts.get() {
            accounts.observe(active.creds.account.as_ref());
        }
        st.generation += 1;
        st.login = Login::Active(active);
    }

    fn valid_now(&self) -> Option<Credentials> {
        let now = self.clock.now_ms();
        match &self.lock().login {
            Login::Active(a) if a.creds.is_valid_at(now) => Some(a.creds.clone()),
            _ => None,
        }
    }

    fn publish(&self, st: &State) {
        let status = st.status(&self.config);
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
        // The schedule may have moved.
        self.wake.notify_one();
    }

    /// The refresh in progress, or a new one. Requires an active login.
    fn join_or_start(
        self: &Arc<Self>,
        st: &mut State,
        now: i64,
    ) -> Result<watch::Receiver<Option<Outcome>>, TokenError> {
        // A flight whose task died (it cannot, short of a panic) must not block all later
        // refreshes: its sender is gone then.
        if let Some(rx) = &st.flight
            && rx.has_changed().is_ok()
        {
            return Ok(rx.clone());
        }
        let previous = match &st.login {
            Login::Active(a) if a.has_refresh_token() => a.creds.clone(),
            Login::Active(_) => return Err(TokenError::NoRefreshToken),
            other => return Err(other.error()),
        };
        let (tx, rx) = watch::channel(None);
        st.flight = Some(rx.clone());
        st.last_attempt_at = Some(now);
        let epoch = st.epoch;
        let inner = Arc::clone(self);
        // Spawned, so that a caller giving up (a dropped RPC) does not abandon the refresh
        // everyone else is waiting for.
        tokio::spawn(async move {
            let outcome = inner.refresh_flight(epoch, previous).await;
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
    }

    async fn refresh_flight(&self, epoch: u64, previous: Credentials) -> Outcome {
        // Held until the end of this function, past the store write.
        let (_guard, attempt) = match self.persistence.lock().await {
            Ok(mut guard) => {
                let attempt = self.attempt(previous, guard.current.take()).await;
                (Some(guard), attempt)
            }
            Err(e) => (
                None,
                Err(Failure::Transient(format!(
                    "could not lock the credential store: {e}"
                ))),
            ),
        };
        let now = self.clock.now_ms();
        let _persist = self.persist.lock().await;
        if self.lock().epoch != epoch {
            tracing::debug!("login changed during the refresh; its result is dropped");
            let mut st = self.lock();
            st.flight = None;
            return match &st.login {
                Login::Active(a) => Ok(a.creds.clone()),
                other => Err(other.error()),
            };
        }
        match attempt {
            Ok(fresh) => {
                let mut unsaved = None;
                let creds = match fresh {
                    Fresh::Refreshed(creds) => {
                        // Stored before anyone uses it: with rotation, the old refresh
                        // token is already dead upstream.
                        if let Err(e) = self.persistence.save(&creds).await {
                            tracing::error!(error = %e, "could not store the refreshed token; serving it from memory");
                            unsaved = Some(e.0);
                        }
                        tracing::info!(expiry_date = creds.expiry_date, "access token refreshed");
                        creds
                    }
                    Fresh::Stored(creds) => {
                        tracing::info!(
                            expiry_date = creds.expiry_date,
                            "using the token another process refreshed"
                        );
                        creds
                    }
                };
                let mut active = Active::new(creds.clone(), now);
                active.unsaved = unsaved;
                let mut st = self.lock();
                self.activate(&mut st, active);
                st.flight = None;
                self.publish(&st);
                Ok(creds)
            }
            Err(Failure::LoginEnded(reason)) => {
                tracing::warn!(%reason, "refresh token rejected; the login has ended");
                if let Err(e) = self.persistence.clear(&reason).await {
                    tracing::error!(error = %e, "could not remove the ended login's credentials");
                }
                let mut st = self.lock();
                st.epoch += 1;
                st.login = Login::Relogin(reason.clone());
                st.flight = None;
                self.publish(&st);
                Err(TokenError::ReloginNeeded { reason })
            }
            Err(Failure::Transient(reason)) => {
                let mut st = self.lock();
                if let Login::Active(a) = &mut st.login {
                    a.failures = a.failures.saturating_add(1);
                    let delay = retry_delay(a.failures, &self.config, jitter());
                    a.retry_at = Some(now.saturating_add(millis(delay)));
                    a.last_error = Some(reason.clone());
                    tracing::warn!(%reason, failures = a.failures, retry_in = ?delay, "token refresh failed; keeping the current credentials");
                }
                st.flight = None;
                self.publish(&st);
                Err(TokenError::Transient { reason })
            }
        }
    }

    /// One refresh under the store's lock; `stored` is what the store held after locking.
    async fn attempt(
        &self,
        previous: Credentials,
        stored: Option<Credentials>,
    ) -> Result<Fresh, Failure> {
        let mut source = previous;
        if let Some(stored) = stored.filter(|s| *s != source) {
            if stored.is_valid_at(self.clock.now_ms()) {
                return Ok(Fresh::Stored(stored));
            }
            if !stored.refresh_token.expose_secret().is_empty() {
                source = stored;
            }
        }
        tracing::debug!("refreshing the access token");
        match self.refresher.refresh(&source.refresh_token).await {
            Ok(token) => Ok(Fresh::Refreshed(
                token.into_credentials(Some(&source), self.clock.now_ms()),
            )),
            Err(RefreshError::LoginEnded { reason, .. }) => Err(Failure::LoginEnded(reason)),
            Err(RefreshError::Transient(e)) => Err(Failure::Transient(e.to_string())),
        }
    }

    async fn run_scheduler(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            // Read before looking at the clock: "settled(n)" then means an evaluation that
            // began after poke n.
            let seen = self.pokes.load(Ordering::SeqCst);
            let now = self.clock.now_ms();
            let (due, flight) = {
                let mut st = self.lock();
                let due = st.next_refresh_at(&self.config);
                match due {
                    Some(d) if d <= now => (due, self.join_or_start(&mut st, now).ok()),
                    _ => (due, None),
                }
            };
            if let Some(flight) = flight {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = wait_flight(flight) => {}
                }
                continue;
            }
            let sleep = due.map_or(self.config.max_sleep, |d| {
                Duration::from_millis(u64::try_from(d - now).unwrap_or(0))
                    .min(self.config.max_sleep)
            });
            self.settled.send_modify(|s| *s = (*s).max(seen));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

async fn wait_flight(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(TokenError::Transient {
            reason: "the refresh ended without a result".into(),
        })),
        Err(_) => Err(TokenError::Transient {
            reason: "the refresh ended without a result".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::Value;
    use tokio::sync::Semaphore;
    use tokio::task::JoinSet;

    use super::*;
    use crate::clock::ManualClock;
    use crate::oauth::mock::{
        MockServer, Reply, TOKEN_PATH, assert_request_like, conformance_cases, conformance_time,
    };
    use crate::oauth::{CLIENT_ID, OAuthConfig, encode_form};

    const NOW: i64 = 1_700_000_000_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    #[derive(Debug, Clone, PartialEq)]
    enum Op {
        Save(Credentials),
        Clear(String),
        Lock,
        Unlock,
    }

    /// How the test store answers `lock`.
    enum LockMode {
        /// The trait's default: no lock, nothing read.
        Default,
        /// A real (in-process) lock, reporting these as the stored credentials.
        Holds(Option<Credentials>),
        Fails,
    }

    struct RecordingStore {
        ops: Arc<Mutex<Vec<Op>>>,
        fail: bool,
        lock: LockMode,
        mutex: Arc<tokio::sync::Mutex<()>>,
        /// How many `lock` calls have begun, taken or not.
        lock_calls: watch::Sender<usize>,
    }

    impl Default for RecordingStore {
        fn default() -> Self {
            Self {
                ops: Arc::default(),
                fail: false,
                lock: LockMode::Default,
                mutex: Arc::default(),
                lock_calls: watch::channel(0).0,
            }
        }
    }

    /// Holds the lock and records its own release.
    struct Unlock(
        Arc<Mutex<Vec<Op>>>,
        #[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>,
    );

    impl Drop for Unlock {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(Op::Unlock);
        }
    }

    impl RecordingStore {
        fn ops(&self) -> Vec<Op> {
            self.ops.lock().unwrap().clone()
        }

        fn result(&self) -> Result<(), PersistenceError> {
            if self.fail {
                Err(PersistenceError("disk full".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl TokenPersistence for RecordingStore {
        async fn save(&self, creds: &Credentials) -> Result<(), PersistenceError> {
            self.ops.lock().unwrap().push(Op::Save(creds.clone()));
            self.result()
        }
        async fn clear(&self, reason: &str) -> Result<(), PersistenceError> {
            self.ops.lock().unwrap().push(Op::Clear(reason.to_string()));
            self.result()
        }
        async fn lock(&self) -> Result<StoreGuard, PersistenceError> {
            match &self.lock {
                LockMode::Default => Ok(StoreGuard::default()),
                LockMode::Fails => Err(PersistenceError("lock held by pid 42".into())),
                LockMode::Holds(current) => {
                    self.lock_calls.send_modify(|n| *n += 1);
                    let held = self.mutex.clone().lock_owned().await;
                    self.ops.lock().unwrap().push(Op::Lock);
                    Ok(StoreGuard {
                        current: current.clone(),
                        lock: Some(Box::new(Unlock(self.ops.clone(), held))),
                    })
                }
            }
        }
    }

    fn creds(access: &str, refresh: &str, expiry_date: i64) -> Credentials {
        Credentials {
            access_token: SecretString::from(access),
            refresh_token: SecretString::from(refresh),
            token_type: "Bearer".into(),
            expiry_date,
            resource_url: Some("portal.qwen.ai".into()),
            account: None,
        }
    }

    struct Harness {
        server: MockServer,
        clock: Arc<ManualClock>,
        store: Arc<RecordingStore>,
        manager: TokenManager,
    }

    async fn harness_with(initial: Option<Credentials>, store: RecordingStore) -> Harness {
        let server = MockServer::start().await;
        let clock = ManualClock::new(NOW);
        let store = Arc::new(store);
        let client = OAuthClient::new(OAuthConfig::with_base_url(server.base_url())).unwrap();
        let manager = TokenManager::new(
            initial,
            Arc::new(client),
            store.clone(),
            clock.clone(),
            TokenManagerConfig::default(),
        );
        Harness {
            server,
            clock,
            store,
            manager,
        }
    }

    async fn harness(initial: Option<Credentials>) -> Harness {
        harness_with(initial, RecordingStore::default()).await
    }

    fn refresh_body(refresh_token: &str) -> String {
        encode_form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
        ])
    }

    fn token(c: &Credentials) -> &str {
        c.access_token.expose_secret()
    }

    /// The credential file of a recorded scenario as the store would hand it over: nothing
    /// for a missing or unreadable file; an empty refresh token when only that is missing.
    fn creds_from_file(file: &Value) -> Option<Credentials> {
        let json = file.get("json")?.as_object()?;
        let text = |k: &str| json.get(k).and_then(Value::as_str).map(String::from);
        Some(Credentials {
            access_token: SecretString::from(text("access_token")?),
            refresh_token: SecretString::from(text("refresh_token").unwrap_or_default()),
            token_type: text("token_type")?,
            expiry_date: conformance_time(json.get("expiry_date")?, NOW),
            resource_url: text("resource_url"),
            account: None,
        })
    }

    /// Replays every recorded Qwen Code scenario of the token manager (all but the device
    /// login, which `oauth::tests` replays) and checks requests, outcome and store writes.
    #[tokio::test]
    async fn replays_the_recorded_qwen_code_scenarios() {
        let cases = conformance_cases();
        if cases.is_empty() {
            eprintln!("conformance kit not found; the hard-coded tests below still run");
            return;
        }
        let mut replayed = Vec::new();
        for (name, case) in cases {
            let command = case["oracle"]["command"].as_str().unwrap();
            if command == "login" {
                continue;
            }
            let mode = case["oracle"]["mock"].as_str().unwrap_or("refresh-ok");
            let before = creds_from_file(&case["file_before"]);
            let h = harness(before.clone()).await;
            h.server
                .set_default(TOKEN_PATH, Reply::for_mode(mode).expect(&name));
            let result = match command {
                "get" | "login-cached" => Some(h.manager.get(false).await),
                "get-force" => Some(h.manager.get(true).await),
                "clear" => {
                    h.manager.logout("logout").await.unwrap();
                    None
                }
                other => panic!("{name}: unknown command {other}"),
            };

            let reqs = h.server.requests();
            let expected = case["requests"].as_array().unwrap();
            assert_eq!(reqs.len(), expected.len(), "{name}: requests");
            for (ours, theirs) in reqs.iter().zip(expected) {
                assert_request_like(ours, theirs, &[]);
            }

            let file_after = &case["file_after"];
            let removed = file_after["exists"] == false;
            let got = match (&result, case.get("result")) {
                (Some(result), Some(want)) if want.is_object() => {
                    let c = result.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(token(c), want["access_token"], "{name}");
                    assert_eq!(
                        c.refresh_token.expose_secret(),
                        want["refresh_token"],
                        "{name}"
                    );
                    assert_eq!(c.token_type, want["token_type"], "{name}");
                    assert_eq!(
                        c.resource_url.as_deref(),
                        want["resource_url"].as_str(),
                        "{name}"
                    );
                    assert_eq!(
                        c.expiry_date,
                        conformance_time(&want["expiry_date"], NOW),
                        "{name}"
                    );
                    Some(c.clone())
                }
                (Some(result), _) => {
                    let err = result.as_ref().expect_err(&name);
                    match case["error"]["type"].as_str() {
                        Some("NO_REFRESH_TOKEN") => assert!(
                            matches!(err, TokenError::NotLoggedIn | TokenError::NoRefreshToken),
                            "{name}: {err:?}"
                        ),
                        _ if removed => assert!(
                            matches!(err, TokenError::ReloginNeeded { .. }),
                            "{name}: {err:?}"
                        ),
                        _ => assert!(
                            matches!(err, TokenError::Transient { .. }),
                            "{name}: {err:?}"
                        ),
                    }
                    None
                }
                (None, _) => None,
            };

            let ops = h.store.ops();
            if removed {
                if before.is_some() {
                    assert!(matches!(ops[..], [Op::Clear(_)]), "{name}: {ops:?}");
                } else {
                    assert!(ops.is_empty(), "{name}: {ops:?}");
                }
            } else if file_after["raw"] == case["file_before"]["raw"] {
                assert!(ops.is_empty(), "{name}: {ops:?}");
            } else {
                assert_eq!(ops, vec![Op::Save(got.expect(&name))], "{name}");
            }
            replayed.push(name);
        }
        assert!(replayed.len() >= 10, "{replayed:?}");
    }

    /// `oauth-valid-no-request.json`
    #[tokio::test]
    async fn a_valid_token_needs_no_request() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-valid");
        assert_eq!(h.server.requests().len(), 0);
        assert!(h.store.ops().is_empty());
    }

    /// `oauth-within-30s-buffer.json`: 20 s left is not enough; 30.001 s is.
    #[tokio::test]
    async fn a_token_within_the_30s_buffer_is_refreshed() {
        let h = harness(Some(creds("at-soon", "rt-1", NOW + 30_001))).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_ok());
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-soon");
        h.clock.set_ms(NOW + 10_000); // 20 s left
        let c = h.manager.get(false).await.unwrap();
        assert_eq!(token(&c), "at-refreshed");
        assert_eq!(c.expiry_date, NOW + 10_000 + HOUR);
        let reqs = h.server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].body, refresh_body("rt-1"));
    }

    /// `oauth-expired-refresh-ok.json` and `oauth-expired-refresh-rotate.json`
    #[tokio::test]
    async fn a_new_refresh_token_replaces_the_old_only_when_returned() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        h.server.push(TOKEN_PATH, Reply::refresh_ok());
        h.server.push(TOKEN_PATH, Reply::refresh_rotate());
        h.server.push(TOKEN_PATH, Reply::refresh_ok());
        let kept = h.manager.get(false).await.unwrap();
        assert_eq!(kept.refresh_token.expose_secret(), "rt-old");
        h.clock.advance_ms(2 * HOUR);
        let rotated = h.manager.get(false).await.unwrap();
        assert_eq!(rotated.refresh_token.expose_secret(), "rt-rotated");
        h.clock.advance_ms(2 * HOUR);
        let after = h.manager.get(false).await.unwrap();
        assert_eq!(after.refresh_token.expose_secret(), "rt-rotated");
        let bodies: Vec<String> = h.server.requests().into_iter().map(|r| r.body).collect();
        assert_eq!(
            bodies,
            [
                refresh_body("rt-old"),
                refresh_body("rt-old"),
                refresh_body("rt-rotated")
            ]
        );
        assert_eq!(
            h.store.ops(),
            vec![Op::Save(kept), Op::Save(rotated), Op::Save(after)]
        );
    }

    /// `oauth-expired-refresh-400.json` and `oauth-startup-expired-400.json`
    #[tokio::test]
    async fn refresh_400_or_401_ends_the_login_and_clears_the_store() {
        for reply in [Reply::refresh_400(), Reply::text(401, "unauthorized")] {
            let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
            h.server.set_default(TOKEN_PATH, reply);
            let mut status = h.manager.subscribe();
            let err = h.manager.get(false).await.unwrap_err();
            let TokenError::ReloginNeeded { reason } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(h.store.ops(), vec![Op::Clear(reason.clone())]);
            assert!(status.has_changed().unwrap());
            assert_eq!(
                *status.borrow_and_update(),
                TokenStatus::ReloginNeeded {
                    reason: reason.clone()
                }
            );
            // Until a new login, no further request.
            assert_eq!(h.manager.get(true).await.unwrap_err(), err);
            assert_eq!(h.server.requests().len(), 1);
        }
    }

    /// A 400 on a background refresh ends the login even though the token still works:
    /// Qwen Code deletes the file as well.
    #[tokio::test]
    async fn refresh_400_ends_the_login_even_with_a_valid_token() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_400());
        assert!(matches!(
            h.manager.get(true).await,
            Err(TokenError::ReloginNeeded { .. })
        ));
        assert!(matches!(
            h.manager.get(false).await,
            Err(TokenError::ReloginNeeded { .. })
        ));
        assert!(matches!(h.store.ops()[..], [Op::Clear(_)]));
    }

    /// `oauth-expired-refresh-500.json`: an expired token cannot be served, but it is kept.
    #[tokio::test]
    async fn refresh_500_with_an_expired_token_fails_and_keeps_the_credentials() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        h.server.push(TOKEN_PATH, Reply::refresh_500());
        h.server.push(TOKEN_PATH, Reply::refresh_ok());
        let err = h.manager.get(false).await.unwrap_err();
        assert_eq!(
            err,
            TokenError::Transient {
                reason: "the authorization server failed with HTTP 500".into()
            }
        );
        assert!(h.store.ops().is_empty());
        assert!(matches!(
            h.manager.status(),
            TokenStatus::Active {
                retrying: Some(RetryInfo { failures: 1, .. }),
                ..
            }
        ));
        // The next caller tries again at once: it needs a token now.
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-refreshed");
        assert_eq!(h.server.requests().len(), 2);
    }

    /// `oauth-valid-force-refresh.json`
    #[tokio::test]
    async fn force_refresh_replaces_a_valid_token() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        h.server.push(TOKEN_PATH, Reply::refresh_ok());
        h.server.push(TOKEN_PATH, Reply::refresh_500());
        assert_eq!(token(&h.manager.get(true).await.unwrap()), "at-refreshed");
        assert_eq!(h.server.requests()[0].body, refresh_body("rt-1"));
        // A forced refresh that fails does not fall back to the token just rejected...
        assert!(matches!(
            h.manager.get(true).await,
            Err(TokenError::Transient { .. })
        ));
        // ...but a plain get still gets it.
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-refreshed");
    }

    #[tokio::test]
    async fn callers_refused_with_the_same_token_cause_one_refresh() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_ok());
        let rejected = SecretString::from("at-valid");
        for _ in 0..3 {
            let c = h.manager.get_replacing(&rejected).await.unwrap();
            assert_eq!(token(&c), "at-refreshed");
        }
        assert_eq!(h.server.count(TOKEN_PATH), 1);
        // The new token refused as well: refresh again.
        let c = h
            .manager
            .get_replacing(&SecretString::from("at-refreshed"))
            .await;
        assert!(c.is_ok());
        assert_eq!(h.server.count(TOKEN_PATH), 2);
    }

    /// `oauth-no-file.json` and `oauth-missing-refresh-token.json`
    #[tokio::test]
    async fn without_credentials_or_refresh_token_nothing_is_requested() {
        let h = harness(None).await;
        assert_eq!(
            h.manager.get(false).await.unwrap_err(),
            TokenError::NotLoggedIn
        );
        let h = harness(Some(creds("at", "", 1))).await;
        assert_eq!(
            h.manager.get(false).await.unwrap_err(),
            TokenError::NoRefreshToken
        );
        assert_eq!(h.manager.next_refresh_at(), None);
        assert!(h.server.requests().is_empty() && h.store.ops().is_empty());
    }

    /// `oauth-clear.json`
    /// The account tracker hears of every login before its tokens can be used: the
    /// initial credentials, an adopted file, a login, a refresh naming another account.
    #[tokio::test]
    async fn every_new_login_is_observed_before_it_is_usable() {
        let dir = tempfile::tempdir().unwrap();
        let accounts = Arc::new(AccountTracker::open(dir.path().join("oauth_account")));
        let who = |sub: &str| {
            crate::account::AccountId::from_jwt(&crate::account::jwt(
                &serde_json::json!({"iss": "q", "sub": sub}),
            ))
        };
        let with = |at: &str, sub: &str| Credentials {
            account: who(sub),
            ..creds(at, "rt", NOW - 1000)
        };
        let key = |sub: &str| who(sub).unwrap().quota_key();
        let h = harness(Some(with("at-a", "alice"))).await;
        let manager = h.manager.clone().observing(accounts.clone());
        assert_eq!(&*accounts.key(), key("alice"));
        manager.adopt(Some(with("at-b", "bob"))).await;
        assert_eq!(&*accounts.key(), key("bob"));
        manager.install(with("at-c", "carol")).await.unwrap();
        assert_eq!(&*accounts.key(), key("carol"));
        // A refresh answer naming another account (its id_token).
        let id_token = crate::account::jwt(&serde_json::json!({"iss": "q", "sub": "dave"}));
        h.server.set_default(
            TOKEN_PATH,
            crate::oauth::mock::Reply::json(
                200,
                serde_json::json!({
                    "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 3600,
                    "resource_url": "portal.qwen.ai", "id_token": id_token,
                }),
            ),
        );
        manager.get(true).await.unwrap();
        assert_eq!(&*accounts.key(), key("dave"));
        // Credentials naming no account keep the last known one.
        manager.adopt(Some(creds("at-e", "rt", NOW + HOUR))).await;
        assert_eq!(&*accounts.key(), key("dave"));
    }

    #[tokio::test]
    async fn logout_clears_the_store() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        h.manager.logout("logout").await.unwrap();
        assert_eq!(h.store.ops(), vec![Op::Clear("logout".into())]);
        assert_eq!(h.manager.status(), TokenStatus::LoggedOut);
        assert_eq!(
            h.manager.get(false).await.unwrap_err(),
            TokenError::NotLoggedIn
        );
        assert!(h.server.requests().is_empty());
    }

    /// Gets `n` tokens at once with an expired token while the only refresh is held back
    /// until it has arrived upstream.
    async fn storm(h: &Harness, n: usize, reply: Reply) -> Vec<Result<Credentials, TokenError>> {
        let gate = Arc::new(Semaphore::new(0));
        h.server.push(TOKEN_PATH, reply.gated(gate.clone()));
        // A second request would get an answer no caller expects.
        h.server
            .set_default(TOKEN_PATH, Reply::oauth_error(418, "second_request"));
        let mut set = JoinSet::new();
        for _ in 0..n {
            let m = h.manager.clone();
            set.spawn(async move { m.get(false).await });
        }
        h.server.wait_for_requests(1).await;
        gate.add_permits(1);
        set.join_all().await
    }

    #[tokio::test]
    async fn a_thousand_gets_share_one_refresh() {
        // On one thread every get has joined the refresh before the refresh task first
        // runs (tasks run in spawn order), so all 1,000 really wait on it.
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        let results = storm(&h, 1000, Reply::refresh_ok()).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_ok_and(|c| token(c) == "at-refreshed"))
        );
        assert_eq!(h.server.count(TOKEN_PATH), 1);
        assert_eq!(h.store.ops().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_thousand_gets_share_one_refresh_across_threads() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        let results = storm(&h, 1000, Reply::refresh_rotate()).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_ok_and(|c| token(c) == "at-refreshed"))
        );
        assert_eq!(h.server.count(TOKEN_PATH), 1);
    }

    #[tokio::test]
    async fn a_thousand_gets_share_one_failure() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        let results = storm(&h, 1000, Reply::refresh_500()).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(TokenError::Transient { .. })))
        );
        assert_eq!(h.server.count(TOKEN_PATH), 1);
        assert!(h.store.ops().is_empty());
    }

    #[test]
    fn refresh_time_is_80_percent_or_5_minutes_before_whichever_is_earlier() {
        let cfg = TokenManagerConfig::default();
        assert_eq!(refresh_due_at(NOW, NOW + HOUR, &cfg), NOW + 48 * MIN);
        assert_eq!(refresh_due_at(NOW, NOW + 20 * MIN, &cfg), NOW + 15 * MIN);
        assert_eq!(refresh_due_at(NOW, NOW + 25 * MIN, &cfg), NOW + 20 * MIN);
        // Shorter than twice the lead: half the lifetime, not at once.
        assert_eq!(refresh_due_at(NOW, NOW + 6 * MIN, &cfg), NOW + 3 * MIN);
        // Already expired: due now.
        assert_eq!(refresh_due_at(NOW, NOW - 1, &cfg), NOW);
    }

    #[test]
    fn retry_delays_double_with_jitter_up_to_the_cap() {
        let cfg = TokenManagerConfig::default();
        assert_eq!(retry_delay(1, &cfg, 0.0), Duration::from_millis(500));
        assert_eq!(retry_delay(1, &cfg, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(3, &cfg, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(3, &cfg, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(40, &cfg, 1.0), cfg.retry_max);
        for _ in 0..100 {
            let d = retry_delay(2, &cfg, jitter());
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    /// Moves the clock, pokes the scheduler and waits until it has acted.
    async fn at(h: &Harness, ms: i64) {
        h.clock.set_ms(ms);
        let seq = h.manager.poke();
        h.manager.settled(seq).await;
    }

    #[tokio::test]
    async fn the_background_refresh_runs_once_when_due() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_ok());
        let due = NOW + 48 * MIN;
        assert_eq!(h.manager.next_refresh_at(), Some(due));
        let cancel = CancellationToken::new();
        let task = h.manager.spawn_scheduler(cancel.clone());

        at(&h, due - 1).await;
        assert_eq!(h.server.count(TOKEN_PATH), 0, "not due yet");
        at(&h, due + 1).await;
        assert_eq!(h.server.count(TOKEN_PATH), 1);
        let expiry = due + 1 + HOUR;
        assert_eq!(
            h.manager.status(),
            TokenStatus::Active {
                expiry_date: expiry,
                next_refresh_at: Some(due + 1 + 48 * MIN),
                generation: 2,
                retrying: None,
                unsaved: None,
            }
        );
        at(&h, due + 2).await;
        assert_eq!(h.server.count(TOKEN_PATH), 1, "exactly one refresh");
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-refreshed");
        assert_eq!(h.server.count(TOKEN_PATH), 1);

        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_background_refresh_keeps_the_valid_token_and_retries() {
        let h = harness(Some(creds("at-valid", "rt-1", NOW + HOUR))).await;
        h.server.push(TOKEN_PATH, Reply::refresh_500());
        h.server.push(TOKEN_PATH, Reply::abort());
        h.server.push(TOKEN_PATH, Reply::refresh_ok());
        let cancel = CancellationToken::new();
        h.manager.spawn_scheduler(cancel.clone());
        let due = NOW + 48 * MIN;

        at(&h, due).await;
        assert_eq!(h.server.count(TOKEN_PATH), 1);
        let TokenStatus::Active {
            next_refresh_at: Some(retry),
            retrying:
                Some(RetryInfo {
                    failures: 1,
                    last_error,
                }),
            ..
        } = h.manager.status()
        else {
            panic!("{:?}", h.manager.status())
        };
        assert!(last_error.contains("HTTP 500"), "{last_error}");
        assert!((due + 500..=due + 1000).contains(&retry), "{retry}");
        // Still valid: served without a request.
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-valid");
        at(&h, retry - 1).await;
        assert_eq!(h.server.count(TOKEN_PATH), 1, "waits for the backoff");

        at(&h, retry).await;
        assert_eq!(h.server.count(TOKEN_PATH), 2);
        let TokenStatus::Active {
            next_refresh_at: Some(retry2),
            retrying: Some(RetryInfo { failures: 2, .. }),
            ..
        } = h.manager.status()
        else {
            panic!("{:?}", h.manager.status())
        };
        assert!(
            (retry + 1000..=retry + 2000).contains(&retry2),
            "doubled: {retry2}"
        );

        at(&h, retry2).await;
        assert_eq!(h.server.count(TOKEN_PATH), 3);
        assert!(matches!(
            h.manager.status(),
            TokenStatus::Active {
                retrying: None,
                generation: 2,
                ..
            }
        ));
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-refreshed");
        assert!(matches!(h.store.ops()[..], [Op::Save(_)]));
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_login_during_a_refresh_wins() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        let gate = Arc::new(Semaphore::new(0));
        h.server
            .push(TOKEN_PATH, Reply::refresh_rotate().gated(gate.clone()));
        let m = h.manager.clone();
        let waiting = tokio::spawn(async move { m.get(false).await });
        h.server.wait_for_requests(1).await;
        let login = creds("at-login", "rt-login", NOW + HOUR);
        h.manager.install(login.clone()).await.unwrap();
        gate.add_permits(1);
        assert_eq!(waiting.await.unwrap().unwrap(), login);
        assert_eq!(h.manager.get(false).await.unwrap(), login);
        assert_eq!(
            h.store.ops(),
            vec![Op::Save(login)],
            "the stale refresh is not stored"
        );
    }

    #[tokio::test]
    async fn install_and_adopt_replace_the_credentials() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_400());
        assert!(h.manager.get(false).await.is_err());

        let mut status = h.manager.subscribe();
        status.mark_unchanged();
        // The store's own clear shows up as a vanished file: the reason stays.
        h.manager.adopt(None).await;
        assert!(!status.has_changed().unwrap());

        let theirs = creds("at-qwen-code", "rt-qwen-code", NOW + HOUR);
        h.manager.adopt(Some(theirs.clone())).await;
        assert!(status.has_changed().unwrap());
        assert_eq!(h.manager.get(false).await.unwrap(), theirs);
        status.mark_unchanged();
        h.manager.adopt(Some(theirs)).await;
        assert!(!status.has_changed().unwrap(), "same credentials, no event");

        let ours = creds("at-login", "rt-login", NOW + HOUR);
        h.manager.install(ours.clone()).await.unwrap();
        assert_eq!(h.manager.get(false).await.unwrap(), ours);
        let ops = h.store.ops();
        assert_eq!(ops.len(), 2, "adopt writes nothing: {ops:?}");
        assert_eq!(ops[1], Op::Save(ours));
    }

    #[tokio::test]
    async fn a_store_failure_does_not_lose_the_refreshed_token() {
        let store = RecordingStore {
            fail: true,
            ..RecordingStore::default()
        };
        let h = harness_with(Some(creds("at-old", "rt-old", NOW - 1000)), store).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_rotate());
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-refreshed");
        // Served from memory, and the status says so (for `qwen auth status`).
        assert!(matches!(
            h.manager.status(),
            TokenStatus::Active { unsaved: Some(ref e), .. } if e == "disk full"
        ));
        let err = h
            .manager
            .install(creds("at-login", "rt-login", NOW + HOUR))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            TokenError::Persistence {
                reason: "disk full".into()
            }
        );
        assert_eq!(token(&h.manager.get(false).await.unwrap()), "at-login");
        assert!(matches!(
            h.manager.status(),
            TokenStatus::Active {
                unsaved: Some(_),
                ..
            }
        ));
    }

    /// Like Qwen Code: lock, re-read, and refresh only if nobody else has; the store write
    /// happens before the lock is released.
    #[tokio::test]
    async fn refreshes_run_under_the_store_lock() {
        let old = creds("at-old", "rt-old", NOW - 1000);
        // Qwen Code refreshed meanwhile: its token is used, nothing is requested or written.
        let theirs = creds("at-theirs", "rt-theirs", NOW + HOUR);
        let store = RecordingStore {
            lock: LockMode::Holds(Some(theirs.clone())),
            ..RecordingStore::default()
        };
        let h = harness_with(Some(old.clone()), store).await;
        assert_eq!(h.manager.get(false).await.unwrap(), theirs);
        assert!(h.server.requests().is_empty());
        assert_eq!(h.store.ops(), vec![Op::Lock, Op::Unlock]);

        // The stored refresh token is newer (rotated elsewhere) but its access token has
        // expired too: refresh with the stored one.
        let rotated = creds("at-mid", "rt-live", NOW - 500);
        let store = RecordingStore {
            lock: LockMode::Holds(Some(rotated)),
            ..RecordingStore::default()
        };
        let h = harness_with(Some(old.clone()), store).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_ok());
        let c = h.manager.get(false).await.unwrap();
        assert_eq!(c.refresh_token.expose_secret(), "rt-live");
        assert_eq!(h.server.requests()[0].body, refresh_body("rt-live"));
        assert_eq!(h.store.ops(), vec![Op::Lock, Op::Save(c), Op::Unlock]);

        // A 400 clears under the lock too.
        let store = RecordingStore {
            lock: LockMode::Holds(Some(old.clone())),
            ..RecordingStore::default()
        };
        let h = harness_with(Some(old.clone()), store).await;
        h.server.set_default(TOKEN_PATH, Reply::refresh_400());
        assert!(h.manager.get(false).await.is_err());
        assert!(matches!(
            h.store.ops()[..],
            [Op::Lock, Op::Clear(_), Op::Unlock]
        ));

        // No lock, no request; the credentials stay.
        let store = RecordingStore {
            lock: LockMode::Fails,
            ..RecordingStore::default()
        };
        let h = harness_with(Some(old), store).await;
        let err = h.manager.get(false).await.unwrap_err();
        assert_eq!(
            err,
            TokenError::Transient {
                reason: "could not lock the credential store: lock held by pid 42".into()
            }
        );
        assert!(h.server.requests().is_empty() && h.store.ops().is_empty());
    }

    /// A login arriving while a refresh holds the store lock waits for it (lock first,
    /// then the manager's own mutex, on both paths), then wins.
    #[tokio::test]
    async fn a_login_waits_for_a_refresh_holding_the_store_lock() {
        let old = creds("at-old", "rt-old", NOW - 1000);
        let store = RecordingStore {
            lock: LockMode::Holds(Some(old.clone())),
            ..RecordingStore::default()
        };
        let h = harness_with(Some(old), store).await;
        let gate = Arc::new(Semaphore::new(0));
        h.server
            .push(TOKEN_PATH, Reply::refresh_ok().gated(gate.clone()));
        let m = h.manager.clone();
        let refresh = tokio::spawn(async move { m.get(false).await });
        h.server.wait_for_requests(1).await;
        let login = creds("at-login", "rt-login", NOW + HOUR);
        let m = h.manager.clone();
        let l = login.clone();
        let install = tokio::spawn(async move { m.install(l).await });
        let mut calls = h.store.lock_calls.subscribe();
        calls.wait_for(|n| *n == 2).await.unwrap();
        gate.add_permits(1);
        let bound = Duration::from_secs(10);
        let refreshed = tokio::time::timeout(bound, refresh)
            .await
            .expect("no deadlock")
            .unwrap()
            .unwrap();
        assert_eq!(token(&refreshed), "at-refreshed");
        tokio::time::timeout(bound, install)
            .await
            .expect("no deadlock")
            .unwrap()
            .unwrap();
        assert_eq!(h.manager.get(false).await.unwrap(), login);
        assert_eq!(
            h.store.ops(),
            vec![
                Op::Lock,
                Op::Save(refreshed),
                Op::Unlock,
                Op::Lock,
                Op::Save(login),
                Op::Unlock
            ]
        );
    }

    /// Errors and statuses never carry a token, even when the server echoes one back.
    #[tokio::test]
    async fn secrets_never_appear_in_errors_or_statuses() {
        let h = harness(Some(creds("at-old", "rt-old", NOW - 1000))).await;
        let mut texts = Vec::new();
        for status in [403, 200, 500] {
            h.server.push(TOKEN_PATH, Reply::echo(status));
            let e = h.manager.get(false).await.unwrap_err();
            texts.push(format!("{e} {e:?} {:?}", h.manager.status()));
        }
        h.server.push(TOKEN_PATH, Reply::refresh_rotate());
        h.manager.get(false).await.unwrap();
        texts.push(format!("{:?} {:?}", h.manager.status(), h.manager));
        h.server.push(TOKEN_PATH, Reply::echo(400));
        let e = h.manager.get(true).await.unwrap_err();
        texts.push(format!("{e} {e:?} {:?}", h.manager.status()));
        assert!(texts[0].contains("[redacted]"), "{}", texts[0]);
        for text in &texts {
            for s in ["at-old", "rt-old", "at-refreshed", "rt-rotated"] {
                assert!(!text.contains(s), "{s} leaked in: {text}");
            }
        }
    }
}
