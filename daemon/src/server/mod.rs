//! The gRPC services the daemon serves on its socket, one module per service.
mod auth;
mod authority;
mod conn;
pub use conn::Limits as ConnectionLimits;
mod daemon;
mod env;
mod events;
mod proxy;
mod quota;
pub mod validate;

use self::auth::AuthService;
use self::quota::QuotaService;
use daemon::DaemonService;
use env::EnvService;
use events::EventsService;
use qwend_shared::api::auth_server::AuthServer;
use qwend_shared::api::events_server::EventsServer;
use qwend_shared::api::quota_server::QuotaServer;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use qwend_shared::api::daemon_server::DaemonServer;
use qwend_shared::api::env_server::EnvServer;
use qwend_shared::transport::check_peer;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::idle::Connections;

/// What the lifecycle services need to know about this daemon process.
#[derive(Debug, Clone)]
pub struct DaemonState {
    pub started: Instant,
    pub socket: PathBuf,
    pub shutdown: Arc<Notify>,
    pub resolver: Arc<crate::dotenv::Resolver>,
    pub auth: Arc<crate::auth::AuthState>,
    pub quota: Arc<crate::quota::Quota>,
    pub clock: crate::clock::SharedClock,
    pub hub: Arc<crate::events::Hub>,
    pub login: Arc<crate::login::LoginCoordinator>,
}

/// Serve every service on `listener` until `stop` completes, then finish in-flight calls.
/// Besides the `qwend.v1` services: gRPC server reflection and the standard health
/// service, so generic tools (grpcurl, grpc_health_probe) can explore the socket.
pub async fn serve(
    state: DaemonState,
    listener: UnixListener,
    connections: Arc<Connections>,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Both reflection versions: grpcurl speaks v1, Python's grpcio-reflection and several
    // GUI tools still speak v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(qwend_shared::api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DaemonServer<DaemonService>>()
        .await;
    health_reporter.set_serving::<EnvServer<EnvService>>().await;
    health_reporter
        .set_serving::<AuthServer<AuthService>>()
        .await;
    health_reporter
        .set_serving::<QuotaServer<QuotaService>>()
        .await;
    let env = EnvService::new(state.resolver.clone());
    health_reporter
        .set_serving::<EventsServer<EventsService>>()
        .await;
    let auth = AuthService::new(state.auth.clone(), state.login.clone(), state.hub.clone());
    let quota = QuotaService::new(
        state.quota.clone(),
        state.auth.clone(),
        state.clock.clone(),
        state.hub.clone(),
    );
    let events = EventsService::new(state.hub.clone());
    let (proxy, stop) = proxy::service(&state, stop);
    health_reporter.set_serving::<proxy::Server>().await;
    let incoming = conn::incoming(listener, connections, limits);
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(tonic::service::InterceptorLayer::new(check_peer))
        .layer(tower::util::MapResponseLayer::new(
            validate::bound_grpc_message::<tonic::body::Body>,
        ))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(DaemonServer::new(DaemonService::new(state)))
        .add_service(EnvServer::new(env))
        .add_service(AuthServer::new(auth))
        .add_service(QuotaServer::new(quota))
        .add_service(EventsServer::new(events))
        .add_service(proxy)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

/// Streams one connection may have open at once; a client queues the rest itself.
///
/// tonic leaves this unbounded, and h2 then closes a connection that multiplexes a few
/// thousand concurrent calls (GOAWAY `too_many_data_frames`): every request's small DATA
/// frame is charged up to 256 bytes against a per-connection budget of half the 1 MiB
/// window until its handler reads it. 1,024 open streams stay within that budget, so an
/// editor plugin sending any number of calls over one channel gets them all answered.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}
