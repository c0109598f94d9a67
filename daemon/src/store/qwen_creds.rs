//! Qwen Code's `oauth_creds.json`, read and written exactly as Qwen Code 0.24.4 does (see
//! `shared/conformance/oauth`), with its `oauth_creds.lock` held around every change.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::codec::{self, QwenLayout};
use super::fsutil::{self, Aside, FileStamp};
use super::lock::{CredsLock, LockConfig};
use super::{Removal, StoreError};
use crate::clock::SharedClock;
use crate::credentials::Credentials;

pub const QWEN_CREDS_FILE: &str = "oauth_creds.json";
pub const QWEN_LOCK_FILE: &str = "oauth_creds.lock";

/// Leftover temp files of ours younger than this may belong to a write in progress.
const TEMP_SWEEP_AGE_MS: i64 = 10 * 60 * 1000;

/// Handle on `<qwen home>/oauth_creds.json`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QwenCredsFile {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    clock: SharedClock,
    lock_cfg: LockConfig,
}

impl QwenCredsFile {
    /// `qwen_home` is the resolved Qwen home (`~/.qwen`, or `QWEN_HOME`); nothing here
    /// reads the environment.
    pub fn new(qwen_home: impl Into<PathBuf>, clock: SharedClock) -> Self {
        let dir = qwen_home.into();
        Self {
            path: dir.join(QWEN_CREDS_FILE),
            lock_path: dir.join(QWEN_LOCK_FILE),
            dir,
            clock,
            lock_cfg: LockConfig::default(),
        }
    }

    pub fn with_lock_config(mut self, cfg: LockConfig) -> Self {
        self.lock_cfg = cfg;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Cheap change detection: compare with an earlier stamp (or use [`QwenFileWatch`]).
    pub fn stamp(&self) -> Result<Option<FileStamp>, StoreError> {
        FileStamp::of(&self.path).map_err(|e| StoreError::io(&self.path, "inspect", e))
    }

    /// Reads without the lock, as Qwen Code's readers do (writers replace the file by
    /// rename, so a reader never sees a torn file). A bad file is reported and left alone:
    /// reading must not change what Qwen Code sees (`oauth-corrupt-file.json`).
    pub fn read(&self) -> Result<Option<Credentials>, StoreError> {
        let Some(bytes) =
            fsutil::read_capped(&self.path).map_err(|e| StoreError::io(&self.path, "read", e))?
        else {
            return Ok(None);
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt {
                path: self.path.clone(),
                problem,
                moved_to: None,
            })
    }

    /// Takes `oauth_creds.lock` (creating the Qwen home 0700 if missing, as Qwen Code's
    /// refresh does). Re-read through the guard before deciding what to write: Qwen Code
    /// may have refreshed while we waited.
    pub fn lock(&self) -> Result<QwenCredsGuard, StoreError> {
        fsutil::ensure_private_dir(&self.dir, false)
            .map_err(|e| StoreError::io(&self.dir, "create", e))?;
        let lock = CredsLock::acquire(&self.lock_path, &*self.clock, &self.lock_cfg)?;
        Ok(QwenCredsGuard {
            file: self.clone(),
            lock,
        })
    }

    /// At daemon start-up: removes the temp files of writes that a killed qwend left
    /// beside `oauth_creds.json`, under the lock (see [`Self::remove_held`]). Nothing to do,
    /// and no lock taken, when Qwen Code's directory does not exist.
    pub fn sweep_abandoned_temp_files(&self) -> Result<(), StoreError> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        let guard = self.lock()?;
        fsutil::sweep_temp_files(&self.path, &*self.clock, -1);
        guard.release();
        Ok(())
    }

    /// Lock, write, unlock. Returns the new stamp so a watcher can ignore our own write.
    pub fn write(&self, creds: &Credentials, layout: QwenLayout) -> Result<FileStamp, StoreError> {
        let guard = self.lock()?;
        let stamp = guard.write(creds, layout)?;
        guard.release();
        Ok(stamp)
    }

    /// Lock, remove (a bad file is moved aside instead), unlock. Qwen Code's own
    /// `clearQwenCredentials` unlinks without the lock; taking it costs nothing and keeps
    /// a concurrent refresh from resurrecting the file halfway.
    pub fn remove(&self) -> Result<Removal, StoreError> {
        if !self.dir.is_dir() {
            return Ok(Removal::NotPresent);
        }
        let guard = self.lock()?;
        let removal = guard.remove()?;
        guard.release();
        Ok(removal)
    }

    /// [`QwenCredsGuard::write`] for a caller that holds the lock through a guard it keeps
    /// elsewhere (the token manager holds it across a refresh; the lock is not reentrant).
    pub fn write_held(
        &self,
        creds: &Credentials,
        layout: QwenLayout,
    ) -> Result<FileStamp, StoreError> {
        let f = self;
        match f.read() {
            Ok(_) => {}
            Err(StoreError::Corrupt { problem, .. }) => {
                let aside = fsutil::preserve_aside(&f.path, &*f.clock, Aside::Copy)
                    .map_err(|e| StoreError::io(&f.path, "keep a copy of", e))?;
                tracing::warn!(
                    path = %f.path.display(), copy = %aside.display(), %problem,
                    "Qwen Code credentials file was unusable; kept a copy before replacing it"
                );
            }
            // Unreadable for another reason (permissions?): do not clobber what we cannot
            // preserve.
            Err(e) => return Err(e),
        }
        fsutil::sweep_temp_files(&f.path, &*f.clock, TEMP_SWEEP_AGE_MS);
        fsutil::atomic_write(&f.path, &codec::encode(creds, layout))
            .map_err(|e| StoreError::io(&f.path, "write", e))?;
        f.stamp()?
            .ok_or_else(|| StoreError::io(&f.path, "inspect", io::ErrorKind::NotFound.into()))
    }

    /// Removes the file (a bad one is moved aside) for a caller holding the lock, and every
    /// temp file an interrupted write of ours left beside it: they hold refresh tokens, and
    /// logout promises that nothing does. Our writers write under the lock, so while we
    /// hold it none of those files belongs to a live write.
    pub fn remove_held(&self) -> Result<Removal, StoreError> {
        let f = self;
        fsutil::sweep_temp_files(&f.path, &*f.clock, -1);
        match f.read() {
            Ok(None) => Ok(Removal::NotPresent),
            Ok(Some(_)) => match fs::remove_file(&f.path) {
                Ok(()) => Ok(Removal::Removed),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Removal::NotPresent),
                Err(e) => Err(StoreError::io(&f.path, "remove", e)),
            },
            Err(StoreError::Corrupt { .. }) => {
                fsutil::preserve_aside(&f.path, &*f.clock, Aside::Move)
                    .map(Removal::MovedAside)
                    .map_err(|e| StoreError::io(&f.path, "move aside", e))
            }
            Err(e) => Err(e),
        }
    }
}

/// `oauth_creds.lock` held on behalf of a [`QwenCredsFile`]; released on drop.
#[derive(Debug)]
pub struct QwenCredsGuard {
    file: QwenCredsFile,
    lock: CredsLock,
}

impl QwenCredsGuard {
    /// The re-read after locking that Qwen Code's protocol asks for.
    pub fn read(&self) -> Result<Option<Credentials>, StoreError> {
        self.file.read()
    }

    /// Replaces the file atomically (0600, fsync'd temp file + rename). An unusable file in
    /// the way is first kept as `oauth_creds.json.corrupt-<ts>`; Qwen Code would simply
    /// overwrite it.
    pub fn write(&self, creds: &Credentials, layout: QwenLayout) -> Result<FileStamp, StoreError> {
        self.file.write_held(creds, layout)
    }

    pub fn remove(&self) -> Result<Removal, StoreError> {
        self.file.remove_held()
    }

    /// Renews the lock's mtime during a long operation (a slow refresh) so Qwen Code does
    /// not judge it stale after 35 s.
    pub fn touch(&self) -> Result<(), StoreError> {
        Ok(self.lock.touch()?)
    }

    pub fn release(self) {
        self.lock.release();
    }
}

/// Notices that `oauth_creds.json` was replaced (the user logged in with Qwen Code, or it
/// refreshed) without reading it.
#[derive(Debug, Default, Clone)]
pub struct QwenFileWatch {
    /// `None` until the first poll; then the stamp seen last (`Some(None)`: no file).
    seen: Option<Option<FileStamp>>,
}

impl QwenFileWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the stamp differs from the previous poll; the first poll is true when the
    /// file exists, so start-up imports too.
    pub fn changed(&mut self, file: &QwenCredsFile) -> Result<bool, StoreError> {
        let now = file.stamp()?;
        let changed = match self.seen {
            None => now.is_some(),
            Some(prev) => prev != now,
        };
        self.seen = Some(now);
        Ok(changed)
    }

    /// Records a stamp we produced ourselves, so our own write is not seen as a change.
    pub fn record(&mut self, stamp: Option<FileStamp>) {
        self.seen = Some(stamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock, SystemClock};
    use secrecy::{ExposeSecret, SecretString};
    use serde_json::Value;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// Permission bits as Qwen Code's oracle prints them ("600"); unchecked off Unix.
    fn assert_mode(p: &Path, want: &str, ctx: &str) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let got = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(format!("{got:o}"), want, "{ctx}: mode of {}", p.display());
        }
        #[cfg(not(unix))]
        let _ = (p, want, ctx);
    }

    fn set_mode(p: &Path, mode: &str) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = u32::from_str_radix(mode, 8).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = (p, mode);
    }

    fn creds(at: &str, expiry: i64) -> Credentials {
        Credentials {
            access_token: SecretString::from(at),
            refresh_token: SecretString::from("rt"),
            token_type: "Bearer".into(),
            expiry_date: expiry,
            resource_url: Some("portal.qwen.ai".into()),
            account: None,
        }
    }

    fn quick_lock() -> LockConfig {
        LockConfig {
            max_attempts: 3,
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            ..LockConfig::default()
        }
    }

    fn home() -> (tempfile::TempDir, QwenCredsFile) {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join(".qwen");
        fs::create_dir(&home).unwrap();
        set_mode(&home, "755");
        let f = QwenCredsFile::new(&home, Arc::new(SystemClock)).with_lock_config(quick_lock());
        (tmp, f)
    }

    // ---------- the conformance scenarios ----------

    /// What our side does with the credentials file in each recorded scenario. The HTTP
    /// half (which request, which error) belongs to the refresh/login module.
    #[derive(Debug, Clone, Copy)]
    enum Expect {
        /// `read` yields valid credentials; `fresh` = usable now (outside the 30 s buffer).
        Valid {
            fresh: bool,
        },
        Absent,
        Bad(codec::DecodeError),
    }

    #[derive(Debug, Clone, Copy)]
    enum Action {
        /// Qwen Code left the file alone (no request, or a 5xx).
        None,
        /// Qwen Code wrote `result` (after a refresh or a device login).
        Write(QwenLayout),
        /// Qwen Code deleted the file (logout, or a 400 on refresh).
        Remove,
    }

    const CASES: &[(&str, Expect, Action)] = &[
        (
            "oauth-clear.json",
            Expect::Valid { fresh: true },
            Action::Remove,
        ),
        (
            "oauth-corrupt-file.json",
            Expect::Bad(codec::DecodeError::Syntax { line: 1, column: 2 }),
            Action::None,
        ),
        (
            "oauth-device-flow-login.json",
            Expect::Absent,
            Action::Write(QwenLayout::Login),
        ),
        (
            "oauth-expired-refresh-400.json",
            Expect::Valid { fresh: false },
            Action::Remove,
        ),
        (
            "oauth-expired-refresh-500.json",
            Expect::Valid { fresh: false },
            Action::None,
        ),
        (
            "oauth-expired-refresh-ok.json",
            Expect::Valid { fresh: false },
            Action::Write(QwenLayout::Refresh),
        ),
        (
            "oauth-expired-refresh-rotate.json",
            Expect::Valid { fresh: false },
            Action::Write(QwenLayout::Refresh),
        ),
        (
            "oauth-extra-fields-dropped.json",
            Expect::Valid { fresh: false },
            Action::Write(QwenLayout::Refresh),
        ),
        (
            "oauth-missing-refresh-token.json",
            Expect::Bad(codec::DecodeError::MissingField {
                field: "refresh_token",
            }),
            Action::None,
        ),
        ("oauth-no-file.json", Expect::Absent, Action::None),
        (
            "oauth-stale-lock-removed.json",
            Expect::Valid { fresh: false },
            Action::Write(QwenLayout::Refresh),
        ),
        (
            "oauth-startup-expired-400.json",
            Expect::Valid { fresh: false },
            Action::Remove,
        ),
        (
            "oauth-valid-force-refresh.json",
            Expect::Valid { fresh: true },
            Action::Write(QwenLayout::Refresh),
        ),
        (
            "oauth-valid-no-request.json",
            Expect::Valid { fresh: true },
            Action::None,
        ),
        (
            "oauth-within-30s-buffer.json",
            Expect::Valid { fresh: false },
            Action::Write(QwenLayout::Refresh),
        ),
    ];

    /// `shared/` sits beside the repository (and beside the scratch crate).
    fn conformance_dir() -> Option<PathBuf> {
        let dir = std::env::var_os("QWEND_CONFORMANCE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/oauth")
            });
        dir.is_dir().then_some(dir)
    }

    /// Replaces `now±Ns` (bare in `raw`, quoted in `json`) with real milliseconds.
    fn subst_raw(raw: &str, now: i64) -> String {
        let mut out = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find("now") {
            out.push_str(&rest[..i]);
            let tail = &rest[i + 3..];
            let sign_ok = tail.starts_with(['+', '-']);
            let digits = tail[1.min(tail.len())..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if sign_ok && digits > 0 && tail[1 + digits..].starts_with('s') {
                let n: i64 = tail[1..1 + digits].parse().unwrap();
                let n = if tail.starts_with('-') { -n } else { n };
                out.push_str(&(now + n * 1000).to_string());
                rest = &tail[digits + 2..];
            } else {
                out.push_str("now");
                rest = tail;
            }
        }
        out.push_str(rest);
        out
    }

    fn subst_json(v: &Value, now: i64) -> Value {
        match v {
            Value::String(s) if s.starts_with("now") => {
                serde_json::from_str(&subst_raw(s, now)).unwrap()
            }
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), subst_json(v, now)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn creds_from_json(v: &Value) -> Credentials {
        codec::decode(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn conformance_scenarios() {
        let Some(dir) = conformance_dir() else {
            eprintln!(
                "SKIP conformance_scenarios: no shared/conformance/oauth beside the repo (set QWEND_CONFORMANCE_DIR)"
            );
            return;
        };
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut known: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
        known.sort();
        assert_eq!(
            on_disk, known,
            "a scenario was added or removed: map it in CASES"
        );
        for &(name, expect, action) in CASES {
            run_case(&dir.join(name), expect, action);
        }
    }

    fn run_case(path: &Path, expect: Expect, action: Action) {
        let case = path.file_name().unwrap().to_string_lossy().into_owned();
        let fx: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
        let now = SystemClock.now_ms();
        let (_tmp, qwen) = home();
        let before = &fx["file_before"];
        if before["exists"] == true {
            fs::write(qwen.path(), subst_raw(before["raw"].as_str().unwrap(), now)).unwrap();
            set_mode(qwen.path(), before["mode"].as_str().unwrap());
        }
        if case.contains("stale-lock") {
            // A lock left by a dead process, older than the 35 s threshold.
            fs::write(qwen.lock_path(), "8d3e-dead").unwrap();
            fs::File::options()
                .write(true)
                .open(qwen.lock_path())
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(60))
                .unwrap();
        }

        // Reading: validation and the 30 s buffer.
        match (expect, qwen.read()) {
            (Expect::Valid { fresh }, Ok(Some(c))) => {
                assert_eq!(
                    c,
                    creds_from_json(&subst_json(&before["json"], now)),
                    "{case}"
                );
                assert_eq!(c.is_valid_at(now), fresh, "{case}");
                // Served from the file without a request: the result is the file's token.
                if fx["requests"].as_array().unwrap().is_empty() && fx["result"].is_object() {
                    assert_eq!(
                        fx["result"]["access_token"].as_str(),
                        Some(c.access_token.expose_secret()),
                        "{case}"
                    );
                }
            }
            (Expect::Absent, Ok(None)) => {}
            (
                Expect::Bad(want),
                Err(StoreError::Corrupt {
                    problem, moved_to, ..
                }),
            ) => {
                assert_eq!(problem, want, "{case}");
                assert_eq!(moved_to, None, "{case}: reading leaves the file in place");
                // Qwen Code treats it as "not logged in": no refresh token to use.
                assert_eq!(fx["error"]["type"], "NO_REFRESH_TOKEN", "{case}");
            }
            (e, got) => panic!("{case}: expected {e:?}, got {got:?}"),
        }

        // The change Qwen Code made, done our way.
        match action {
            Action::None => {}
            Action::Write(layout) => {
                let result = creds_from_json(&subst_json(&fx["result"], now));
                qwen.write(&result, layout).unwrap();
                assert_eq!(qwen.read().unwrap(), Some(result), "{case}");
            }
            Action::Remove => {
                assert_eq!(qwen.remove().unwrap(), Removal::Removed, "{case}");
            }
        }

        let after = &fx["file_after"];
        if after["exists"] == true {
            let raw = fs::read_to_string(qwen.path()).unwrap();
            assert_eq!(
                raw,
                subst_raw(after["raw"].as_str().unwrap(), now),
                "{case}: bytes"
            );
            assert_mode(qwen.path(), after["mode"].as_str().unwrap(), &case);
        } else {
            assert!(!qwen.path().exists(), "{case}: file should be gone");
        }
        assert_eq!(fx["lock_after"]["exists"], false);
        assert!(!qwen.lock_path().exists(), "{case}: lock left behind");
        // We never chmod Qwen Code's directory.
        assert_mode(qwen.dir(), fx["qwen_dir_mode"].as_str().unwrap(), &case);
        let extra: Vec<_> = fs::read_dir(qwen.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != QWEN_CREDS_FILE)
            .collect();
        assert!(extra.is_empty(), "{case}: stray files {extra:?}");
    }

    // ---------- behaviour beyond the recorded scenarios ----------

    #[test]
    fn write_waits_for_a_held_lock_and_then_fails_typed() {
        let (_tmp, qwen) = home();
        let held = qwen.lock().unwrap();
        let err = qwen
            .write(&creds("at", 1), QwenLayout::Refresh)
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Lock(super::super::LockError::Timeout { .. })
            ),
            "{err}"
        );
        assert!(!qwen.path().exists());
        held.release();
        qwen.write(&creds("at", 1), QwenLayout::Refresh).unwrap();
    }

    #[test]
    fn guard_rereads_what_another_writer_left() {
        let (_tmp, qwen) = home();
        qwen.write(&creds("ours", 1), QwenLayout::Login).unwrap();
        let guard = qwen.lock().unwrap();
        // Qwen Code's login path writes without the lock; the re-read must see it.
        fs::write(
            qwen.path(),
            r#"{"access_token":"theirs","refresh_token":"r","token_type":"Bearer","expiry_date":9}"#,
        )
        .unwrap();
        let seen = guard.read().unwrap().unwrap();
        assert_eq!(seen.access_token.expose_secret(), "theirs");
        guard.release();
        assert!(!qwen.lock_path().exists());
    }

    #[test]
    fn writing_over_a_corrupt_file_keeps_a_copy() {
        let (_tmp, qwen) = home();
        fs::write(qwen.path(), "{\"access_token\": \"SECRET-half").unwrap();
        let err = qwen.read().unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("oauth_creds.json") && shown.contains("truncated"));
        assert!(!shown.contains("SECRET"), "{shown}");
        qwen.write(&creds("at", 5), QwenLayout::Login).unwrap();
        let copies: Vec<_> = fs::read_dir(qwen.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(
            fs::read_to_string(copies[0].path()).unwrap(),
            "{\"access_token\": \"SECRET-half"
        );
        assert_eq!(qwen.read().unwrap().unwrap().expiry_date, 5);
    }

    #[test]
    fn removing_a_corrupt_file_moves_it_aside() {
        let (_tmp, qwen) = home();
        fs::write(qwen.path(), "[").unwrap();
        let Removal::MovedAside(p) = qwen.remove().unwrap() else {
            panic!("expected a move")
        };
        assert!(!qwen.path().exists());
        assert_eq!(fs::read_to_string(p).unwrap(), "[");
        assert_eq!(qwen.remove().unwrap(), Removal::NotPresent);
    }

    #[test]
    fn remove_without_a_qwen_home_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let qwen = QwenCredsFile::new(tmp.path().join("absent"), Arc::new(SystemClock));
        assert_eq!(qwen.remove().unwrap(), Removal::NotPresent);
        assert_eq!(qwen.read().unwrap(), None);
        assert!(!qwen.dir().exists());
    }

    #[test]
    fn first_write_creates_a_private_qwen_home() {
        let tmp = tempfile::tempdir().unwrap();
        let qwen = QwenCredsFile::new(tmp.path().join("new/.qwen"), Arc::new(SystemClock));
        qwen.write(&creds("at", 5), QwenLayout::Login).unwrap();
        assert_mode(qwen.dir(), "700", "new home");
        assert_mode(qwen.path(), "600", "new file");
    }

    #[test]
    fn watch_notices_replacement_and_ignores_our_own_write() {
        let (_tmp, qwen) = home();
        let mut watch = QwenFileWatch::new();
        assert!(!watch.changed(&qwen).unwrap(), "no file at start");
        let stamp = qwen.write(&creds("ours", 5), QwenLayout::Refresh).unwrap();
        watch.record(Some(stamp));
        assert!(!watch.changed(&qwen).unwrap());
        // Qwen Code logs in: temp file + rename, possibly the same size and second.
        let tmp = qwen.dir().join("oauth_creds.json.tmp.1.x");
        fs::write(
            &tmp,
            codec::encode(&creds("them", 5), QwenLayout::Login).as_slice(),
        )
        .unwrap();
        fs::rename(&tmp, qwen.path()).unwrap();
        assert!(watch.changed(&qwen).unwrap());
        assert!(!watch.changed(&qwen).unwrap());
        fs::remove_file(qwen.path()).unwrap();
        assert!(watch.changed(&qwen).unwrap());
    }

    #[test]
    fn corrupt_copy_names_use_the_injected_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_746_775_400_000);
        let qwen = QwenCredsFile::new(tmp.path(), clock.clone()).with_lock_config(quick_lock());
        fs::write(qwen.path(), "{").unwrap();
        let Removal::MovedAside(p) = qwen.remove().unwrap() else {
            panic!()
        };
        assert_eq!(
            p.file_name().unwrap(),
            "oauth_creds.json.corrupt-20250509T072320Z"
        );
    }
}
