//! Running `qwen` under a pseudo-terminal (stdin, stdout and stderr all a terminal), for
//! the interactive paths: prompts, hidden input, spinners.
use std::process::{Command, Stdio};
use std::time::Duration;

use expectrl::process::Termios;
use expectrl::process::unix::WaitStatus;
use expectrl::{Expect, Session};

pub type Pty = expectrl::session::OsSession;

/// Spawn under a pty with echo on (as a real terminal has it), so hidden input is
/// verifiably hidden. `expect` fails after 30 s instead of hanging the suite.
pub fn spawn(mut cmd: Command) -> Pty {
    // The pty becomes fds 0-2 before exec; anything else configured here would replace it.
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut s = Session::spawn(cmd).expect("cannot spawn under a pty");
    s.set_echo(true).unwrap();
    s.set_expect_timeout(Some(Duration::from_secs(30)));
    s
}

/// Wait for `needle`; returns everything printed before it (and it).
pub fn expect(s: &mut Pty, needle: &str) -> String {
    match s.expect(needle) {
        Ok(c) => String::from_utf8_lossy(c.before()).into_owned() + needle,
        Err(e) => panic!("waiting for {needle:?}: {e}"),
    }
}

/// Everything until the process closes the terminal.
pub fn rest(s: &mut Pty) -> String {
    let c = s
        .expect(expectrl::Eof)
        .expect("waiting for the end of output");
    String::from_utf8_lossy(c.get(0).unwrap_or_default()).into_owned()
}

pub fn exit_code(s: &Pty) -> i32 {
    match s.get_process().wait().unwrap() {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        other => panic!("unexpected wait status {other:?}"),
    }
}
