//! The OS keyring backend, through `keyring-core` and one platform store crate per OS:
//! Secret Service over pure-Rust zbus on Linux/BSD, Keychain on macOS. The entry holds the
//! `oauth_creds.json` JSON as its secret. qwend builds on Unix only (the transport refuses
//! anything else, see shared/src/transport.rs); a Windows port adds Credential Manager here
//! with its named-pipe transport. A Unix without either (iOS, Android) has no keyring and
//! uses the file store.
//!
//! Every call runs on its own thread and is abandoned after a timeout: a hung D-Bus (a
//! locked collection waiting for a prompt nobody sees, a wedged daemon) must never hang
//! the caller. While an abandoned call is still stuck, further calls fail at once instead
//! of piling up threads behind the store's internal mutex.
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use secrecy::zeroize::Zeroizing;

use super::codec::{self, DecodeError, QwenLayout};
use super::{CredentialStore, Removal, StoreError, StoreKind};
use crate::credentials::Credentials;

pub const DEFAULT_SERVICE: &str = "qwend";
pub const DEFAULT_USER: &str = "qwen-oauth";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The platform store type behind the keyring API.
pub type PlatformStore = Arc<keyring_core::CredentialStore>;

#[derive(Debug, Clone)]
pub struct KeyringConfig {
    pub service: String,
    pub user: String,
    /// Upper bound for any single keyring call, connection included.
    pub timeout: Duration,
}

impl Default for KeyringConfig {
    fn default() -> Self {
        Self {
            service: DEFAULT_SERVICE.into(),
            user: DEFAULT_USER.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What went wrong talking to the keyring. Never carries secret bytes: keyring-core's own
/// `BadEncoding`/`BadDataFormat` errors do, so they are mapped, not wrapped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {op} did not answer within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("keyring {op} refused: an earlier keyring call is still hung")]
    Stuck { op: &'static str },
    #[error("no usable OS keyring for {op}: {detail}")]
    Unavailable { op: &'static str, detail: String },
    #[error("keyring {op}: the keyring is locked or access was denied: {detail}")]
    Denied { op: &'static str, detail: String },
    #[error("keyring {op} failed: {detail}")]
    Platform { op: &'static str, detail: String },
    #[error("keyring {op}: {count} entries match this service and user")]
    Ambiguous { op: &'static str, count: usize },
    #[error("the keyring entry does not hold usable credentials: {problem}")]
    BadData { problem: DecodeError },
    #[error("keyring {op} failed inside its worker thread: {detail}")]
    Worker { op: &'static str, detail: String },
}

fn map_err(op: &'static str, e: keyring_core::Error) -> KeyringError {
    use keyring_core::Error as E;
    match e {
        E::NoStorageAccess(p) => KeyringError::Denied {
            op,
            detail: p.to_string(),
        },
        E::PlatformFailure(p) => KeyringError::Platform {
            op,
            detail: p.to_string(),
        },
        E::NoDefaultStore => KeyringError::Unavailable {
            op,
            detail: "no credential store".into(),
        },
        E::NotSupportedByStore(why) => KeyringError::Unavailable { op, detail: why },
        E::Ambiguous(entries) => KeyringError::Ambiguous {
            op,
            count: entries.len(),
        },
        E::BadEncoding(_) | E::BadDataFormat(..) => KeyringError::Platform {
            op,
            detail: "the stored secret is not in the expected format".into(),
        },
        E::BadStoreFormat(why) => KeyringError::Platform { op, detail: why },
        E::TooLong(what, limit) => KeyringError::Platform {
            op,
            detail: format!("{what} is longer than the platform limit of {limit}"),
        },
        E::Invalid(what, why) => KeyringError::Platform {
            op,
            detail: format!("invalid {what}: {why}"),
        },
        E::NoEntry => KeyringError::Platform {
            op,
            detail: "no entry".into(),
        },
        _ => KeyringError::Platform {
            op,
            detail: "unrecognized keyring error".into(),
        },
    }
}

/// Runs blocking keyring calls on detached threads with a deadline. Detached (not a
/// runtime's blocking pool) so a call that never returns cannot hold up process exit.
#[derive(Debug, Clone)]
struct Runner {
    timeout: Duration,
    /// Calls abandoned after their deadline that have not returned yet.
    stuck: Arc<(Mutex<usize>, Condvar)>,
}

#[derive(Debug, PartialEq)]
enum CallState {
    Running,
    Done,
    Abandoned,
}

impl Runner {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            stuck: Arc::new((Mutex::new(0), Condvar::new())),
        }
    }

    fn stuck_calls(&self) -> usize {
        *self.stuck.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, KeyringError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.stuck_calls() > 0 {
            return Err(KeyringError::Stuck { op });
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let state = Arc::new(Mutex::new(CallState::Running));
        let (thread_state, stuck) = (state.clone(), self.stuck.clone());
        std::thread::Builder::new()
            .name(format!("qwend-keyring-{op}"))
            .spawn(move || {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                let _ = tx.send(out);
                let mut st = thread_state.lock().unwrap_or_else(|p| p.into_inner());
                if *st == CallState::Abandoned {
                    let (count, cv) = &*stuck;
                    *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
                    cv.notify_all();
                } else {
                    *st = CallState::Done;
                }
            })
            .map_err(|e| KeyringError::Worker {
                op,
                detail: format!("cannot start a thread: {e}"),
            })?;
        let received = match rx.recv_timeout(self.timeout) {
            Ok(out) => Some(out),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if *st == CallState::Running {
                    *st = CallState::Abandoned;
                    *self.stuck.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    None
                } else {
                    // It finished in the instant between the deadline and the check.
                    rx.try_recv().ok()
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(KeyringError::Worker {
                    op,
                    detail: "the worker thread vanished".into(),
                });
            }
        };
        match received {
            Some(Ok(value)) => Ok(value),
            Some(Err(_panic)) => Err(KeyringError::Worker {
                op,
                detail: "the keyring library panicked".into(),
            }),
            None => Err(KeyringError::Timeout {
                op,
                after: self.timeout,
            }),
        }
    }

    /// Test support: block until abandoned calls have returned (no sleeping poll).
    #[cfg(test)]
    fn wait_unstuck(&self, limit: Duration) -> bool {
        let (count, cv) = &*self.stuck;
        let guard = count.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, limit, |n| *n > 0).unwrap();
        *guard == 0
    }
}

/// One keyring entry (`service`/`user`) holding our credentials.
pub struct KeyringStore {
    entry: Arc<keyring_core::Entry>,
    cfg: KeyringConfig,
    vendor: String,
    runner: Runner,
}

impl std::fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyringStore")
            .field("vendor", &self.vendor)
            .field("service", &self.cfg.service)
            .field("user", &self.cfg.user)
            .field("timeout", &self.cfg.timeout)
            .finish()
    }
}

impl KeyringStore {
    /// Connects to this platform's keyring and probes it with a read; `Err` means "no
    /// working keyring here" (the caller falls back to the file store).
    pub fn open_native(cfg: &KeyringConfig) -> Result<Self, KeyringError> {
        let runner = Runner::new(cfg.timeout);
        let store = runner.run("connect", native_store)?.map_err(|e| match e {
            // Failing to reach the service is "unavailable", whatever the platform says.
            keyring_core::Error::PlatformFailure(p) | keyring_core::Error::NoStorageAccess(p) => {
                KeyringError::Unavailable {
                    op: "connect",
                    detail: p.to_string(),
                }
            }
            other => map_err("connect", other),
        })?;
        runner.run("probe", platform_ready)??;
        let this = Self::build(store, cfg, runner)?;
        this.probe()?;
        Ok(this)
    }

    /// Over any keyring-core store, e.g. `keyring_core::mock::Store` in tests. No probe.
    pub fn with_store(store: PlatformStore, cfg: &KeyringConfig) -> Result<Self, KeyringError> {
        Self::build(store, cfg, Runner::new(cfg.timeout))
    }

    fn build(
        store: PlatformStore,
        cfg: &KeyringConfig,
        runner: Runner,
    ) -> Result<Self, KeyringError> {
        let vendor = store.vendor();
        let (service, user) = (cfg.service.clone(), cfg.user.clone());
        let entry = runner
            .run("open", move || {
                keyring_core::Entry::new_in_store(&store, &service, &user)
            })?
            .map_err(|e| map_err("open", e))?;
        Ok(Self {
            entry: Arc::new(entry),
            cfg: cfg.clone(),
            vendor,
            runner,
        })
    }

    /// A read that succeeds or finds nothing means the keyring answers; the content is
    /// not judged (a bad entry is still a working keyring).
    pub fn probe(&self) -> Result<(), KeyringError> {
        let entry = self.entry.clone();
        self.runner
            .run("probe", move || match entry.get_secret() {
                Ok(bytes) => {
                    drop(Zeroizing::new(bytes));
                    Ok(())
                }
                Err(keyring_core::Error::NoEntry) => Ok(()),
                Err(e) => Err(map_err("probe", e)),
            })
            .and_then(|r| r)
    }

    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    pub fn config(&self) -> &KeyringConfig {
        &self.cfg
    }
}

impl CredentialStore for KeyringStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Keyring
    }

    fn load(&self) -> Result<Option<Credentials>, StoreError> {
        let entry = self.entry.clone();
        let loaded = self.runner.run("read", move || match entry.get_secret() {
            Ok(bytes) => codec::decode(&Zeroizing::new(bytes))
                .map(Some)
                .map_err(|problem| KeyringError::BadData { problem }),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(map_err("read", e)),
        })?;
        Ok(loaded?)
    }

    fn save(&self, creds: &Credentials) -> Result<(), StoreError> {
        let entry = self.entry.clone();
        // Moved into the worker, wiped when it finishes even if we stopped waiting.
        let bytes = codec::encode(creds, QwenLayout::Login);
        let saved = self
            .runner
            .run("write", move || match entry.set_secret(&bytes) {
                // Items another tool created under the same attributes: ours replaces them.
                Err(keyring_core::Error::Ambiguous(dupes)) => {
                    for dupe in dupes {
                        let _ = dupe.delete_credential();
                    }
                    entry.set_secret(&bytes).map_err(|e| map_err("write", e))
                }
                other => other.map_err(|e| map_err("write", e)),
            })?;
        Ok(saved?)
    }

    fn clear(&self) -> Result<Removal, StoreError> {
        let entry = self.entry.clone();
        let cleared = self
            .runner
            .run("delete", move || match entry.delete_credential() {
                Ok(()) => Ok(Removal::Removed),
                Err(keyring_core::Error::NoEntry) => Ok(Removal::NotPresent),
                Err(keyring_core::Error::Ambiguous(dupes)) => {
                    for dupe in dupes {
                        dupe.delete_credential()
                            .or_else(|e| match e {
                                keyring_core::Error::NoEntry => Ok(()),
                                e => Err(e),
                            })
                            .map_err(|e| map_err("delete", e))?;
                    }
                    Ok(Removal::Removed)
                }
                Err(e) => Err(map_err("delete", e)),
            })?;
        Ok(cleared?)
    }
}

/// A read succeeds against a Secret Service whose default collection is missing or
/// locked (nothing to find), yet the first write then needs an interactive prompt: a
/// headless session that merely auto-started gnome-keyring fails with "prompt dismissed".
/// So require an existing, unlocked default collection; this asks no prompt.
#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn platform_ready() -> Result<(), KeyringError> {
    use secret_service::{EncryptionType, blocking::SecretService};
    let unavailable = |detail: String| KeyringError::Unavailable {
        op: "probe",
        detail,
    };
    // Plain: the probe moves no secret.
    let ss =
        SecretService::connect(EncryptionType::Plain).map_err(|e| unavailable(e.to_string()))?;
    let collection = ss
        .get_default_collection()
        .map_err(|e| unavailable(format!("no default keyring collection ({e})")))?;
    match collection.is_locked() {
        Ok(false) => Ok(()),
        Ok(true) => Err(KeyringError::Denied {
            op: "probe",
            detail: "the default keyring collection is locked".into(),
        }),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

#[cfg(not(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
)))]
fn platform_ready() -> Result<(), KeyringError> {
    Ok(())
}

#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn native_store() -> keyring_core::Result<PlatformStore> {
    let store: PlatformStore = zbus_secret_service_keyring_store::Store::new()?;
    Ok(store)
}

#[cfg(target_os = "macos")]
fn native_store() -> keyring_core::Result<PlatformStore> {
    let store: PlatformStore = apple_native_keyring_store::keychain::Store::new()?;
    Ok(store)
}

#[cfg(any(target_os = "ios", target_os = "android"))]
fn native_store() -> keyring_core::Result<PlatformStore> {
    Err(keyring_core::Error::NotSupportedByStore(
        "no OS keyring support on this platform".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyring_core::api::{CredentialApi, CredentialStoreApi};
    use keyring_core::mock;
    use secrecy::{ExposeSecret, SecretString};
    use std::collections::HashMap;

    fn creds(at: &str) -> Credentials {
        Credentials {
            access_token: SecretString::from(at),
            refresh_token: SecretString::from("rt-SECRET"),
            token_type: "Bearer".into(),
            expiry_date: 42,
            resource_url: None,
            account: None,
        }
    }

    fn mock_store() -> (KeyringStore, PlatformStore) {
        let platform: PlatformStore = mock::Store::new().unwrap();
        let store = KeyringStore::with_store(platform.clone(), &KeyringConfig::default()).unwrap();
        (store, platform)
    }

    fn mock_cred(store: &KeyringStore) -> &mock::Cred {
        store.entry.as_any().downcast_ref().unwrap()
    }

    #[test]
    fn round_trip_through_the_mock_store() {
        let (store, platform) = mock_store();
        assert_eq!(store.load().unwrap(), None);
        store.probe().unwrap();
        store.save(&creds("at-SECRET")).unwrap();
        assert_eq!(store.load().unwrap(), Some(creds("at-SECRET")));
        // Another handle on the same service/user sees the same entry.
        let again = KeyringStore::with_store(platform, &KeyringConfig::default()).unwrap();
        assert_eq!(again.load().unwrap(), Some(creds("at-SECRET")));
        assert_eq!(store.clear().unwrap(), Removal::Removed);
        assert_eq!(again.clear().unwrap(), Removal::NotPresent);
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn the_secret_is_the_qwen_json() {
        let (store, _) = mock_store();
        store.save(&creds("at-1")).unwrap();
        let raw = store.entry.get_secret().unwrap();
        assert!(raw.starts_with(b"{\n  \"access_token\": \"at-1\",\n  \"refresh_token\""));
    }

    #[test]
    fn platform_errors_are_typed() {
        let (store, _) = mock_store();
        let platform_err = || -> keyring_core::error::PlatformError { "dbus said no".into() };
        mock_cred(&store).set_error(keyring_core::Error::NoStorageAccess(platform_err()));
        let err = store.load().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Keyring(KeyringError::Denied { op: "read", .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("dbus said no"));
        mock_cred(&store).set_error(keyring_core::Error::PlatformFailure(platform_err()));
        assert!(matches!(
            store.save(&creds("x")).unwrap_err(),
            StoreError::Keyring(KeyringError::Platform { op: "write", .. })
        ));
        mock_cred(&store).set_error(keyring_core::Error::PlatformFailure(platform_err()));
        assert!(store.probe().is_err());
    }

    #[test]
    fn secret_bytes_in_keyring_errors_are_dropped() {
        let (store, _) = mock_store();
        mock_cred(&store).set_error(keyring_core::Error::BadDataFormat(
            b"at-SECRET".to_vec(),
            "garbled".into(),
        ));
        let err = store.load().unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("97, 116"),
            "{shown}"
        );
    }

    #[test]
    fn a_bad_entry_is_reported_without_content_and_kept() {
        let (store, _) = mock_store();
        store
            .entry
            .set_secret(b"{\"access_token\":\"at-SECRET\"")
            .unwrap();
        let err = store.load().unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(matches!(
            err,
            StoreError::Keyring(KeyringError::BadData {
                problem: DecodeError::Truncated
            })
        ));
        store.probe().unwrap();
        assert!(store.entry.get_secret().is_ok(), "not deleted by a read");
    }

    #[test]
    fn debug_shows_no_secrets() {
        let (store, _) = mock_store();
        store.save(&creds("at-SECRET")).unwrap();
        let shown = format!("{store:?}");
        assert!(
            !shown.contains("SECRET") && shown.contains("qwen-oauth"),
            "{shown}"
        );
    }

    // ----- a store whose calls hang until released, to test the deadline -----

    #[derive(Debug, Default)]
    struct Gate {
        open: Mutex<bool>,
        cv: Condvar,
    }

    #[derive(Debug)]
    struct HangingCred(Arc<Gate>);

    impl CredentialApi for HangingCred {
        fn set_secret(&self, _: &[u8]) -> keyring_core::Result<()> {
            self.get_secret().map(drop)
        }
        fn get_secret(&self) -> keyring_core::Result<Vec<u8>> {
            let open = self.0.open.lock().unwrap();
            drop(self.0.cv.wait_while(open, |o| !*o).unwrap());
            Err(keyring_core::Error::NoEntry)
        }
        fn delete_credential(&self) -> keyring_core::Result<()> {
            self.get_secret().map(drop)
        }
        fn get_credential(&self) -> keyring_core::Result<Option<Arc<keyring_core::Credential>>> {
            Ok(None)
        }
        fn get_specifiers(&self) -> Option<(String, String)> {
            None
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    #[derive(Debug)]
    struct HangingStore(Arc<Gate>);

    impl CredentialStoreApi for HangingStore {
        fn vendor(&self) -> String {
            "hanging".into()
        }
        fn id(&self) -> String {
            "hanging".into()
        }
        fn build(
            &self,
            _: &str,
            _: &str,
            _: Option<&HashMap<&str, &str>>,
        ) -> keyring_core::Result<keyring_core::Entry> {
            Ok(keyring_core::Entry::new_with_credential(Arc::new(
                HangingCred(self.0.clone()),
            )))
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    #[test]
    fn a_hung_keyring_times_out_and_then_fails_fast() {
        let gate = Arc::new(Gate::default());
        let cfg = KeyringConfig {
            timeout: Duration::from_millis(50),
            ..KeyringConfig::default()
        };
        let store = KeyringStore::with_store(Arc::new(HangingStore(gate.clone())), &cfg).unwrap();
        let started = std::time::Instant::now();
        let err = store.load().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Keyring(KeyringError::Timeout { op: "read", .. })
            ),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The first call is still stuck: the next ones do not queue behind it.
        assert!(matches!(
            store.save(&creds("x")).unwrap_err(),
            StoreError::Keyring(KeyringError::Stuck { op: "write" })
        ));
        assert!(matches!(store.probe(), Err(KeyringError::Stuck { .. })));
        // Once the hung call returns, the keyring is usable again.
        *gate.open.lock().unwrap() = true;
        gate.cv.notify_all();
        assert!(store.runner.wait_unstuck(Duration::from_secs(10)));
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn a_panicking_store_is_an_error_not_a_crash() {
        let runner = Runner::new(Duration::from_secs(5));
        let r: Result<(), _> = runner.run("read", || panic!("library bug"));
        assert!(matches!(r, Err(KeyringError::Worker { op: "read", .. })));
        assert_eq!(runner.stuck_calls(), 0);
    }

    /// Runs against the real Secret Service when a session bus offers one (CI starts
    /// gnome-keyring under dbus-run-session); prints why it skipped otherwise. With
    /// `QWEND_REQUIRE_REAL_KEYRING=1` a skip is a failure, so a broken CI setup shows.
    #[test]
    fn real_os_keyring_round_trip() {
        let skip = |why: &str| {
            assert!(
                std::env::var_os("QWEND_REQUIRE_REAL_KEYRING").is_none(),
                "real keyring required but unavailable: {why}"
            );
            eprintln!("SKIP real_os_keyring_round_trip: {why}");
        };
        if cfg!(target_os = "macos") {
            return skip("only run against Secret Service");
        }
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
            return skip("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS unset)");
        }
        let cfg = KeyringConfig {
            service: "qwend-test".into(),
            user: format!(
                "roundtrip-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            timeout: Duration::from_secs(10),
        };
        let store = match KeyringStore::open_native(&cfg) {
            Ok(s) => s,
            Err(e) => return skip(&format!("no working Secret Service: {e}")),
        };
        eprintln!("real keyring: {}", store.vendor());
        assert_eq!(store.load().unwrap(), None);
        store.save(&creds("at-real")).unwrap();
        let got = store.load().unwrap().unwrap();
        assert_eq!(got.access_token.expose_secret(), "at-real");
        store.save(&creds("at-real-2")).unwrap();
        assert_eq!(store.load().unwrap(), Some(creds("at-real-2")));
        assert_eq!(store.clear().unwrap(), Removal::Removed);
        assert_eq!(store.load().unwrap(), None);
        assert_eq!(store.clear().unwrap(), Removal::NotPresent);
    }
}
