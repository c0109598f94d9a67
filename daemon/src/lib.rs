//! qwend: the per-user credential daemon behind the `qwen` client.
pub mod cli;
pub mod clock;
pub mod credentials;
pub mod lifecycle;
pub mod logging;
pub mod server;
