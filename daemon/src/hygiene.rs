//! Process hygiene of a daemon that holds secrets, as ssh-agent does it: no core dumps, not
//! attachable or readable through /proc by other processes of the user, no file
//! descriptors of whoever started it, no terminal, no working directory in a project.
//!
//! Hand-written because no maintained crate does this set: each step is one call into
//! rustix, except closing inherited descriptors. rustix (like std) makes closing a raw fd
//! `unsafe`: in general some other code might own it. We close only descriptors that no
//! object of this process owns (we run before anything opened a file, and skip the socket
//! a service manager passed), and use nix's `close`, which takes a raw fd as a safe call,
//! so the project keeps its no-`unsafe` rule.
use std::os::fd::RawFd;

/// Core dumps off, for good: a core of this process holds access and refresh tokens.
/// `RLIMIT_CORE` 0 with the hard limit too, so nothing in the process can raise it again.
/// On Linux also `PR_SET_DUMPABLE` 0: no core even under a `core_pattern` pipe, and other
/// processes of the same user can no longer ptrace it or read its `/proc/<pid>/mem`,
/// `environ` or `fd`. macOS has no prctl; there the limit is the guard (ssh-agent adds
/// `PT_DENY_ATTACH`, which rustix does not offer).
pub fn deny_core_dumps() -> std::io::Result<()> {
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Closes every descriptor above stderr except `keep` (a listener passed by socket
/// activation). Whoever started us may have left descriptors open without close-on-exec:
/// a pipe that a `$(qwen daemon status)` waits on would never see EOF while the daemon,
/// living on for hours, holds its write end. Must run before this process opens anything.
/// Returns how many were closed.
pub fn close_inherited_fds(keep: &[RawFd]) -> usize {
    let fds = open_fds();
    let mut closed = 0;
    for fd in fds {
        if fd <= 2 || keep.contains(&fd) {
            continue;
        }
        // EBADF is expected for the listing's own descriptor, closed when the listing
        // ended; any other error leaves nothing more we could do.
        if nix::unistd::close(fd).is_ok() {
            closed += 1;
        }
    }
    closed
}

/// The process's open descriptors: from `/proc/self/fd` on Linux, `/dev/fd` elsewhere
/// (macOS, the BSDs), or else every number below the descriptor limit.
fn open_fds() -> Vec<RawFd> {
    let dir = if cfg!(target_os = "linux") {
        "/proc/self/fd"
    } else {
        "/dev/fd"
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        // Collected before closing anything: the listing's own fd is among them.
        let fds: Vec<RawFd> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        if !fds.is_empty() {
            return fds;
        }
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024)
        .min(65_536) as RawFd;
    (3..limit).collect()
}

/// The detached daemon leaves the caller's session: no controlling terminal (a hangup of
/// the terminal it was started from does not reach it, and it cannot reacquire one), and
/// the caller's job control no longer sees it. Fails if we lead a process group, so the
/// parent must not have made us one.
pub fn new_session() -> std::io::Result<()> {
    rustix::process::setsid()?;
    Ok(())
}

/// `/` as the working directory, so the daemon pins no mount and a crash can write nothing
/// into the project it was started from. Every path it uses must be absolute by now.
pub fn leave_working_dir() -> std::io::Result<()> {
    std::env::set_current_dir("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_finds_our_own_descriptors() {
        let f = tempfile::tempfile().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let fds = open_fds();
        assert!(fds.contains(&fd), "{fds:?} lacks {fd}");
        assert!(fds.contains(&0) || fds.contains(&1) || fds.contains(&2));
    }
}
