//! Who this client is, for the daemon: the directory it runs in and its environment. Every
//! RPC that depends on the caller (credentials, `.env` resolution, quota, the method in
//! effect) carries this, so the daemon answers for the client's folder and variables.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qwend_shared::api::env_client::EnvClient;
use qwend_shared::api::{ClientContext, ResolveEnvRequest, ResolveEnvResponse};
use tonic::transport::Channel;

use crate::error::ClientError;

/// This process as the daemon sees it: the current directory and the environment.
pub fn current() -> Result<ClientContext, ClientError> {
    Ok(at(&absolute_cwd(None)?))
}

/// This process's environment, working in `dir` (absolute): `--cwd`.
pub fn at(dir: &Path) -> ClientContext {
    ClientContext {
        cwd: dir.to_string_lossy().into_owned(),
        env: client_env(),
    }
}

/// A relative `--cwd` is taken relative to where `qwen` runs, like any path argument.
pub fn absolute_cwd(arg: Option<&Path>) -> Result<PathBuf, ClientError> {
    let here = || {
        std::env::current_dir()
            .map_err(|e| ClientError::Usage(format!("cannot read the current directory: {e}")))
    };
    match arg {
        None => here(),
        Some(p) if p.is_absolute() => Ok(p.to_path_buf()),
        Some(p) => Ok(here()?.join(p)),
    }
}

/// Our environment for the daemon. Names or values that are not UTF-8 cannot travel in the
/// protocol; their keys still count as present (so the file never overrides them).
fn client_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .collect()
}

/// The `.env` resolution the daemon makes for `ctx` (its folder, its environment).
pub async fn resolve_env(
    channel: &Channel,
    ctx: &ClientContext,
) -> Result<ResolveEnvResponse, tonic::Status> {
    let req = ResolveEnvRequest {
        cwd: ctx.cwd.clone(),
        env: ctx.env.clone(),
    };
    EnvClient::new(channel.clone())
        .resolve_env(req)
        .await
        .map(tonic::Response::into_inner)
}
