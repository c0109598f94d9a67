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
#[path = "../benches/support/permits.rs"]
mod permits;

use qwend_shared::api::ClientContext;

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
    let (d, g) = permits::acquire_permits(&socket, &ctx, clients, per).await;
    println!(
        "{} calls, {} granted, {:.0}/s",
        clients * per,
        g,
        (clients * per) as f64 / d.as_secs_f64()
    );
}
