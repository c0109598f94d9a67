//! Our own credential file, for machines without a working OS keyring: one JSON file
//! (the `oauth_creds.json` shape) in a directory we own, 0600 inside 0700, replaced
//! atomically so a crash leaves the old or the new credentials and never a torn file.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::codec::{self, QwenLayout};
use super::fsutil::{self, Aside};
use super::{CredentialStore, Removal, StoreError, StoreKind};
use crate::clock::SharedClock;
use crate::credentials::Credentials;

pub const FILE_STORE_NAME: &str = "credentials.json";

/// Temp files of a killed writer younger than this might still be a live write.
const TEMP_SWEEP_AGE_MS: i64 = 60_000;

#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    path: PathBuf,
    clock: SharedClock,
}

impl FileStore {
    /// `dir` is a directory the daemon owns (it is created, and narrowed, to 0700).
    pub fn new(dir: impl Into<PathBuf>, clock: SharedClock) -> Self {
        let dir = dir.into();
        Self {
            path: dir.join(FILE_STORE_NAME),
            dir,
            clock,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes every temp file of an interrupted write, whatever its age: at start-up and
    /// at logout. Only qwend writes this directory, and a daemon does either before it
    /// writes (at start-up) or instead of writing (at logout).
    pub fn sweep_abandoned_temp_files(&self) {
        fsutil::sweep_temp_files(&self.path, &*self.clock, -1);
    }

    fn read(&self) -> Result<Option<Result<Credentials, codec::DecodeError>>, StoreError> {
        let bytes =
            fsutil::read_capped(&self.path).map_err(|e| StoreError::io(&self.path, "read", e))?;
        Ok(bytes.map(|b| codec::decode(&b)))
    }
}

impl CredentialStore for FileStore {
    fn kind(&self) -> StoreKind {
        StoreKind::File
    }

    /// A bad file is moved aside (we own it; leaving it would fail every later load) and
    /// reported once; the next load sees no credentials.
    fn load(&self) -> Result<Option<Credentials>, StoreError> {
        match self.read()? {
            None => Ok(None),
            Some(Ok(creds)) => Ok(Some(creds)),
            Some(Err(problem)) => {
                let moved_to = match fsutil::preserve_aside(&self.path, &*self.clock, Aside::Move) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot move the unusable credential file aside");
                        None
                    }
                };
                Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    problem,
                    moved_to,
                })
            }
        }
    }

    fn save(&self, creds: &Credentials) -> Result<(), StoreError> {
        fsutil::ensure_private_dir(&self.dir, true)
            .map_err(|e| StoreError::io(&self.dir, "create", e))?;
        fsutil::sweep_temp_files(&self.path, &*self.clock, TEMP_SWEEP_AGE_MS);
        fsutil::atomic_write(&self.path, &codec::encode(creds, QwenLayout::Login))
            .map_err(|e| StoreError::io(&self.path, "write", e))
    }

    /// Also removes every temp file of an interrupted write: they hold refresh tokens.
    fn clear(&self) -> Result<Removal, StoreError> {
        self.sweep_abandoned_temp_files();
        match self.read()? {
            None => Ok(Removal::NotPresent),
            Some(Ok(_)) => match fs::remove_file(&self.path) {
                Ok(()) => Ok(Removal::Removed),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::NotPresent),
                Err(e) => Err(StoreError::io(&self.path, "remove", e)),
            },
            Some(Err(_)) => fsutil::preserve_aside(&self.path, &*self.clock, Aside::Move)
                .map(Removal::MovedAside)
                .map_err(|e| StoreError::io(&self.path, "move aside", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use secrecy::{ExposeSecret, SecretString};
    use std::sync::Arc;

    fn creds(generation: i64) -> Credentials {
        Credentials {
            access_token: SecretString::from(format!("at-gen-{generation}")),
            refresh_token: SecretString::from(format!("rt-gen-{generation}")),
            token_type: "Bearer".into(),
            expiry_date: 1_000 + generation,
            resource_url: Some("portal.qwen.ai".into()),
            account: None,
        }
    }

    fn store_in(dir: &Path) -> FileStore {
        FileStore::new(dir, Arc::new(SystemClock))
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn round_trip_with_private_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/creds");
        let s = store_in(&dir);
        assert_eq!(s.load().unwrap(), None);
        s.save(&creds(1)).unwrap();
        assert_eq!(s.load().unwrap(), Some(creds(1)));
        s.save(&creds(2)).unwrap();
        assert_eq!(s.load().unwrap(), Some(creds(2)));
        assert_eq!(mode_of(s.path()), 0o600);
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(s.clear().unwrap(), Removal::Removed);
        assert_eq!(s.clear().unwrap(), Removal::NotPresent);
        assert_eq!(s.load().unwrap(), None);
    }

    #[test]
    fn an_existing_open_directory_is_narrowed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        store_in(tmp.path()).save(&creds(1)).unwrap();
        assert_eq!(mode_of(tmp.path()), 0o700);
    }

    #[test]
    fn a_corrupt_file_is_reported_moved_aside_and_never_echoed() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let s = FileStore::new(tmp.path(), clock);
        fs::write(s.path(), "{\"access_token\":\"SECRET-TOKEN\",\"refresh_").unwrap();
        let err = s.load().unwrap_err();
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        let StoreError::Corrupt {
            path,
            problem,
            moved_to: Some(aside),
        } = err
        else {
            panic!("{shown}")
        };
        assert_eq!(path, s.path());
        assert_eq!(problem, codec::DecodeError::Truncated);
        assert!(shown.contains("credentials.json") && shown.contains("moved aside"));
        assert_eq!(
            aside.file_name().unwrap(),
            "credentials.json.corrupt-19700101T000000Z"
        );
        assert!(fs::read_to_string(&aside).unwrap().contains("SECRET-TOKEN"));
        assert_eq!(s.load().unwrap(), None, "reported once, then empty");
        // An invalid-but-parseable file is handled the same way on clear.
        fs::write(s.path(), "{}").unwrap();
        assert!(matches!(s.clear().unwrap(), Removal::MovedAside(_)));
    }

    #[test]
    fn stale_temp_files_of_a_killed_writer_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store_in(tmp.path());
        let leftover = tmp.path().join("credentials.json.qwend-dead.tmp");
        fs::write(&leftover, "old tokens").unwrap();
        fs::File::options()
            .write(true)
            .open(&leftover)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(120))
            .unwrap();
        s.save(&creds(1)).unwrap();
        assert!(!leftover.exists());
    }

    // ---------- crash safety: a child process saving in a loop, SIGKILLed ----------

    const CHILD_ENV: &str = "QWEND_STORE_CRASH_CHILD";

    /// The child side. A no-op in a normal test run; when re-run by `crash_safety` with
    /// the env var set, saves generation after generation until killed, announcing each
    /// completed save on stdout.
    #[test]
    fn crash_child_entry() {
        let Some(spec) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let spec = spec.to_string_lossy().into_owned();
        let (target, dir) = spec.split_once(':').unwrap();
        let dir = PathBuf::from(dir);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for generation in 0.. {
            match target {
                "file" => store_in(&dir).save(&creds(generation)).unwrap(),
                "qwen" => {
                    // A lock left by the previous (killed) child is stale at once.
                    let cfg = super::super::LockConfig {
                        stale_after_ms: -1,
                        ..Default::default()
                    };
                    super::super::QwenCredsFile::new(&dir, Arc::new(SystemClock))
                        .with_lock_config(cfg)
                        .write(&creds(generation), QwenLayout::Refresh)
                        .unwrap();
                }
                other => panic!("unknown crash target {other}"),
            }
            writeln!(out, "saved {generation}").unwrap();
            out.flush().unwrap();
        }
    }

    fn crash_loop(target: &str, file_name: &str) {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(file_name);
        // The test's own name, without the crate prefix libtest does not use.
        let module = module_path!().split_once("::").map_or("", |m| m.1);
        let test_name = format!("{module}::crash_child_entry");
        let exe = std::env::current_exe().unwrap();
        for round in 0..40u64 {
            let mut child = Command::new(&exe)
                .args([
                    test_name.as_str(),
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{target}:{}", tmp.path().display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            // Let it complete a varying number of saves, then kill it mid-stream: where
            // exactly the kill lands inside the next save is up to the scheduler.
            let wanted = 1 + round % 7;
            let mut last = None;
            while last.is_none_or(|l| l + 1 < wanted as i64) {
                let line = lines.next().expect("child exited before saving").unwrap();
                if let Some(n) = line.strip_prefix("saved ") {
                    last = Some(n.parse::<i64>().unwrap());
                }
            }
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            let last = last.unwrap();
            let bytes = fs::read(&path).unwrap();
            let got = codec::decode(&bytes).unwrap_or_else(|e| {
                panic!("round {round}: torn file after SIGKILL ({e}): {bytes:?}")
            });
            let generation = got.expiry_date - 1_000;
            // The child keeps saving until the kill lands, so later generations are fine;
            // an older one (a lost save) or a mix of two (checked below) is not.
            assert!(
                generation >= last,
                "round {round}: generation {generation}, last announced {last}"
            );
            assert_eq!(got, creds(generation));
            assert_eq!(
                got.access_token.expose_secret(),
                format!("at-gen-{generation}")
            );
            assert_eq!(mode_of(&path), 0o600);
        }
    }

    #[test]
    fn crash_safety_of_our_file() {
        crash_loop("file", FILE_STORE_NAME);
    }

    #[test]
    fn crash_safety_of_the_qwen_code_file() {
        crash_loop("qwen", super::super::QWEN_CREDS_FILE);
    }
}
