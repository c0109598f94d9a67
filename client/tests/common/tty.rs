//! Runs a command on a pseudo-terminal, as a user at a terminal would, and reads what it
//! draws. Waiting is on output (with a deadline for a broken build), never on time.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Generous: only a hung or broken binary ever reaches it.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Tty {
    pub child: Child,
    master: File,
    output: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl Tty {
    /// Spawns `cmd` with stdin, stdout and stderr on a new 120×40 terminal that is its
    /// controlling terminal (so Ctrl-C written to it becomes SIGINT).
    pub fn spawn(cmd: &mut Command) -> Tty {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two new descriptors into the provided ints.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // openpty's descriptors are inheritable: a process another test thread forks now
        // (a daemon, say) would keep this terminal open forever, and its reader would
        // never see the end. (The child gets its copies through dup2, which clears this.)
        for fd in [master, slave] {
            // SAFETY: plain fcntl on descriptors we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        // SAFETY: both descriptors are fresh and owned here.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn on a pty");
        // The parent's copies of the slave side are gone (moved into the Command, which
        // dropped them at spawn), so reads end with EIO once the child exits.
        drop(std::mem::replace(cmd, Command::new("true")));
        let output = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (out, mut reader) = (output.clone(), master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.0.lock().unwrap().extend_from_slice(&buf[..n]);
                        out.1.notify_all();
                    }
                }
            }
            // Wake waiters for the last time: nothing more will come.
            out.0.lock().unwrap().extend_from_slice(b"\0<eof>");
            out.1.notify_all();
        });
        Tty {
            child,
            master,
            output,
        }
    }

    /// Everything drawn so far, as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.output.0.lock().unwrap()).into_owned()
    }

    /// Waits until the output contains `needle`; returns the output.
    pub fn expect(&self, needle: &str) -> String {
        let start = Instant::now();
        let mut out = self.output.0.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                !text.ends_with("\0<eof>"),
                "terminal closed without {needle:?}; it showed:\n{text}"
            );
            let left = DEADLINE
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("no {needle:?} within {DEADLINE:?}; got:\n{text}"));
            out = self.output.1.wait_timeout(out, left).unwrap().0;
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    /// Ctrl-C, through the terminal's line discipline.
    pub fn interrupt(&mut self) {
        self.send(b"\x03");
    }

    /// Waits for the process to exit (bounded) and returns its status and full output.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("process did not exit; it showed:\n{}", self.screen());
            }
            // Wake on output too, so this is not a pure sleep loop.
            let out = self.output.0.lock().unwrap();
            let _ = self
                .output
                .1
                .wait_timeout(out, Duration::from_millis(20))
                .unwrap();
        };
        let _ = self.expect("\0<eof>");
        (status, self.screen().replace("\0<eof>", ""))
    }
}
