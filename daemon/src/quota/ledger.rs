//! The durable grant ledger: `ledger.jsonl` in the quota state dir, one JSON record a line.
//!
//! ```text
//! {"k":"g","a":ACCOUNT,"t":MS}          one grant at MS
//! {"k":"d","a":ACCOUNT,"t":MS,"n":N}    N grants of the day containing MS, outside the minute
//!                                       window (written by compaction only)
//! {"k":"c","a":ACCOUNT,"until":MS}      429 cool-down
//! {"k":"x","a":ACCOUNT,"until":MS}      daily quota exhausted until the day reset at MS
//! {"k":"u","t":MS,"n":N}                N grants of unknown account (rebuilt from damage)
//! {"k":"m","until":MS}                  every minute window treated as full until MS
//! {"k":"r","a":ACCOUNT,"t":MS}          `qwen quota reset` of ACCOUNT at MS
//! ```
//!
//! Nothing in the file is trusted further than a sane bound: times after "now" are clamped
//! to now on load, cool-downs to the configured cap, "day used up" to the next day reset.
//! The file is opened with `O_NONBLOCK` and must be a regular file (a FIFO put there would
//! otherwise hang the daemon's start). When the ledger cannot be written (a read-only state
//! dir, a file that is not ours to write), what it holds is still loaded and counting goes
//! on in memory, with a warning in `qwen quota` and `qwen auth status`.
//! ACCOUNT is the opaque account key (the OAuth identity); no token is ever written.
//!
//! One writer thread owns the file and does group commit: records appended while it is busy
//! are written and `fdatasync`ed together, and a grant is returned only once its record is
//! durable. Keeping the fsync off the callers' threads and outside the quota lock means one slow
//! disk flush delays the grants in that batch, not every decision.
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use qwend_shared::files;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::QuotaError;
use super::window::MINUTE_MS;
use crate::fsread;

pub(super) const LEDGER_FILE: &str = "ledger.jsonl";

/// The shortest line a grant can take (`{"k":"g","a":"","t":0}` plus newline): damaged bytes
/// can have held at most `len / MIN_RECORD_BYTES` grants, which is what they are charged.
const MIN_RECORD_BYTES: usize = 23;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub(super) enum Record {
    #[serde(rename = "g")]
    Grant { a: String, t: i64 },
    #[serde(rename = "d")]
    DayCount { a: String, t: i64, n: u64 },
    #[serde(rename = "c")]
    CoolDown { a: String, until: i64 },
    #[serde(rename = "x")]
    Exhausted { a: String, until: i64 },
    #[serde(rename = "u")]
    Unattributed { t: i64, n: u64 },
    #[serde(rename = "m")]
    MinuteFull { until: i64 },
    /// `qwen quota reset` at MS: what came before for ACCOUNT (and any unattributed
    /// charge) no longer counts.
    #[serde(rename = "r")]
    Reset { a: String, t: i64 },
}

impl Record {
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Serializing these plain structs into a Vec cannot fail; were it ever to, the partial
        // line would load as damage and be charged conservatively.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
    }
}

/// Damage found while loading; the ledger is rewritten clean right after.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerWarning {
    #[error(
        "quota ledger: torn last line {line} ({bytes} bytes), counted as {counted_as} grant(s)"
    )]
    TornTail {
        line: usize,
        bytes: usize,
        counted_as: u64,
    },
    #[error(
        "quota ledger: unreadable line {line} ({bytes} bytes), counted as {counted_as} grant(s) \
         for every account and every minute window held full for 60 s"
    )]
    Garbage {
        line: usize,
        bytes: usize,
        counted_as: u64,
    },
    /// Counting goes on in memory from what could be read.
    #[error("{0}")]
    NotWritable(String),
}

/// Turns ledger bytes into records, replacing damage by conservative stand-ins.
///
/// - A last line without its newline is a write cut short by a crash. If it still parses, it
///   was complete and is applied as is; otherwise it was the start of exactly one record, so it
///   is charged as one grant of unknown account at load time (`now`).
/// - Any other unparseable line means bytes we cannot trust (disk damage, a foreign edit). Its
///   length bounds how many grants it could have hidden, so it is charged that many grants of
///   unknown account at `now`, which covers the day window; and since the hidden grants' times
///   are unknown, every minute window is held full for 60 s from `now`, after which anything
///   they hid has aged out of the minute anyway.
///
/// Charging "unknown account" means charging every account: over-counting refuses a few
/// requests, under-counting gets the account throttled by the server.
pub(super) fn parse(bytes: &[u8], now: i64) -> (Vec<Record>, Vec<LedgerWarning>) {
    let mut records = Vec::new();
    let mut warnings = Vec::new();
    for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let complete = line.ends_with(b"\n");
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let parsed = serde_json::from_slice::<Record>(body);
        if complete {
            if let Ok(record) = parsed {
                records.push(record);
                continue;
            }
            let counted_as = line.len().div_ceil(MIN_RECORD_BYTES) as u64;
            records.push(Record::Unattributed {
                t: now,
                n: counted_as,
            });
            records.push(Record::MinuteFull {
                until: now + MINUTE_MS,
            });
            warnings.push(LedgerWarning::Garbage {
                line: i + 1,
                bytes: line.len(),
                counted_as,
            });
        } else {
            let counted_as = match parsed {
                Ok(record) => {
                    records.push(record);
                    0
                }
                Err(_) => {
                    records.push(Record::Unattributed { t: now, n: 1 });
                    1
                }
            };
            warnings.push(LedgerWarning::TornTail {
                line: i + 1,
                bytes: line.len(),
                counted_as,
            });
        }
    }
    (records, warnings)
}

/// How far the writer has got, in append sequence numbers.
#[derive(Debug, Clone, Default)]
struct Progress {
    durable: u64,
    attempted: u64,
    error: Option<Arc<io::Error>>,
}

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    appended: u64,
    /// Size the file will have once everything appended is written.
    bytes: u64,
    /// Size right after the last compaction: the live set. Compacting again before the file has
    /// doubled past it would rewrite nearly the same content over and over.
    floor: u64,
    compact: Option<(Vec<u8>, u64)>,
    /// A failed write may have left a torn line; appending after it could glue a good record
    /// onto garbage, so appends stop until a compaction rewrites the file from memory.
    poisoned: bool,
    shutdown: bool,
    /// The writer is parked on the condvar. Appends wake it only then: std's `notify_all`
    /// is a futex syscall even with nobody waiting, and a busy writer picks up everything
    /// queued meanwhile when its current batch is done.
    writer_idle: bool,
    progress: Progress,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    tx: watch::Sender<Progress>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
pub(super) struct Ledger {
    path: PathBuf,
    threshold: u64,
    shared: Arc<Shared>,
    rx: watch::Receiver<Progress>,
    writer: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Opens (creating) the ledger in `dir`, which should be dedicated to it: group and
    /// other access is removed (the owner's own bits are left alone, so a dir made read-only
    /// on purpose stays read-only). Fails when the ledger cannot be both read and written;
    /// `read_only` then loads what can be read.
    pub fn open(
        dir: &Path,
        now: i64,
        threshold: u64,
    ) -> Result<(Self, Vec<Record>, Vec<LedgerWarning>), QuotaError> {
        files::ensure_private_dir(dir, true).map_err(at(dir))?;
        // Compaction replaces the file by rename, so the dir itself must be writable.
        rustix::fs::access(
            dir,
            rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
        )
        .map_err(|e| at(dir)(e.into()))?;
        let path = dir.join(LEDGER_FILE);
        // A compaction killed mid-write left its temp file; one younger than this may be
        // another ledger's on the same dir (tests), still being written.
        let cutoff = SystemTime::now().checked_sub(Duration::from_secs(60));
        files::sweep_temp_files(&path, cutoff);
        let mut file = fsread::options()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(at(&path))?;
        fsread::ensure_regular(&file, &path).map_err(at(&path))?;
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(at(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(at(&path))?;
        let (records, warnings) = parse(&bytes, now);

        let (tx, rx) = watch::channel(Progress::default());
        let state = State {
            bytes: bytes.len() as u64,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            cv: Condvar::new(),
            tx,
        });
        let writer = {
            let (shared, path) = (shared.clone(), path.clone());
            std::thread::Builder::new()
                .name("qwend-ledger".into())
                .spawn(move || write_loop(&shared, file, &path))
                .map_err(at(dir))?
        };
        let ledger = Self {
            path,
            threshold,
            shared,
            rx,
            writer: Some(writer),
        };
        Ok((ledger, records, warnings))
    }

    /// What an unwritable ledger in `dir` holds, for counting on in memory. A missing file
    /// holds nothing; one that is not a regular file is refused unread.
    pub fn read_only(
        dir: &Path,
        now: i64,
    ) -> Result<(Vec<Record>, Vec<LedgerWarning>), QuotaError> {
        let path = dir.join(LEDGER_FILE);
        let mut file = match fsread::options().read(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(at(&path)(e)),
        };
        fsread::ensure_regular(&file, &path).map_err(at(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(at(&path))?;
        Ok(parse(&bytes, now))
    }

    /// Why records are not being written right now (a failed write that no compaction has
    /// repaired yet).
    pub fn write_error(&self) -> Option<String> {
        let st = self.shared.lock();
        if !st.poisoned {
            return None;
        }
        Some(
            st.progress
                .error
                .as_ref()
                .map_or_else(|| "write failed".to_owned(), ToString::to_string),
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; returns its sequence number for `wait`/`wait_blocking`.
    pub fn append(&self, record: &Record) -> u64 {
        let mut st = self.shared.lock();
        let before = st.buf.len();
        record.encode(&mut st.buf);
        st.bytes += (st.buf.len() - before) as u64;
        st.appended += 1;
        let seq = st.appended;
        let wake = st.writer_idle;
        drop(st);
        if wake {
            self.shared.cv.notify_all();
        }
        seq
    }

    pub fn needs_compaction(&self) -> bool {
        let st = self.shared.lock();
        (st.poisoned && st.compact.is_none())
            || (st.bytes > self.threshold && st.bytes > 2 * st.floor)
    }

    /// Replaces the file by `content`, which must cover every record appended so far. The
    /// caller holds the quota lock, so nothing is appended between building `content` and this.
    pub fn compact(&self, content: Vec<u8>) {
        let mut st = self.shared.lock();
        st.buf.clear();
        st.bytes = content.len() as u64;
        st.floor = st.bytes;
        let covered = st.appended;
        st.compact = Some((content, covered));
        drop(st);
        self.shared.cv.notify_all();
    }

    pub fn wait_blocking(&self, seq: u64) -> Result<(), QuotaError> {
        let mut st = self.shared.lock();
        while st.progress.durable < seq && st.progress.attempted < seq {
            st = self
                .shared
                .cv
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        outcome(&st.progress, seq)
    }

    pub async fn wait(&self, seq: u64) -> Result<(), QuotaError> {
        let mut rx = self.rx.clone();
        let progress = rx
            .wait_for(|p| p.durable >= seq || p.attempted >= seq)
            .await
            .map_err(|_| QuotaError::Closed)?
            .clone();
        outcome(&progress, seq)
    }
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> QuotaError + use<> {
    let path = path.to_owned();
    move |source| QuotaError::Io { path, source }
}

fn outcome(p: &Progress, seq: u64) -> Result<(), QuotaError> {
    if p.durable >= seq {
        return Ok(());
    }
    let source = p
        .error
        .clone()
        .unwrap_or_else(|| Arc::new(io::Error::other("not written")));
    Err(QuotaError::Write { source })
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.cv.notify_all();
        if let Some(writer) = self.writer.take() {
            // The writer drains what is queued before it exits, so nothing granted is lost.
            let _ = writer.join();
        }
    }
}

fn write_loop(shared: &Shared, mut file: File, path: &Path) {
    loop {
        let mut st = shared.lock();
        while st.buf.is_empty() && st.compact.is_none() && !st.shutdown {
            st.writer_idle = true;
            st = shared.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.writer_idle = false;
        }
        if st.buf.is_empty() && st.compact.is_none() {
            return;
        }
        let buf = std::mem::take(&mut st.buf);
        let compact = st.compact.take();
        let upto = st.appended;
        let mut poisoned = st.poisoned;
        let mut error = st.progress.error.clone();
        drop(st);

        let mut durable = None;
        if let Some((content, covered)) = compact {
            match rewrite(path, &content) {
                Ok(f) => {
                    file = f;
                    durable = Some(covered);
                    poisoned = false;
                    error = None;
                }
                Err(e) => {
                    poisoned = true;
                    error = Some(Arc::new(e));
                }
            }
        }
        if !buf.is_empty() && !poisoned {
            match file.write_all(&buf).and_then(|()| file.sync_data()) {
                Ok(()) => durable = Some(upto),
                Err(e) => {
                    poisoned = true;
                    error = Some(Arc::new(e));
                }
            }
        }

        let mut st = shared.lock();
        st.poisoned = poisoned;
        let p = &mut st.progress;
        p.attempted = upto;
        if let Some(d) = durable {
            p.durable = p.durable.max(d);
        }
        p.error = error;
        let progress = p.clone();
        drop(st);
        shared.cv.notify_all();
        shared.tx.send_replace(progress);
    }
}

/// Atomic replacement: a crash leaves either the old ledger or the new one, never a mix.
fn rewrite(path: &Path, content: &[u8]) -> io::Result<File> {
    files::atomic_write(path, content)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_clean_torn_and_garbage() {
        let mut bytes = Vec::new();
        Record::Grant {
            a: "x".into(),
            t: 5,
        }
        .encode(&mut bytes);
        bytes.extend_from_slice(&[0u8; 46]);
        bytes.push(b'\n');
        Record::CoolDown {
            a: "x".into(),
            until: 9,
        }
        .encode(&mut bytes);
        bytes.extend_from_slice(br#"{"k":"g","a":"y","#);
        let (records, warnings) = parse(&bytes, 1_000);
        assert_eq!(
            records,
            vec![
                Record::Grant {
                    a: "x".into(),
                    t: 5
                },
                Record::Unattributed { t: 1_000, n: 3 },
                Record::MinuteFull { until: 61_000 },
                Record::CoolDown {
                    a: "x".into(),
                    until: 9
                },
                Record::Unattributed { t: 1_000, n: 1 },
            ]
        );
        assert_eq!(
            warnings,
            vec![
                LedgerWarning::Garbage {
                    line: 2,
                    bytes: 47,
                    counted_as: 3
                },
                LedgerWarning::TornTail {
                    line: 4,
                    bytes: 17,
                    counted_as: 1
                },
            ]
        );
    }

    #[test]
    fn complete_record_missing_only_its_newline_is_applied_exactly() {
        let (records, warnings) = parse(br#"{"k":"g","a":"y","t":7}"#, 1_000);
        assert_eq!(
            records,
            vec![Record::Grant {
                a: "y".into(),
                t: 7
            }]
        );
        assert_eq!(
            warnings,
            vec![LedgerWarning::TornTail {
                line: 1,
                bytes: 23,
                counted_as: 0
            }]
        );
    }

    #[test]
    fn min_record_bytes_is_the_shortest_grant() {
        let mut out = Vec::new();
        Record::Grant {
            a: String::new(),
            t: 0,
        }
        .encode(&mut out);
        assert_eq!(out.len(), MIN_RECORD_BYTES);
    }
}
