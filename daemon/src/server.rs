//! The gRPC services the daemon serves on its socket.
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use qwend_shared::api::daemon_server::{Daemon, DaemonServer};
use qwend_shared::api::{ShutdownRequest, ShutdownResponse, StatusRequest, StatusResponse};
use qwend_shared::transport::check_peer;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// What the lifecycle services need to know about this daemon process.
#[derive(Debug, Clone)]
pub struct DaemonState {
    pub started: Instant,
    pub socket: PathBuf,
    pub shutdown: Arc<Notify>,
}

#[derive(Debug)]
pub struct DaemonService {
    state: DaemonState,
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

/// Serve every service on `listener` until `stop` completes, then finish in-flight calls.
pub async fn serve(
    state: DaemonState,
    listener: UnixListener,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(check_peer))
        .add_service(DaemonServer::new(DaemonService { state }))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
}
