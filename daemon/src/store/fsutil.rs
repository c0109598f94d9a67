//! Small filesystem primitives shared by our file backend and the Qwen Code file: atomic
//! replacement, moving a bad file aside, change stamps, private directories.
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::zeroize::Zeroizing;

use super::codec::MAX_FILE_BYTES;
use crate::clock::Clock;

/// A cheap identity of a file's current content: a rename-based rewrite changes the inode,
/// an in-place edit changes size or mtime. Compare two stamps to notice that someone (Qwen
/// Code, the user) replaced the file, without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i128,
}

impl FileStamp {
    /// `Ok(None)` when the file does not exist.
    pub fn of(path: &Path) -> io::Result<Option<Self>> {
        match fs::metadata(path) {
            Ok(md) => Ok(Some(Self::from_metadata(&md))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[cfg(unix)]
    fn from_metadata(md: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn from_metadata(md: &fs::Metadata) -> Self {
        Self {
            dev: 0,
            ino: 0,
            size: md.len(),
            mtime_ns: md.modified().map(system_time_ns).unwrap_or(0),
        }
    }
}

pub(crate) fn system_time_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

pub(crate) fn mtime_ms(md: &fs::Metadata) -> io::Result<i64> {
    Ok((system_time_ns(md.modified()?) / 1_000_000) as i64)
}

/// Reads at most one byte past the decoder's limit, so an absurd file cannot exhaust memory
/// and the decoder still sees that it was too large. `Ok(None)` when it does not exist.
/// Anything but a regular file (a FIFO would block the read forever) is an error.
pub(crate) fn read_capped(path: &Path) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let (file, md) = match crate::fsread::open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Pre-sized so the secret-bearing buffer is not reallocated while it grows.
    let hint = (md.len() as usize).min(MAX_FILE_BYTES) + 1;
    let mut buf = Zeroizing::new(Vec::with_capacity(hint));
    file.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Replaces `path` so that a crash at any instant leaves either the old or the new
/// content: write a private temp file in the same directory, fsync it, rename it over the
/// target, fsync the directory. The file ends up 0600 whatever the umask.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let tmp = dir.join(format!("{}{}.tmp", temp_prefix(path), random_hex()));
    let result = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!("{name}.qwend-")
}

/// Temp files of writers that were killed mid-write still hold (old) tokens; remove ours
/// once they are clearly abandoned. `min_age_ms` keeps a concurrent writer's file safe;
/// a negative value removes them all (for a caller that knows no write is under way).
pub(crate) fn sweep_temp_files(path: &Path, clock: &dyn Clock, min_age_ms: i64) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let old = min_age_ms < 0
            || entry
                .metadata()
                .and_then(|m| mtime_ms(&m))
                .is_ok_and(|m| clock.now_ms() - m > min_age_ms);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let f = opts.open(path)?;
        // The umask can only remove bits, but a umask like 0277 would remove ours too;
        // Qwen Code forces the mode the same way.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

/// Makes the rename durable; some filesystems refuse to fsync a directory, and by then the
/// rename has happened, so failure here is not an error.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Creates `dir` (and parents) as 0700 when missing. `tighten` also narrows an existing
/// directory to 0700: right for a directory we own, wrong for Qwen Code's `~/.qwen`.
pub(crate) fn ensure_private_dir(dir: &Path, tighten: bool) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    #[cfg(unix)]
    if tighten {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = tighten;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aside {
    /// The original disappears (our own file: nobody else expects it).
    Move,
    /// The original stays until the caller replaces it, so there is no instant at which
    /// the path is missing for a concurrent reader.
    Copy,
}

/// Preserves a bad file as `<name>.corrupt-<UTC timestamp>[-n]` beside it and returns the
/// new path; never overwrites an earlier copy.
pub(crate) fn preserve_aside(path: &Path, clock: &dyn Clock, how: Aside) -> io::Result<PathBuf> {
    let dir = parent_dir(path);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let ts = utc_stamp(clock.now_ms());
    for n in 0..1000 {
        let aside = if n == 0 {
            dir.join(format!("{name}.corrupt-{ts}"))
        } else {
            dir.join(format!("{name}.corrupt-{ts}-{n}"))
        };
        // A hard link is atomic and refuses to clobber; a copy is the fallback for
        // filesystems without links.
        let linked = match fs::hard_link(path, &aside) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
            Err(_) => copy_new(path, &aside),
        };
        match linked {
            Ok(()) => {
                if how == Aside::Move {
                    fs::remove_file(path)?;
                }
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many corrupt copies with the same timestamp",
    ))
}

fn copy_new(from: &Path, to: &Path) -> io::Result<()> {
    let (mut src, _) = crate::fsread::open_regular(from)?;
    let mut dst = create_private(to)?;
    let copied = io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all());
    if copied.is_err() {
        let _ = fs::remove_file(to);
    }
    copied
}

/// `YYYYMMDDTHHMMSSZ`: sortable, and free of characters that are awkward in file names.
pub(crate) fn utc_stamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// 128 unpredictable-enough bits without a RNG dependency: std's `RandomState` is seeded
/// from the OS once per thread and perturbed per call. Used for lock ids and temp names,
/// where uniqueness matters, not secrecy.
pub(crate) fn random_u128() -> u128 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u64(salt);
        h.write_u32(std::process::id());
        h.write_i128(system_time_ns(SystemTime::now()));
        h.finish()
    };
    (u128::from(word(1)) << 64) | u128::from(word(2))
}

pub(crate) fn random_hex() -> String {
    format!("{:032x}", random_u128())
}

/// Same shape as the `randomUUID()` Qwen Code writes into its lock file.
pub(crate) fn uuid_v4() -> String {
    let r = random_u128() & !(0xf000 << 64) & !(0xc000 << 48) | (0x4000 << 64) | (0x8000 << 48);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_746_775_400_999), "20250509T072320Z");
        assert_eq!(utc_stamp(951_825_600_000), "20000229T120000Z");
        assert_eq!(utc_stamp(-1), "19691231T235959Z");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4", "{u}");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(uuid_v4(), uuid_v4());
    }

    #[test]
    fn atomic_write_is_private_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        fs::write(&p, "old").unwrap();
        atomic_write(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn preserve_aside_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let p = dir.path().join("c.json");
        fs::write(&p, "one").unwrap();
        let a = preserve_aside(&p, &*clock, Aside::Move).unwrap();
        assert!(!p.exists());
        assert_eq!(a.file_name().unwrap(), "c.json.corrupt-19700101T000000Z");
        fs::write(&p, "two").unwrap();
        let b = preserve_aside(&p, &*clock, Aside::Copy).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two", "copy keeps the original");
        assert_eq!(b.file_name().unwrap(), "c.json.corrupt-19700101T000000Z-1");
        assert_eq!(fs::read(&a).unwrap(), b"one");
        assert_eq!(fs::read(&b).unwrap(), b"two");
    }

    #[test]
    fn stamp_changes_on_rename_replace() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        assert_eq!(FileStamp::of(&p).unwrap(), None);
        fs::write(&p, "same").unwrap();
        let a = FileStamp::of(&p).unwrap().unwrap();
        atomic_write(&p, b"same").unwrap();
        let b = FileStamp::of(&p).unwrap().unwrap();
        assert_ne!(a, b, "same size and maybe same mtime, but a new inode");
    }

    #[test]
    fn sweep_removes_only_old_temp_files_of_this_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let old = dir.path().join("t.json.qwend-aa.tmp");
        let young = dir.path().join("t.json.qwend-bb.tmp");
        let other = dir.path().join("u.json.qwend-cc.tmp");
        for f in [&old, &young, &other] {
            fs::write(f, "x").unwrap();
        }
        let ten_min_ago = SystemTime::now() - std::time::Duration::from_secs(600);
        for f in [&old, &other] {
            File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(ten_min_ago)
                .unwrap();
        }
        sweep_temp_files(&p, &crate::clock::SystemClock, 60_000);
        assert!(!old.exists());
        assert!(young.exists() && other.exists());
    }
}
