use clap::Parser;

// The permit path allocates and frees a few dozen small buffers per call (HTTP/2 frames,
// headers, protobuf messages, futures); mimalloc's thread-local free lists cost about half
// of glibc's malloc there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    qwend::lifecycle::main(qwend::cli::Cli::parse())
}
