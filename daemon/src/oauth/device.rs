//! The device-flow driver (RFC 8628): one device authorization, then polling at the
//! server's pace until the user approves, denies, or the code expires.
//!
//! Qwen Code itself ignores the server's `interval` (it polls every 2 s, ×1.5 on a 429) and
//! keeps polling after `expired_token`/`access_denied` until its attempt budget runs out;
//! this driver follows the RFC instead, which sends the same requests in the common case.
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{OAuthClient, OAuthError, PkceVerifier, PollOutcome};
use crate::clock::Clock;
use crate::credentials::Credentials;

#[derive(Debug, Clone)]
pub struct DeviceFlowConfig {
    /// How long one protocol second lasts: always 1 s in the daemon. Tests shrink it so a
    /// server's `interval` and `expires_in` (whole seconds on the wire) play out in ms.
    pub time_unit: Duration,
    /// RFC 8628 §3.2: 5 s when the server names no interval.
    pub default_interval_secs: u64,
    /// RFC 8628 §3.5: each `slow_down` adds 5 s, for the rest of the flow.
    pub slow_down_secs: u64,
    /// Longest wait between retries after 5xx or network errors.
    pub max_retry_delay_secs: u64,
}

impl Default for DeviceFlowConfig {
    fn default() -> Self {
        Self {
            time_unit: Duration::from_secs(1),
            default_interval_secs: 5,
            slow_down_secs: 5,
            max_retry_delay_secs: 60,
        }
    }
}

/// What the user needs to see. `verification_uri_complete` already carries the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePrompt {
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub user_code: String,
    pub expires_in: Duration,
    pub interval: Duration,
}

/// Progress while polling, for a streaming RPC to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFlowEvent {
    /// The user has not approved yet; the next poll is one interval away.
    Pending { remaining: Duration },
    /// The server asked us to poll less often.
    SlowDown { new_interval: Duration },
    /// A 5xx or network failure; polling goes on after `retry_in`.
    Retrying {
        reason: String,
        retry_in: Duration,
        remaining: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceFlowError {
    #[error("the authorization server says the device code has expired; start the login again")]
    ExpiredToken,
    #[error("the authorization request was denied")]
    AccessDenied,
    #[error("the device code expired before the login was approved{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    TimedOut { last_error: Option<String> },
    #[error("the login was cancelled")]
    Cancelled,
    #[error(transparent)]
    OAuth(#[from] OAuthError),
}

/// A started device flow: show [`DeviceFlow::prompt`], then [`DeviceFlow::poll`].
pub struct DeviceFlow {
    client: OAuthClient,
    config: DeviceFlowConfig,
    prompt: DevicePrompt,
    device_code: SecretString,
    verifier: PkceVerifier,
    deadline: Instant,
}

impl std::fmt::Debug for DeviceFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFlow")
            .field("verification_uri", &self.prompt.verification_uri)
            .field("expires_in", &self.prompt.expires_in)
            .field("interval", &self.prompt.interval)
            .finish_non_exhaustive()
    }
}

impl DeviceFlow {
    /// Creates the PKCE pair and asks for a device code.
    pub async fn start(client: &OAuthClient, config: DeviceFlowConfig) -> Result<Self, OAuthError> {
        let verifier = PkceVerifier::generate()?;
        let auth = client.request_device_authorization(&verifier).await?;
        // The code's lifetime counts from the server's answer, which is now.
        let expires_in = config
            .time_unit
            .saturating_mul(secs_u32(auth.expires_in_secs));
        let interval_secs = auth
            .interval_secs
            .filter(|i| *i > 0)
            .unwrap_or(config.default_interval_secs);
        let prompt = DevicePrompt {
            verification_uri: auth.verification_uri,
            verification_uri_complete: auth.verification_uri_complete,
            user_code: auth.user_code,
            expires_in,
            interval: config.time_unit.saturating_mul(secs_u32(interval_secs)),
        };
        tracing::info!(
            expires_in = ?prompt.expires_in,
            interval = ?prompt.interval,
            "device authorization started"
        );
        Ok(Self {
            client: client.clone(),
            config,
            deadline: Instant::now() + expires_in,
            prompt,
            device_code: auth.device_code,
            verifier,
        })
    }

    pub fn prompt(&self) -> &DevicePrompt {
        &self.prompt
    }

    /// Polls until the login ends. Ends early when `cancel` fires; dropping the future
    /// also ends it (nothing is spawned). `clock` dates the new token's expiry.
    pub async fn poll<F>(
        self,
        clock: &dyn Clock,
        cancel: &CancellationToken,
        mut on_event: F,
    ) -> Result<Credentials, DeviceFlowError>
    where
        F: FnMut(DeviceFlowEvent) + Send,
    {
        let unit = self.config.time_unit;
        let mut interval = self.prompt.interval;
        let mut wait = interval;
        let mut failures: u32 = 0;
        let mut last_error: Option<String> = None;
        loop {
            let until = (Instant::now() + wait).min(self.deadline);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(DeviceFlowError::Cancelled),
                _ = tokio::time::sleep_until(until) => {}
            }
            if Instant::now() >= self.deadline {
                return Err(DeviceFlowError::TimedOut { last_error });
            }
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(DeviceFlowError::Cancelled),
                r = tokio::time::timeout_at(
                    self.deadline,
                    self.client.poll_device_token(&self.device_code, &self.verifier),
                ) => match r {
                    Ok(r) => r,
                    Err(_) => return Err(DeviceFlowError::TimedOut { last_error }),
                },
            };
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            match outcome {
                Ok(PollOutcome::Granted(token)) => {
                    tracing::info!("device authorization approved");
                    return Ok(token.into_credentials(None, clock.now_ms()));
                }
                Ok(PollOutcome::Pending) => {
                    failures = 0;
                    wait = interval;
                    on_event(DeviceFlowEvent::Pending { remaining });
                }
                Ok(PollOutcome::SlowDown) => {
                    failures = 0;
                    interval += unit.saturating_mul(secs_u32(self.config.slow_down_secs));
                    wait = interval;
                    tracing::debug!(?interval, "authorization server asked to slow down");
                    on_event(DeviceFlowEvent::SlowDown {
                        new_interval: interval,
                    });
                }
                Ok(PollOutcome::ExpiredToken) => return Err(DeviceFlowError::ExpiredToken),
                Ok(PollOutcome::AccessDenied) => return Err(DeviceFlowError::AccessDenied),
                Err(e) if e.is_transient() => {
                    failures = failures.saturating_add(1);
                    let max = unit.saturating_mul(secs_u32(self.config.max_retry_delay_secs));
                    // Doubling from the poll interval: a struggling server gets fewer
                    // polls, and the wait never drops below what it asked for.
                    wait = interval
                        .saturating_mul(1 << failures.min(16))
                        .min(max)
                        .max(interval);
                    let reason = e.to_string();
                    tracing::warn!(%reason, retry_in = ?wait, "device token poll failed; retrying");
                    on_event(DeviceFlowEvent::Retrying {
                        reason: reason.clone(),
                        retry_in: wait,
                        remaining,
                    });
                    last_error = Some(reason);
                }
                Err(e) => return Err(DeviceFlowError::OAuth(e)),
            }
        }
    }
}

fn secs_u32(secs: u64) -> u32 {
    u32::try_from(secs).unwrap_or(u32::MAX)
}
