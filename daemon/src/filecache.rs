//! Parsed files cached by path, re-validated with one `stat` per use.
//!
//! A file's identity is (device, inode, size, mtime, ctime). Timestamps are coarse (a
//! kernel tick), so a same-size rewrite within one tick of our read would look unchanged:
//! like git's "racy" index entries, an entry read less than `RACY_WINDOW` after the file's
//! last change is never trusted, and the file is read again next time.
//!
//! Files are opened with [`crate::fsread::open_regular`]: a FIFO or a device in a project
//! is refused at once instead of blocking the request. Memory is bounded three ways: no
//! file over the cache's size limit is read; the cache keeps at most `CACHE_BUDGET` bytes
//! of files (a larger file is parsed for each request, which is rare); and files over
//! `BIG_FILE` are read one at a time, so many concurrent requests for a 60 MiB `.env`
//! cost one file's worth of memory, not one each.
use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const RACY_WINDOW: Duration = Duration::from_secs(2);
/// Total size of the files whose parsed form the cache keeps.
const CACHE_BUDGET: u64 = 16 * 1024 * 1024;
/// Files above this are read and parsed under [`BIG_READS`], one at a time.
const BIG_FILE: u64 = 1024 * 1024;
static BIG_READS: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// When the contents last changed. (ctime also moves on chmod or touch, which the
    /// stamp comparison catches anyway.)
    fn changed_at(&self) -> SystemTime {
        let (s, ns) = self.mtime;
        SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
    }
}

struct Entry<T> {
    stamp: Stamp,
    bytes: u64,
    value: Arc<T>,
    trusted: bool,
}

/// What reading a file gave.
pub enum Loaded<T> {
    Value(Arc<T>),
    /// Larger than the limit: not read past it.
    TooLarge {
        size: u64,
        limit: u64,
    },
}

pub struct FileCache<T> {
    entries: Mutex<HashMap<PathBuf, Entry<T>>>,
    capacity: usize,
    max_bytes: u64,
}

impl<T> std::fmt::Debug for FileCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl<T> FileCache<T> {
    pub fn new(capacity: usize, max_bytes: u64) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
            max_bytes,
        }
    }

    /// The parsed contents of `path`, from the cache when the file is unchanged. Errors are
    /// those of opening or reading the file (a directory gives EISDIR on read).
    pub fn get(&self, path: &Path, parse: impl FnOnce(&[u8]) -> T) -> std::io::Result<Loaded<T>> {
        match std::fs::metadata(path) {
            // Absent (the usual case for settings files): no point in trying to open it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
            Ok(meta) => {
                let stamp = Stamp::of(&meta);
                let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(e) = entries.get(path)
                    && e.trusted
                    && e.stamp == stamp
                {
                    return Ok(Loaded::Value(e.value.clone()));
                }
            }
        }
        // Stamp the open descriptor, not the path: what we cache is what we read.
        let (file, meta) = crate::fsread::open_regular(path)?;
        let _big =
            (meta.len() > BIG_FILE).then(|| BIG_READS.lock().unwrap_or_else(|e| e.into_inner()));
        let mut bytes = Vec::new();
        // The size may grow between fstat and read: never read past the limit.
        if let crate::fsread::Capped::TooLarge { size, limit } =
            crate::fsread::read_into(file, &meta, self.max_bytes, &mut bytes)?
        {
            return Ok(Loaded::TooLarge { size, limit });
        }
        let stamp = Stamp::of(&meta);
        let trusted = SystemTime::now()
            .duration_since(stamp.changed_at())
            .is_ok_and(|age| age >= RACY_WINDOW);
        let size = bytes.len() as u64;
        let value = Arc::new(parse(&bytes));
        drop(bytes);
        if size > CACHE_BUDGET {
            return Ok(Loaded::Value(value));
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let held: u64 = entries
            .iter()
            .filter(|(p, _)| p.as_path() != path)
            .map(|(_, e)| e.bytes)
            .sum();
        let full = entries.len() >= self.capacity && !entries.contains_key(path);
        if full || held + size > CACHE_BUDGET {
            // Simple and bounded: the working set of .env files is small.
            entries.clear();
        }
        entries.insert(
            path.to_path_buf(),
            Entry {
                stamp,
                bytes: size,
                value: value.clone(),
                trusted,
            },
        );
        Ok(Loaded::Value(value))
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn set_old_mtime(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn unchanged_old_file_is_served_from_cache_and_changes_are_seen() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(".env");
        std::fs::write(&p, "A=1").unwrap();
        set_old_mtime(&p);
        let parses = AtomicUsize::new(0);
        let cache = FileCache::new(8, 1024);
        let read = || match cache
            .get(&p, |b| {
                parses.fetch_add(1, Ordering::SeqCst);
                String::from_utf8_lossy(b).into_owned()
            })
            .unwrap()
        {
            Loaded::Value(v) => (*v).clone(),
            Loaded::TooLarge { .. } => panic!("too large"),
        };
        assert_eq!(read(), "A=1");
        assert_eq!(read(), "A=1");
        assert_eq!(
            parses.load(Ordering::SeqCst),
            1,
            "second read is a cache hit"
        );
        // Same size, rewritten just now: the stamp changes (mtime/ctime) and the entry
        // would be racy anyway.
        std::fs::write(&p, "A=2").unwrap();
        assert_eq!(read(), "A=2");
        std::fs::remove_file(&p).unwrap();
        assert!(cache.get(&p, |_| String::new()).is_err());
    }

    #[test]
    fn a_freshly_changed_file_is_never_trusted() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(".env");
        std::fs::write(&p, "A=1").unwrap();
        let parses = AtomicUsize::new(0);
        let cache = FileCache::new(8, 1024);
        for _ in 0..3 {
            let _ = cache.get(&p, |_| parses.fetch_add(1, Ordering::SeqCst));
        }
        assert_eq!(parses.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn large_files_are_not_read_and_directories_error() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("big");
        std::fs::write(&p, vec![b'x'; 2048]).unwrap();
        let cache: FileCache<()> = FileCache::new(8, 1024);
        assert!(matches!(
            cache.get(&p, |_| ()).unwrap(),
            Loaded::TooLarge {
                size: 2048,
                limit: 1024
            }
        ));
        let e = cache.get(t.path(), |_| ()).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(21));
    }

    #[test]
    fn a_fifo_is_an_error_at_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(".env");
        crate::fsread::make_fifo(&p);
        let cache: FileCache<()> = FileCache::new(8, 1024);
        let e = cache.get(&p, |_| ()).err().unwrap();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn big_files_load_but_the_cache_keeps_a_bounded_total() {
        let t = tempfile::tempdir().unwrap();
        let cache: FileCache<usize> = FileCache::new(64, 64 * 1024 * 1024);
        let big = vec![b'x'; (CACHE_BUDGET / 3) as usize];
        for i in 0..8 {
            let p = t.path().join(format!("f{i}"));
            std::fs::write(&p, &big).unwrap();
            match cache.get(&p, |b| b.len()).unwrap() {
                Loaded::Value(n) => assert_eq!(*n, big.len()),
                Loaded::TooLarge { .. } => panic!("refused"),
            }
            let held: u64 = cache
                .entries
                .lock()
                .unwrap()
                .values()
                .map(|e| e.bytes)
                .sum();
            assert!(held <= CACHE_BUDGET, "{held}");
        }
        let huge = t.path().join("huge");
        std::fs::write(&huge, vec![b'y'; CACHE_BUDGET as usize + 1]).unwrap();
        assert!(matches!(
            cache.get(&huge, |b| b.len()).unwrap(),
            Loaded::Value(_)
        ));
        assert!(!cache.entries.lock().unwrap().contains_key(&huge));
    }

    #[test]
    fn capacity_is_bounded() {
        let t = tempfile::tempdir().unwrap();
        let cache: FileCache<()> = FileCache::new(4, 1024);
        for i in 0..10 {
            let p = t.path().join(format!("f{i}"));
            std::fs::write(&p, "x").unwrap();
            let _ = cache.get(&p, |_| ());
            assert!(cache.len() <= 4);
        }
    }
}
