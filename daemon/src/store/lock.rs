//! Qwen Code's cross-process lock for `oauth_creds.json`: a sibling `oauth_creds.lock`
//! created exclusively, holding a random id, judged stale by its mtime after 35 s, removed
//! to release. Qwen Code 0.24.4 (`SharedTokenManager.acquireLock`) takes it around every
//! token refresh; we take it around every write so neither side loses an update.
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::fsutil::mtime_ms;
use crate::clock::Clock;

/// Qwen Code's `LOCK_TIMEOUT_MS`.
pub const STALE_AFTER_MS: i64 = 35_000;

/// How hard to try. The default copies Qwen Code (20 attempts, 100 ms growing ×1.5 up to
/// 2 s: about 29 s in all), so we wait as long as it would for a refresh in flight.
#[derive(Debug, Clone)]
pub struct LockConfig {
    pub max_attempts: u32,
    pub initial_interval: Duration,
    pub max_interval: Duration,
    /// A lock whose mtime is older than this (by the injected clock) is taken over.
    pub stale_after_ms: i64,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            max_attempts: 20,
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            stale_after_ms: STALE_AFTER_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "lock {} is held by another process (gave up after {attempts} attempts)",
        path.display()
    )]
    Timeout { path: PathBuf, attempts: u32 },
    #[error("cannot {action} lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A held lock. Released (the file removed) by [`CredsLock::release`] or on drop.
#[derive(Debug)]
pub struct CredsLock {
    path: PathBuf,
    /// `None` when writing the id failed: the lock is still ours but unrecognizable.
    id: Option<String>,
    held: bool,
}

impl CredsLock {
    /// Blocks (sleeping between attempts) until the lock is ours or the attempts run out.
    pub fn acquire(path: &Path, clock: &dyn Clock, cfg: &LockConfig) -> Result<Self, LockError> {
        let id = owner_id();
        // The lock appears with its id already in it (see [`Claim`]), so a daemon killed
        // at any instant leaves a lock that the next one recognizes as a dead qwend's, not
        // an empty file it must wait 35 s for.
        let claim = Claim::prepare(path, &id);
        let mut interval = cfg.initial_interval;
        for _ in 0..cfg.max_attempts.max(1) {
            match claim.create(path) {
                Ok(written) => {
                    drop(claim);
                    sweep_claims(path);
                    return Ok(Self {
                        path: path.to_path_buf(),
                        id: written.then_some(id),
                        held: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match fs::metadata(path) {
                        Ok(md) => {
                            let age = mtime_ms(&md).map(|m| clock.now_ms() - m);
                            if age.is_ok_and(|a| a > cfg.stale_after_ms) && remove_stale(path) {
                                tracing::warn!(lock = %path.display(), "removed a stale credential lock");
                                continue;
                            }
                            if owner_is_gone(path) && remove_stale(path) {
                                tracing::warn!(lock = %path.display(), "removed the credential lock of a qwend that died holding it");
                                continue;
                            }
                        }
                        // Released between our create and stat: try again at once.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(_) => {}
                    }
                    std::thread::sleep(interval);
                    interval = interval.mul_f64(1.5).min(cfg.max_interval);
                }
                Err(source) => {
                    return Err(LockError::Io {
                        path: path.to_path_buf(),
                        action: "create",
                        source,
                    });
                }
            }
        }
        Err(LockError::Timeout {
            path: path.to_path_buf(),
            attempts: cfg.max_attempts.max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refreshes the mtime so a long operation under the lock is not judged stale.
    pub fn touch(&self) -> Result<(), LockError> {
        crate::fsread::open_regular(&self.path)
            .and_then(|(f, _)| f.set_modified(SystemTime::now()))
            .map_err(|source| LockError::Io {
                path: self.path.clone(),
                action: "refresh",
                source,
            })
    }

    /// Removes the lock file if it is still ours. Failure is only logged: a leftover lock
    /// goes stale on its own, and the protected write has already happened.
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if !std::mem::take(&mut self.held) {
            return;
        }
        match read_lock(&self.path) {
            Ok(content) if self.id.as_ref().is_none_or(|id| *id == content) => {
                if let Err(e) = fs::remove_file(&self.path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(lock = %self.path.display(), error = %e, "cannot release credential lock");
                }
            }
            Ok(_) => {
                tracing::warn!(lock = %self.path.display(), "credential lock was taken over while held; leaving it to its new owner");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(lock = %self.path.display(), error = %e, "cannot read credential lock to release it");
            }
        }
    }
}

impl Drop for CredsLock {
    fn drop(&mut self) {
        self.release_inner();
    }
}

/// A lock created with its content in one step: the id goes into a private temp file
/// beside the lock (`oauth_creds.lock.qwend-<random>.tmp`), which is then hard-linked to
/// the lock's name. `link` fails if the name exists, exactly like an exclusive create, and
/// the lock never exists empty. Where the filesystem has no hard links, fall back to Qwen
/// Code's own exclusive create followed by a write.
struct Claim<'a> {
    id: &'a str,
    /// `None` when the temp file could not be made: the direct create then reports why.
    tmp: Option<tempfile::NamedTempFile>,
}

impl<'a> Claim<'a> {
    fn prepare(path: &Path, id: &'a str) -> Self {
        let tmp = qwend_shared::files::temp_file_beside(path)
            .and_then(|mut tmp| tmp.write_all(id.as_bytes()).map(|()| tmp))
            .ok();
        Self { id, tmp }
    }

    /// Creates the lock: `Ok(true)` with the id in it, `Ok(false)` when only the direct
    /// create worked and writing the id failed (still ours, but unrecognizable).
    fn create(&self, path: &Path) -> io::Result<bool> {
        if let Some(tmp) = &self.tmp {
            match fs::hard_link(tmp.path(), path) {
                Ok(()) => return Ok(true),
                // Our temp file gone (swept by someone else) or no hard links here: the
                // plain exclusive create still excludes, only without the id up front.
                Err(e) if e.kind() == io::ErrorKind::NotFound || no_hard_links(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(f.write_all(self.id.as_bytes()).is_ok())
    }
}

/// The errors of a filesystem that cannot hard-link (FAT, some FUSE and network mounts).
fn no_hard_links(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|code| {
        [Errno::PERM, Errno::OPNOTSUPP, Errno::NOSYS, Errno::MLINK]
            .iter()
            .any(|errno| errno.raw_os_error() == code)
    })
}

/// A daemon killed between preparing a claim and removing it leaves the temp file (a
/// lock id, nothing secret). Whoever holds the lock removes those older than a minute,
/// which no live acquire takes. By the wall clock, not the injected one: this is about
/// real files' real ages, and a test clock moved hours ahead must not sweep a claim
/// another thread is making right now.
fn sweep_claims(path: &Path) {
    qwend_shared::files::sweep_temp_files(path, Some(SystemTime::now() - Duration::from_secs(60)));
}

/// What we write into the lock: Qwen Code writes a bare UUID and only ever looks at the
/// lock's age, so the rest is ours. The pid and the boot id let a restarted daemon see at
/// once that the lock belongs to a daemon that was killed holding it, instead of waiting
/// out the 35 s that make it stale.
fn owner_id() -> String {
    match boot_id() {
        Some(boot) => format!(
            "{} qwend pid={} boot={boot}",
            Uuid::new_v4(),
            std::process::id()
        ),
        None => Uuid::new_v4().to_string(),
    }
}

/// A lock file holds one short line; anyone can put a FIFO or a huge file in its place, and
/// neither may hang or bloat the daemon.
fn read_lock(path: &Path) -> io::Result<String> {
    crate::fsread::read_small_text(path, 4096)
}

fn boot_id() -> Option<String> {
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string()).filter(|s| !s.is_empty())
}

/// True only for a lock a qwend of this boot wrote whose process no longer exists. A lock
/// from Qwen Code, another machine, an earlier boot or a live (or reused) pid is left to
/// the staleness rule.
fn owner_is_gone(path: &Path) -> bool {
    let Ok(content) = read_lock(path) else {
        return false;
    };
    let mut fields = content.split(' ');
    let (Some(_uuid), Some("qwend"), Some(pid), Some(boot), None) = (
        fields.next(),
        fields.next(),
        fields.next().and_then(|f| f.strip_prefix("pid=")),
        fields.next().and_then(|f| f.strip_prefix("boot=")),
        fields.next(),
    ) else {
        return false;
    };
    if boot_id().as_deref() != Some(boot) {
        return false;
    }
    let Some(pid) = pid
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Err(rustix::io::Errno::SRCH) => true,
        _ => is_zombie(pid),
    }
}

/// A killed daemon whose parent has not reaped it yet still answers `kill(pid, 0)`; in a
/// container whose init reaps every second or two, taking over its lock would wait for
/// that. A zombie runs nothing and releases nothing: it is gone. (Linux's `/proc`; where
/// there is none, the staleness rule still applies.)
fn is_zombie(pid: rustix::process::Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold anything.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| matches!(state, "Z" | "X"))
}

/// Renames before deleting, as Qwen Code does, so that of several processes judging the
/// same lock stale only one removes it (and not a fresh lock created in between).
fn remove_stale(path: &Path) -> bool {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".stale.{}", Uuid::new_v4()));
    let grave = PathBuf::from(name);
    if fs::rename(path, &grave).is_err() {
        return false;
    }
    let _ = fs::remove_file(&grave);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use std::sync::{Arc, Barrier};

    fn quick() -> LockConfig {
        LockConfig {
            max_attempts: 3,
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            stale_after_ms: STALE_AFTER_MS,
        }
    }

    /// An exited child its parent has not reaped is a zombie; a running process is not.
    #[test]
    fn an_unreaped_child_is_gone_and_a_running_process_is_not() {
        use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        assert!(!is_zombie(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        // Waits for the exit but leaves the child unreaped (NOWAIT).
        waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        )
        .unwrap();
        assert!(
            rustix::process::test_kill_process(pid).is_ok(),
            "still there"
        );
        assert!(is_zombie(pid));
        child.wait().unwrap();
    }

    fn set_age(path: &Path, secs: u64) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_qwend_is_taken_at_once_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth_creds.lock");
        let Some(boot) = boot_id() else { return };
        // A child that has exited: its pid is free (and not reused this soon).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(
            &path,
            format!("{} qwend pid={dead} boot={boot}", Uuid::new_v4()),
        )
        .unwrap();
        let lock = CredsLock::acquire(&path, &SystemClock, &quick()).unwrap();
        lock.release();
        // A live owner, another boot, or Qwen Code's bare UUID: wait for staleness.
        for content in [
            format!(
                "{} qwend pid={} boot={boot}",
                Uuid::new_v4(),
                std::process::id()
            ),
            format!("{} qwend pid={dead} boot=other-boot", Uuid::new_v4()),
            Uuid::new_v4().to_string(),
        ] {
            fs::write(&path, &content).unwrap();
            assert!(
                matches!(
                    CredsLock::acquire(&path, &SystemClock, &quick()),
                    Err(LockError::Timeout { .. })
                ),
                "{content}"
            );
        }
    }

    /// A daemon killed at any instant of `acquire` must leave a lock that says whose it
    /// is: one killed between an exclusive create and the write left an empty file that
    /// stalled every later write for 35 s (seen in CI's chaos run). A reader racing a
    /// stream of acquires never sees the lock without its id.
    #[test]
    fn a_lock_never_exists_without_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth_creds.lock");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut seen, mut empty) = (0u32, 0u32);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(content) = fs::read_to_string(&path) {
                        seen += 1;
                        empty += u32::from(content.is_empty());
                    }
                }
                (seen, empty)
            })
        };
        for _ in 0..3000 {
            CredsLock::acquire(&path, &SystemClock, &quick())
                .unwrap()
                .release();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (seen, empty) = reader.join().unwrap();
        assert_eq!(empty, 0, "the lock was empty in {empty} of {seen} reads");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
    }

    /// The claim a killed daemon left (its temp file) goes once it is a minute old.
    #[test]
    fn a_claim_left_by_a_killed_acquire_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth_creds.lock");
        let old = dir.path().join("oauth_creds.lock.qwend-dead.tmp");
        let young = dir.path().join("oauth_creds.lock.qwend-live.tmp");
        fs::write(&old, "id").unwrap();
        fs::write(&young, "id").unwrap();
        set_age(&old, 120);
        // A test clock a day ahead judges staleness, not the ages of real files.
        let ahead = ManualClock::new(SystemClock.now_ms() + 86_400_000);
        CredsLock::acquire(&path, &*ahead, &quick())
            .unwrap()
            .release();
        assert!(!old.exists());
        assert!(young.exists(), "a claim being made right now stays");
    }

    /// Our claim swept away under us (by a sweep of another process): the plain exclusive
    /// create takes over and the lock is still ours.
    #[test]
    fn a_claim_that_vanished_falls_back_to_the_exclusive_create() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth_creds.lock");
        let claim = Claim::prepare(&path, "the-id");
        fs::remove_file(claim.tmp.as_ref().unwrap().path()).unwrap();
        assert!(claim.create(&path).unwrap(), "the id written directly");
        assert_eq!(fs::read_to_string(&path).unwrap(), "the-id");
        assert_eq!(
            claim.create(&path).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists,
            "and it still excludes"
        );
    }

    #[test]
    fn acquire_writes_an_id_and_release_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oauth_creds.lock");
        let lock = CredsLock::acquire(&p, &SystemClock, &quick()).unwrap();
        let id = fs::read_to_string(&p).unwrap();
        // A UUID first, as Qwen Code's own lock holds.
        assert_eq!(id.split(' ').next().unwrap().len(), 36, "{id}");
        assert!(id.contains(&format!("pid={}", std::process::id())), "{id}");
        lock.release();
        assert!(!p.exists());
    }

    #[test]
    fn a_fresh_foreign_lock_is_respected_until_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oauth_creds.lock");
        fs::write(&p, "qwen-code-uuid").unwrap();
        set_age(&p, 30);
        let err = CredsLock::acquire(&p, &SystemClock, &quick()).unwrap_err();
        assert!(
            matches!(err, LockError::Timeout { attempts: 3, .. }),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&p).unwrap(), "qwen-code-uuid");
    }

    #[test]
    fn a_lock_older_than_35s_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oauth_creds.lock");
        fs::write(&p, "dead-process").unwrap();
        set_age(&p, 36);
        let lock = CredsLock::acquire(&p, &SystemClock, &quick()).unwrap();
        assert_ne!(fs::read_to_string(&p).unwrap(), "dead-process");
        drop(lock);
        assert!(!p.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no .stale leftovers"
        );
    }

    #[test]
    fn staleness_is_judged_by_the_injected_clock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oauth_creds.lock");
        fs::write(&p, "other").unwrap();
        let mtime = mtime_ms(&fs::metadata(&p).unwrap()).unwrap();
        let clock = ManualClock::new(mtime + STALE_AFTER_MS);
        assert!(matches!(
            CredsLock::acquire(&p, &*clock, &quick()),
            Err(LockError::Timeout { .. })
        ));
        clock.advance_ms(1);
        let lock = CredsLock::acquire(&p, &*clock, &quick()).unwrap();
        lock.release();
    }

    #[test]
    fn release_leaves_a_lock_that_was_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oauth_creds.lock");
        let lock = CredsLock::acquire(&p, &SystemClock, &quick()).unwrap();
        fs::write(&p, "new-owner").unwrap();
        lock.release();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new-owner");
    }

    #[test]
    fn touch_renews_the_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oauth_creds.lock");
        let lock = CredsLock::acquire(&p, &SystemClock, &quick()).unwrap();
        set_age(&p, 100);
        lock.touch().unwrap();
        let age = SystemClock.now_ms() - mtime_ms(&fs::metadata(&p).unwrap()).unwrap();
        assert!(age < 5_000, "{age}");
    }

    #[test]
    fn a_missing_directory_is_a_typed_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope/oauth_creds.lock");
        let err = CredsLock::acquire(&p, &SystemClock, &quick()).unwrap_err();
        assert!(
            matches!(
                err,
                LockError::Io {
                    action: "create",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("nope/oauth_creds.lock"));
    }

    #[test]
    fn holders_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(dir.path().join("oauth_creds.lock"));
        let counter = Arc::new(dir.path().join("counter"));
        fs::write(&*counter, "0").unwrap();
        let threads = 8;
        let start = Arc::new(Barrier::new(threads));
        let cfg = LockConfig {
            max_attempts: 10_000,
            initial_interval: Duration::from_micros(50),
            max_interval: Duration::from_micros(200),
            stale_after_ms: STALE_AFTER_MS,
        };
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (p, counter, start, cfg) =
                    (p.clone(), counter.clone(), start.clone(), cfg.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..20 {
                        let lock = CredsLock::acquire(&p, &SystemClock, &cfg).unwrap();
                        // A read-modify-write that loses updates unless the lock excludes.
                        let n: u32 = fs::read_to_string(&*counter).unwrap().parse().unwrap();
                        fs::write(&*counter, (n + 1).to_string()).unwrap();
                        lock.release();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(fs::read_to_string(&*counter).unwrap(), "160");
        assert!(!p.exists());
    }
}
