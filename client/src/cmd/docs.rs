//! `qwen completions SHELL` and `qwen man [SUBCOMMAND...] [--dir DIR]`, all generated from
//! the clap definitions so they never drift from the real command line. qwen(1) lists its
//! subcommands as qwen-auth(1), qwen-daemon(1), ...: each of those pages exists too.
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, ManArgs};
use crate::error::ClientError;

pub fn completions(shell: clap_complete::Shell) -> Result<ExitCode, ClientError> {
    let mut cmd = Cli::command();
    // Into memory first: clap_complete panics on a write error, and a closed stdout must
    // end the command quietly.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "qwen", &mut buf);
    crate::emit(&buf)?;
    Ok(ExitCode::SUCCESS)
}

/// The whole command tree as the man pages see it: names like `qwen-auth-status`.
fn man_tree() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

pub fn man(args: ManArgs) -> Result<ExitCode, ClientError> {
    if let Some(dir) = &args.dir {
        return write_all(dir);
    }
    let mut cmd = man_tree();
    for name in &args.command {
        let Some(sub) = cmd.find_subcommand(name).cloned() else {
            let known: Vec<String> = cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| s.get_name().to_string())
                .collect();
            return Err(ClientError::Usage(format!(
                "no man page for `{} {name}`; there are: {}",
                cmd.get_display_name().unwrap_or("qwen").replace('-', " "),
                known.join(", ")
            )));
        };
        cmd = sub;
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| ClientError::Output(e.to_string()))?;
    crate::emit(&buf)?;
    Ok(ExitCode::SUCCESS)
}

/// Every page into `dir` (`qwen.1`, `qwen-auth.1`, `qwen-auth-status.1`, ...), for
/// packagers: `qwen man --dir /usr/local/share/man/man1`.
fn write_all(dir: &Path) -> Result<ExitCode, ClientError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ClientError::Output(format!("cannot create {}: {e}", dir.display())))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| ClientError::Output(format!("cannot write into {}: {e}", dir.display())))?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ClientError::Output(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("qwen") && n.ends_with(".1"))
        .collect();
    names.sort();
    let mut text = String::new();
    for n in names {
        text.push_str(&dir.join(n).display().to_string());
        text.push('\n');
    }
    crate::emit(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(words: &[&str]) -> String {
        let mut cmd = man_tree();
        for w in words {
            cmd = cmd.find_subcommand(w).unwrap().clone();
        }
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn every_page_qwen_1_names_exists_and_is_titled_by_it() {
        let top = page(&[]);
        let tree = man_tree();
        for sub in tree.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name();
            assert!(
                top.contains(&format!("qwen\\-{name}(1)")),
                "qwen(1) lacks {name}"
            );
            let p = page(&[name]);
            assert!(p.contains(&format!(".TH qwen-{name} 1")), "{name}: {p}");
        }
        assert!(page(&["daemon", "stop"]).contains(".TH qwen-daemon-stop 1"));
    }
}
