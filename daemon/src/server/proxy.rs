//! `qwend.v1.Proxy`: sessions of the loopback proxy (a secret per `qwen exec` run, live
//! while the call is open) and its status.
use std::sync::Arc;

use qwend_shared::api::proxy_server::Proxy as ProxyRpc;
use qwend_shared::api::{
    self as api, OpenProxySessionRequest, ProxySessionEvent, ProxyStatusRequest,
};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::{to_api_type, to_status};
use super::validate::client_ctx;
use crate::proxy::{Proxy, ProxyError};

/// Longest a status call may be held.
const MAX_WAIT_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct ProxyService {
    proxy: Arc<Proxy>,
}

impl ProxyService {
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

fn proxy_status(e: ProxyError) -> Status {
    match e {
        ProxyError::Auth(e) => to_status(e),
        // Not FAILED_PRECONDITION: clients read that as "authentication needed".
        ProxyError::Config(e) => Status::internal(e.to_string()),
        e @ (ProxyError::Listen { .. } | ProxyError::Secret(_)) => {
            Status::unavailable(e.to_string())
        }
    }
}

#[tonic::async_trait]
impl ProxyRpc for ProxyService {
    type OpenSessionStream = ReceiverStream<Result<ProxySessionEvent, Status>>;

    async fn open_session(
        &self,
        req: Request<OpenProxySessionRequest>,
    ) -> Result<Response<Self::OpenSessionStream>, Status> {
        let ctx = client_ctx(req.into_inner().client)?;
        let opened = self.proxy.open_session(ctx).await.map_err(proxy_status)?;
        let (tx, rx) = mpsc::channel(1);
        let first = ProxySessionEvent {
            kind: Some(api::proxy_session_event::Kind::Opened(
                api::ProxySessionOpened {
                    base_url: opened.base_url.clone(),
                    secret: opened.secret.expose_secret().to_string(),
                    auth_type: to_api_type(Some(opened.auth_type)) as i32,
                    model: opened.model.clone(),
                },
            )),
        };
        // Room for exactly this one event: the send cannot wait.
        let _ = tx.try_send(Ok(first));
        let stopping = self.proxy.stopping();
        tokio::spawn(async move {
            // The stream is dropped when the caller goes away (exit, kill, cancel): that
            // closes the channel, and dropping the guard revokes the secret.
            tokio::select! {
                _ = tx.closed() => {}
                _ = stopping => {}
            }
            drop(opened.guard);
            tracing::info!("proxy session closed; its secret is revoked");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_proxy_status(
        &self,
        req: Request<ProxyStatusRequest>,
    ) -> Result<Response<api::ProxyStatus>, Status> {
        let req = req.into_inner();
        if let Some(n) = req.wait_until_live_at_most {
            let limit = std::time::Duration::from_millis(req.wait_ms.min(MAX_WAIT_MS));
            self.proxy.wait_live_at_most(n as usize, limit).await;
        }
        let st = self.proxy.status();
        Ok(Response::new(api::ProxyStatus {
            address: st.address.map(|a| a.to_string()).unwrap_or_default(),
            live_secrets: u32::try_from(st.live_secrets).unwrap_or(u32::MAX),
            requests: st.requests,
        }))
    }
}

pub type Server = api::proxy_server::ProxyServer<ProxyService>;

/// The service for the daemon's state (the proxy itself starts on the first session),
/// and `stop` extended to end every session when the daemon stops.
pub fn service<F: std::future::Future<Output = ()>>(
    state: &super::DaemonState,
    stop: F,
) -> (Server, impl std::future::Future<Output = ()> + use<F>) {
    let cancel = tokio_util::sync::CancellationToken::new();
    let proxy = Arc::new(Proxy::from_env(
        state.auth.clone(),
        state.quota.clone(),
        state.clock.clone(),
        state.hub.clone(),
        cancel.clone(),
    ));
    let stop = async move {
        stop.await;
        cancel.cancel();
    };
    (
        api::proxy_server::ProxyServer::new(ProxyService::new(proxy)),
        stop,
    )
}
