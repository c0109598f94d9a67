//! What `qwend` and `qwen` (and any Rust plugin) share: the generated socket API, the rules
//! that decide where the socket lives, the transport that connects the two safely, and the
//! file helpers both use to write files (atomically, privately).
#![forbid(unsafe_code)]
pub mod codec;
pub mod files;
pub mod paths;
pub mod transport;

/// The generated `qwend.v1` API (see `proto/qwend/v1/*.proto`).
pub mod api {
    tonic::include_proto!("qwend.v1");

    /// The encoded `FileDescriptorSet` of the whole API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/qwend_descriptor.bin"));
}

/// Revision of the socket API. Bumped when an RPC or field is added that clients rely on;
/// never reset. Compatible changes only: old clients keep working with newer daemons.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of this build (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
