//! The token manager's view of the stores: our backend (keyring or file) plus, when
//! enabled, Qwen Code's `oauth_creds.json` kept in step under its `oauth_creds.lock`.
//!
//! Every store call blocks (keyring over D-Bus, fsync'd files), so each runs on the
//! blocking pool.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    LogoutReport, QwenCredsFile, QwenCredsGuard, QwenFileWatch, QwenLayout, StoreError, Stores,
};
use crate::credentials::Credentials;
use crate::tokens::{PersistenceError, StoreGuard, TokenPersistence};

pub struct StorePersistence {
    stores: Arc<Stores>,
    qwen: QwenCredsFile,
    /// Write our logins and refreshes into Qwen Code's file too.
    sync_qwen_file: bool,
    /// Shared with the importer: our own writes must not look like a login made with
    /// Qwen Code.
    watch: Arc<Mutex<QwenFileWatch>>,
    /// What the last `clear` removed, for the Logout RPC's answer.
    last_clear: Mutex<Option<LogoutReport>>,
}

impl std::fmt::Debug for StorePersistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePersistence")
            .field("stores", &self.stores)
            .field("qwen", &self.qwen.path())
            .field("sync_qwen_file", &self.sync_qwen_file)
            .finish_non_exhaustive()
    }
}

impl StorePersistence {
    pub fn new(
        stores: Arc<Stores>,
        qwen: QwenCredsFile,
        sync_qwen_file: bool,
        watch: Arc<Mutex<QwenFileWatch>>,
    ) -> Self {
        Self {
            stores,
            qwen,
            sync_qwen_file,
            watch,
            last_clear: Mutex::new(None),
        }
    }

    /// The report of the last `clear` (logout or ended login), taken.
    pub fn take_clear_report(&self) -> Option<LogoutReport> {
        self.last_clear
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn save_blocking(&self, creds: &Credentials, layout: QwenLayout) -> Result<(), StoreError> {
        // Ours first: it is what the daemon reads back after a restart.
        self.stores.selected().save(creds)?;
        if self.sync_qwen_file {
            let stamp = self.qwen.write_held(creds, layout)?;
            self.watch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(Some(stamp));
        }
        Ok(())
    }

    fn clear_blocking(&self) -> LogoutReport {
        let mut report = self.stores.logout(None);
        report.push_qwen(self.qwen.remove_held());
        if let Ok(stamp) = self.qwen.stamp() {
            self.watch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(stamp);
        }
        report
    }
}

/// Keeps `oauth_creds.lock` held while the token manager holds the guard.
struct HeldLock(#[allow(dead_code)] QwenCredsGuard);

/// Store work on the blocking pool, with a deadline: a hung keyring or filesystem fails
/// the operation (the token manager keeps its in-memory state) instead of holding it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PersistenceError> {
    crate::blocking::run("credential store", crate::blocking::STORE_DEADLINE, f)
        .await
        .map_err(|e| PersistenceError(e.to_string()))
}

#[async_trait]
impl TokenPersistence for Arc<StorePersistence> {
    async fn save(&self, creds: &Credentials) -> Result<(), PersistenceError> {
        let (this, creds) = (self.clone(), creds.clone());
        blocking(move || this.save_blocking(&creds, QwenLayout::Refresh))
            .await?
            .map_err(|e| PersistenceError(e.to_string()))
    }

    async fn save_login(&self, creds: &Credentials) -> Result<(), PersistenceError> {
        let (this, creds) = (self.clone(), creds.clone());
        blocking(move || this.save_blocking(&creds, QwenLayout::Login))
            .await?
            .map_err(|e| PersistenceError(e.to_string()))
    }

    async fn clear(&self, reason: &str) -> Result<(), PersistenceError> {
        let this = self.clone();
        let report = blocking(move || this.clear_blocking()).await?;
        tracing::info!(%reason, "Qwen OAuth credentials removed");
        let failed = report
            .failed
            .iter()
            .map(|(t, e)| format!("{t:?}: {e}"))
            .collect::<Vec<_>>();
        *self.last_clear.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PersistenceError(failed.join("; ")))
        }
    }

    /// With the Qwen Code file in step, Qwen Code's lock protocol: lock, then re-read its
    /// file, where a refresh Qwen Code made meanwhile would be. Without it, nobody else
    /// writes our store, so there is nothing to lock or re-read.
    async fn lock(&self) -> Result<StoreGuard, PersistenceError> {
        if !self.sync_qwen_file {
            return Ok(StoreGuard::default());
        }
        let this = self.clone();
        blocking(move || {
            let guard = this.qwen.lock()?;
            let current = match guard.read() {
                Ok(c) => c,
                // Written over (with a copy kept) by the save that follows.
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::warn!(error = %e, "Qwen Code's credentials file is unusable");
                    None
                }
                Err(e) => return Err(e),
            };
            Ok(StoreGuard {
                current,
                lock: Some(Box::new(HeldLock(guard))),
            })
        })
        .await?
        .map_err(|e| PersistenceError(e.to_string()))
    }
}
