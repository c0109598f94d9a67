use std::future::{Future, poll_fn};
use std::io::{BufRead, BufReader};
use std::pin::{Pin, pin};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::Poll;

use super::*;
use crate::clock::{Clock, ManualClock, SystemClock};

/// 2024-01-01T00:00:00Z.
const MIDNIGHT: i64 = 1_704_067_200_000;
/// Mid-morning, far from any day edge.
const T: i64 = MIDNIGHT + 10 * 3_600_000;
const MIN: i64 = 60_000;

fn limits(per_minute: u64, per_day: u64) -> Limits {
    Limits {
        per_minute: Some(per_minute),
        per_day: Some(per_day),
    }
}

fn config(default_limits: Limits) -> QuotaConfig {
    QuotaConfig {
        default_limits,
        ..QuotaConfig::default()
    }
}

fn manual(limits: Limits, start: i64) -> (Arc<ManualClock>, Arc<Quota>) {
    let clock = ManualClock::new(start);
    let quota = Quota::in_memory(config(limits), clock.clone()).unwrap();
    (clock, Arc::new(quota))
}

fn refusal(d: Decision) -> (Reason, u64) {
    match d {
        Decision::Refused {
            retry_after_ms,
            reason,
        } => (reason, retry_after_ms),
        Decision::Granted(g) => panic!("expected a refusal, got {g:?}"),
    }
}

fn grant(d: Decision) -> Grant {
    match d {
        Decision::Granted(g) => g,
        refused => panic!("expected a grant, got {refused:?}"),
    }
}

/// Polls once: lets a waiter take its first look and go to sleep, without any timer.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// Follows tokio's (paused) time, so timer-driven waiting runs in virtual time.
#[derive(Debug)]
struct TokioClock {
    start: tokio::time::Instant,
    start_ms: i64,
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + self.start.elapsed().as_millis() as i64
    }
}

#[test]
fn quota_is_send_and_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<Quota>();
}

#[test]
fn minute_window_edge_is_exactly_60_s() {
    let (_, q) = manual(limits(3, 100), T);
    for t in [T, T + 10, T + 20] {
        grant(q.acquire("a", t).unwrap());
    }
    assert_eq!(
        refusal(q.acquire("a", T + 59_999).unwrap()),
        (Reason::Minute, 1)
    );
    assert_eq!(grant(q.acquire("a", T + 60_000).unwrap()).minute_used, 3);
    assert_eq!(
        refusal(q.acquire("a", T + 60_009).unwrap()),
        (Reason::Minute, 1)
    );
    grant(q.acquire("a", T + 60_010).unwrap());
    let s = q.snapshot("a", T + 60_010);
    assert_eq!(
        (s.minute.used, s.minute.reset_in_ms, s.day.used),
        (3, 10, 5)
    );
}

#[test]
fn day_rolls_over_at_the_configured_offset() {
    // UTC+8: the day starts at 16:00 UTC.
    let reset = MIDNIGHT + 16 * 3_600_000;
    let cfg = QuotaConfig {
        utc_offset_minutes: 480,
        ..config(limits(100, 3))
    };
    let q = Quota::in_memory(cfg, ManualClock::new(0)).unwrap();
    let now = reset - 30_000;
    for _ in 0..3 {
        grant(q.acquire("a", now).unwrap());
    }
    assert_eq!(refusal(q.acquire("a", now).unwrap()), (Reason::Day, 30_000));
    let s = q.snapshot("a", now);
    assert_eq!(s.day.resets_at, "2024-01-02T00:00:00+08:00");
    assert_eq!(
        (s.day.resets_at_ms, q.next_day_reset_ms(now)),
        (reset, reset)
    );
    assert_eq!(
        refusal(q.acquire("a", reset - 1).unwrap()),
        (Reason::Day, 1)
    );
    // The minute window does not reset with the day: its 3 grants still count.
    let g = grant(q.acquire("a", reset).unwrap());
    assert_eq!((g.day_used, g.minute_used), (1, 4));
    assert_eq!(
        q.snapshot("a", reset).day.resets_at,
        "2024-01-03T00:00:00+08:00"
    );
}

#[test]
fn rate_limited_with_retry_after_cools_down_for_that_long() {
    let (clock, q) = manual(limits(60, 2000), T);
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(5_000),
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T + 1_000).unwrap()),
        (Reason::CoolDown, 4_000)
    );
    let cd = q.snapshot("a", T + 1_000).cool_down.unwrap();
    assert_eq!((cd.until_ms, cd.remaining_ms), (T + 5_000, 4_000));
    clock.set_ms(T + 5_000);
    grant(q.acquire("a", T + 5_000).unwrap());
    assert!(q.snapshot("a", T + 5_000).cool_down.is_none());
}

#[test]
fn rate_limited_without_retry_after_waits_a_minute() {
    let (_, q) = manual(limits(60, 2000), T);
    grant(q.acquire("a", T).unwrap());
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: None,
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::CoolDown, 60_000)
    );
    // A shorter later Retry-After does not cut an existing cool-down short.
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(10),
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T + 30_000).unwrap()),
        (Reason::CoolDown, 30_000)
    );
    grant(q.acquire("a", T + 60_000).unwrap());
}

#[test]
fn daily_exhausted_blocks_until_the_day_reset() {
    let (_, q) = manual(limits(60, 2000), T);
    grant(q.acquire("a", T).unwrap());
    q.report_outcome(
        "a",
        Outcome::DailyExhausted {
            retry_after_ms: None,
        },
    );
    let next_day = MIDNIGHT + 24 * 3_600_000;
    assert_eq!(
        refusal(q.acquire("a", T + MIN).unwrap()),
        (Reason::Day, (next_day - T - MIN) as u64)
    );
    let s = q.snapshot("a", T + MIN);
    assert!(s.day.exhausted);
    assert_eq!(s.day.used, 1);
    grant(q.acquire("a", next_day).unwrap());
    assert!(!q.snapshot("a", next_day).day.exhausted);
}

#[test]
fn accounts_are_separate_and_configurable() {
    let mut cfg = config(limits(2, 100));
    cfg.account_limits.insert("big".into(), limits(5, 100));
    let q = Quota::in_memory(cfg, ManualClock::new(T)).unwrap();
    for _ in 0..2 {
        grant(q.acquire("a", T).unwrap());
    }
    assert_eq!(refusal(q.acquire("a", T).unwrap()).0, Reason::Minute);
    q.report_outcome(
        "c",
        Outcome::RateLimited {
            retry_after_ms: None,
        },
    );
    for _ in 0..5 {
        grant(q.acquire("big", T).unwrap());
    }
    assert_eq!(refusal(q.acquire("big", T).unwrap()).0, Reason::Minute);
    grant(q.acquire("b", T).unwrap());
    assert_eq!(refusal(q.acquire("c", T).unwrap()).0, Reason::CoolDown);
    assert_eq!(q.snapshot("big", T).minute.limit, Some(5));
    assert_eq!(q.snapshot("b", T).minute.used, 1);
}

#[test]
fn a_refusal_by_one_limit_charges_nothing_to_the_other() {
    let (_, q) = manual(limits(2, 5), T);
    for _ in 0..2 {
        grant(q.acquire("a", T).unwrap());
    }
    for i in 0..10 {
        assert_eq!(refusal(q.acquire("a", T + i).unwrap()).0, Reason::Minute);
    }
    assert_eq!(q.snapshot("a", T + 10).day.used, 2);
    for t in [T + MIN, T + MIN, T + 2 * MIN] {
        grant(q.acquire("a", t).unwrap());
    }
    assert_eq!(q.snapshot("a", T + 2 * MIN).day.used, 5);
    // The day is used up: refusals for it leave the minute window alone.
    for i in 0..10 {
        assert_eq!(
            refusal(q.acquire("a", T + 3 * MIN + i).unwrap()).0,
            Reason::Day
        );
    }
    assert_eq!(q.snapshot("a", T + 3 * MIN + 10).minute.used, 0);
    // Cool-down refusals charge neither.
    q.report_outcome(
        "b",
        Outcome::RateLimited {
            retry_after_ms: Some(1_000),
        },
    );
    assert_eq!(refusal(q.acquire("b", T).unwrap()).0, Reason::CoolDown);
    let s = q.snapshot("b", T);
    assert_eq!((s.minute.used, s.day.used), (0, 0));
}

#[test]
fn the_longest_blocker_is_reported() {
    let (_, q) = manual(limits(1, 100), T);
    grant(q.acquire("a", T).unwrap());
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(5_000),
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::Minute, 60_000)
    );
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(90_000),
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::CoolDown, 90_000)
    );
}

#[test]
fn unlimited_accounts_are_never_refused_nor_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = QuotaConfig::default();
    cfg.account_limits
        .insert("openai".into(), Limits::UNLIMITED);
    let (q, _) = Quota::open(dir.path(), cfg, ManualClock::new(T)).unwrap();
    for _ in 0..5_000 {
        grant(q.acquire("openai", T).unwrap());
    }
    let s = q.snapshot("openai", T);
    assert_eq!(
        (s.minute.used, s.minute.limit, s.day.limit),
        (5_000, None, None)
    );
    let path = q.ledger_path().unwrap().to_owned();
    drop(q);
    assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
}

#[test]
fn zero_limits_are_rejected() {
    let cfg = config(limits(0, 10));
    assert!(matches!(
        Quota::in_memory(cfg, ManualClock::new(T)),
        Err(QuotaError::Config(_))
    ));
    let (_, q) = manual(limits(1, 1), T);
    assert!(
        q.set_limits(
            "a",
            Limits {
                per_minute: None,
                per_day: Some(0)
            }
        )
        .is_err()
    );
}

#[test]
fn snapshot_has_the_quota_json_shape() {
    let (_, q) = manual(limits(60, 2000), T);
    grant(q.acquire("a", T - 1_000).unwrap());
    let v = serde_json::to_value(q.snapshot("a", T)).unwrap();
    assert_eq!(v["minute"]["used"], 1);
    assert_eq!(v["minute"]["limit"], 60);
    assert_eq!(v["minute"]["reset_in_ms"], 59_000);
    assert_eq!(v["day"]["used"], 1);
    assert_eq!(v["day"]["limit"], 2000);
    assert_eq!(v["day"]["resets_at"], "2024-01-02T00:00:00Z");
    assert!(v.get("cool_down").is_none());
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let (clock, q) = manual(limits(2, 100), T);
    for _ in 0..2 {
        grant(q.acquire("a", T).unwrap());
    }
    let deadline = T + 10 * MIN;
    let waiters: Vec<_> = (0..4).map(|_| q.acquire_wait("a", deadline)).collect();
    assert_eq!(q.waiting("a"), 4);
    // Spawned in reverse, so the latest arrival is the first to look after each wake-up.
    let mut handles: Vec<_> = waiters.into_iter().rev().map(tokio::spawn).collect();
    handles.reverse();
    tokio::task::yield_now().await;

    clock.set_ms(T + MIN);
    // A plain attempt arriving now is behind all four, even though two slots just freed.
    assert_eq!(refusal(q.acquire("a", T + MIN).unwrap()).0, Reason::Minute);
    q.poke();
    for h in handles.drain(..2) {
        assert_eq!(grant(h.await.unwrap().unwrap()).at_ms, T + MIN);
    }
    assert_eq!(q.waiting("a"), 2);
    clock.set_ms(T + 2 * MIN);
    q.poke();
    for h in handles {
        assert_eq!(grant(h.await.unwrap().unwrap()).at_ms, T + 2 * MIN);
    }
    assert_eq!(q.waiting("a"), 0);
}

#[tokio::test]
async fn a_waiter_is_refused_at_its_deadline_and_leaves_the_queue() {
    let (clock, q) = manual(limits(1, 100), T);
    grant(q.acquire("a", T).unwrap());
    let mut waiter = pin!(q.acquire_wait("a", T + 10_000));
    assert!(poll_once(&mut waiter).await.is_none());
    assert_eq!(q.waiting("a"), 1);
    clock.set_ms(T + 9_999);
    q.poke();
    assert!(poll_once(&mut waiter).await.is_none());
    clock.set_ms(T + 10_000);
    q.poke();
    assert_eq!(refusal(waiter.await.unwrap()), (Reason::Minute, 50_000));
    assert_eq!(q.waiting("a"), 0);

    // A cancelled waiter does not hold up the ones behind it.
    let mut cancelled = Box::pin(q.acquire_wait("a", T + 10 * MIN));
    let mut behind = pin!(q.acquire_wait("a", T + 10 * MIN));
    assert!(poll_once(&mut cancelled).await.is_none());
    assert!(poll_once(&mut behind).await.is_none());
    drop(cancelled);
    clock.set_ms(T + MIN);
    q.poke();
    assert_eq!(grant(behind.await.unwrap()).at_ms, T + MIN);
}

#[tokio::test]
async fn a_past_deadline_is_a_single_attempt() {
    let (_, q) = manual(limits(1, 100), T);
    grant(q.acquire_wait("a", T).await.unwrap());
    assert_eq!(
        refusal(q.acquire_wait("a", T).await.unwrap()),
        (Reason::Minute, 60_000)
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_wake_on_their_own_timers() {
    let clock = Arc::new(TokioClock {
        start: tokio::time::Instant::now(),
        start_ms: T,
    });
    let q = Arc::new(Quota::in_memory(config(limits(2, 100)), clock).unwrap());
    let handles: Vec<_> = (0..5)
        .map(|_| tokio::spawn(q.acquire_wait("a", T + 10 * MIN)))
        .collect();
    let mut times = Vec::new();
    for h in handles {
        times.push(grant(h.await.unwrap().unwrap()).at_ms - T);
    }
    assert_eq!(times, [0, 0, MIN, MIN, 2 * MIN]);
    // Under a day limit the wait would outlast the deadline: refused at the deadline.
    let q2 = Arc::new(Quota::in_memory(config(limits(100, 1)), q.clock.clone()).unwrap());
    grant(q2.acquire_wait("a", 0).await.unwrap());
    let now = q2.clock.now_ms();
    let (reason, _) = refusal(q2.acquire_wait("a", now + 5 * MIN).await.unwrap());
    assert_eq!((reason, q2.clock.now_ms() - now), (Reason::Day, 5 * MIN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_racing_tasks_get_exactly_sixty() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T);
    let (q, _) = Quota::open(dir.path(), config(limits(60, 2000)), clock.clone()).unwrap();
    let q = Arc::new(q);
    let mut handles = Vec::new();
    for i in 0..200 {
        let q = q.clone();
        handles.push(if i % 2 == 0 {
            tokio::spawn(async move { q.acquire_wait("a", T).await })
        } else {
            tokio::task::spawn_blocking(move || q.acquire("a", T))
        });
    }
    let mut granted = 0;
    for h in handles {
        match h.await.unwrap().unwrap() {
            Decision::Granted(_) => granted += 1,
            refused => assert_eq!(refusal(refused), (Reason::Minute, 60_000)),
        }
    }
    assert_eq!(granted, 60);
    drop(q);
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock).unwrap();
    assert!(warnings.is_empty());
    let s = q.snapshot("a", T);
    assert_eq!((s.minute.used, s.day.used), (60, 60));
}

#[test]
fn grants_and_blocks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T);
    let (q, _) = Quota::open(dir.path(), QuotaConfig::default(), clock.clone()).unwrap();
    for i in 0..5 {
        grant(q.acquire("a", T + i).unwrap());
    }
    grant(q.acquire("b", T).unwrap());
    q.report_outcome(
        "b",
        Outcome::RateLimited {
            retry_after_ms: Some(30_000),
        },
    );
    q.report_outcome(
        "c",
        Outcome::DailyExhausted {
            retry_after_ms: None,
        },
    );
    let before: Vec<_> = ["a", "b", "c"].map(|a| q.snapshot(a, T + 10)).into();
    drop(q);
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock).unwrap();
    assert!(warnings.is_empty());
    let after: Vec<_> = ["a", "b", "c"].map(|a| q.snapshot(a, T + 10)).into();
    assert_eq!(before, after);
    assert_eq!(after[0].minute.used, 5);
    assert_eq!(refusal(q.acquire("b", T + 10).unwrap()).0, Reason::CoolDown);
    assert_eq!(refusal(q.acquire("c", T + 10).unwrap()).0, Reason::Day);
    let text = std::fs::read_to_string(q.ledger_path().unwrap()).unwrap();
    assert!(
        text.contains(r#"{"k":"g","a":"a","t":1704103200000}"#),
        "{text}"
    );
}

#[test]
fn ledger_and_dir_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state/quota");
    let (q, _) = Quota::open(&state, QuotaConfig::default(), ManualClock::new(T)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(q.ledger_path().unwrap()), 0o600);
}

fn write_ledger(dir: &Path, content: &[u8]) {
    std::fs::write(dir.join(ledger::LEDGER_FILE), content).unwrap();
}

#[test]
fn a_torn_tail_counts_as_a_grant_for_everyone() {
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "{{\"k\":\"g\",\"a\":\"a\",\"t\":{}}}\n{{\"k\":\"g\",\"a\":\"a\",\"t\":{}}}\n{{\"k\":\"g\",\"a\":\"a\",\"t\":17",
        T - 1_000,
        T - 500
    );
    write_ledger(dir.path(), lines.as_bytes());
    let clock = ManualClock::new(T);
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock.clone()).unwrap();
    assert!(matches!(
        warnings[..],
        [LedgerWarning::TornTail { counted_as: 1, .. }]
    ));
    let counts = |q: &Quota, a| {
        let s = q.snapshot(a, T);
        (s.minute.used, s.day.used)
    };
    assert_eq!((counts(&q, "a"), counts(&q, "b")), ((3, 3), (1, 1)));
    drop(q);
    // Rewritten clean: the damage is neither reported nor charged again.
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock).unwrap();
    assert!(warnings.is_empty());
    assert_eq!((counts(&q, "a"), counts(&q, "b")), ((3, 3), (1, 1)));
    assert_eq!(q.snapshot("b", T + MIN).minute.used, 0);
}

#[test]
fn garbage_fills_the_minute_and_is_charged_to_the_day() {
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "{{\"k\":\"g\",\"a\":\"a\",\"t\":{}}}\nthis is not json at all, really no\n{{\"k\":\"g\",\"a\":\"a\",\"t\":{}}}\n",
        T - 1_000,
        T - 900
    );
    write_ledger(dir.path(), lines.as_bytes());
    let clock = ManualClock::new(T);
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock.clone()).unwrap();
    assert_eq!(
        warnings,
        [LedgerWarning::Garbage {
            line: 2,
            bytes: 35,
            counted_as: 2
        }]
    );
    for a in ["a", "new"] {
        assert_eq!(refusal(q.acquire(a, T).unwrap()), (Reason::Minute, 60_000));
    }
    let s = q.snapshot("a", T);
    assert_eq!(
        (s.minute.used, s.minute.reset_in_ms, s.day.used),
        (60, 60_000, 4)
    );
    assert_eq!(q.snapshot("new", T).day.used, 2);
    drop(q);
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(
        refusal(q.acquire("a", T + 59_999).unwrap()),
        (Reason::Minute, 1)
    );
    assert_eq!(grant(q.acquire("a", T + MIN).unwrap()).day_used, 5);
}

#[test]
fn compaction_keeps_counts_and_bounds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || QuotaConfig {
        default_limits: limits(1_000, 100_000),
        compact_threshold_bytes: 4_096,
        ..QuotaConfig::default()
    };
    let next_day = MIDNIGHT + 24 * 3_600_000;
    let start = next_day - 150_000;
    let clock = ManualClock::new(start);
    let (q, _) = Quota::open(dir.path(), cfg(), clock.clone()).unwrap();
    let mut max_len = 0;
    for i in 0..300 {
        let now = start + i * 1_000;
        clock.set_ms(now);
        grant(q.acquire("a", now).unwrap());
        if i % 7 == 0 {
            grant(q.acquire("b", now).unwrap());
        }
        max_len = max_len.max(std::fs::metadata(q.ledger_path().unwrap()).unwrap().len());
    }
    q.report_outcome(
        "b",
        Outcome::RateLimited {
            retry_after_ms: Some(600_000),
        },
    );
    let end = clock.now_ms();
    let before: Vec<_> = ["a", "b"].map(|a| q.snapshot(a, end)).into();
    assert_eq!((before[0].minute.used, before[0].day.used), (60, 150));
    let path = q.ledger_path().unwrap().to_owned();
    drop(q);
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(
        max_len < 3 * 4_096 && lines < 150,
        "ledger grew to {max_len} bytes, {lines} lines"
    );
    let (q, warnings) = Quota::open(dir.path(), cfg(), clock.clone()).unwrap();
    assert!(warnings.is_empty());
    let after: Vec<_> = ["a", "b"].map(|a| q.snapshot(a, end)).into();
    assert_eq!(before, after);
    // Forcing a compaction after the minute has passed keeps the day count alone.
    clock.set_ms(end + MIN);
    q.compact();
    drop(q);
    let (q, _) = Quota::open(dir.path(), cfg(), ManualClock::new(end + MIN)).unwrap();
    let s = q.snapshot("a", end + MIN);
    assert_eq!((s.minute.used, s.day.used), (0, 150));
}

const CRASH_CHILD_ENV: &str = "QWEND_QUOTA_CRASH_CHILD_DIR";

fn crash_config() -> QuotaConfig {
    config(limits(1_000_000_000, 1_000_000_000))
}

/// Not a test on its own: when re-run by `kill_9_never_undercounts` with the env var set, grants
/// in a loop from several threads and prints a line after each grant has been returned.
#[test]
fn crash_child_grant_loop() {
    let Ok(dir) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let (q, _) = Quota::open(Path::new(&dir), crash_config(), Arc::new(SystemClock)).unwrap();
    let q = Arc::new(q);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || {
                // Bounded, so a parent that fails to kill us does not leave us running.
                for _ in 0..50_000 {
                    if q.acquire("crash", SystemClock.now_ms())
                        .unwrap()
                        .is_granted()
                    {
                        println!("granted");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn kill_9_never_undercounts() {
    let dir = tempfile::tempdir().unwrap();
    // Test names lack the crate's name, which `module_path!` starts with.
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::crash_child_grant_loop");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reported = 0;
    for line in lines.by_ref() {
        reported += line.unwrap().matches("granted").count();
        if reported >= 500 {
            break;
        }
    }
    child.kill().unwrap();
    // Whatever it printed before dying is still in the pipe.
    reported += lines
        .map_while(Result::ok)
        .map(|l| l.matches("granted").count())
        .sum::<usize>();
    child.wait().unwrap();
    assert!(reported >= 500, "child reported only {reported} grants");

    let (q, warnings) = Quota::open(dir.path(), crash_config(), Arc::new(SystemClock)).unwrap();
    let used = q.snapshot("crash", SystemClock.now_ms()).minute.used;
    eprintln!("child reported {reported} grants, ledger holds {used}, warnings {warnings:?}");
    assert!(
        used >= reported as u64,
        "ledger holds {used} < {reported} reported"
    );
}

// Hardening (issue 13 items 3-6, issue 15): nothing stored or reported blocks an account
// beyond a sane bound, and an unwritable ledger still counts what it holds.

const CAP: i64 = 15 * MIN;

fn ledger_lines(records: &[String]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|r| format!("{r}\n").into_bytes())
        .collect()
}

#[test]
fn a_huge_retry_after_is_capped_and_does_not_overflow() {
    let (clock, q) = manual(limits(60, 2000), T);
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(u64::MAX),
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::CoolDown, CAP as u64)
    );
    let cd = q.snapshot("a", T).cool_down.unwrap();
    assert_eq!((cd.until_ms, cd.remaining_ms), (T + CAP, CAP as u64));
    // A second huge report does not stack on the first.
    clock.set_ms(T + MIN);
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(99_999_999_999_000),
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T + MIN).unwrap()),
        (Reason::CoolDown, CAP as u64)
    );
    grant(q.acquire("a", T + MIN + CAP).unwrap());

    // The cap is configurable and bounds the default cool-down too.
    let cfg = QuotaConfig {
        max_cooldown_ms: 5_000,
        ..config(limits(60, 2000))
    };
    let q = Quota::in_memory(cfg, ManualClock::new(T)).unwrap();
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: None,
        },
    );
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::CoolDown, 5_000)
    );
    for bad in [0, MAX_COOLDOWN_CAP_MS + 1] {
        let cfg = QuotaConfig {
            max_cooldown_ms: bad,
            ..QuotaConfig::default()
        };
        assert!(matches!(
            Quota::in_memory(cfg, ManualClock::new(T)),
            Err(QuotaError::Config(_))
        ));
    }
}

#[test]
fn a_cool_down_in_the_ledger_is_capped_on_load() {
    let dir = tempfile::tempdir().unwrap();
    // What an uncapped daemon wrote for `Retry-After: 99999999999`.
    write_ledger(
        dir.path(),
        &ledger_lines(&[format!(
            r#"{{"k":"c","a":"a","until":{}}}"#,
            T + 99_999_999_999_000
        )]),
    );
    let clock = ManualClock::new(T);
    let (q, warnings) = Quota::open(dir.path(), QuotaConfig::default(), clock.clone()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::CoolDown, CAP as u64)
    );
    drop(q);
    // Rewritten bounded: a later start does not restart the cap from its own "now".
    clock.set_ms(T + 10 * MIN);
    let (q, _) = Quota::open(dir.path(), QuotaConfig::default(), clock.clone()).unwrap();
    assert_eq!(
        refusal(q.acquire("a", T + 10 * MIN).unwrap()),
        (Reason::CoolDown, 5 * MIN as u64)
    );
    grant(q.acquire("a", T + CAP).unwrap());
    // A smaller cap configured later applies to what is stored.
    drop(q);
    let cfg = QuotaConfig {
        max_cooldown_ms: 1_000,
        ..QuotaConfig::default()
    };
    write_ledger(
        dir.path(),
        &ledger_lines(&[format!(r#"{{"k":"c","a":"a","until":{}}}"#, T + CAP)]),
    );
    let (q, _) = Quota::open(dir.path(), cfg, ManualClock::new(T)).unwrap();
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::CoolDown, 1_000)
    );
}

#[test]
fn future_entries_in_the_ledger_are_clamped_to_now() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = T + 5 * 3_600_000;
    let mut lines: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"k":"g","a":"a","t":{}}}"#, ahead + i))
        .collect();
    lines.push(format!(
        r#"{{"k":"d","a":"b","t":{},"n":7}}"#,
        ahead + 86_400_000
    ));
    lines.push(format!(
        r#"{{"k":"x","a":"c","until":{}}}"#,
        ahead + 30 * 86_400_000
    ));
    lines.push(format!(r#"{{"k":"m","until":{}}}"#, ahead));
    write_ledger(dir.path(), &ledger_lines(&lines));
    let clock = ManualClock::new(T);
    let (q, _) = Quota::open(dir.path(), QuotaConfig::default(), clock.clone()).unwrap();
    // The 60 grants still count (nothing is under-counted), but as made now: the minute
    // frees a minute from now, not five hours and a minute from now.
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::Minute, MIN as u64)
    );
    let s = q.snapshot("a", T);
    assert_eq!(
        (s.minute.used, s.minute.reset_in_ms, s.day.used),
        (60, 60_000, 60)
    );
    // Tomorrow's count is charged to today; "used up" ends at the next reset; the
    // every-minute-full mark lasts a minute.
    assert_eq!(q.snapshot("b", T).day.used, 7);
    let next_day = MIDNIGHT + 24 * 3_600_000;
    assert_eq!(
        refusal(q.acquire("c", T + MIN).unwrap()),
        (Reason::Day, (next_day - T - MIN) as u64)
    );
    assert_eq!(
        refusal(q.acquire("b", T).unwrap()),
        (Reason::Minute, MIN as u64)
    );
    grant(q.acquire("b", T + MIN).unwrap());
    grant(q.acquire("a", T + MIN).unwrap());
    grant(q.acquire("c", next_day).unwrap());
}

#[test]
fn a_clock_stepped_back_blocks_the_minute_for_at_most_a_minute() {
    let (_, q) = manual(limits(2, 100), T);
    let ahead = T + 3 * 3_600_000;
    for _ in 0..2 {
        grant(q.acquire("a", ahead).unwrap());
    }
    // The clock is corrected by three hours: the two grants count, for one minute.
    assert_eq!(
        refusal(q.acquire("a", T).unwrap()),
        (Reason::Minute, MIN as u64)
    );
    assert_eq!(q.snapshot("a", T).minute.reset_in_ms, MIN as u64);
    grant(q.acquire("a", T + MIN).unwrap());
}

#[test]
fn insufficient_quota_without_a_day_limit_only_honours_a_capped_retry_after() {
    let mut cfg = config(limits(60, 2000));
    cfg.account_limits
        .insert("openai".into(), Limits::UNLIMITED);
    let q = Quota::in_memory(cfg, ManualClock::new(T)).unwrap();
    grant(q.acquire("openai", T).unwrap());
    q.report_outcome(
        "openai",
        Outcome::DailyExhausted {
            retry_after_ms: None,
        },
    );
    let s = q.snapshot("openai", T);
    assert!(!s.day.exhausted && s.cool_down.is_none(), "{s:?}");
    assert_eq!((s.day.used, s.day.limit), (1, None));
    grant(q.acquire("openai", T).unwrap());
    q.report_outcome(
        "openai",
        Outcome::DailyExhausted {
            retry_after_ms: Some(20_000),
        },
    );
    assert_eq!(
        refusal(q.acquire("openai", T).unwrap()),
        (Reason::CoolDown, 20_000)
    );
    assert!(!q.snapshot("openai", T).day.exhausted);
    q.report_outcome(
        "openai",
        Outcome::DailyExhausted {
            retry_after_ms: Some(u64::MAX),
        },
    );
    assert_eq!(
        refusal(q.acquire("openai", T).unwrap()),
        (Reason::CoolDown, CAP as u64)
    );
    grant(q.acquire("openai", T + CAP).unwrap());
    // A "used up" mark an older daemon stored for it blocks nothing.
    let dir = tempfile::tempdir().unwrap();
    write_ledger(
        dir.path(),
        &ledger_lines(&[format!(
            r#"{{"k":"x","a":"openai","until":{}}}"#,
            MIDNIGHT + 24 * 3_600_000
        )]),
    );
    let mut cfg = QuotaConfig::default();
    cfg.account_limits
        .insert("openai".into(), Limits::UNLIMITED);
    let (reopened, _) = Quota::open(dir.path(), cfg, ManualClock::new(T)).unwrap();
    grant(reopened.acquire("openai", T).unwrap());
    assert!(!reopened.snapshot("openai", T).day.exhausted);
    // Qwen OAuth has a day of ours: there it still means the day is used up.
    q.report_outcome(
        "qwen",
        Outcome::DailyExhausted {
            retry_after_ms: Some(1_000),
        },
    );
    assert_eq!(refusal(q.acquire("qwen", T).unwrap()).0, Reason::Day);
}

#[test]
fn reset_clears_counters_and_blocks_durably() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T);
    let cfg = || config(limits(3, 5));
    let (q, _) = Quota::open(dir.path(), cfg(), clock.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..3 {
        grant(q.acquire("a", T).unwrap());
        grant(q.acquire("b", T).unwrap());
    }
    q.report_outcome(
        "a",
        Outcome::RateLimited {
            retry_after_ms: Some(600_000),
        },
    );
    q.report_outcome(
        "a",
        Outcome::DailyExhausted {
            retry_after_ms: None,
        },
    );
    rt.block_on(q.reset("a")).unwrap();
    let s = q.snapshot("a", T);
    assert_eq!((s.minute.used, s.day.used, s.day.exhausted), (0, 0, false));
    assert!(s.cool_down.is_none());
    assert_eq!(
        q.snapshot("b", T).minute.used,
        3,
        "other accounts keep theirs"
    );
    grant(q.acquire("a", T + 1).unwrap());
    drop(q);
    // Durable: a restart neither brings back what was reset nor drops what came after.
    let (q, warnings) = Quota::open(dir.path(), cfg(), clock.clone()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = q.snapshot("a", T + 1);
    assert_eq!((s.minute.used, s.day.used), (1, 1));
    assert!(s.cool_down.is_none() && !s.day.exhausted);
    assert_eq!(q.snapshot("b", T + 1).minute.used, 3);
    // Also after compaction.
    q.compact();
    drop(q);
    let (q, _) = Quota::open(dir.path(), cfg(), clock).unwrap();
    assert_eq!(q.snapshot("a", T + 1).day.used, 1);
    assert_eq!(q.snapshot("b", T + 1).day.used, 3);
}

#[tokio::test]
async fn reset_admits_a_waiter_at_once() {
    let (_, q) = manual(limits(1, 100), T);
    grant(q.acquire("a", T).unwrap());
    let mut waiter = pin!(q.acquire_wait("a", T + 10 * MIN));
    assert!(poll_once(&mut waiter).await.is_none());
    q.reset("a").await.unwrap();
    assert_eq!(grant(waiter.await.unwrap()).at_ms, T);
}

#[test]
fn a_ledger_that_is_not_a_regular_file_is_refused_without_hanging() {
    for kind in ["fifo", "dir"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ledger::LEDGER_FILE);
        match kind {
            "fifo" => crate::fsread::make_fifo(&path),
            _ => std::fs::create_dir(&path).unwrap(),
        }
        let (q, warnings) =
            Quota::open(dir.path(), config(limits(2, 100)), ManualClock::new(T)).unwrap();
        let text = format!("{warnings:?}");
        assert!(text.contains("not a regular file"), "{kind}: {text}");
        assert!(q.ledger_path().is_none());
        // Counting goes on in memory, and says so.
        for _ in 0..2 {
            grant(q.acquire("a", T).unwrap());
        }
        assert_eq!(refusal(q.acquire("a", T).unwrap()).0, Reason::Minute);
        let s = q.snapshot("a", T);
        assert!(s.warnings[0].contains("in memory"), "{:?}", s.warnings);
    }
}

const READ_ONLY_CHILD_ENV: &str = "QWEND_QUOTA_READ_ONLY_CHILD_DIR";

/// Not a test on its own: run by `a_read_only_ledger_is_loaded_and_counted_in_memory`
/// (without the right to write where it is not allowed, even as root) to open the quota in
/// a read-only dir and print what it counts.
#[test]
fn read_only_child() {
    let Ok(dir) = std::env::var(READ_ONLY_CHILD_ENV) else {
        return;
    };
    let (q, warnings) = Quota::open(
        Path::new(&dir),
        config(limits(60, 2000)),
        ManualClock::new(T),
    )
    .unwrap();
    let first = q.snapshot("a", T);
    let mut granted = 0;
    while q.acquire("a", T).unwrap().is_granted() {
        granted += 1;
    }
    let then = q.snapshot("a", T);
    println!(
        "{}",
        serde_json::json!({
            "warnings": warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "minute_used": first.minute.used,
            "day_used": first.day.used,
            "granted": granted,
            "snapshot_warnings": then.warnings,
        })
    );
}

#[test]
fn a_read_only_ledger_is_loaded_and_counted_in_memory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let quota_dir = dir.path().join("quota");
    std::fs::create_dir(&quota_dir).unwrap();
    // 50 grants in the last second, against a limit of 60.
    let lines: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"k":"g","a":"a","t":{}}}"#, T - 1_000 + i))
        .collect();
    write_ledger(&quota_dir, &ledger_lines(&lines));
    let before = std::fs::read(quota_dir.join(ledger::LEDGER_FILE)).unwrap();
    let set = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    set(&quota_dir.join(ledger::LEDGER_FILE), 0o400).unwrap();
    set(&quota_dir, 0o500).unwrap();

    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::read_only_child");
    // Root writes anywhere; without CAP_DAC_OVERRIDE it obeys the modes like anyone.
    let root = rustix::process::geteuid().is_root();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-dac_override,-dac_read_search", "--"])
            .arg(std::env::current_exe().unwrap());
        c
    } else {
        Command::new(std::env::current_exe().unwrap())
    };
    let out = cmd
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(READ_ONLY_CHILD_ENV, &quota_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run the child (setpriv from util-linux is needed as root)");
    set(&quota_dir, 0o700).unwrap();
    assert!(out.status.success(), "child failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find('{').map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no report from the child:\n{stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (v["minute_used"].as_u64(), v["day_used"].as_u64()),
        (Some(50), Some(50)),
        "{v}"
    );
    assert_eq!(v["granted"], 10, "only the rest of the minute: {v}");
    assert!(
        v["warnings"][0].as_str().unwrap().contains("in memory"),
        "{v}"
    );
    assert!(
        v["snapshot_warnings"][0]
            .as_str()
            .unwrap()
            .contains("Permission denied"),
        "{v}"
    );
    // Nothing was written, and nothing was lost.
    assert_eq!(
        std::fs::read(quota_dir.join(ledger::LEDGER_FILE)).unwrap(),
        before
    );
}
