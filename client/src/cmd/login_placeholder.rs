//! Stand-in for `qwen auth login` until the device-login client lands; replaced at merge.
use std::process::ExitCode;

use crate::error::{ClientError, code};

pub async fn login(_no_browser: bool, _as_json: bool) -> Result<ExitCode, ClientError> {
    eprintln!("qwen: to log in with Qwen OAuth, run `qwen auth login`");
    Ok(ExitCode::from(code::AUTH_NEEDED))
}
