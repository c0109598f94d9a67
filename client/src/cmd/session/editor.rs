//! The session's line editor (rustyline): history in the daemon's state dir (0600),
//! Tab completion of slash commands, multi-line input (a line ending in `\` continues,
//! Alt-Enter inserts a newline, pasted newlines stay in the message), and a Ctrl-C that
//! tells an empty line from a discarded one (twice on an empty line leaves).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{
    Cmd, ConditionalEventHandler, Context, Event, EventContext, EventHandler, KeyCode, KeyEvent,
    Modifiers, RepeatCount,
};

use crate::error::ClientError;
use crate::method::Method;

/// Slash commands and what they take, for completion and `/help`.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "/auth",
        "[qwen-oauth|openai]  choose or switch the auth method (every client)",
    ),
    ("/status", "method, model, base URL, login expiry, quota"),
    ("/quota", "requests used and left"),
    ("/model", "[NAME]  show or set the model for this session"),
    ("/env", "the .env that applies here (secrets masked)"),
    ("/clear", "forget the conversation"),
    ("/help", "this list"),
    (
        "/quit",
        "leave (also Ctrl-D, or Ctrl-C twice on an empty line)",
    ),
];

/// How a line ended.
pub enum Read {
    Line(String),
    /// Ctrl-C; `empty`: nothing was typed.
    Interrupted {
        empty: bool,
    },
    Eof,
}

type Inner = rustyline::Editor<Helper, FileHistory>;

#[derive(Clone)]
pub struct Editor {
    inner: Arc<Mutex<Inner>>,
    interrupted_empty: Arc<AtomicBool>,
    /// Set by a SIGINT: a Ctrl-C typed while no line is being edited (the terminal is in
    /// its normal mode then, so the key becomes a signal instead of reaching the editor).
    /// The next read takes it as Ctrl-C on an empty line, so a fast second Ctrl-C is not
    /// lost between two reads. Whoever handles a Ctrl-C of its own (an answer, a login)
    /// calls [`Editor::forget_interrupts`].
    interrupts: Arc<AtomicBool>,
    history: Option<PathBuf>,
    notices: Notices,
}

/// Lines from elsewhere (the daemon's events). While a line is being edited they are
/// printed above the prompt, which is drawn again; otherwise (an answer streaming) they
/// wait for the next prompt. rustyline's own external printer is not used: with it,
/// rustyline waits in `select` on the terminal and leaves typed-ahead bytes in its read
/// buffer unprocessed (a paste or fast typing stalls until the next key).
#[derive(Clone, Default)]
pub struct Notices(Arc<Mutex<NoticeState>>);

#[derive(Default)]
struct NoticeState {
    /// The prompt being shown, when a line is being edited.
    editing: Option<String>,
    pending: Vec<String>,
}

impl Notices {
    pub fn show(&self, line: &str) {
        let Ok(mut st) = self.0.lock() else {
            return;
        };
        match &st.editing {
            Some(prompt) => {
                // Clear the prompt's row, print, and draw the prompt again below; the next
                // key makes rustyline redraw the line being typed there.
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\x1b[K{line}\r\n{prompt}");
                let _ = out.flush();
            }
            None => st.pending.push(line.to_string()),
        }
    }

    fn editing(&self, prompt: Option<&str>) {
        let Ok(mut st) = self.0.lock() else {
            return;
        };
        if prompt.is_some() {
            let mut out = std::io::stdout().lock();
            for l in st.pending.drain(..) {
                let _ = writeln!(out, "{l}");
            }
            let _ = out.flush();
        }
        st.editing = prompt.map(str::to_string);
    }
}

impl Editor {
    pub fn new(history: Option<PathBuf>) -> Result<Self, ClientError> {
        let err =
            |e: ReadlineError| ClientError::Output(format!("cannot set up the terminal: {e}"));
        let config = rustyline::Config::builder()
            .max_history_size(1000)
            .map_err(err)?
            .auto_add_history(false)
            .history_ignore_dups(true)
            .map_err(err)?
            .completion_type(rustyline::CompletionType::List)
            .build();
        let mut inner = Inner::with_config(config).map_err(err)?;
        inner.set_helper(Some(Helper));
        let interrupted_empty = Arc::new(AtomicBool::new(false));
        inner.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(CtrlC(interrupted_empty.clone()))),
        );
        inner.bind_sequence(
            KeyEvent(KeyCode::Enter, Modifiers::ALT),
            EventHandler::Simple(Cmd::Newline),
        );
        let history = history.and_then(|p| match prepare_history(&p) {
            Ok(()) => Some(p),
            Err(e) => {
                crate::term::warn(&format!(
                    "history is not kept: cannot use {}: {e}",
                    p.display()
                ));
                None
            }
        });
        if let Some(p) = &history
            && let Err(e) = inner.load_history(p)
            && !matches!(&e, ReadlineError::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
        {
            crate::term::warn(&format!("cannot read the history {}: {e}", p.display()));
        }
        let interrupts = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, interrupts.clone())
            .map_err(|e| ClientError::Output(format!("cannot handle Ctrl-C: {e}")))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            interrupted_empty,
            interrupts,
            history,
            notices: Notices::default(),
        })
    }

    pub fn notices(&self) -> Notices {
        self.notices.clone()
    }

    /// Drops a Ctrl-C that someone else has acted on (see `interrupts`).
    pub fn forget_interrupts(&self) {
        self.interrupts.store(false, Ordering::SeqCst);
    }

    /// Read one entry off the async thread, so events can be printed meanwhile.
    pub async fn read(&self, prompt: &str, remember: bool) -> Result<Read, ClientError> {
        let this = self.clone();
        let prompt = prompt.to_string();
        tokio::task::spawn_blocking(move || this.read_blocking(&prompt, remember))
            .await
            .map_err(|e| ClientError::Output(format!("the line editor failed: {e}")))?
    }

    fn read_blocking(&self, prompt: &str, remember: bool) -> Result<Read, ClientError> {
        let mut ed = self
            .inner
            .lock()
            .map_err(|_| ClientError::Output("the line editor failed earlier".into()))?;
        // From here until the editor is done, Ctrl-C stays a key: typed before the editor
        // takes the terminal it waits in the input for it, instead of becoming a SIGINT
        // that nobody reads. One typed earlier (a signal already) is in `interrupts`.
        let _keys = ctrl_c_as_key();
        if self.interrupts.swap(false, Ordering::SeqCst) {
            return Ok(Read::Interrupted { empty: true });
        }
        self.interrupted_empty.store(false, Ordering::SeqCst);
        self.notices.editing(Some(prompt));
        let read = ed.readline(prompt);
        self.notices.editing(None);
        match read {
            Ok(line) => {
                if remember && !line.trim().is_empty() {
                    let _ = ed.add_history_entry(line.as_str());
                    if let Some(p) = &self.history
                        && let Err(e) = ed.append_history(p)
                    {
                        crate::term::warn(&format!("cannot save the history: {e}"));
                    }
                }
                Ok(Read::Line(join_continued(&line)))
            }
            Err(ReadlineError::Interrupted) => Ok(Read::Interrupted {
                empty: self.interrupted_empty.load(Ordering::SeqCst),
            }),
            Err(ReadlineError::Eof) => Ok(Read::Eof),
            Err(e) => Err(ClientError::Output(format!(
                "cannot read the terminal: {e}"
            ))),
        }
    }
}

/// The terminal's Ctrl-C delivered as a key rather than a SIGINT (`ISIG` off) until
/// dropped; nothing when stdin is no terminal.
#[cfg(unix)]
fn ctrl_c_as_key() -> Option<crate::term::ModesOff<std::io::Stdin>> {
    crate::term::ModesOff::new(std::io::stdin(), rustix::termios::LocalModes::ISIG)
}

#[cfg(not(unix))]
fn ctrl_c_as_key() -> Option<()> {
    None
}

/// The history file exists 0600 (in a 0700 dir when we create it) before rustyline writes
/// to it: a conversation is private.
fn prepare_history(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        qwend_shared::files::ensure_private_dir(dir, false)?;
    }
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
}

/// `history` in the daemon's state dir.
pub fn history_path() -> Option<PathBuf> {
    qwend_shared::paths::state_dir().map(|d| d.join("history"))
}

/// A `\` before a newline continues the line: the message keeps the newline, not the `\`.
fn join_continued(text: &str) -> String {
    text.replace("\\\n", "\n")
}

struct CtrlC(Arc<AtomicBool>);

impl ConditionalEventHandler for CtrlC {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        self.0.store(ctx.line().is_empty(), Ordering::SeqCst);
        Some(Cmd::Interrupt)
    }
}

struct Helper;

impl rustyline::Helper for Helper {}
impl Highlighter for Helper {}
impl Hinter for Helper {
    type Hint = String;
}

impl Validator for Helper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if ctx.input().ends_with('\\') {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Completer for Helper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        Ok(complete(&line[..pos]))
    }
}

/// Completions for the text before the cursor: a command name, or `/auth`'s argument.
fn complete(before: &str) -> (usize, Vec<Pair>) {
    let pair = |s: &str| Pair {
        display: s.to_string(),
        replacement: s.to_string(),
    };
    if !before.starts_with('/') {
        return (0, Vec::new());
    }
    match before.split_once(' ') {
        None => (
            0,
            COMMANDS
                .iter()
                .filter(|(c, _)| c.starts_with(before))
                .map(|(c, _)| pair(c))
                .collect(),
        ),
        Some(("/auth", arg)) if !arg.contains(' ') => (
            "/auth ".len(),
            Method::ALL
                .iter()
                .map(|m| m.name())
                .filter(|a| a.starts_with(arg))
                .map(pair)
                .collect(),
        ),
        _ => (0, Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: (usize, Vec<Pair>)) -> (usize, Vec<String>) {
        (c.0, c.1.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn completes_commands_and_auth_methods() {
        assert_eq!(names(complete("/au")), (0, vec!["/auth".to_string()]));
        assert_eq!(
            names(complete("/q")),
            (0, vec!["/quota".into(), "/quit".into()])
        );
        assert_eq!(names(complete("/auth o")), (6, vec!["openai".to_string()]));
        assert_eq!(names(complete("hello /au")).1.len(), 0);
        assert_eq!(names(complete("/model x")).1.len(), 0);
    }

    #[test]
    fn continued_lines_keep_the_newline() {
        assert_eq!(join_continued("one\\\ntwo"), "one\ntwo");
        assert_eq!(join_continued("a\\b"), "a\\b");
    }

    #[test]
    fn history_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state/history");
        prepare_history(&p).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
    }
}
