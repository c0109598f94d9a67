//! The token manager's view of the stores: our backend (keyring or file) plus, when
//! enabled, Qwen Code's `oauth_creds.json` kept in step under its `oauth_creds.lock`.
//!
//! Every store call blocks (keyring over D-Bus, fsync'd files), so each runs on the
//! blocking pool.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    ImportOutcome, ImportPolicy, LogoutReport, QwenCredsFile, QwenCredsGuard, QwenFileWatch,
    QwenLayout, StoreError, Stores,
};
use crate::blocking::{STORE_DEADLINE, run};
use crate::credentials::Credentials;
use crate::tokens::{PersistenceError, StoreGuard, TokenPersistence};

pub struct StorePersistence {
    stores: Arc<Stores>,
    qwen: QwenCredsFile,
    /// Write our logins and refreshes into Qwen Code's file too.
    sync_qwen_file: bool,
    /// What Qwen Code's file looked like when we last read or wrote it: a change is a
    /// login or refresh made with Qwen Code, to import; our own writes are recorded so
    /// they never look like one.
    watch: Mutex<QwenFileWatch>,
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
    pub fn new(stores: Arc<Stores>, qwen: QwenCredsFile, sync_qwen_file: bool) -> Self {
        Self {
            stores,
            qwen,
            sync_qwen_file,
            watch: Mutex::new(QwenFileWatch::new()),
        }
    }

    fn watch(&self) -> std::sync::MutexGuard<'_, QwenFileWatch> {
        self.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Credentials Qwen Code wrote since we last looked (the user logged in with it, or it
    /// refreshed), once they are in our store. The first call imports an existing file.
    /// Blocks.
    pub fn import_if_changed(&self) -> Option<Credentials> {
        if !self.watch().changed(&self.qwen).unwrap_or(true) {
            return None;
        }
        match self
            .stores
            .import_from_qwen(&self.qwen, ImportPolicy::IfNewer)
        {
            Ok(ImportOutcome::Imported(c)) => {
                tracing::info!("imported Qwen Code's credentials from oauth_creds.json");
                Some(c)
            }
            Ok(_) => None,
            // A bad Qwen Code file never costs us our own credentials.
            Err(e) => {
                tracing::warn!("not importing Qwen Code's credentials: {e}");
                None
            }
        }
    }

    /// Removes the credentials everywhere (on the blocking pool) and says where from.
    pub async fn clear_reporting(
        self: &Arc<Self>,
        reason: &str,
    ) -> Result<LogoutReport, PersistenceError> {
        let this = self.clone();
        let report = run(WHAT, STORE_DEADLINE, move || this.clear_blocking()).await?;
        tracing::info!(%reason, "Qwen OAuth credentials removed");
        Ok(report)
    }

    fn save_blocking(&self, creds: &Credentials, layout: QwenLayout) -> Result<(), StoreError> {
        // Ours first: it is what the daemon reads back after a restart.
        self.stores.selected().save(creds)?;
        if self.sync_qwen_file {
            let stamp = self.qwen.write_held(creds, layout)?;
            self.watch().record(Some(stamp));
        }
        Ok(())
    }

    fn clear_blocking(&self) -> LogoutReport {
        let mut report = self.stores.logout(None);
        report.push_qwen(self.qwen.remove_held());
        if let Ok(stamp) = self.qwen.stamp() {
            self.watch().record(stamp);
        }
        report
    }
}

/// Keeps `oauth_creds.lock` held while the token manager holds the guard.
struct HeldLock(#[allow(dead_code)] QwenCredsGuard);

impl From<StoreError> for PersistenceError {
    fn from(e: StoreError) -> Self {
        Self(e.to_string())
    }
}

/// Store work runs on the blocking pool with a deadline: a hung keyring or filesystem
/// fails the operation (the token manager keeps its in-memory state) instead of holding it.
const WHAT: &str = "credential store";

#[async_trait]
impl TokenPersistence for Arc<StorePersistence> {
    async fn save(&self, creds: &Credentials) -> Result<(), PersistenceError> {
        let (this, creds) = (self.clone(), creds.clone());
        Ok(run(WHAT, STORE_DEADLINE, move || {
            this.save_blocking(&creds, QwenLayout::Refresh)
        })
        .await??)
    }

    async fn save_login(&self, creds: &Credentials) -> Result<(), PersistenceError> {
        let (this, creds) = (self.clone(), creds.clone());
        Ok(run(WHAT, STORE_DEADLINE, move || {
            this.save_blocking(&creds, QwenLayout::Login)
        })
        .await??)
    }

    async fn clear(&self, reason: &str) -> Result<(), PersistenceError> {
        let report = self.clear_reporting(reason).await?;
        let failed = report
            .failed
            .iter()
            .map(|(t, e)| format!("{t:?}: {e}"))
            .collect::<Vec<_>>();
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
        let guard = run(WHAT, STORE_DEADLINE, move || {
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
            Ok::<_, StoreError>(StoreGuard {
                current,
                lock: Some(Box::new(HeldLock(guard))),
            })
        })
        .await??;
        Ok(guard)
    }
}
