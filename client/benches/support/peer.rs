//! Where the real Qwen Code and the conformance kit's oracles are, for the comparison rows.
use std::path::{Path, PathBuf};

/// The conformance kit: `$QWEN_CONFORMANCE_DIR`, else `shared/conformance` beside the
/// checkout or one of its parents.
pub fn conformance_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("QWEN_CONFORMANCE_DIR") {
        return Some(PathBuf::from(d));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/conformance"))
        .find(|d| d.join("oauth/oauth-oracle.mjs").is_file())
}

/// The installed `@qwen-code/qwen-code` package of `version`: under `$QWEN_BENCH_PEERS/<version>`
/// (where bench/run installs it), else where the kit's `env/setup.sh` puts it
/// (`/tmp/qwen-peer-<version>`). `Err` says how to install it.
pub fn package(version: &str) -> Result<PathBuf, String> {
    let prefix = std::env::var_os("QWEN_BENCH_PEERS")
        .map(|d| PathBuf::from(d).join(version))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/qwen-peer-{version}")));
    let pkg = prefix.join("node_modules/@qwen-code/qwen-code");
    if pkg.join("package.json").is_file() {
        Ok(pkg)
    } else {
        Err(format!(
            "Qwen Code {version} is not installed at {} (bench/run installs it; or QWEN_PEER_VERSION={version} bash shared/conformance/env/setup.sh)",
            pkg.display()
        ))
    }
}
