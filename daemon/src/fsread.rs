//! Opening the files the daemon reads (`.env`, `settings.json`, `oauth_creds.json`, our
//! credentials and account files, lock files) so that no file can hang a request.
//!
//! `open(2)` of a FIFO for reading blocks until a writer appears, which may be never; a
//! read from a FIFO, a terminal or a device blocks or never ends. Every such file is a
//! path a user (or a repository they cloned) controls. So every read goes through
//! [`open_regular`]: `O_NONBLOCK` (open returns at once whatever the file is), `O_NOCTTY`
//! (the detached daemon leads a session without a terminal; opening one must not make it
//! the controlling terminal), then `fstat` of the opened descriptor, and anything but a
//! regular file is refused before one byte is read. Checking the descriptor, not the path,
//! leaves no window for a swap between the check and the read. `O_NONBLOCK` has no effect
//! on reads of a regular file. A file opened for writing too (the quota ledger, the log) uses
//! [`options`] and [`ensure_regular`] the same way.
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// A file that exists but is not a regular file (FIFO, socket, device, directory). The
/// message names the kind, never the content.
#[derive(Debug, thiserror::Error)]
#[error("{} is a {kind}, not a regular file", path.display())]
pub struct NotRegular {
    pub path: std::path::PathBuf,
    pub kind: &'static str,
}

/// Opens `path` for reading without blocking and checks that it is a regular file.
/// `NotFound` passes through unchanged (callers treat a missing file as "none"); a
/// directory gives `EISDIR` (callers and messages already know that one); any other
/// non-regular file gives `InvalidInput` carrying a [`NotRegular`].
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = options().read(true).open(path)?;
    let md = file.metadata()?;
    if md.is_dir() {
        return Err(io::Error::from_raw_os_error(EISDIR));
    }
    ensure_regular(&file, path).map(|md| (file, md))
}

/// Options whose open cannot block (`O_NONBLOCK`) nor acquire a terminal (`O_NOCTTY`);
/// the caller adds the access it needs, then checks the file with [`ensure_regular`].
pub fn options() -> OpenOptions {
    let mut opts = OpenOptions::new();
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    opts.custom_flags(flags.bits() as i32);
    opts
}

/// The metadata of an opened `file` when it is a regular file; anything else (a directory
/// too) is an `InvalidInput` error carrying a [`NotRegular`] that names `path`.
pub fn ensure_regular(file: &File, path: &Path) -> io::Result<Metadata> {
    let md = file.metadata()?;
    if md.is_file() {
        return Ok(md);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(&md),
        },
    ))
}

/// EISDIR on Linux and macOS.
const EISDIR: i32 = 21;

fn kind_name(md: &Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// What [`read_regular`] or [`read_into`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Capped {
    /// The whole file is in the buffer.
    Read,
    /// Larger than the limit; nothing past `limit + 1` bytes was read.
    TooLarge { size: u64, limit: u64 },
}

/// The whole of a regular file of at most `limit` bytes, appended to `buf`. `Ok(None)` when
/// it does not exist. See [`read_into`].
pub fn read_regular(path: &Path, limit: u64, buf: &mut Vec<u8>) -> io::Result<Option<Capped>> {
    let (file, md) = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_into(file, &md, limit, buf).map(Some)
}

/// Reads a file opened with [`open_regular`] into `buf`. The size is checked on the
/// descriptor first and the read never goes past `limit + 1` bytes, so a file that grows
/// meanwhile cannot exhaust memory either. `buf` is sized to the file before the read, so
/// a secret-bearing (zeroizing) buffer is not reallocated, leaving copies, while it grows.
pub fn read_into(file: File, md: &Metadata, limit: u64, buf: &mut Vec<u8>) -> io::Result<Capped> {
    if md.len() > limit {
        return Ok(Capped::TooLarge {
            size: md.len(),
            limit,
        });
    }
    buf.reserve_exact(md.len() as usize + 1);
    let start = buf.len();
    file.take(limit + 1).read_to_end(buf)?;
    let n = (buf.len() - start) as u64;
    if n > limit {
        return Ok(Capped::TooLarge { size: n, limit });
    }
    Ok(Capped::Read)
}

/// A small text file (lock ids, account ids), read like [`read_regular`]; a file over
/// `limit` is an `InvalidData` error.
pub fn read_small_text(path: &Path, limit: u64) -> io::Result<String> {
    let mut buf = Vec::new();
    match read_regular(path, limit, &mut buf)? {
        None => Err(io::Error::from(io::ErrorKind::NotFound)),
        Some(Capped::TooLarge { size, limit }) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {size} bytes, over {limit}", path.display()),
        )),
        Some(Capped::Read) => {
            String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

/// A FIFO at `path`: the file that would hang a blocking open, for tests of every reader.
#[cfg(test)]
pub(crate) fn make_fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("fifo");
        make_fifo(&p);
        p
    }

    /// Without a writer, a blocking open would never return: the test itself would hang
    /// (and the harness's timeout would report it) if the open blocked.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path());
        let e = open_regular(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("is a FIFO, not a regular file"),
            "{e}"
        );
        let e = read_regular(&p, 10, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = read_small_text(&p, 10).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
    }

    #[test]
    fn a_symlink_to_a_fifo_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            open_regular(&link)
                .unwrap_err()
                .to_string()
                .contains("FIFO")
        );
    }

    #[test]
    fn devices_and_directories_are_refused() {
        let e = open_regular(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EISDIR));
    }

    #[test]
    fn regular_files_read_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_regular(&p, 5, &mut buf).unwrap(), Some(Capped::Read));
        assert_eq!(buf, b"12345");
        assert_eq!(
            read_regular(&p, 4, &mut Vec::new()).unwrap(),
            Some(Capped::TooLarge { size: 5, limit: 4 })
        );
        assert_eq!(
            read_regular(&dir.path().join("none"), 4, &mut Vec::new()).unwrap(),
            None
        );
        assert_eq!(read_small_text(&p, 5).unwrap(), "12345");
    }
}
