//! Per-session secrets: minted when a session opens, accepted while its guard lives,
//! forgotten when the guard drops (the session's gRPC stream closed).
//!
//! Lookup compares the presented key against every live secret with a constant-time
//! comparison and no early exit, so response timing says nothing about how much of a
//! guess was right. Live sessions are few (one per running `qwen exec`) and capped, so the
//! linear scan costs less than hashing the key would.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use secrecy::zeroize::Zeroizing;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::auth::ClientCtx;

/// Prefix of every secret, so a leaked one is recognisable (and grep-able in a scrubber).
pub const PREFIX: &str = "qwend-proxy-";

/// One live session: whose requests these are and how many may run at once.
pub struct Session {
    pub id: u64,
    /// The caller that opened the session (cwd and environment decide method and key).
    pub ctx: ClientCtx,
    /// Requests in flight with this secret (a permit lives until the response body ends).
    pub inflight: Arc<Semaphore>,
}

/// Without the environment: it may hold an API key.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("cwd", &self.ctx.cwd)
            .finish_non_exhaustive()
    }
}

/// The secret is wiped from memory when its session ends, like every secret we hold.
struct Entry {
    secret: Zeroizing<[u8; 32]>,
    session: Arc<Session>,
}

#[derive(Default)]
pub struct Secrets {
    live: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
    /// The live count, for callers waiting for sessions to close.
    count: tokio::sync::watch::Sender<usize>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("live", &self.count())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("too many proxy sessions are open ({0}); close some `qwen exec` runs")]
    TooMany(usize),
}

/// Keeps a secret live; dropping it revokes the secret.
pub struct Guard {
    secrets: Arc<Secrets>,
    id: u64,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("id", &self.id).finish()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.secrets.revoke(self.id);
    }
}

impl Secrets {
    /// Mints a secret for `ctx`. Returns the key the tool will present (a secret: never
    /// log it) and the guard that keeps it live.
    pub fn open(
        self: &Arc<Self>,
        ctx: ClientCtx,
        max_sessions: usize,
        max_inflight: usize,
    ) -> Result<(String, Guard), SecretError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut secret[..]).map_err(|e| SecretError::Random(e.to_string()))?;
        let key = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret[..])
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            ctx,
            inflight: Arc::new(Semaphore::new(max_inflight)),
        });
        {
            let mut live = self.lock();
            if live.len() >= max_sessions {
                return Err(SecretError::TooMany(live.len()));
            }
            live.push(Entry { secret, session });
            self.count.send_replace(live.len());
        }
        Ok((
            key,
            Guard {
                secrets: self.clone(),
                id,
            },
        ))
    }

    /// The live session whose secret is `key`, if any.
    pub fn find(&self, key: &str) -> Option<Arc<Session>> {
        let raw = Zeroizing::new(key.strip_prefix(PREFIX).and_then(|b64| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .ok()
        })?);
        let presented = Zeroizing::new(<[u8; 32]>::try_from(raw.as_slice()).ok()?);
        let live = self.lock();
        let mut found = None;
        for e in live.iter() {
            if bool::from(e.secret[..].ct_eq(&presented[..])) {
                found = Some(e.session.clone());
            }
        }
        found
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Resolves once at most `n` secrets are live.
    pub async fn live_at_most(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|c| *c <= n).await;
    }

    fn revoke(&self, id: u64) {
        let mut live = self.lock();
        live.retain(|e| e.session.id != id);
        self.count.send_replace(live.len());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_accepted_while_its_guard_lives_and_never_after() {
        let s = Arc::new(Secrets::default());
        let (key, guard) = s.open(ClientCtx::default(), 8, 4).unwrap();
        assert!(key.starts_with(PREFIX));
        assert_eq!(key.len(), PREFIX.len() + 43, "32 bytes, base64url");
        let (other, _g2) = s.open(ClientCtx::default(), 8, 4).unwrap();
        assert_ne!(key, other);
        assert_eq!(s.find(&key).unwrap().id, 0);
        assert_eq!(s.find(&other).unwrap().id, 1);
        assert_eq!(s.count(), 2);
        // Near misses: one character changed, truncated, no prefix, garbage.
        let mut flipped = key.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            flipped.as_str(),
            &key[..key.len() - 1],
            &key[PREFIX.len()..],
            "",
            "qwend-proxy-!!!",
        ] {
            assert!(s.find(bad).is_none(), "{bad:?} accepted");
        }
        drop(guard);
        assert!(s.find(&key).is_none(), "revoked");
        assert!(s.find(&other).is_some());
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn sessions_are_capped() {
        let s = Arc::new(Secrets::default());
        let _a = s.open(ClientCtx::default(), 1, 4).unwrap();
        assert!(matches!(
            s.open(ClientCtx::default(), 1, 4),
            Err(SecretError::TooMany(1))
        ));
    }
}
