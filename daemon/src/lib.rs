//! qwend: the per-user credential daemon behind the `qwen` client.
pub mod activation;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod dotenv;
pub mod events;
pub mod idle;
pub mod lifecycle;
pub mod logging;
pub mod quota;
pub mod qwen_settings;
pub mod server;
pub mod store;
