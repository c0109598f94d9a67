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
    q.report_outcome("a", Outcome::DailyExhausted);
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
    q.report_outcome("c", Outcome::DailyExhausted);
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
