//! The gRPC services the daemon serves on its socket, one module per service.
mod daemon;

use daemon::DaemonService;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use qwend_shared::api::daemon_server::DaemonServer;
use qwend_shared::transport::check_peer;
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;

/// What the lifecycle services need to know about this daemon process.
#[derive(Debug, Clone)]
pub struct DaemonState {
    pub started: Instant,
    pub socket: PathBuf,
    pub shutdown: Arc<Notify>,
}

/// Serve every service on `listener` until `stop` completes, then finish in-flight calls.
pub async fn serve(
    state: DaemonState,
    listener: UnixListener,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(check_peer))
        .add_service(DaemonServer::new(DaemonService::new(state)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
}
