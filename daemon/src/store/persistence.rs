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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{SharedClock, SystemClock};
    use crate::store::{KeyringConfig, LogoutTarget, Removal, StoreConfig, StoreKind};
    use secrecy::SecretString;

    fn creds(at: &str, expiry_date: i64) -> Credentials {
        Credentials {
            access_token: SecretString::from(at),
            refresh_token: SecretString::from("rt"),
            token_type: "Bearer".into(),
            expiry_date,
            resource_url: Some("portal.qwen.ai".into()),
            account: None,
        }
    }

    fn persistence(dir: &std::path::Path) -> (Arc<StorePersistence>, QwenCredsFile) {
        let clock: SharedClock = Arc::new(SystemClock);
        let stores = Stores::open(StoreConfig {
            choice: Some(StoreKind::File),
            file_dir: dir.join("state/credentials"),
            keyring: KeyringConfig::default(),
            clock: clock.clone(),
        })
        .unwrap();
        std::fs::create_dir_all(dir.join("qwen")).unwrap();
        let qwen = QwenCredsFile::new(dir.join("qwen"), clock);
        (
            Arc::new(StorePersistence::new(Arc::new(stores), qwen.clone(), true)),
            qwen,
        )
    }

    /// The store alone watches Qwen Code's file: its own writes are never taken for a
    /// login made with Qwen Code, another program's are imported once.
    #[tokio::test]
    async fn own_writes_are_not_imports_and_foreign_ones_are_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let (p, qwen) = persistence(dir.path());
        let far = 4_000_000_000_000;
        assert!(p.import_if_changed().is_none(), "no file yet");
        p.save_login(&creds("at-ours", far)).await.unwrap();
        assert!(qwen.path().exists());
        assert!(p.import_if_changed().is_none(), "our own write");
        // Qwen Code logs in: a newer file, written by someone else.
        std::fs::write(
            qwen.path(),
            format!(
                r#"{{"access_token":"at-theirs","refresh_token":"rt2","token_type":"Bearer","resource_url":"portal.qwen.ai","expiry_date":{}}}"#,
                far + 1
            ),
        )
        .unwrap();
        let imported = p.import_if_changed().expect("a foreign write is a login");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&imported.access_token),
            "at-theirs"
        );
        assert!(p.import_if_changed().is_none(), "imported once");
    }

    /// The report of what a logout removed comes back from the call that removed it.
    #[tokio::test]
    async fn clearing_returns_its_report() {
        let dir = tempfile::tempdir().unwrap();
        let (p, qwen) = persistence(dir.path());
        p.save_login(&creds("at", 4_000_000_000_000)).await.unwrap();
        let report = p.clear_reporting("logged out").await.unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        for target in [LogoutTarget::File, LogoutTarget::QwenCodeFile] {
            assert!(
                report
                    .done
                    .iter()
                    .any(|(t, r)| *t == target && !matches!(r, Removal::NotPresent)),
                "{target:?} in {:?}",
                report.done
            );
        }
        assert!(!qwen.path().exists());
        assert!(p.import_if_changed().is_none(), "our own removal");
        let again = p.clear_reporting("logged out").await.unwrap();
        assert!(
            again
                .done
                .iter()
                .all(|(_, r)| matches!(r, Removal::NotPresent)),
            "{:?}",
            again.done
        );
    }
}
