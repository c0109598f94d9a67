//! `.env` resolution per working directory, exactly as Qwen Code 0.12.0 does it (the rule
//! is in README.md; the truth is the differential kit in `shared/conformance/env`).
//!
//! The daemon serves many clients, so nothing here reads the daemon's own environment:
//! HOME, QWEN_HOME and the set of already-present keys all come from the request.
pub(crate) mod parse;
mod resolve;
#[cfg(target_os = "linux")]
mod watch;

pub use parse::parse;
pub use resolve::{EnvError, EnvRequest, MAX_ENV_FILE_BYTES, Resolution, Resolver, SkipReason};
