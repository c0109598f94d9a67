//! Command-line flags of `qwend`.
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "qwend", version, about = "Background credential daemon for Qwen Code", long_about = None)]
pub struct Cli {
    /// Socket to listen on [default: $QWEND_SOCKET, else $XDG_RUNTIME_DIR/qwend/qwend.sock,
    /// else /tmp/qwend-<uid>/qwend.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Stay attached to the terminal and log to stderr (default: detach, log to the state dir).
    #[arg(long)]
    pub foreground: bool,

    /// Exit after this many seconds without any client connection (0 = never). Meant for
    /// socket activation, where the service manager starts the daemon again on demand.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub idle_timeout: u64,

    /// Internal: we are the detached child; report readiness on stdout, then go quiet.
    #[arg(long, hide = true)]
    pub detached_child: bool,
}

impl Cli {
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .map(qwend_shared::paths::absolute)
            .unwrap_or_else(qwend_shared::paths::socket_path)
    }
}
