//! Fixed permit load against a running daemon, for instruction counts (the quota bench's
//! wall-clock figures swing with whatever else runs on the machine):
//!
//! ```sh
//! cargo build --release --workspace --examples
//! valgrind --tool=callgrind target/release/qwend --foreground --socket $S &   # env as the bench sets it
//! target/release/examples/permit_load $S $HOME 16 5      # warm up
//! callgrind_control -z qwend; target/release/examples/permit_load $S $HOME 16 200; callgrind_control -d qwend
//! ```
//!
//! Arguments: SOCKET HOME CLIENTS PER_CLIENT; every client sends the bench's context
//! (cwd and HOME set to HOME). Divide the dump's total by CLIENTS × PER_CLIENT.
use qwend_shared::api::quota_client::QuotaClient;
use qwend_shared::api::{AcquirePermitRequest, ClientContext};
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let socket = std::path::PathBuf::from(&a[1]);
    let home = a[2].clone();
    let clients: usize = a[3].parse().unwrap();
    let per: usize = a[4].parse().unwrap();
    let ctx = ClientContext {
        cwd: home.clone(),
        env: [("HOME".to_string(), home.clone())].into(),
    };
    let mut cs = Vec::new();
    for _ in 0..clients {
        cs.push(QuotaClient::new(
            qwend_shared::transport::connect(&socket).await.unwrap(),
        ));
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for mut c in cs {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut g = 0;
            for _ in 0..per {
                let r = c
                    .acquire_permit(AcquirePermitRequest {
                        client: Some(ctx.clone()),
                        wait_ms: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                g += r.granted as usize;
            }
            g
        }));
    }
    let mut g = 0;
    for t in tasks {
        g += t.await.unwrap();
    }
    let d = t.elapsed();
    println!(
        "{} calls, {} granted, {:.0}/s",
        clients * per,
        g,
        (clients * per) as f64 / d.as_secs_f64()
    );
}
