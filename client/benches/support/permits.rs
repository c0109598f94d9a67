//! The permit load shared by the quota bench, its profiling example and the events load
//! test: `clients` connections (as separate processes would have), each asking for `per`
//! permits back to back.
use std::path::Path;
use std::time::{Duration, Instant};

use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AcquirePermitRequest, ClientContext};

/// Returns the time taken and how many permits were granted.
pub async fn acquire_permits(
    socket: &Path,
    ctx: &ClientContext,
    clients: usize,
    per: usize,
) -> (Duration, usize) {
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(QuotaClient::new(
            qwend_shared::transport::connect(socket).await.unwrap(),
        ));
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mut c in connected {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0;
            for _ in 0..per {
                let r = c
                    .acquire_permit(AcquirePermitRequest {
                        client: Some(ctx.clone()),
                        wait_ms: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                granted += usize::from(r.granted);
            }
            granted
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap();
    }
    (t.elapsed(), granted)
}
