//! Where the daemon keeps Qwen OAuth credentials, and how it shares them with Qwen Code.
//!
//! * [`CredentialStore`]: our copy, in the OS keyring ([`KeyringStore`]) or, where none
//!   works, in a private file ([`FileStore`]). [`Stores::open`] picks one from the
//!   `QWEN_CREDENTIAL_STORE` value the caller passes in.
//! * [`QwenCredsFile`]: Qwen Code's `~/.qwen/oauth_creds.json`, read and written exactly
//!   as Qwen Code does, under its `oauth_creds.lock` protocol ([`CredsLock`]).
//! * [`import_from_qwen`] and [`QwenFileWatch`]: adopt a login made with Qwen Code.
//! * [`logout`]: forget the credentials everywhere.
//!
//! Everything here blocks (file I/O, lock retries, keyring calls bounded by a timeout);
//! async callers should use `tokio::task::spawn_blocking`. Nothing reads the environment.
//! Secrets never reach an error, a log line or a `Debug` output.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use secrecy::ExposeSecret;

use crate::clock::SharedClock;
use crate::credentials::Credentials;

mod codec;
mod file;
pub(crate) mod fsutil;
mod keyring;
mod lock;
mod persistence;
mod qwen_creds;

pub use codec::{DecodeError, MAX_FILE_BYTES, QwenLayout, decode, encode};
pub use file::{FILE_STORE_NAME, FileStore};
pub use fsutil::FileStamp;
pub use keyring::{
    DEFAULT_SERVICE, DEFAULT_TIMEOUT, DEFAULT_USER, KeyringConfig, KeyringError, KeyringStore,
    PlatformStore,
};
pub use lock::{CredsLock, LockConfig, LockError, STALE_AFTER_MS};
pub use persistence::StorePersistence;
pub use qwen_creds::{
    QWEN_CREDS_FILE, QWEN_LOCK_FILE, QwenCredsFile, QwenCredsGuard, QwenFileWatch,
};

/// Which backend holds our copy; `as_str` is the `store` field of `qwen auth status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    Keyring,
    File,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keyring => "keyring",
            Self::File => "file",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StoreKind {
    type Err = StoreError;

    /// Parses a `QWEN_CREDENTIAL_STORE` value.
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "keyring" => Ok(Self::Keyring),
            "file" => Ok(Self::File),
            _ => Err(StoreError::BadChoice(s.to_string())),
        }
    }
}

/// What a clear/logout did to one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    NotPresent,
    /// The content was unusable, so instead of deleting it we kept it at this path.
    MovedAside(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A corrupt, truncated or invalid credential file. Names the file, never its content.
    #[error(
        "credentials file {} is unusable ({problem}); {}",
        .path.display(),
        aside_note(.moved_to.as_deref())
    )]
    Corrupt {
        path: PathBuf,
        problem: DecodeError,
        /// Where the bad file now is; `None` when it was left in place.
        moved_to: Option<PathBuf>,
    },
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("QWEN_CREDENTIAL_STORE must be \"keyring\" or \"file\", not {0:?}")]
    BadChoice(String),
}

fn aside_note(moved_to: Option<&Path>) -> String {
    match moved_to {
        Some(p) => format!("moved aside to {}", p.display()),
        None => "left in place".into(),
    }
}

impl StoreError {
    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// A place that holds our copy of the credentials. All methods block (bounded).
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> StoreKind;
    /// `Ok(None)`: nothing stored.
    fn load(&self) -> Result<Option<Credentials>, StoreError>;
    fn save(&self, creds: &Credentials) -> Result<(), StoreError>;
    fn clear(&self) -> Result<Removal, StoreError>;
}

/// Opens the keyring; [`Stores::open_with`] takes one so tests can pass a mock.
pub type KeyringOpener =
    Arc<dyn Fn(&KeyringConfig) -> Result<KeyringStore, KeyringError> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `QWEN_CREDENTIAL_STORE`, parsed; `None` = keyring if one works, else file.
    pub choice: Option<StoreKind>,
    /// Directory for the file backend (the daemon's own, e.g. `<state dir>/credentials`).
    pub file_dir: PathBuf,
    pub keyring: KeyringConfig,
    pub clock: SharedClock,
}

/// The selected backend plus the others, for logout.
pub struct Stores {
    selected: Arc<dyn CredentialStore>,
    keyring: Option<Arc<KeyringStore>>,
    file: Arc<FileStore>,
    fallback_reason: Option<String>,
    keyring_cfg: KeyringConfig,
    opener: KeyringOpener,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("selected", &self.selected.kind())
            .field("keyring", &self.keyring)
            .field("file", &self.file)
            .field("fallback_reason", &self.fallback_reason)
            .finish()
    }
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Stores {
    /// Selects the backend: an explicit choice is obeyed (an explicit `keyring` that does
    /// not work is an error, not a silent downgrade); with none, the OS keyring if it
    /// answers a probe within the timeout, else the file with a one-time warning.
    pub fn open(cfg: StoreConfig) -> Result<Self, StoreError> {
        Self::open_with(cfg, Arc::new(KeyringStore::open_native))
    }

    pub fn open_with(cfg: StoreConfig, opener: KeyringOpener) -> Result<Self, StoreError> {
        let file = Arc::new(FileStore::new(&cfg.file_dir, cfg.clock.clone()));
        // Opened once per daemon, at start-up: a write killed in an earlier run may have
        // left a temp file holding a refresh token.
        file.sweep_abandoned_temp_files();
        let (keyring, fallback_reason) = match cfg.choice {
            Some(StoreKind::File) => (None, None),
            Some(StoreKind::Keyring) => (Some(Arc::new(opener(&cfg.keyring)?)), None),
            None => match opener(&cfg.keyring) {
                Ok(k) => (Some(Arc::new(k)), None),
                Err(e) => {
                    let reason = e.to_string();
                    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            file = %file.path().display(), %reason,
                            "no working OS keyring; keeping credentials in a private file (set QWEN_CREDENTIAL_STORE to choose)"
                        );
                    }
                    (None, Some(reason))
                }
            },
        };
        let selected: Arc<dyn CredentialStore> = match &keyring {
            Some(k) => k.clone(),
            None => file.clone(),
        };
        Ok(Self {
            selected,
            keyring,
            file,
            fallback_reason,
            keyring_cfg: cfg.keyring,
            opener,
        })
    }

    pub fn selected(&self) -> &Arc<dyn CredentialStore> {
        &self.selected
    }

    pub fn kind(&self) -> StoreKind {
        self.selected.kind()
    }

    /// Why the keyring was not used when no choice was given (for `auth status`, logs).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    pub fn file_store(&self) -> &Arc<FileStore> {
        &self.file
    }

    pub fn keyring_store(&self) -> Option<&Arc<KeyringStore>> {
        self.keyring.as_ref()
    }

    pub fn import_from_qwen(
        &self,
        qwen: &QwenCredsFile,
        policy: ImportPolicy,
    ) -> Result<ImportOutcome, StoreError> {
        import_from_qwen(&*self.selected, qwen, policy)
    }

    /// Clears both backends (opening the keyring now if it was not selected; an
    /// unreachable keyring is reported as skipped, since it cannot hold anything we could
    /// reach) and, when given, Qwen Code's file.
    pub fn logout(&self, qwen: Option<&QwenCredsFile>) -> LogoutReport {
        let mut report = LogoutReport::default();
        match &self.keyring {
            Some(k) => report.push(LogoutTarget::Keyring, k.clear()),
            None => match (self.opener)(&self.keyring_cfg) {
                Ok(k) => report.push(LogoutTarget::Keyring, k.clear()),
                Err(e) => report.skipped.push((LogoutTarget::Keyring, e.to_string())),
            },
        }
        report.push(LogoutTarget::File, self.file.clear());
        if let Some(q) = qwen {
            report.push(LogoutTarget::QwenCodeFile, q.remove());
        }
        report
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPolicy {
    /// Only when our store holds nothing (daemon start-up).
    IfEmpty,
    /// Also replace ours when the file holds a different login (another refresh token)
    /// or a later expiry: the user logged in with Qwen Code, or it refreshed (and perhaps
    /// rotated the refresh token, which would make ours useless).
    IfNewer,
}

#[derive(Debug, PartialEq)]
pub enum ImportOutcome {
    /// Saved to our store.
    Imported(Credentials),
    /// Our store already holds these credentials, or better ones.
    Kept,
    /// `oauth_creds.json` does not exist.
    NothingToImport,
}

/// Copies valid credentials from Qwen Code's file into `store` according to `policy`.
/// A bad Qwen Code file is an error and changes nothing; a store that cannot be read (a
/// keyring timeout) is an error too, so a valid keyring entry is never overwritten blind.
/// A corrupt file store (already moved aside by `load`) counts as empty.
pub fn import_from_qwen(
    store: &dyn CredentialStore,
    qwen: &QwenCredsFile,
    policy: ImportPolicy,
) -> Result<ImportOutcome, StoreError> {
    let ours = match store.load() {
        Ok(c) => c,
        Err(e @ StoreError::Corrupt { .. }) => {
            tracing::warn!(error = %e, "our credential store was unusable; treating it as empty");
            None
        }
        Err(e) => return Err(e),
    };
    if policy == ImportPolicy::IfEmpty && ours.is_some() {
        return Ok(ImportOutcome::Kept);
    }
    let Some(theirs) = qwen.read()? else {
        return Ok(ImportOutcome::NothingToImport);
    };
    if let Some(ours) = &ours {
        let same_login = ours.refresh_token.expose_secret() == theirs.refresh_token.expose_secret();
        if *ours == theirs || (same_login && theirs.expiry_date <= ours.expiry_date) {
            return Ok(ImportOutcome::Kept);
        }
    }
    store.save(&theirs)?;
    Ok(ImportOutcome::Imported(theirs))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutTarget {
    Keyring,
    File,
    QwenCodeFile,
}

#[derive(Debug, Default)]
pub struct LogoutReport {
    pub done: Vec<(LogoutTarget, Removal)>,
    pub failed: Vec<(LogoutTarget, StoreError)>,
    /// Places that could not even be reached (no keyring on this machine).
    pub skipped: Vec<(LogoutTarget, String)>,
}

impl LogoutReport {
    fn push(&mut self, target: LogoutTarget, result: Result<Removal, StoreError>) {
        match result {
            Ok(r) => self.done.push((target, r)),
            Err(e) => self.failed.push((target, e)),
        }
    }

    pub(crate) fn push_qwen(&mut self, result: Result<Removal, StoreError>) {
        self.push(LogoutTarget::QwenCodeFile, result);
    }

    /// True when every reachable place is now free of credentials.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Forgets the credentials in every given store and in Qwen Code's file (under its lock).
/// Every place is attempted even when an earlier one fails.
pub fn logout(stores: &[&dyn CredentialStore], qwen: Option<&QwenCredsFile>) -> LogoutReport {
    let mut report = LogoutReport::default();
    for store in stores {
        let target = match store.kind() {
            StoreKind::Keyring => LogoutTarget::Keyring,
            StoreKind::File => LogoutTarget::File,
        };
        report.push(target, store.clear());
    }
    if let Some(q) = qwen {
        report.push(LogoutTarget::QwenCodeFile, q.remove());
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use secrecy::SecretString;
    use std::fs;

    fn creds(rt: &str, expiry: i64) -> Credentials {
        Credentials {
            access_token: SecretString::from(format!("at-SECRET-{expiry}")),
            refresh_token: SecretString::from(rt),
            token_type: "Bearer".into(),
            expiry_date: expiry,
            resource_url: Some("portal.qwen.ai".into()),
            account: None,
        }
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        qwen: QwenCredsFile,
        cfg: StoreConfig,
        platform: PlatformStore,
    }

    fn fixture(choice: Option<StoreKind>) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let clock: SharedClock = Arc::new(SystemClock);
        let qwen = QwenCredsFile::new(tmp.path().join(".qwen"), clock.clone());
        let cfg = StoreConfig {
            choice,
            file_dir: tmp.path().join("state"),
            keyring: KeyringConfig::default(),
            clock,
        };
        Fixture {
            _tmp: tmp,
            qwen,
            cfg,
            platform: ::keyring_core::mock::Store::new().unwrap(),
        }
    }

    fn mock_opener(platform: &PlatformStore) -> KeyringOpener {
        let platform = platform.clone();
        Arc::new(move |cfg| {
            let k = KeyringStore::with_store(platform.clone(), cfg)?;
            k.probe()?;
            Ok(k)
        })
    }

    fn broken_opener() -> KeyringOpener {
        Arc::new(|_| {
            Err(KeyringError::Unavailable {
                op: "connect",
                detail: "no session bus".into(),
            })
        })
    }

    #[test]
    fn choice_parsing() {
        assert_eq!("keyring".parse::<StoreKind>().unwrap(), StoreKind::Keyring);
        assert_eq!(" FILE ".parse::<StoreKind>().unwrap(), StoreKind::File);
        let e = "vault".parse::<StoreKind>().unwrap_err();
        assert!(e.to_string().contains("\"vault\""), "{e}");
    }

    #[test]
    fn selection() {
        let f = fixture(None);
        let s = Stores::open_with(f.cfg.clone(), mock_opener(&f.platform)).unwrap();
        assert_eq!((s.kind(), s.fallback_reason()), (StoreKind::Keyring, None));

        let s = Stores::open_with(f.cfg.clone(), broken_opener()).unwrap();
        assert_eq!(s.kind(), StoreKind::File);
        assert!(s.fallback_reason().unwrap().contains("no session bus"));

        let explicit_keyring = StoreConfig {
            choice: Some(StoreKind::Keyring),
            ..f.cfg.clone()
        };
        let err = Stores::open_with(explicit_keyring, broken_opener()).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Keyring(KeyringError::Unavailable { .. })
        ));

        let explicit_file = StoreConfig {
            choice: Some(StoreKind::File),
            ..f.cfg.clone()
        };
        let opened = Arc::new(AtomicBool::new(false));
        let flag = opened.clone();
        let spy: KeyringOpener = Arc::new(move |_| {
            flag.store(true, Ordering::SeqCst);
            Err(KeyringError::Unavailable {
                op: "connect",
                detail: String::new(),
            })
        });
        let s = Stores::open_with(explicit_file, spy).unwrap();
        assert_eq!(s.kind(), StoreKind::File);
        assert!(
            !opened.load(Ordering::SeqCst),
            "file choice must not touch the keyring"
        );
    }

    #[test]
    fn import_if_empty_then_if_newer() {
        let f = fixture(None);
        let s = Stores::open_with(f.cfg.clone(), mock_opener(&f.platform)).unwrap();
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfEmpty).unwrap(),
            ImportOutcome::NothingToImport
        );
        f.qwen
            .write(&creds("rt-1", 100), QwenLayout::Login)
            .unwrap();
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfEmpty).unwrap(),
            ImportOutcome::Imported(creds("rt-1", 100))
        );
        assert_eq!(s.selected().load().unwrap(), Some(creds("rt-1", 100)));

        // Qwen Code refreshes (same login, later expiry): only IfNewer adopts it.
        f.qwen
            .write(&creds("rt-1", 200), QwenLayout::Refresh)
            .unwrap();
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfEmpty).unwrap(),
            ImportOutcome::Kept
        );
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfNewer).unwrap(),
            ImportOutcome::Imported(creds("rt-1", 200))
        );
        // We refreshed later than the file: ours stays.
        s.selected().save(&creds("rt-1", 300)).unwrap();
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfNewer).unwrap(),
            ImportOutcome::Kept
        );
        // A new login with Qwen Code (another refresh token) wins even if it expires sooner.
        f.qwen
            .write(&creds("rt-2", 150), QwenLayout::Login)
            .unwrap();
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfNewer).unwrap(),
            ImportOutcome::Imported(creds("rt-2", 150))
        );
    }

    #[test]
    fn a_bad_qwen_file_never_costs_the_keyring_entry() {
        let f = fixture(None);
        let s = Stores::open_with(f.cfg.clone(), mock_opener(&f.platform)).unwrap();
        s.selected().save(&creds("rt-1", 100)).unwrap();
        fs::create_dir_all(f.qwen.dir()).unwrap();
        for bad in ["{\"access_token\":\"at-SECRET", "{}", ""] {
            fs::write(f.qwen.path(), bad).unwrap();
            let err = s
                .import_from_qwen(&f.qwen, ImportPolicy::IfNewer)
                .unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            assert!(!err.to_string().contains("SECRET"));
            assert_eq!(s.selected().load().unwrap(), Some(creds("rt-1", 100)));
        }
    }

    #[test]
    fn an_unreadable_store_is_not_overwritten_by_import() {
        let f = fixture(None);
        let s = Stores::open_with(f.cfg.clone(), mock_opener(&f.platform)).unwrap();
        s.selected().save(&creds("rt-1", 100)).unwrap();
        f.qwen
            .write(&creds("rt-2", 500), QwenLayout::Login)
            .unwrap();
        let entry = ::keyring_core::Entry::new_in_store(&f.platform, DEFAULT_SERVICE, DEFAULT_USER)
            .unwrap();
        let cred: &::keyring_core::mock::Cred = entry.as_any().downcast_ref().unwrap();
        cred.set_error(::keyring_core::Error::NoStorageAccess("locked".into()));
        assert!(s.import_from_qwen(&f.qwen, ImportPolicy::IfNewer).is_err());
        assert_eq!(s.selected().load().unwrap(), Some(creds("rt-1", 100)));
    }

    #[test]
    fn a_corrupt_file_store_counts_as_empty_for_import() {
        let f = fixture(Some(StoreKind::File));
        let s = Stores::open_with(f.cfg.clone(), broken_opener()).unwrap();
        fs::create_dir_all(&f.cfg.file_dir).unwrap();
        fs::write(s.file_store().path(), "{").unwrap();
        f.qwen
            .write(&creds("rt-1", 100), QwenLayout::Login)
            .unwrap();
        assert_eq!(
            s.import_from_qwen(&f.qwen, ImportPolicy::IfEmpty).unwrap(),
            ImportOutcome::Imported(creds("rt-1", 100))
        );
        let kept: Vec<_> = fs::read_dir(&f.cfg.file_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(kept.len(), 1, "the bad file was kept, not deleted");
    }

    #[test]
    fn logout_clears_every_backend_and_the_qwen_file() {
        let f = fixture(Some(StoreKind::File));
        // Credentials left in the keyring from an earlier run with the keyring selected.
        KeyringStore::with_store(f.platform.clone(), &f.cfg.keyring)
            .unwrap()
            .save(&creds("rt-old", 1))
            .unwrap();
        let s = Stores::open_with(f.cfg.clone(), mock_opener(&f.platform)).unwrap();
        s.selected().save(&creds("rt-1", 100)).unwrap();
        f.qwen
            .write(&creds("rt-1", 100), QwenLayout::Login)
            .unwrap();
        let report = s.logout(Some(&f.qwen));
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(
            report.done,
            vec![
                (LogoutTarget::Keyring, Removal::Removed),
                (LogoutTarget::File, Removal::Removed),
                (LogoutTarget::QwenCodeFile, Removal::Removed),
            ]
        );
        assert!(!f.qwen.path().exists() && !f.qwen.lock_path().exists());
        let again = s.logout(Some(&f.qwen));
        assert!(again.done.iter().all(|(_, r)| *r == Removal::NotPresent));
    }

    #[test]
    fn logout_goes_on_past_failures_and_skips_a_missing_keyring() {
        let f = fixture(None);
        let s = Stores::open_with(f.cfg.clone(), broken_opener()).unwrap();
        s.selected().save(&creds("rt-1", 100)).unwrap();
        // The Qwen lock is held by someone else for good.
        let qwen = f.qwen.clone().with_lock_config(LockConfig {
            max_attempts: 2,
            initial_interval: std::time::Duration::from_millis(1),
            ..LockConfig::default()
        });
        qwen.write(&creds("rt-1", 100), QwenLayout::Login).unwrap();
        fs::write(qwen.lock_path(), "held").unwrap();
        let report = s.logout(Some(&qwen));
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.done, vec![(LogoutTarget::File, Removal::Removed)]);
        assert!(matches!(
            report.failed.as_slice(),
            [(
                LogoutTarget::QwenCodeFile,
                StoreError::Lock(LockError::Timeout { .. })
            )]
        ));
        assert!(!report.is_complete());
    }

    #[test]
    fn free_logout_over_explicit_stores() {
        let f = fixture(None);
        let file = FileStore::new(&f.cfg.file_dir, f.cfg.clock.clone());
        let kr = KeyringStore::with_store(f.platform.clone(), &f.cfg.keyring).unwrap();
        file.save(&creds("a", 1)).unwrap();
        let report = logout(&[&kr, &file], None);
        assert_eq!(
            report.done,
            vec![
                (LogoutTarget::Keyring, Removal::NotPresent),
                (LogoutTarget::File, Removal::Removed)
            ]
        );
    }

    #[test]
    fn nothing_secret_in_debug_or_errors() {
        let f = fixture(None);
        let s = Stores::open_with(f.cfg.clone(), mock_opener(&f.platform)).unwrap();
        s.selected().save(&creds("rt-SECRET", 100)).unwrap();
        f.qwen
            .write(&creds("rt-SECRET", 100), QwenLayout::Login)
            .unwrap();
        let outcome = s.import_from_qwen(&f.qwen, ImportPolicy::IfNewer).unwrap();
        let report = s.logout(Some(&f.qwen));
        let shown = format!("{s:?} {:?} {outcome:?} {report:?}", f.qwen);
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
