//! Which file applies, and what loading it sets for one client.
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::filecache::{FileCache, Loaded};
use crate::settings::{Settings, View, normalize};

/// Files above this size are not loaded (with a warning). Qwen Code loads a `.env` of any
/// size, so the bound is generous; it only keeps a runaway file from costing the daemon
/// its memory (and large files are read one at a time, see the cache).
pub const MAX_ENV_FILE_BYTES: u64 = 64 * 1024 * 1024;
const CACHE_ENTRIES: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("the working directory must be an absolute path, got {0:?}")]
    RelativeCwd(PathBuf),
    #[error("the working directory {path} does not exist")]
    CwdMissing { path: PathBuf },
    #[error("the working directory {path} cannot be resolved: {source}")]
    Cwd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HOME is not set in the client's environment")]
    NoHome,
    #[error("HOME ({0}) does not exist; set HOME to your home directory")]
    HomeMissing(PathBuf),
}

pub struct EnvRequest<'a> {
    /// The client's working directory (absolute; symlinks allowed).
    pub cwd: &'a Path,
    /// The client's whole environment.
    pub client_env: &'a HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The client already has the key (even as "").
    Preset,
    /// `DEBUG`/`DEBUG_MODE` or `advanced.excludedEnvVars`, in a non-`.qwen` file.
    Excluded,
}

/// Values are secrets (API keys): `Debug` prints keys only.
#[derive(Clone, Default)]
pub struct Resolution {
    pub file: Option<PathBuf>,
    /// What loading sets, in file order.
    pub vars: Vec<(String, String)>,
    pub skipped: Vec<(String, SkipReason)>,
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolution")
            .field("file", &self.file)
            .field(
                "keys",
                &self.vars.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .field("warnings", &self.warnings)
            .finish()
    }
}

type Parsed = Vec<(String, String)>;

#[derive(Debug)]
pub struct Resolver {
    #[cfg(target_os = "linux")]
    walks: super::watch::WalkCache,
    env_files: FileCache<Parsed>,
    /// The daemon's one settings reader (for `advanced.excludedEnvVars`), shared with the
    /// auth state.
    settings: Arc<Settings>,
    max_env_bytes: u64,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::with_limit(MAX_ENV_FILE_BYTES)
    }
}

impl Resolver {
    pub fn with_limit(max_env_bytes: u64) -> Self {
        Self {
            #[cfg(target_os = "linux")]
            walks: super::watch::WalkCache::default(),
            env_files: FileCache::new(CACHE_ENTRIES, max_env_bytes),
            settings: Arc::new(Settings::default()),
            max_env_bytes,
        }
    }

    /// The settings reader this resolver asks for exclusions.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The resolution for a client, with the settings read for it; their warnings come
    /// first in the result's.
    pub fn resolve(&self, req: &EnvRequest<'_>) -> Result<Resolution, EnvError> {
        self.resolve_in(req, None)
    }

    /// The resolution for a client whose settings `view` the caller already holds (and
    /// reports the warnings of itself).
    pub fn resolve_with(&self, req: &EnvRequest<'_>, view: &View) -> Result<Resolution, EnvError> {
        self.resolve_in(req, Some(view))
    }

    fn resolve_in(
        &self,
        req: &EnvRequest<'_>,
        view: Option<&View>,
    ) -> Result<Resolution, EnvError> {
        if !req.cwd.is_absolute() {
            return Err(EnvError::RelativeCwd(req.cwd.to_path_buf()));
        }
        let cwd_err = |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::NotFound {
                EnvError::CwdMissing {
                    path: req.cwd.to_path_buf(),
                }
            } else {
                EnvError::Cwd {
                    path: req.cwd.to_path_buf(),
                    source,
                }
            }
        };
        let cwd_meta = std::fs::metadata(req.cwd).map_err(cwd_err)?;
        if !cwd_meta.is_dir() {
            return Err(cwd_err(std::io::Error::from_raw_os_error(20))); // ENOTDIR
        }
        let cwd_id = (cwd_meta.dev(), cwd_meta.ino());
        let home = req
            .client_env
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| normalize(Path::new(h)))
            .ok_or(EnvError::NoHome)?;
        // Qwen Code 0.12.0 crashes here (realpath of HOME); we say why instead.
        std::fs::metadata(&home).map_err(|_| EnvError::HomeMissing(home.clone()))?;

        // Qwen Code walks from process.cwd(), which is the physical path.
        let (_, file) = self.walk(req.cwd, cwd_id, &home).map_err(cwd_err)?;
        let mut res = Resolution {
            file,
            ..Resolution::default()
        };
        let exclusions = match view {
            Some(view) => view.exclusions(),
            None => {
                let view = self.settings.view(req.cwd, req.client_env, None);
                res.warnings.extend_from_slice(view.warnings());
                view.exclusions()
            }
        };
        let Some(file) = res.file.clone() else {
            return Ok(res);
        };
        let parsed = match self
            .env_files
            .get(&file, |b| super::parse::parse(&super::parse::decode(b)))
        {
            Ok(Loaded::Value(p)) => p,
            Ok(Loaded::TooLarge { size, limit }) => {
                res.warnings.push(format!(
                    "{} is {size} bytes, over the {limit}-byte limit for .env files; nothing loaded from it",
                    file.display()
                ));
                return Ok(res);
            }
            Err(e) => {
                // Qwen Code ignores the read error silently; the file still ends the walk.
                res.warnings.push(format!(
                    "{} cannot be read ({e}); nothing loaded from it",
                    file.display()
                ));
                return Ok(res);
            }
        };
        // Qwen Code tests the whole path for ".qwen", not a path component.
        let project_file = !file.to_string_lossy().contains(".qwen");
        for (k, v) in parsed.iter() {
            if project_file && exclusions.excludes(k) {
                res.skipped.push((k.clone(), SkipReason::Excluded));
            } else if req.client_env.contains_key(k) {
                res.skipped.push((k.clone(), SkipReason::Preset));
            } else {
                res.vars.push((k.clone(), v.clone()));
            }
        }
        Ok(res)
    }

    /// The physical cwd and the chosen file. On Linux from the walk cache (keyed by the
    /// cwd's device and inode, which one `stat` gives) when nothing relevant changed since.
    fn walk(
        &self,
        cwd: &Path,
        cwd_id: (u64, u64),
        home: &Path,
    ) -> std::io::Result<(PathBuf, Option<PathBuf>)> {
        #[cfg(target_os = "linux")]
        {
            let key = super::watch::WalkKey {
                cwd: cwd_id,
                home: home.to_path_buf(),
            };
            if let Some(hit) = self.walks.get(&key) {
                return Ok(hit);
            }
            let dir = PhysicalDir::open(cwd)?;
            let mut rec = self.walks.recorder();
            let found = dir.find_env_file(home, &mut rec);
            // The path may have been switched to another directory since the stat.
            if rec.cacheable && dir.id() == Some(cwd_id) {
                self.walks.insert(key, (dir.path.clone(), found.clone()));
            }
            Ok((dir.path, found))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = cwd_id;
            let physical = std::fs::canonicalize(cwd)?;
            let found = find_env_file(&physical, home);
            Ok((physical, found))
        }
    }

    pub fn max_env_bytes(&self) -> u64 {
        self.max_env_bytes
    }
}

#[cfg(target_os = "linux")]
/// The physical working directory, held open so the walk can `stat` relative to each
/// directory: with absolute paths every `stat` re-resolves every component from `/`, which
/// makes a deep walk quadratic.
struct PhysicalDir {
    fd: Option<rustix::fd::OwnedFd>,
    path: PathBuf,
}

#[cfg(target_os = "linux")]
impl PhysicalDir {
    fn open(cwd: &Path) -> std::io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            cwd,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        // Linux names the open directory's physical path here; elsewhere ask realpath.
        let path = match std::fs::read_link(format!("/proc/self/fd/{}", fd_number(&fd))) {
            // A directory removed while open reads back as "<path> (deleted)".
            Ok(p) if p.is_absolute() && !p.to_string_lossy().ends_with(" (deleted)") => p,
            _ => std::fs::canonicalize(cwd)?,
        };
        Ok(Self { fd: Some(fd), path })
    }

    /// (device, inode) of the directory, to compare it with HOME without a realpath.
    fn id(&self) -> Option<(u64, u64)> {
        let st = rustix::fs::fstat(self.fd.as_ref()?).ok()?;
        Some((st.st_dev, st.st_ino))
    }

    /// [`find_env_file`] with each level's checks made relative to that directory, telling
    /// `obs` which directories the answer depends on.
    fn find_env_file(&self, home: &Path, obs: &mut dyn WalkObserver) -> Option<PathBuf> {
        use rustix::fs::{Mode, OFlags};
        let Some(mut fd) = self.fd.as_ref().and_then(|f| rustix::io::dup(f).ok()) else {
            obs.uncacheable();
            return find_env_file(&self.path, home);
        };
        let mut dir = self.path.as_path();
        loop {
            // Watch before looking, so no change can slip between the check and the watch.
            obs.dir(dir);
            obs.dir(&dir.join(".qwen"));
            if exists_at(&fd, ".qwen/.env", obs) {
                return Some(dir.join(".qwen").join(".env"));
            }
            if exists_at(&fd, ".env", obs) {
                return Some(dir.join(".env"));
            }
            let Some(parent) = dir.parent() else { break };
            match rustix::fs::openat(
                &fd,
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(up) => fd = up,
                // E.g. no search permission on the parent: finish by path, as node does.
                Err(_) => {
                    obs.uncacheable();
                    return find_env_file(parent, home);
                }
            }
            dir = parent;
        }
        obs.dir(home);
        obs.dir(&home.join(".qwen"));
        [home.join(".qwen").join(".env"), home.join(".env")]
            .into_iter()
            .find(|p| exists_at(rustix::fs::CWD, p, obs))
    }
}

/// Told what a walk depended on (the walk cache watches it).
#[cfg(target_os = "linux")]
trait WalkObserver {
    fn dir(&mut self, dir: &Path);
    fn uncacheable(&mut self);
}

#[cfg(target_os = "linux")]
impl WalkObserver for super::watch::Recorder<'_> {
    fn dir(&mut self, dir: &Path) {
        self.watch(dir);
    }
    fn uncacheable(&mut self) {
        self.saw_dangling_link();
    }
}

#[cfg(target_os = "linux")]
/// node's `existsSync` relative to `dirfd`. A name that exists as a link but does not
/// resolve (dangling, or a loop) could start resolving through a change anywhere on the
/// filesystem, so such a walk is not cached.
fn exists_at<Fd: rustix::fd::AsFd, P: rustix::path::Arg + Copy>(
    dirfd: Fd,
    name: P,
    obs: &mut dyn WalkObserver,
) -> bool {
    use rustix::fs::AtFlags;
    match rustix::fs::statat(&dirfd, name, AtFlags::empty()) {
        Ok(_) => true,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => {
            if rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                obs.uncacheable();
            }
            false
        }
        Err(_) => false,
    }
}

#[cfg(target_os = "linux")]
fn fd_number(fd: &rustix::fd::OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// Qwen Code's `findEnvFile`: from the physical cwd up to `/`, `.qwen/.env` then `.env`;
/// then `~/.qwen/.env`, `~/.env`. "Exists" is node's `existsSync`: a successful `stat`
/// (following symlinks), so a directory or an unreadable file counts, a dangling link or
/// a path under a file does not.
pub fn find_env_file(cwd: &Path, home: &Path) -> Option<PathBuf> {
    let exists = |p: &Path| std::fs::metadata(p).is_ok();
    let mut dir = cwd;
    loop {
        let qwen_env = dir.join(".qwen").join(".env");
        if exists(&qwen_env) {
            return Some(qwen_env);
        }
        let env = dir.join(".env");
        if exists(&env) {
            return Some(env);
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    [home.join(".qwen").join(".env"), home.join(".env")]
        .into_iter()
        .find(|p| exists(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Tree {
        root: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("home")).unwrap();
            Self { root }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.root.path().join(rel)
        }
        fn write(&self, rel: &str, body: &str) {
            let p = self.p(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        fn mkdir(&self, rel: &str) {
            std::fs::create_dir_all(self.p(rel)).unwrap();
        }
        fn env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
            let mut m: HashMap<String, String> = extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            m.insert("HOME".into(), self.p("home").display().to_string());
            m
        }
        fn resolve(
            &self,
            cwd: &str,
            env: &HashMap<String, String>,
        ) -> Result<Resolution, EnvError> {
            Resolver::default().resolve(&EnvRequest {
                cwd: &self.p(cwd),
                client_env: env,
            })
        }
    }

    fn vars(r: &Resolution) -> Vec<(&str, &str)> {
        r.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn nearest_directory_wins_and_qwen_env_first() {
        let t = Tree::new();
        t.write("work/.qwen/.env", "UP=1");
        t.write("work/proj/.env", "A=env");
        t.write("work/proj/.qwen/.env", "A=qwen");
        t.mkdir("work/proj/sub");
        let r = t.resolve("work/proj/sub", &t.env(&[])).unwrap();
        assert_eq!(
            r.file,
            Some(
                std::fs::canonicalize(t.p("work/proj"))
                    .unwrap()
                    .join(".qwen/.env")
            )
        );
        assert_eq!(vars(&r), [("A", "qwen")]);
    }

    #[test]
    fn home_fallback_and_preset_keys() {
        let t = Tree::new();
        t.write("home/.env", "A=home\nB=home");
        t.write("home/.qwen/.env", "A=qwen-home\nB=x");
        t.mkdir("elsewhere");
        let env = t.env(&[("B", "")]);
        let r = t.resolve("elsewhere", &env).unwrap();
        assert_eq!(r.file, Some(t.p("home/.qwen/.env")));
        assert_eq!(vars(&r), [("A", "qwen-home")]);
        assert_eq!(r.skipped, [("B".to_string(), SkipReason::Preset)]);
    }

    #[test]
    fn debug_excluded_only_from_non_qwen_paths() {
        let t = Tree::new();
        t.write("p/.env", "DEBUG=1\nDEBUG_MODE=1\ndebug=x\nK=1");
        let r = t.resolve("p", &t.env(&[])).unwrap();
        assert_eq!(vars(&r), [("debug", "x"), ("K", "1")]);
        t.write("q/.qwen/.env", "DEBUG=1");
        let r = t.resolve("q", &t.env(&[])).unwrap();
        assert_eq!(vars(&r), [("DEBUG", "1")]);
    }

    #[test]
    fn settings_exclusions_from_user_and_workspace() {
        let t = Tree::new();
        t.write(
            "home/.qwen/settings.json",
            r#"{ // user
            "advanced": { "excludedEnvVars": ["FOO"] } }"#,
        );
        t.write(
            "p/.qwen/settings.json",
            r#"{"advanced": {"excludedEnvVars": ["BAR"]}}"#,
        );
        t.write("p/.env", "FOO=1\nBAR=1\nDEBUG=1");
        let r = t.resolve("p", &t.env(&[])).unwrap();
        assert_eq!(vars(&r), [("DEBUG", "1")]);
        // QWEN_HOME moves the user settings.
        t.write(
            "alt/settings.json",
            r#"{"advanced": {"excludedEnvVars": []}}"#,
        );
        let env = t.env(&[("QWEN_HOME", &t.p("alt").display().to_string())]);
        let r = t.resolve("p", &env).unwrap();
        assert_eq!(vars(&r), [("FOO", "1"), ("DEBUG", "1")]);
    }

    #[test]
    fn broken_settings_are_a_warning_not_a_failure() {
        let t = Tree::new();
        t.write("home/.qwen/settings.json", "{ nope");
        t.write("p/.env", "A=1");
        let r = t.resolve("p", &t.env(&[])).unwrap();
        assert_eq!(vars(&r), [("A", "1")]);
        assert!(r.warnings[0].contains("settings.json"), "{:?}", r.warnings);
    }

    #[test]
    fn a_directory_or_unreadable_env_ends_the_walk() {
        let t = Tree::new();
        t.write("w/.env", "PARENT=1");
        t.mkdir("w/a/.env");
        let r = t.resolve("w/a", &t.env(&[])).unwrap();
        assert!(r.file.unwrap().ends_with("w/a/.env"));
        assert!(r.vars.is_empty());
        assert!(r.warnings[0].contains("cannot be read"), "{:?}", r.warnings);
    }

    #[test]
    fn unreadable_directory_on_the_way_up_is_passed() {
        let t = Tree::new();
        t.write("top/.env", "TOP=1");
        t.mkdir("top/locked/inner");
        // Without the x bit on `locked`, stat of locked/.env fails for non-root; as root
        // everything is visible, and the walk must still find top/.env.
        std::fs::set_permissions(t.p("top/locked"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let r = Resolver::default().resolve(&EnvRequest {
            cwd: &t.p("top"),
            client_env: &t.env(&[]),
        });
        std::fs::set_permissions(t.p("top/locked"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        assert_eq!(vars(&r.unwrap()), [("TOP", "1")]);
    }

    #[test]
    fn bad_cwds_and_homes_are_typed_errors() {
        let t = Tree::new();
        let env = t.env(&[]);
        let r = Resolver::default();
        let rel = r.resolve(&EnvRequest {
            cwd: Path::new("rel/dir"),
            client_env: &env,
        });
        assert!(matches!(rel, Err(EnvError::RelativeCwd(_))));
        assert!(matches!(
            t.resolve("nope", &env),
            Err(EnvError::CwdMissing { .. })
        ));
        std::os::unix::fs::symlink(t.p("loop-b"), t.p("loop-a")).unwrap();
        std::os::unix::fs::symlink(t.p("loop-a"), t.p("loop-b")).unwrap();
        let e = t.resolve("loop-a", &env).unwrap_err();
        assert!(matches!(e, EnvError::Cwd { .. }), "{e}");
        t.mkdir("p");
        assert!(matches!(
            t.resolve("p", &HashMap::new()),
            Err(EnvError::NoHome)
        ));
        let gone = HashMap::from([("HOME".to_string(), t.p("gone").display().to_string())]);
        let e = t.resolve("p", &gone).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn oversized_file_is_refused_with_a_warning() {
        let t = Tree::new();
        t.write("p/.env", &"A=1\n".repeat(1000));
        let r = Resolver::with_limit(1024)
            .resolve(&EnvRequest {
                cwd: &t.p("p"),
                client_env: &t.env(&[]),
            })
            .unwrap();
        assert!(r.vars.is_empty());
        assert!(r.warnings[0].contains("limit"), "{:?}", r.warnings);
    }

    #[test]
    fn a_regular_env_over_a_mib_loads_by_default() {
        let t = Tree::new();
        let mut body = "PAD=".to_string() + &"x".repeat(2 * 1024 * 1024) + "\n";
        body.push_str("A=1\n");
        t.write("p/.env", &body);
        let r = t.resolve("p", &t.env(&[])).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.vars.last().unwrap(), &("A".to_string(), "1".to_string()));
    }

    #[test]
    fn a_fifo_env_ends_the_walk_with_a_warning_and_does_not_block() {
        let t = Tree::new();
        t.mkdir("p/sub");
        t.write("p/.env", "A=1\n");
        crate::fsread::make_fifo(&t.p("p/sub/.env"));
        let r = t.resolve("p/sub", &t.env(&[])).unwrap();
        assert_eq!(r.file.as_deref(), Some(t.p("p/sub/.env").as_path()));
        assert!(r.vars.is_empty());
        assert!(r.warnings[0].contains("FIFO"), "{:?}", r.warnings);
    }

    #[test]
    fn invalid_utf8_and_nul_bytes_load_like_node() {
        let t = Tree::new();
        t.mkdir("p");
        std::fs::write(t.p("p/.env"), b"A=\xff\xfeok\nB=x\x00y\n").unwrap();
        let r = t.resolve("p", &t.env(&[])).unwrap();
        assert_eq!(vars(&r), [("A", "\u{FFFD}\u{FFFD}ok"), ("B", "x\u{0}y")]);
    }

    #[test]
    fn changes_and_deletions_are_seen_on_the_next_call() {
        let t = Tree::new();
        t.write("p/.env", "A=1");
        let r = Resolver::default();
        let env = t.env(&[]);
        let cwd = t.p("p");
        let req = EnvRequest {
            cwd: &cwd,
            client_env: &env,
        };
        assert_eq!(vars(&r.resolve(&req).unwrap()), [("A", "1")]);
        t.write("p/.env", "A=2");
        assert_eq!(vars(&r.resolve(&req).unwrap()), [("A", "2")]);
        std::fs::remove_file(t.p("p/.env")).unwrap();
        let gone = r.resolve(&req).unwrap();
        assert_eq!(gone.file, None);
        assert!(gone.vars.is_empty());
    }

    #[test]
    fn a_warm_walk_sees_new_files_at_any_level_at_once() {
        let t = Tree::new();
        t.write("a/.env", "LEVEL=a");
        t.mkdir("a/b/c/d");
        let r = Resolver::default();
        let env = t.env(&[]);
        let cwd = t.p("a/b/c/d");
        let req = EnvRequest {
            cwd: &cwd,
            client_env: &env,
        };
        let level = |r: &Resolver| {
            vars(&r.resolve(&req).unwrap())
                .first()
                .map(|v| v.1.to_string())
        };
        assert_eq!(level(&r).as_deref(), Some("a"));
        assert_eq!(level(&r).as_deref(), Some("a"), "warm");
        t.write("a/b/.env", "LEVEL=b");
        assert_eq!(level(&r).as_deref(), Some("b"));
        // A new .qwen directory, then its .env.
        t.mkdir("a/b/c/.qwen");
        assert_eq!(level(&r).as_deref(), Some("b"));
        t.write("a/b/c/.qwen/.env", "LEVEL=c-qwen");
        assert_eq!(level(&r).as_deref(), Some("c-qwen"));
        std::fs::remove_file(t.p("a/b/c/.qwen/.env")).unwrap();
        std::fs::remove_file(t.p("a/b/.env")).unwrap();
        assert_eq!(level(&r).as_deref(), Some("a"));
        // A dangling link whose target appears far away.
        std::os::unix::fs::symlink(t.p("elsewhere/target.env"), t.p("a/b/c/d/.env")).unwrap();
        assert_eq!(level(&r).as_deref(), Some("a"));
        t.write("elsewhere/target.env", "LEVEL=linked");
        assert_eq!(level(&r).as_deref(), Some("linked"));
        // Home fallback appears and goes.
        std::fs::remove_file(t.p("a/b/c/d/.env")).unwrap();
        std::fs::remove_file(t.p("a/.env")).unwrap();
        assert_eq!(level(&r), None);
        t.write("home/.qwen/.env", "LEVEL=home");
        assert_eq!(level(&r).as_deref(), Some("home"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cwd_that_vanishes_mid_walk_ends_cleanly() {
        let t = Tree::new();
        t.write("w/.env", "TOP=1");
        t.mkdir("w/a/b");
        let dir = PhysicalDir::open(&t.p("w/a/b")).unwrap();
        // The directory and its parent go away after the walk started from them.
        std::fs::remove_dir(t.p("w/a/b")).unwrap();
        std::fs::remove_dir(t.p("w/a")).unwrap();
        let cache = super::super::watch::WalkCache::default();
        let mut rec = cache.recorder();
        let found = dir.find_env_file(&t.p("home"), &mut rec);
        // Whatever the kernel still lets us see: no panic, and never a file that does not
        // exist.
        if let Some(f) = &found {
            assert!(f.exists(), "{f:?}");
        }
        // Through the public API the vanished cwd is a typed error.
        let e = t.resolve("w/a/b", &t.env(&[])).unwrap_err();
        assert!(matches!(e, EnvError::CwdMissing { .. }), "{e}");
    }

    #[test]
    fn debug_output_never_shows_values() {
        let t = Tree::new();
        t.write("p/.env", "OPENAI_API_KEY=sk-very-secret");
        let r = t.resolve("p", &t.env(&[])).unwrap();
        let s = format!("{r:?}");
        assert!(
            s.contains("OPENAI_API_KEY") && !s.contains("sk-very-secret"),
            "{s}"
        );
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c/")), PathBuf::from("/a/c"));
    }
}
