#![forbid(unsafe_code)]
use clap::Parser;

fn main() -> std::process::ExitCode {
    qwend::lifecycle::main(qwend::cli::Cli::parse())
}
