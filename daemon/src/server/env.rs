//! `qwend.v1.Env`: `.env` resolution for a client's working directory.
use std::path::Path;
use std::sync::Arc;

use qwend_shared::api::env_server::Env;
use qwend_shared::api::skipped_var::Reason;
use qwend_shared::api::{EnvVar, ResolveEnvRequest, ResolveEnvResponse, SkippedVar};
use tonic::{Request, Response, Status};

use crate::dotenv::{EnvError, EnvRequest, Resolver, SkipReason};

#[derive(Debug, Clone)]
pub struct EnvService {
    resolver: Arc<Resolver>,
}

impl EnvService {
    pub fn new(resolver: Arc<Resolver>) -> Self {
        Self { resolver }
    }
}

#[tonic::async_trait]
impl Env for EnvService {
    async fn resolve_env(
        &self,
        req: Request<ResolveEnvRequest>,
    ) -> Result<Response<ResolveEnvResponse>, Status> {
        let req = req.into_inner();
        super::validate::cwd(&req.cwd)?;
        super::validate::env(&req.env)?;
        let resolver = self.resolver.clone();
        // Filesystem walks block; keep them off the async workers, and bound the wait: a
        // stuck filesystem must not hold the request (or the client) forever.
        let res = crate::blocking::run(
            ".env resolution",
            crate::blocking::ENV_DEADLINE,
            move || {
                resolver.resolve(&EnvRequest {
                    cwd: Path::new(&req.cwd),
                    client_env: &req.env,
                })
            },
        )
        .await?
        .map_err(|e| match e {
            EnvError::RelativeCwd(_) | EnvError::NoHome => Status::invalid_argument(e.to_string()),
            EnvError::CwdMissing { .. } | EnvError::HomeMissing(_) => {
                Status::not_found(e.to_string())
            }
            EnvError::Cwd { .. } => Status::invalid_argument(e.to_string()),
        })?;
        let source = res
            .file
            .as_ref()
            .map(|f| f.display().to_string())
            .unwrap_or_default();
        Ok(Response::new(ResolveEnvResponse {
            file: res.file.as_ref().map(|f| f.display().to_string()),
            vars: res
                .vars
                .into_iter()
                .map(|(key, value)| EnvVar {
                    key,
                    value,
                    source: source.clone(),
                })
                .collect(),
            warnings: res.warnings,
            skipped: res
                .skipped
                .into_iter()
                .map(|(key, why)| SkippedVar {
                    key,
                    reason: match why {
                        SkipReason::Preset => Reason::Preset,
                        SkipReason::Excluded => Reason::Excluded,
                    } as i32,
                })
                .collect(),
        }))
    }
}
