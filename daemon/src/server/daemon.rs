//! `qwend.v1.Daemon`: status and shutdown of the daemon process.
use qwend_shared::api::daemon_server::Daemon;
use qwend_shared::api::{ShutdownRequest, ShutdownResponse, StatusRequest, StatusResponse};
use tonic::{Request, Response, Status};

use super::DaemonState;

#[derive(Debug)]
pub struct DaemonService {
    state: DaemonState,
}

impl DaemonService {
    pub fn new(state: DaemonState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonService {
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            version: qwend_shared::VERSION.to_string(),
            protocol_version: qwend_shared::PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_s: self.state.started.elapsed().as_secs(),
            socket: self.state.socket.display().to_string(),
        }))
    }

    async fn shutdown(
        &self,
        _req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        tracing::info!("shutdown requested over the socket");
        // notify_one stores a permit, so the stop future sees it even if it is not yet
        // polling; the reply still goes out because shutdown is graceful.
        self.state.shutdown.notify_one();
        Ok(Response::new(ShutdownResponse {
            pid: std::process::id(),
        }))
    }
}
