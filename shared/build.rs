//! Compiles `proto/` with protox (pure Rust) so a fresh machine needs only cargo, no protoc.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a moved checkout (or a
    // target dir copied from another) must not point at the old place.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("qwend/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("qwend_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Undecodable input is INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::QwendCodec")
        .compile_fds(fds)?;
    Ok(())
}
