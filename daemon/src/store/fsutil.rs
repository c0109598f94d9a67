//! The store's file primitives over [`qwend_shared::files`] (atomic write, temp sweep,
//! private directories, re-exported here for the backends): the size cap of credential
//! files, change stamps, and moving a bad file aside.
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

pub(crate) use qwend_shared::files::{atomic_write, ensure_private_dir, parent_dir};
use secrecy::zeroize::Zeroizing;

use crate::clock::Clock;

/// Anything bigger is not a credential file (ours, Qwen Code's, or a keyring entry's
/// bytes); refusing it bounds memory on a bad path.
pub const MAX_FILE_BYTES: usize = 1 << 20;

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
            Ok(md) => Ok(Some(Self {
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A file's mtime in milliseconds since the Unix epoch, to hold against a [`Clock`].
pub(crate) fn mtime_ms(md: &fs::Metadata) -> io::Result<i64> {
    Ok(md.mtime() * 1000 + md.mtime_nsec() / 1_000_000)
}

/// Reads at most one byte past [`MAX_FILE_BYTES`], so an absurd file cannot exhaust memory
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

/// [`qwend_shared::files::sweep_temp_files`] by the injected clock: temp files older than
/// `min_age_ms` go; a negative age removes them all (for a caller that knows no write is
/// under way).
pub(crate) fn sweep_temp_files(path: &Path, clock: &dyn Clock, min_age_ms: i64) {
    let cutoff = (min_age_ms >= 0).then(|| {
        let ms = clock.now_ms() - min_age_ms;
        let since_epoch = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            UNIX_EPOCH + since_epoch
        } else {
            UNIX_EPOCH - since_epoch
        }
    });
    qwend_shared::files::sweep_temp_files(path, cutoff);
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

/// Copies `from` to `to`, which must not exist yet, as a private file.
fn copy_new(from: &Path, to: &Path) -> io::Result<()> {
    let (mut src, _) = crate::fsread::open_regular(from)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    let copied = dst
        .set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| io::copy(&mut src, &mut dst))
        .and_then(|_| dst.sync_all());
    if copied.is_err() {
        let _ = fs::remove_file(to);
    }
    copied
}

/// `YYYYMMDDTHHMMSSZ`: sortable, and free of characters that are awkward in file names.
pub(crate) fn utc_stamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use std::fs::File;

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
    fn the_sweep_judges_age_by_the_injected_clock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let tmp = dir.path().join("t.json.qwend-aa.tmp");
        fs::write(&tmp, "x").unwrap();
        let written_ms = 1_700_000_000_000;
        let written = UNIX_EPOCH + Duration::from_millis(written_ms as u64);
        File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(written)
            .unwrap();
        let clock = ManualClock::new(written_ms + 59_000);
        sweep_temp_files(&p, &*clock, 60_000);
        assert!(tmp.exists(), "younger than a minute by the clock");
        clock.advance_ms(2_000);
        sweep_temp_files(&p, &*clock, 60_000);
        assert!(!tmp.exists());
        fs::write(&tmp, "x").unwrap();
        sweep_temp_files(&p, &*ManualClock::new(0), -1);
        assert!(
            !tmp.exists(),
            "a negative age removes whatever the clock says"
        );
    }
}
