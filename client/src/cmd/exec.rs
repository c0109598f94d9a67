//! `qwen exec [--cwd DIR] [--allow-unsafe-env] -- CMD ARGS...`: run any OpenAI-compatible
//! tool with the daemon's login. CMD gets the `.env` for DIR (as Qwen Code would load it)
//! and `OPENAI_API_KEY`/`OPENAI_BASE_URL`/`OPENAI_MODEL` for the current method; qwen
//! forwards signals and exits with CMD's status (128+N when a signal N killed it).
use std::process::ExitCode;

use qwend_shared::api::AuthType;

use crate::cli::ExecArgs;
use crate::error::ClientError;
use crate::term;
use crate::unsafe_env;
use crate::{connect, context};

pub async fn run(args: ExecArgs) -> Result<ExitCode, ClientError> {
    let cwd = context::absolute_cwd(args.cwd.as_deref())?;
    if !cwd.is_dir() {
        return Err(ClientError::Usage(format!(
            "{} is not a directory",
            cwd.display()
        )));
    }
    let channel = connect::daemon().await?;
    let ctx = context::at(&cwd);
    let resolved = context::resolve_env(&channel, &ctx).await?;
    for w in &resolved.warnings {
        term::warn_once(w);
    }
    let creds = super::credentials::obtain(&channel, &ctx, None).await?;
    for w in &creds.warnings {
        term::warn_once(w);
    }
    // Kept until qwen exits: the proxy secret lives exactly as long as this call.
    let (creds, _session) = match wants_proxy(creds.auth_type(), &args) {
        true => super::proxy::open(&channel, &ctx, creds).await?,
        false => (creds, None),
    };
    drop(channel);
    crate::start_settings::settings_checked().await;

    let trusted = unsafe_env::trusted_files(ctx.env.get("HOME").map(String::as_str));
    let (vars, dropped) = unsafe_env::split(resolved.vars, args.allow_unsafe_env, &trusted);
    let program = args.command[0].to_string_lossy().into_owned();
    for v in &dropped {
        term::warn(&format!(
            "not setting {} from {}: it can make {program} run code from that file (--allow-unsafe-env loads it)",
            v.key, v.source
        ));
    }
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .current_dir(&cwd)
        .envs(vars.iter().map(|v| (&v.key, &v.value)))
        // The daemon's login wins over whatever the environment or a .env said: that is
        // the point of exec.
        .env("OPENAI_API_KEY", &creds.token)
        .env("OPENAI_BASE_URL", &creds.base_url)
        .env("OPENAI_MODEL", &creds.model);
    child::run(cmd, &program)
}

/// Qwen OAuth tokens expire, so a long-running tool is better served by the proxy (which
/// refreshes for it); an API key does not, so exec hands it over unless asked not to.
fn wants_proxy(method: AuthType, args: &ExecArgs) -> bool {
    match method {
        AuthType::QwenOauth => !args.direct,
        _ => args.proxy,
    }
}

#[cfg(unix)]
mod child {
    use std::process::{Command, ExitCode};
    use std::sync::{Arc, Mutex};

    use rustix::process::{Pid, Signal};
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    use signal_hook::iterator::SignalsInfo;
    use signal_hook::iterator::exfiltrator::WithOrigin;

    use crate::error::ClientError;

    pub fn run(mut cmd: Command, program: &str) -> Result<ExitCode, ClientError> {
        // Registered before the child exists, so no signal between spawn and here can
        // kill qwen and orphan the child; early ones are forwarded once it runs.
        let mut signals = SignalsInfo::<WithOrigin>::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
            .map_err(|e| ClientError::Rpc(format!("cannot handle signals: {e}")))?;
        let handle = signals.handle();
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                // A shell's codes: 127 not found, 126 found but not runnable.
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                eprintln!("qwen: cannot run {program}: {e}");
                return Ok(ExitCode::from(code));
            }
        };
        let pid = Pid::from_child(&child);
        let reaped = Arc::new(Mutex::new(false));
        let forwarder = {
            let reaped = reaped.clone();
            std::thread::spawn(move || {
                for origin in signals.forever() {
                    // Signals from the terminal (Ctrl-C, Ctrl-\) come from the kernel to the
                    // whole foreground process group, the child included: resending them
                    // would deliver them twice. Only signals a process sent to qwen itself
                    // are passed on.
                    if origin.process.is_none() {
                        continue;
                    }
                    let gone = reaped.lock().unwrap_or_else(|e| e.into_inner());
                    if *gone {
                        break;
                    }
                    // The pid is not reaped yet (checked under the lock), so it still names
                    // our child. Only the child, not its group: that is what a process
                    // signalling qwen would reach had it run the command directly.
                    if let Some(sig) = Signal::from_named_raw(origin.signal) {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
            })
        };
        wait_exited(pid);
        *reaped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        handle.close();
        let _ = forwarder.join();
        let mut child = child;
        let status = child
            .wait()
            .map_err(|e| ClientError::Rpc(format!("cannot wait for {program}: {e}")))?;
        use std::os::unix::process::ExitStatusExt;
        let code = match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        };
        Ok(ExitCode::from(code.clamp(0, 255) as u8))
    }

    /// Block until the child has exited, without reaping it: until it is reaped its pid
    /// cannot be reused, so the forwarder can never signal a stranger.
    fn wait_exited(pid: Pid) {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        while let Err(rustix::io::Errno::INTR) = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {}
    }
}

#[cfg(not(unix))]
mod child {
    use std::process::{Command, ExitCode};

    use crate::error::ClientError;

    pub fn run(mut cmd: Command, program: &str) -> Result<ExitCode, ClientError> {
        let status = cmd
            .status()
            .map_err(|e| ClientError::Rpc(format!("cannot run {program}: {e}")))?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}
