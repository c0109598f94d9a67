//! qwend: the per-user credential daemon behind the `qwen` client.
#![forbid(unsafe_code)]
pub mod account;
pub mod activation;
pub mod auth;
pub mod blocking;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod dotenv;
pub mod events;
pub mod filecache;
pub mod fsread;
pub mod hygiene;
pub mod idle;
pub mod lifecycle;
pub mod logging;
pub mod login;
pub mod oauth;
pub mod proxy;
pub mod quota;
pub mod server;
pub mod settings;
pub mod store;
pub mod tokens;
