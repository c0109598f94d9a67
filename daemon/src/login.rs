//! The Qwen OAuth device login, run by the daemon on behalf of its clients.
//!
//! One login at a time: a client asking while one is pending attaches to it and sees the
//! same code. The flow lives while at least one client is attached; when the last one goes
//! away (Ctrl-C, closed terminal) before the outcome, the flow is cancelled.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthState;
use crate::clock::SharedClock;
use crate::oauth::{DeviceFlow, DeviceFlowConfig, DeviceFlowError, DeviceFlowEvent};
use crate::tokens::{TokenError, TokenStatus};

/// What the user must do, with the code's expiry on the wall clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub user_code: String,
    pub expires_at_ms: i64,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    AlreadyLoggedIn,
    Denied,
    Expired,
    Cancelled,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResult {
    pub outcome: Outcome,
    pub message: String,
    pub expires_at_ms: Option<i64>,
    /// Where the new credentials were stored ("keyring" or "file").
    pub store: Option<&'static str>,
}

impl LoginResult {
    fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        Self {
            outcome,
            message: message.into(),
            expires_at_ms: None,
            store: None,
        }
    }
}

/// A login in progress, shared by every attached client.
struct Flight {
    prompt: Prompt,
    progress: broadcast::Sender<DeviceFlowEvent>,
    result: watch::Sender<Option<LoginResult>>,
    attached: AtomicUsize,
    cancel: CancellationToken,
}

/// One client's view of a login: the prompt, then progress, then the result. Dropping it
/// detaches; the last detach before the result cancels the flow.
pub struct Attachment {
    flight: Arc<Flight>,
    progress: broadcast::Receiver<DeviceFlowEvent>,
    result: watch::Receiver<Option<LoginResult>>,
    /// True when this client joined a login another client started.
    pub joined: bool,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("joined", &self.joined)
            .finish_non_exhaustive()
    }
}

/// What a step of an attachment yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Progress(DeviceFlowEvent),
    Done(LoginResult),
}

impl Attachment {
    pub fn prompt(&self) -> &Prompt {
        &self.flight.prompt
    }

    /// The next update; after `Done` the login is over.
    pub async fn next(&mut self) -> Update {
        loop {
            if let Some(r) = self.result.borrow_and_update().clone() {
                return Update::Done(r);
            }
            tokio::select! {
                biased;
                changed = self.result.changed() => {
                    if changed.is_err() {
                        return Update::Done(LoginResult::new(
                            Outcome::Error,
                            "the login ended without a result",
                        ));
                    }
                }
                ev = self.progress.recv() => match ev {
                    Ok(ev) => return Update::Progress(ev),
                    // Progress is advisory; a slow client just misses some.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The flow is over; the result follows.
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = self.result.wait_for(Option::is_some).await;
                    }
                },
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let left = self.flight.attached.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && self.flight.result.borrow().is_none() {
            tracing::info!("every client left the pending login; cancelling it");
            self.flight.cancel.cancel();
        }
    }
}

/// Either the login is already done, or the client is attached to one.
#[derive(Debug)]
pub enum Start {
    Finished(LoginResult),
    Attached(Attachment),
}

pub struct LoginCoordinator {
    auth: Arc<AuthState>,
    clock: SharedClock,
    flow: DeviceFlowConfig,
    /// Held across the device-authorization request, so concurrent callers attach to one
    /// flow instead of each starting their own.
    current: tokio::sync::Mutex<Option<Arc<Flight>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for LoginCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCoordinator").finish_non_exhaustive()
    }
}

impl LoginCoordinator {
    pub fn new(auth: Arc<AuthState>, clock: SharedClock, flow: DeviceFlowConfig) -> Self {
        Self {
            auth,
            clock,
            flow,
            current: tokio::sync::Mutex::new(None),
            shutdown: CancellationToken::new(),
        }
    }

    /// Cancels a pending login (the daemon is stopping).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Starts a login, or attaches to the pending one. Without `force`, held credentials
    /// end it at once.
    pub async fn start(self: &Arc<Self>, force: bool) -> Start {
        let tokens = match self.auth.tokens().await {
            Ok(t) => t,
            Err(e) => {
                return Start::Finished(LoginResult::new(
                    Outcome::Error,
                    format!("cannot open the credential store: {e}"),
                ));
            }
        };
        let mut current = self.current.lock().await;
        if let Some(flight) = current.as_ref()
            && flight.result.borrow().is_none()
            && !flight.cancel.is_cancelled()
        {
            return Start::Attached(attach(flight, true));
        }
        if !force && let TokenStatus::Active { expiry_date, .. } = tokens.status() {
            return Start::Finished(LoginResult {
                outcome: Outcome::AlreadyLoggedIn,
                message: "already logged in to Qwen OAuth (use --force to log in again)".into(),
                expires_at_ms: Some(expiry_date),
                store: self.auth.store_kind().map(|k| k.as_str()),
            });
        }
        let started = match self.auth.oauth_client() {
            Ok(client) => DeviceFlow::start(client, self.flow.clone()).await,
            Err(e) => Err(e),
        };
        let flow = match started {
            Ok(f) => f,
            Err(e) => {
                return Start::Finished(LoginResult::new(
                    Outcome::Error,
                    format!("could not start the login: {e}"),
                ));
            }
        };
        let p = flow.prompt();
        let prompt = Prompt {
            verification_uri: p.verification_uri.clone(),
            verification_uri_complete: p.verification_uri_complete.clone(),
            user_code: p.user_code.clone(),
            expires_at_ms: self
                .clock
                .now_ms()
                .saturating_add(i64::try_from(p.expires_in.as_millis()).unwrap_or(i64::MAX)),
            interval: p.interval,
        };
        let flight = Arc::new(Flight {
            prompt,
            progress: broadcast::channel(32).0,
            result: watch::channel(None).0,
            attached: AtomicUsize::new(0),
            cancel: self.shutdown.child_token(),
        });
        let attachment = attach(&flight, false);
        *current = Some(flight.clone());
        drop(current);
        let this = self.clone();
        tokio::spawn(async move { this.run(flow, flight, tokens).await });
        Start::Attached(attachment)
    }

    async fn run(
        self: Arc<Self>,
        flow: DeviceFlow,
        flight: Arc<Flight>,
        tokens: crate::tokens::TokenManager,
    ) {
        let progress = flight.progress.clone();
        let polled = flow
            .poll(&*self.clock, &flight.cancel, |ev| {
                let _ = progress.send(ev);
            })
            .await;
        let result = match polled {
            Ok(creds) => {
                let expires = creds.expiry_date;
                // The token manager tells the account tracker before they are usable.
                let installed = tokens.install(creds).await;
                self.auth.announce_login_at(expires);
                let auth = self.auth.clone();
                let selected = crate::blocking::run(
                    "selecting qwen-oauth",
                    crate::blocking::STORE_DEADLINE,
                    move || auth.select_after_login(),
                )
                .await;
                let selection_note = match selected {
                    Ok(Ok(true)) => "; auth method set to qwen-oauth",
                    Ok(Ok(false)) => "",
                    Ok(Err(e)) => {
                        tracing::warn!("could not select qwen-oauth after the login: {e}");
                        ""
                    }
                    Err(_) => "",
                };
                let store = self.auth.store_kind().map(|k| k.as_str());
                let message = match installed {
                    Ok(()) => format!(
                        "logged in to Qwen OAuth; credentials kept in the {}{selection_note}",
                        match store {
                            Some("keyring") => "OS keyring",
                            _ => "daemon's private credentials file",
                        }
                    ),
                    Err(TokenError::Persistence { reason }) => format!(
                        "logged in to Qwen OAuth, but the credentials could not be stored ({reason}); they last until the daemon stops"
                    ),
                    Err(e) => format!("logged in to Qwen OAuth ({e})"),
                };
                LoginResult {
                    outcome: Outcome::Success,
                    message,
                    expires_at_ms: Some(expires),
                    store,
                }
            }
            Err(e) => {
                let outcome = match &e {
                    DeviceFlowError::AccessDenied => Outcome::Denied,
                    DeviceFlowError::ExpiredToken | DeviceFlowError::TimedOut { .. } => {
                        Outcome::Expired
                    }
                    DeviceFlowError::Cancelled if self.shutdown.is_cancelled() => {
                        return self.finish(
                            &flight,
                            LoginResult::new(Outcome::Cancelled, "the daemon is stopping"),
                        );
                    }
                    DeviceFlowError::Cancelled => Outcome::Cancelled,
                    DeviceFlowError::OAuth(_) => Outcome::Error,
                };
                tracing::info!(?outcome, "device login ended: {e}");
                LoginResult::new(outcome, e.to_string())
            }
        };
        self.finish(&flight, result);
    }

    fn finish(&self, flight: &Arc<Flight>, result: LoginResult) {
        flight.result.send_replace(Some(result));
    }
}

fn attach(flight: &Arc<Flight>, joined: bool) -> Attachment {
    flight.attached.fetch_add(1, Ordering::SeqCst);
    Attachment {
        flight: flight.clone(),
        progress: flight.progress.subscribe(),
        result: flight.result.subscribe(),
        joined,
    }
}
