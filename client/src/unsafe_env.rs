//! Which `.env` keys may make a program run code chosen by whoever wrote the file, and
//! which files are trusted to set them. One rule for `qwen exec` and `qwen env --export`
//! (docs/exec.md explains it to users).
//!
//! A project `.env` is someone else's file (a cloned repository). Setting, say, `GIT_DIR`
//! from it makes `git status` read a config whose `core.fsmonitor` is a command; `HOME` or
//! `XDG_CONFIG_HOME` make every tool read rc files from the repository; `npm_config_*`,
//! `PIP_*`, `CARGO_*` redirect package managers and build tools. Listing keys one by one
//! always misses some, so the rule denies whole families by prefix, plus single keys that
//! belong to no family. A few keys inside a family only switch a behaviour and are too
//! common in `.env` files to warn about (`PYTHONUNBUFFERED`); they are allowed by name.
//!
//! Keys compare case-insensitively: npm reads `npm_config_*` in any case, and Windows
//! treats environment names that way.
use std::path::{Path, PathBuf};

use qwend_shared::api::EnvVar;

/// Families: any key starting with one of these.
pub const UNSAFE_PREFIXES: &[&str] = &[
    // dynamic loaders (glibc, macOS)
    "LD_",
    "DYLD_",
    // bash exported functions
    "BASH_FUNC_",
    // git reads dozens of GIT_* (GIT_DIR, GIT_WORK_TREE, GIT_CONFIG_*, GIT_SSH_COMMAND,
    // GIT_EXEC_PATH, ...); each can point it at a config or hook that runs a command
    "GIT_",
    // where tools find their config, data and plugins (git, shells, editors, pip, ...)
    "XDG_",
    // node and its package managers (npm reads npm_config_* case-insensitively)
    "NPM_CONFIG_",
    "YARN_",
    "COREPACK_",
    // python, pip, uv, conda
    "PYTHON",
    "PIP_",
    "UV_",
    "CONDA",
    // rust: CARGO_HOME, CARGO_BUILD_RUSTC_WRAPPER, CARGO_TARGET_<triple>_RUNNER, ...
    "CARGO_",
    "RUSTUP_",
    "RUSTC",
    // ruby and perl module paths and options
    "PERL5",
    "RUBY",
    "GEM_",
    "BUNDLE_",
    // the JVM
    "JAVA_",
    "JDK_JAVA_",
    "_JAVA_",
    // lua, php
    "LUA_",
    "PHP",
    // qwen's own daemon: QWEND_BIN is a program a child `qwen` would start, QWEND_SOCKET
    // a server it would trust
    "QWEND_",
];

/// Single keys outside any family.
pub const UNSAFE_KEYS: &[&str] = &[
    // shells: startup files, prompts (expanded with command substitution), parsing
    "HOME",
    "SHELL",
    "ENV",
    "BASH_ENV",
    "ZDOTDIR",
    "SHELLOPTS",
    "BASHOPTS",
    "PROMPT_COMMAND",
    "PS0",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "IFS",
    "PATH",
    "CDPATH",
    "INPUTRC",
    // node
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_REPL_EXTERNAL_MODULE",
    // python environments
    "VIRTUAL_ENV",
    // rust and C toolchains: the compiler, linker and their flags (-C linker=, -fplugin=)
    "RUSTFLAGS",
    "RUSTDOC",
    "RUSTDOCFLAGS",
    "CC",
    "CXX",
    "CPP",
    "LD",
    "AR",
    "AS",
    "FC",
    "MAKE",
    "MAKEFLAGS",
    "CFLAGS",
    "CXXFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "PKG_CONFIG_PATH",
    "CLASSPATH",
    // libraries loaded by name
    "GCONV_PATH",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    // helpers other programs run
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "MANPAGER",
    "BROWSER",
    "LESSOPEN",
    "LESSCLOSE",
    // qwen's own settings that redirect a child `qwen` (credentials, OAuth server)
    "QWEN_HOME",
    "QWEN_OAUTH_BASE_URL",
];

/// Inside a denied family, but only switch a behaviour on or off.
pub const HARMLESS_KEYS: &[&str] = &[
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
    "PYTHONHASHSEED",
    "PYTHONFAULTHANDLER",
    "CARGO_TERM_COLOR",
    "CARGO_TERM_VERBOSE",
    "CARGO_INCREMENTAL",
];

/// True when a `.env` file not trusted by the user may not set `key`.
pub fn is_unsafe(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    if HARMLESS_KEYS.contains(&k.as_str()) {
        return false;
    }
    UNSAFE_KEYS.contains(&k.as_str()) || UNSAFE_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// The user's own fallback files (`~/.qwen/.env`, `~/.env`): whatever they hold was put
/// there by the user, so they may set any key.
pub fn trusted_files(home: Option<&str>) -> Vec<PathBuf> {
    let Some(home) = home.filter(|h| !h.is_empty()) else {
        return Vec::new();
    };
    let home = Path::new(home);
    [home.join(".qwen").join(".env"), home.join(".env")]
        .into_iter()
        .flat_map(|p| {
            let real = std::fs::canonicalize(&p).ok();
            std::iter::once(p).chain(real)
        })
        .collect()
}

/// Splits resolved variables into (allowed, refused). With `allow` nothing is refused.
pub fn split(vars: Vec<EnvVar>, allow: bool, trusted: &[PathBuf]) -> (Vec<EnvVar>, Vec<EnvVar>) {
    if allow {
        return (vars, Vec::new());
    }
    vars.into_iter().partition(|v| {
        !is_unsafe(&v.key) || {
            let src = Path::new(&v.source);
            let real = std::fs::canonicalize(src).ok();
            trusted
                .iter()
                .any(|t| t == src || real.as_deref() == Some(t.as_path()))
        }
    })
}

/// [`split`] for this client: trusted files are those under its own `HOME`.
pub fn split_for_client(vars: Vec<EnvVar>, allow: bool) -> (Vec<EnvVar>, Vec<EnvVar>) {
    let home = std::env::var("HOME").ok();
    split(vars, allow, &trusted_files(home.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_single_keys_are_unsafe() {
        for k in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "DYLD_INSERT_LIBRARIES",
            "NODE_OPTIONS",
            "BASH_ENV",
            "ENV",
            "PROMPT_COMMAND",
            "INPUTRC",
            "HOME",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "PYTHONWARNINGS",
            "PIP_CONFIG_FILE",
            "PIP_INDEX_URL",
            "PERL5OPT",
            "RUBYOPT",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_COUNT",
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_EXEC_PATH",
            "XDG_CONFIG_HOME",
            "XDG_CONFIG_DIRS",
            "XDG_DATA_HOME",
            "XDG_DATA_DIRS",
            "npm_config_userconfig",
            "NPM_CONFIG_SCRIPT_SHELL",
            "npm_config_globalconfig",
            "CARGO_HOME",
            "CARGO_BUILD_RUSTC_WRAPPER",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "RUSTUP_TOOLCHAIN",
            "CC",
            "BASH_FUNC_ls%%",
            "QWEND_BIN",
            "QWEND_SOCKET",
            "QWEN_OAUTH_BASE_URL",
            "git_dir",
        ] {
            assert!(is_unsafe(k), "{k}");
        }
    }

    #[test]
    fn ordinary_keys_and_harmless_flags_are_safe() {
        for k in [
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "OPENAI_MODEL",
            "QWEN_MODEL",
            "ENVIRONMENT",
            "DEBUG",
            "NODE_ENV",
            "MY_PATH",
            "DATABASE_URL",
            "RUST_LOG",
            "RUST_BACKTRACE",
            "PYTHONUNBUFFERED",
            "pythondontwritebytecode",
            "CARGO_TERM_COLOR",
            "LDAP_URL",
            "CCACHE_DIR",
        ] {
            assert!(!is_unsafe(k), "{k}");
        }
    }

    #[test]
    fn home_files_are_trusted_project_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".qwen")).unwrap();
        std::fs::write(home.join(".qwen/.env"), "").unwrap();
        let var = |k: &str, src: &Path| EnvVar {
            key: k.into(),
            value: "v".into(),
            source: src.display().to_string(),
        };
        let trusted = trusted_files(home.to_str());
        let vars = vec![
            var("NODE_OPTIONS", &home.join(".qwen/.env")),
            var("NODE_OPTIONS", &dir.path().join("proj/.env")),
            var("FOO", &dir.path().join("proj/.env")),
        ];
        let (kept, dropped) = split(vars.clone(), false, &trusted);
        assert_eq!(kept.len(), 2);
        assert_eq!(dropped.len(), 1);
        assert!(dropped[0].source.contains("proj"));
        let (kept, dropped) = split(vars, true, &trusted);
        assert_eq!((kept.len(), dropped.len()), (3, 0));
        assert!(trusted_files(Some("")).is_empty());
    }
}
