//! What the benches share: the summary figures, the table and the machine-readable lines
//! `bench/run` collects, and finding and watching the daemon. Each bench includes this with
//! `#[path = "support/mod.rs"] mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod daemon;
pub mod peer;
pub mod permits;
pub mod stats;
