//! The walk cache: which file a physical directory resolves to, kept only while inotify
//! says nothing relevant changed in any directory the walk looked at.
//!
//! A warm resolution must cost microseconds, and re-checking every level of a deep tree
//! cannot (one syscall per level at least). So each directory of a walk, and its `.qwen`,
//! is watched *before* it is checked; before any cached answer is used, pending events are
//! drained (one non-blocking read). An event naming `.env` or `.qwen`, an event on a watched
//! directory itself (deleted, moved, permissions changed) or a queue overflow clears the
//! cache. Content changes of the chosen file are not this module's job: the file cache
//! re-validates those with a `stat`.
use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

const MAX_ENTRIES: usize = 1024;
/// Well under the default `fs.inotify.max_user_watches` (8192+), shared with other tools.
const MAX_WATCHES: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalkKey {
    /// Device and inode of the working directory.
    pub cwd: (u64, u64),
    pub home: PathBuf,
}

/// The physical working directory and the chosen file.
pub type Walk = (PathBuf, Option<PathBuf>);

#[derive(Debug)]
struct State {
    fd: OwnedFd,
    walks: HashMap<WalkKey, Walk>,
    watched: HashSet<i32>,
}

#[derive(Debug)]
pub struct WalkCache {
    state: Option<Mutex<State>>,
}

fn flags() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

impl Default for WalkCache {
    fn default() -> Self {
        let state = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .ok()
            .map(|fd| {
                Mutex::new(State {
                    fd,
                    walks: HashMap::new(),
                    watched: HashSet::new(),
                })
            });
        Self { state }
    }
}

/// Records what a cold walk looked at; it is cacheable only if every directory could be
/// watched and nothing it saw was a dangling symlink (whose target could appear anywhere).
pub struct Recorder<'a> {
    cache: &'a WalkCache,
    pub cacheable: bool,
}

impl Recorder<'_> {
    /// Watch `dir` (before checking anything in it).
    pub fn watch(&mut self, dir: &Path) {
        if !self.cacheable {
            return;
        }
        let Some(state) = &self.cache.state else {
            self.cacheable = false;
            return;
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        if st.watched.len() >= MAX_WATCHES {
            self.cacheable = false;
            return;
        }
        match inotify::add_watch(&st.fd, dir, flags()) {
            Ok(wd) => {
                st.watched.insert(wd);
            }
            // Not a directory (or gone): nothing to watch, but the parent's watch covers
            // its appearance.
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::NOENT) => {}
            Err(_) => self.cacheable = false,
        }
    }

    pub fn saw_dangling_link(&mut self) {
        self.cacheable = false;
    }
}

impl WalkCache {
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder {
            cache: self,
            cacheable: self.state.is_some(),
        }
    }

    /// The cached answer for `key`, after applying every pending change notification.
    pub fn get(&self, key: &WalkKey) -> Option<Walk> {
        let state = self.state.as_ref()?;
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        drain(&mut st);
        st.walks.get(key).cloned()
    }

    pub fn insert(&self, key: WalkKey, walk: Walk) {
        let Some(state) = &self.state else { return };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        // Events that arrived during the walk may concern it: drop it rather than trust it.
        if drain(&mut st) {
            return;
        }
        if st.walks.len() >= MAX_ENTRIES {
            st.walks.clear();
        }
        st.walks.insert(key, walk);
    }
}

/// Apply pending events; true when something relevant happened (the cache was cleared).
fn drain(st: &mut State) -> bool {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut cleared = false;
    loop {
        let mut reader = inotify::Reader::new(&st.fd, &mut buf);
        let mut any = false;
        loop {
            match reader.next() {
                Ok(ev) => {
                    any = true;
                    if relevant(ev.events(), ev.file_name().map(|n| n.to_bytes())) {
                        cleared = true;
                    }
                    if ev.events().contains(ReadFlags::IGNORED) {
                        st.watched.remove(&ev.wd());
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    cleared = true;
                    break;
                }
            }
        }
        if !any {
            break;
        }
    }
    if cleared {
        st.walks.clear();
    }
    cleared
}

fn relevant(ev: ReadFlags, name: Option<&[u8]>) -> bool {
    if ev.intersects(
        ReadFlags::QUEUE_OVERFLOW
            | ReadFlags::DELETE_SELF
            | ReadFlags::MOVE_SELF
            | ReadFlags::IGNORED,
    ) {
        return true;
    }
    match name {
        // An event on the directory itself (ATTRIB: its permissions may now hide files).
        None => true,
        Some(n) => n.is_empty() || n == b".env" || n == b".qwen",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &Path) -> WalkKey {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        WalkKey {
            cwd: (m.dev(), m.ino()),
            home: PathBuf::from("/h"),
        }
    }

    fn walk(p: &Path, chosen: Option<PathBuf>) -> Walk {
        (p.to_path_buf(), chosen)
    }

    #[test]
    fn relevant_events_clear_and_others_do_not() {
        let t = tempfile::tempdir().unwrap();
        let cache = WalkCache::default();
        let mut rec = cache.recorder();
        rec.watch(t.path());
        assert!(rec.cacheable);
        cache.insert(key(t.path()), walk(t.path(), None));
        assert_eq!(cache.get(&key(t.path())), Some(walk(t.path(), None)));
        std::fs::write(t.path().join("unrelated.txt"), "x").unwrap();
        assert_eq!(
            cache.get(&key(t.path())),
            Some(walk(t.path(), None)),
            "other files do not matter"
        );
        std::fs::write(t.path().join(".env"), "A=1").unwrap();
        assert_eq!(
            cache.get(&key(t.path())),
            None,
            "a new .env clears the cache"
        );
    }

    #[test]
    fn qwen_dir_events_and_dir_removal_clear() {
        let t = tempfile::tempdir().unwrap();
        let q = t.path().join(".qwen");
        std::fs::create_dir(&q).unwrap();
        let cache = WalkCache::default();
        let mut rec = cache.recorder();
        rec.watch(t.path());
        rec.watch(&q);
        cache.insert(key(t.path()), walk(t.path(), None));
        std::fs::write(q.join(".env"), "A=1").unwrap();
        assert_eq!(cache.get(&key(t.path())), None);
        cache.insert(key(t.path()), walk(t.path(), Some(q.join(".env"))));
        std::fs::remove_file(q.join(".env")).unwrap();
        assert_eq!(cache.get(&key(t.path())), None);
    }

    #[test]
    fn dangling_links_make_a_walk_uncacheable() {
        let cache = WalkCache::default();
        let mut rec = cache.recorder();
        rec.saw_dangling_link();
        assert!(!rec.cacheable);
    }
}
