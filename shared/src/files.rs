//! The file helpers of daemon and client: replacing a file atomically, sweeping the temp
//! files a killed writer left, and creating private directories.
//!
//! Every file either program writes goes through [`atomic_write`]: a crash at any instant
//! leaves the old content or the new, never a mix, and a file that may hold a secret is
//! never readable by others, not even for the instant between create and chmod. The temp
//! file is `<name>.qwend-<random>.tmp` beside the target (a rename only replaces
//! atomically within one filesystem), created by `tempfile` (exclusive create, mode 0600,
//! removed again if the write fails).
//!
//! Unix only, like the transport this crate carries (see its `compile_error!`).
use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

/// What a temp file carries between the target's name and its random part.
const TEMP_MARK: &str = ".qwend-";
const TEMP_SUFFIX: &str = ".tmp";

/// Replaces `path` so that a crash at any instant leaves either the old or the new
/// content: write a private temp file in the same directory, fsync it, rename it over the
/// target, fsync the directory. The file ends up 0600 whatever the umask.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, bytes, 0o600)
}

/// [`atomic_write`] for a file whose permissions the user chose (settings.json): the new
/// file gets the permission bits `path` has now, 0600 when it has none yet.
pub fn atomic_write_keeping_mode(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mode = fs::metadata(path).map_or(0o600, |md| md.permissions().mode() & 0o777);
    atomic_write_mode(path, bytes, mode)
}

fn atomic_write_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut tmp = temp_file_beside(path)?;
    // Created 0600 already; the umask can only remove bits, but a umask like 0277 would
    // remove ours too (Qwen Code forces the mode the same way).
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// A new private (0600, exclusively created) temp file beside `path`, named so that
/// [`sweep_temp_files`] on `path` finds it if its writer is killed; removed on drop.
pub fn temp_file_beside(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(parent_dir(path))
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    format!("{name}{TEMP_MARK}")
}

/// Removes the temp files [`atomic_write`] left beside `path` when its writer was killed
/// mid-write (they may hold old secrets). Only those last modified before `cutoff`, so a
/// concurrent writer's file is safe; `None` removes them all, for a caller that knows no
/// write is under way. Best effort: what cannot be listed or removed stays.
pub fn sweep_temp_files(path: &Path, cutoff: Option<SystemTime>) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        let abandoned = match cutoff {
            None => true,
            Some(cutoff) => entry
                .metadata()
                .and_then(|md| md.modified())
                .is_ok_and(|mtime| mtime < cutoff),
        };
        if abandoned {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The directory `path` is in: `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the rename durable; some filesystems refuse to fsync a directory, and by then the
/// rename has happened, so failure here is not an error.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Creates `dir` (and missing parents) as 0700. `tighten` also takes group and other
/// access away from a directory that exists already, leaving the owner's own bits alone:
/// right for a directory we own, wrong for one we share (Qwen Code's `~/.qwen`).
pub fn ensure_private_dir(dir: &Path, tighten: bool) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if tighten {
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(dir, Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_is_private_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        atomic_write(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(names(dir.path()), ["f.json"]);
    }

    #[test]
    fn keeping_mode_keeps_the_users_choice_and_is_private_for_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("settings.json");
        atomic_write_keeping_mode(&p, b"{}").unwrap();
        assert_eq!(mode(&p), 0o600);
        fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        atomic_write_keeping_mode(&p, b"{ }").unwrap();
        assert_eq!((fs::read(&p).unwrap(), mode(&p)), (b"{ }".to_vec(), 0o640));
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be renamed over: the write fails after the temp exists.
        let p = dir.path().join("target");
        fs::create_dir(&p).unwrap();
        fs::write(p.join("inside"), "x").unwrap();
        assert!(atomic_write(&p, b"new").is_err());
        assert_eq!(names(dir.path()), ["target"]);
    }

    #[test]
    fn sweep_removes_only_old_temp_files_of_this_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let old = dir.path().join("t.json.qwend-aa.tmp");
        let young = dir.path().join("t.json.qwend-bb.tmp");
        let other = dir.path().join("u.json.qwend-cc.tmp");
        let not_ours = dir.path().join("t.json.tmp");
        for f in [&old, &young, &other, &not_ours] {
            fs::write(f, "x").unwrap();
        }
        let ten_min_ago = SystemTime::now() - Duration::from_secs(600);
        for f in [&old, &other, &not_ours] {
            File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(ten_min_ago)
                .unwrap();
        }
        sweep_temp_files(&p, Some(SystemTime::now() - Duration::from_secs(60)));
        assert!(!old.exists());
        assert!(young.exists() && other.exists() && not_ours.exists());
        sweep_temp_files(&p, None);
        assert!(!young.exists() && other.exists() && not_ours.exists());
    }

    #[test]
    fn private_dirs_are_made_0700_and_tightened_only_on_request() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        ensure_private_dir(&dir, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir, false).unwrap();
        assert_eq!(mode(&dir), 0o755, "a shared directory is left alone");
        ensure_private_dir(&dir, true).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, Permissions::from_mode(0o555)).unwrap();
        ensure_private_dir(&dir, true).unwrap();
        assert_eq!(mode(&dir), 0o500, "the owner's own bits are not widened");
        fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn parent_of_a_bare_name_is_the_current_dir() {
        assert_eq!(parent_dir(Path::new("f")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/f")), Path::new("/a"));
    }
}
