//! Work on tokio's blocking pool with a deadline as the caller sees it.
//!
//! A blocking job cannot be cancelled: a thread stuck in a read stays stuck. What we can
//! bound is what a request waits for: past its deadline the caller gets an error and goes
//! on, while the job finishes (or not) on its own. Together with a bounded pool (see
//! [`MAX_BLOCKING_THREADS`]) and a shutdown that does not wait for stuck jobs, nothing a
//! file does can hang requests or the daemon's exit.
use std::time::Duration;

/// The size of the blocking pool (tokio's default is 512 threads): enough for every
/// concurrent request of a busy user, few enough that a storm of stuck jobs cannot make
/// hundreds of threads.
pub const MAX_BLOCKING_THREADS: usize = 64;

/// Deadline for resolving a `.env` (a walk up the tree and one read of a bounded file).
pub const ENV_DEADLINE: Duration = Duration::from_secs(15);

/// Deadline for a credential-store operation: it may wait out another process's
/// `oauth_creds.lock` (about 35 s before it is judged stale) and a keyring call.
pub const STORE_DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    #[error("{what} did not finish within {} s", .deadline.as_secs_f64())]
    Deadline {
        what: &'static str,
        deadline: Duration,
    },
    #[error("{what} failed: {reason}")]
    Failed { what: &'static str, reason: String },
}

/// Runs `f` on the blocking pool and waits at most `deadline` for it.
pub async fn run<T: Send + 'static>(
    what: &'static str,
    deadline: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BlockingError> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BlockingError::Failed {
            what,
            reason: e.to_string(),
        }),
        Err(_) => {
            tracing::warn!(
                "{what} still running after {:?}; answering the request without it",
                deadline
            );
            Err(BlockingError::Deadline { what, deadline })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job cannot finish before the test releases it, so the outcome is certain; the
    /// deadline is short only to keep the test quick. (Paused time cannot be used: tokio
    /// does not auto-advance while a blocking job runs.)
    #[tokio::test]
    async fn a_stuck_job_gives_a_deadline_error_and_a_quick_one_its_value() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let e = run("stuck job", Duration::from_millis(100), move || rx.recv())
            .await
            .unwrap_err();
        assert!(matches!(e, BlockingError::Deadline { .. }), "{e}");
        assert!(e.to_string().contains("within 0.1 s"), "{e}");
        drop(tx); // releases the job's thread
        assert_eq!(run("job", Duration::from_secs(5), || 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_crash() {
        let e = run("job", Duration::from_secs(5), || -> u8 { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(e, BlockingError::Failed { .. }), "{e}");
    }
}
