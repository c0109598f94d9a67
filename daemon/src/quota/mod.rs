//! Quota bookkeeping: one shared budget per account (the free Qwen OAuth tier allows 60
//! requests a minute and 2,000 a day), handed out as permits so that every client of the
//! daemon draws from the same pool instead of each one discovering the limit through 429s.
//!
//! Every decision is made under one lock, so the limits are exact under any concurrency.
//! Grants are counted in memory first and written to the ledger before they are returned,
//! so a crash can lose a grant nobody received (over-count) but never one somebody did.
//!
//! Nothing from upstream or from the ledger can block an account for longer than a sane
//! bound: a cool-down is capped (`max_cooldown_ms`, 15 minutes by default) when reported and
//! again whenever it is read, a rolling minute never blocks longer than a minute, and "the
//! day is used up" ends at the next day reset. `reset` clears an account for a person who
//! knows better.
mod ledger;
mod window;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use tokio::sync::Notify;

use crate::clock::SharedClock;
pub use ledger::LedgerWarning;
use ledger::{Ledger, Record};
use window::{Account, Days, Penalty, Ready};

/// Limits of one account; `None` means no limit on that window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub per_minute: Option<u64>,
    pub per_day: Option<u64>,
}

impl Limits {
    /// The free Qwen OAuth tier.
    pub const QWEN_OAUTH: Limits = Limits {
        per_minute: Some(60),
        per_day: Some(2_000),
    };
    /// For the openai method, whose provider enforces (and bills) its own limits.
    pub const UNLIMITED: Limits = Limits {
        per_minute: None,
        per_day: None,
    };

    pub fn is_unlimited(self) -> bool {
        self == Self::UNLIMITED
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::QWEN_OAUTH
    }
}

/// 15 minutes: longer than any real provider's minute-window 429 asks for, short enough
/// that a wrong one is an annoyance rather than an outage.
pub const DEFAULT_MAX_COOLDOWN_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct QuotaConfig {
    pub default_limits: Limits,
    /// Overrides by account key.
    pub account_limits: HashMap<String, Limits>,
    /// Where the day window starts: minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// Cool-down after a 429 without Retry-After: a whole minute, the only wait that frees the
    /// server's minute window whatever it counted (other clients may share the account).
    pub default_cooldown_ms: u64,
    /// Longest cool-down any report (or ledger record) can impose: a hostile or broken
    /// server's `Retry-After: 99999999999` must not lock the account for millennia.
    pub max_cooldown_ms: u64,
    /// Ledger size that triggers compaction.
    pub compact_threshold_bytes: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            default_limits: Limits::QWEN_OAUTH,
            account_limits: HashMap::new(),
            utc_offset_minutes: 0,
            default_cooldown_ms: 60_000,
            max_cooldown_ms: DEFAULT_MAX_COOLDOWN_MS,
            compact_threshold_bytes: 256 * 1024,
        }
    }
}

impl QuotaConfig {
    fn validate(&self) -> Result<(), QuotaError> {
        if self.utc_offset_minutes.abs() >= 24 * 60 {
            return Err(QuotaError::Config(format!(
                "UTC offset {} minutes is not within ±24 h",
                self.utc_offset_minutes
            )));
        }
        if self.max_cooldown_ms == 0 || self.max_cooldown_ms > MAX_COOLDOWN_CAP_MS {
            return Err(QuotaError::Config(format!(
                "maximum cool-down {} ms is not between 1 ms and 24 h",
                self.max_cooldown_ms
            )));
        }
        let all = std::iter::once(&self.default_limits).chain(self.account_limits.values());
        for limits in all {
            validate_limits(*limits)?;
        }
        Ok(())
    }
}

/// The cap itself is capped: a day is already far beyond any sane cool-down.
pub const MAX_COOLDOWN_CAP_MS: u64 = 24 * 3_600_000;

fn validate_limits(limits: Limits) -> Result<(), QuotaError> {
    // A zero limit would refuse forever with nothing to wait for; "no quota" is UNLIMITED.
    if limits.per_minute == Some(0) || limits.per_day == Some(0) {
        return Err(QuotaError::Config("quota limits must be at least 1".into()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("quota ledger {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The grant was counted but could not be made durable, so it is not handed out.
    #[error("quota ledger write failed: {source}")]
    Write { source: Arc<std::io::Error> },
    #[error("invalid quota configuration: {0}")]
    Config(String),
    #[error("quota ledger writer stopped")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Minute,
    Day,
    CoolDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub at_ms: i64,
    /// Usage including this grant.
    pub minute_used: u64,
    pub day_used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Granted(Grant),
    Refused { retry_after_ms: u64, reason: Reason },
}

impl Decision {
    pub fn is_granted(&self) -> bool {
        matches!(self, Decision::Granted(_))
    }
}

/// What the upstream API said about a request made with a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// HTTP 429; `retry_after_ms` from the Retry-After header when there was one.
    RateLimited {
        retry_after_ms: Option<u64>,
    },
    /// The server says the day's quota is used up, whatever our count says
    /// (`insufficient_quota`). For an account with a day limit of ours (Qwen OAuth) that
    /// blocks until the day resets; an account without one (the OpenAI-compatible method,
    /// where it usually means billing) is only cooled down for the server's Retry-After.
    DailyExhausted {
        retry_after_ms: Option<u64>,
    },
}

/// Serializes to the `qwen quota --json` shape (with a few extra fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub minute: MinuteUsage,
    pub day: DayUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cool_down: Option<CoolDown>,
    pub waiting: usize,
    /// Why the counts may not survive a restart (the ledger cannot be written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinuteUsage {
    pub used: u64,
    pub limit: Option<u64>,
    /// Until `used` next drops.
    pub reset_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    pub used: u64,
    pub limit: Option<u64>,
    /// RFC 3339 at the configured offset.
    pub resets_at: String,
    pub resets_at_ms: i64,
    /// The server reported the day's quota used up.
    pub exhausted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoolDown {
    pub until_ms: i64,
    pub remaining_ms: u64,
}

#[derive(Debug)]
struct Inner {
    accounts: HashMap<String, Account>,
    limits: HashMap<String, Limits>,
    default_limits: Limits,
    penalty: Penalty,
    next_ticket: u64,
    /// Loading bounded a record (a future time, an over-long block): rewrite the ledger.
    clamped: bool,
}

/// The shared permit budget. Send + Sync; share it as `Arc<Quota>`.
#[derive(Debug)]
pub struct Quota {
    inner: Mutex<Inner>,
    ledger: Option<Ledger>,
    clock: SharedClock,
    days: Days,
    offset_minutes: i32,
    default_cooldown_ms: u64,
    max_cooldown_ms: i64,
    /// Set when the ledger could not be opened for writing: counting is in memory only.
    unwritable: Option<String>,
    /// Woken whenever a wait could end sooner than its timer: grants handed to queued waiters,
    /// waiters leaving, outcomes reported, `poke`.
    notify: Notify,
}

impl Quota {
    /// Opens the quota with its ledger in `dir` (a directory of its own, made private) and
    /// rebuilds the windows from it. Damage in the ledger is charged conservatively (see
    /// `ledger::parse`), reported in the returned warnings, and the ledger is rewritten clean.
    ///
    /// A ledger that cannot be written does not fail the open: what it holds is loaded (so
    /// the grants it records still count), counting goes on in memory, and the reason is
    /// both a returned warning and part of every snapshot until a restart finds it writable.
    /// Only an invalid configuration is an error.
    pub fn open(
        dir: &Path,
        config: QuotaConfig,
        clock: SharedClock,
    ) -> Result<(Self, Vec<LedgerWarning>), QuotaError> {
        config.validate()?;
        let now = clock.now_ms();
        let (ledger, records, mut warnings, unwritable) =
            match Ledger::open(dir, now, config.compact_threshold_bytes) {
                Ok((ledger, records, warnings)) => (Some(ledger), records, warnings, None),
                Err(e) => {
                    let (records, warnings, why) = match Ledger::read_only(dir, now) {
                        Ok((records, warnings)) => (records, warnings, e.to_string()),
                        // Unreadable as well (not a regular file, no permission): nothing
                        // to load, and that error is the one that explains it.
                        Err(read) => (Vec::new(), Vec::new(), read.to_string()),
                    };
                    (None, records, warnings, Some(why))
                }
            };
        let mut quota = Self::build(config, clock, ledger);
        if let Some(why) = unwritable {
            let text = format!(
                "cannot write the quota ledger ({why}); counting in memory from what it held: \
                 usage from now on is forgotten when the daemon stops"
            );
            warnings.push(LedgerWarning::NotWritable(text.clone()));
            quota.unwritable = Some(text);
        }
        {
            let mut inner = quota.lock();
            for record in records {
                inner.apply(record, now, quota.days, quota.max_cooldown_ms);
            }
            if let Some(ledger) = &quota.ledger
                && (!warnings.is_empty() || inner.clamped || ledger.needs_compaction())
            {
                // Rewrite now: appending after a torn line would glue the next record onto it,
                // and reloading the damage later would charge it again.
                ledger.compact(inner.compacted(now, quota.days));
            }
        }
        Ok((quota, warnings))
    }

    /// A quota that keeps nothing across restarts.
    pub fn in_memory(config: QuotaConfig, clock: SharedClock) -> Result<Self, QuotaError> {
        config.validate()?;
        Ok(Self::build(config, clock, None))
    }

    fn build(config: QuotaConfig, clock: SharedClock, ledger: Option<Ledger>) -> Self {
        let inner = Inner {
            accounts: HashMap::new(),
            limits: config.account_limits,
            default_limits: config.default_limits,
            penalty: Penalty::default(),
            next_ticket: 0,
            clamped: false,
        };
        // The cap bounds the default too.
        let max_cooldown_ms = config.max_cooldown_ms.min(MAX_COOLDOWN_CAP_MS);
        Self {
            inner: Mutex::new(inner),
            ledger,
            clock,
            days: Days::new(config.utc_offset_minutes),
            offset_minutes: config.utc_offset_minutes,
            default_cooldown_ms: config.default_cooldown_ms.min(max_cooldown_ms),
            max_cooldown_ms: max_cooldown_ms as i64,
            unwritable: None,
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn ledger_path(&self) -> Option<&Path> {
        self.ledger.as_ref().map(Ledger::path)
    }

    pub fn set_limits(&self, account: &str, limits: Limits) -> Result<(), QuotaError> {
        validate_limits(limits)?;
        self.lock().limits.insert(account.to_owned(), limits);
        // Raised limits may admit waiters right away.
        self.notify.notify_waiters();
        Ok(())
    }

    pub fn limits(&self, account: &str) -> Limits {
        self.lock().limits_for(account)
    }

    /// Start of the next day window after `now_ms`.
    pub fn next_day_reset_ms(&self, now_ms: i64) -> i64 {
        self.days.next_reset(now_ms)
    }

    /// One attempt at `now_ms`, behind any queued waiters. Blocks the calling thread until the
    /// grant is durable (one group-commit fdatasync); async callers use `acquire_wait`.
    pub fn acquire(&self, account: &str, now_ms: i64) -> Result<Decision, QuotaError> {
        let (result, wake) = {
            let mut inner = self.lock();
            let ticket = inner.enqueue(account);
            let (handed, blocked) = inner.serve(
                account,
                now_ms,
                self.days,
                self.max_cooldown_ms,
                self.ledger.as_ref(),
            );
            let mine = inner.take_ready(account, ticket);
            if mine.is_none() {
                inner.forget(account, ticket);
            }
            let wake = handed > usize::from(mine.is_some());
            (mine.ok_or(blocked), wake)
        };
        if wake {
            self.notify.notify_waiters();
        }
        match result {
            Ok(ready) => {
                if let (Some(seq), Some(ledger)) = (ready.seq, &self.ledger) {
                    ledger.wait_blocking(seq)?;
                }
                Ok(Decision::Granted(ready.grant))
            }
            Err(blocked) => Ok(refused(blocked)),
        }
    }

    /// Queues for a permit now (the call is the arrival: permits go to callers in call order
    /// per account) and resolves once granted, or refused when `deadline_ms` (clock time)
    /// passes. A deadline at or before now makes it a single non-blocking attempt. Dropping
    /// the future leaves the queue.
    pub fn acquire_wait(
        self: &Arc<Self>,
        account: &str,
        deadline_ms: i64,
    ) -> impl Future<Output = Result<Decision, QuotaError>> + Send + use<> {
        let ticket = self.lock().enqueue(account);
        let waiter = Waiter {
            quota: self.clone(),
            account: account.to_owned(),
            ticket,
            done: false,
        };
        waiter.run(deadline_ms)
    }

    /// Wakes every waiter to re-check against the clock; the daemon's timers make this
    /// unnecessary, tests that move a `ManualClock` call it.
    pub fn poke(&self) {
        self.notify.notify_waiters();
    }

    /// Callers queued for `account`.
    pub fn waiting(&self, account: &str) -> usize {
        self.lock()
            .accounts
            .get(account)
            .map_or(0, |a| a.queue.len())
    }

    /// Records what the server said. Not waited for durably: losing a cool-down in a crash
    /// only means the server repeats its 429, while a lost grant would be an under-count.
    pub fn report_outcome(&self, account: &str, outcome: Outcome) {
        if outcome == Outcome::Success {
            return;
        }
        let now = self.clock.now_ms();
        let mut inner = self.lock();
        let has_day_limit = inner.limits_for(account).per_day.is_some();
        let acct = inner.accounts.entry(account.to_owned()).or_default();
        acct.settle(now, self.max_cooldown_until(now), self.days);
        let cool_down = |acct: &mut Account, wait: u64| {
            // Capped on the way in; `settle` caps it again on every read.
            let wait = i64::try_from(wait)
                .unwrap_or(i64::MAX)
                .min(self.max_cooldown_ms);
            acct.cooldown_until = acct.cooldown_until.max(now.saturating_add(wait));
            Record::CoolDown {
                a: account.to_owned(),
                until: acct.cooldown_until,
            }
        };
        let record = match outcome {
            Outcome::Success => return,
            Outcome::RateLimited { retry_after_ms } => {
                cool_down(acct, retry_after_ms.unwrap_or(self.default_cooldown_ms))
            }
            // No day of ours to mark used up: honour the server's Retry-After, nothing more
            // (without one, nothing is locked and the next request asks the server again).
            Outcome::DailyExhausted { retry_after_ms } if !has_day_limit => match retry_after_ms {
                Some(wait) => cool_down(acct, wait),
                None => return,
            },
            Outcome::DailyExhausted { .. } => {
                acct.exhausted_until = acct.exhausted_until.max(self.days.next_reset(now));
                Record::Exhausted {
                    a: account.to_owned(),
                    until: acct.exhausted_until,
                }
            }
        };
        if let Some(ledger) = &self.ledger {
            ledger.append(&record);
        }
        drop(inner);
        // Waiters sleeping toward a now-later time re-plan their sleep.
        self.notify.notify_waiters();
    }

    pub fn snapshot(&self, account: &str, now_ms: i64) -> Snapshot {
        let now = now_ms;
        let mut inner = self.lock();
        let limits = inner.limits_for(account);
        let Inner {
            accounts, penalty, ..
        } = &mut *inner;
        let idle = Account::default();
        penalty.settle(now);
        let acct = match accounts.get_mut(account) {
            Some(acct) => {
                acct.settle(now, now.saturating_add(self.max_cooldown_ms), self.days);
                &*acct
            }
            None => &idle,
        };
        let mut used = window::minute_used(acct, penalty, now);
        let mut reset_in = if used > 0 {
            (window::minute_release(acct, penalty, now, 0) - now).max(0) as u64
        } else {
            0
        };
        if let Some(limit) = limits.per_minute
            && penalty.minute_full_until > now
        {
            used = used.max(limit);
            reset_in = reset_in.max((penalty.minute_full_until - now) as u64);
        }
        let resets_at_ms = self.days.next_reset(now);
        Snapshot {
            minute: MinuteUsage {
                used,
                limit: limits.per_minute,
                reset_in_ms: reset_in,
            },
            day: DayUsage {
                used: window::day_used(acct, penalty, self.days, now),
                limit: limits.per_day,
                resets_at: rfc3339(resets_at_ms, self.offset_minutes),
                resets_at_ms,
                exhausted: limits.per_day.is_some() && acct.exhausted_until > now,
            },
            cool_down: (acct.cooldown_until > now).then(|| CoolDown {
                until_ms: acct.cooldown_until,
                remaining_ms: (acct.cooldown_until - now) as u64,
            }),
            waiting: acct.queue.len(),
            warnings: self.warnings(),
        }
    }

    /// Why the counts may not survive a restart, if they may not.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = &self.unwritable {
            out.push(why.clone());
        } else if let Some(why) = self.ledger.as_ref().and_then(Ledger::write_error) {
            out.push(format!(
                "quota ledger {}: {why}; permits are refused until it can be written again",
                self.ledger_path()
                    .map_or_else(String::new, |p| p.display().to_string())
            ));
        }
        out
    }

    /// Forgets the usage, cool-down and "day used up" of `account` (`qwen quota reset`),
    /// durably: the reset is in the ledger before this returns. Usage charged to every
    /// account from a damaged ledger is a guess and goes with it.
    pub async fn reset(&self, account: &str) -> Result<(), QuotaError> {
        let seq = {
            let now = self.clock.now_ms();
            let mut inner = self.lock();
            inner.reset(account);
            self.ledger.as_ref().map(|l| {
                l.append(&Record::Reset {
                    a: account.to_owned(),
                    t: now,
                })
            })
        };
        // Waiters blocked by what was just cleared go now.
        self.notify.notify_waiters();
        if let (Some(seq), Some(ledger)) = (seq, &self.ledger) {
            ledger.wait(seq).await?;
        }
        Ok(())
    }

    fn max_cooldown_until(&self, now: i64) -> i64 {
        now.saturating_add(self.max_cooldown_ms)
    }

    /// Rewrites the ledger to its live content now rather than at the size threshold.
    pub fn compact(&self) {
        if let Some(ledger) = &self.ledger {
            let mut inner = self.lock();
            ledger.compact(inner.compacted(self.clock.now_ms(), self.days));
        }
    }
}

/// A ledger record within the bounds anything stored may have (a clock that ran ahead, a
/// hand-edited or hostile file), and whether it had to be changed.
fn bound(record: Record, now: i64, days: Days, max_cooldown_ms: i64) -> (Record, bool) {
    let at_most = |v: i64, max: i64| (v.min(max), v > max);
    match record {
        Record::Grant { a, t } => {
            let (t, c) = at_most(t, now);
            (Record::Grant { a, t }, c)
        }
        Record::DayCount { a, t, n } => {
            let (t, c) = at_most(t, now);
            (Record::DayCount { a, t, n }, c)
        }
        Record::Unattributed { t, n } => {
            let (t, c) = at_most(t, now);
            (Record::Unattributed { t, n }, c)
        }
        Record::CoolDown { a, until } => {
            let (until, c) = at_most(until, now.saturating_add(max_cooldown_ms));
            (Record::CoolDown { a, until }, c)
        }
        Record::Exhausted { a, until } => {
            let (until, c) = at_most(until, days.next_reset(now));
            (Record::Exhausted { a, until }, c)
        }
        Record::MinuteFull { until } => {
            let (until, c) = at_most(until, now.saturating_add(window::MINUTE_MS));
            (Record::MinuteFull { until }, c)
        }
        Record::Reset { a, t } => (Record::Reset { a, t }, false),
    }
}

fn refused((reason, retry_after_ms): (Reason, u64)) -> Decision {
    Decision::Refused {
        retry_after_ms: retry_after_ms.max(1),
        reason,
    }
}

fn rfc3339(ms: i64, offset_minutes: i32) -> String {
    let utc = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok();
    let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).ok();
    utc.zip(offset)
        .and_then(|(t, o)| t.checked_to_offset(o))
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

impl Inner {
    fn limits_for(&self, account: &str) -> Limits {
        self.limits
            .get(account)
            .copied()
            .unwrap_or(self.default_limits)
    }

    fn enqueue(&mut self, account: &str) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let acct = match self.accounts.get_mut(account) {
            Some(acct) => acct,
            None => self.accounts.entry(account.to_owned()).or_default(),
        };
        acct.queue.push_back(ticket);
        ticket
    }

    fn take_ready(&mut self, account: &str, ticket: u64) -> Option<Ready> {
        self.accounts.get_mut(account)?.ready.remove(&ticket)
    }

    /// A grant already handed to a caller who left stays counted: it was recorded durably
    /// and taking it back would open a window for under-counting.
    fn forget(&mut self, account: &str, ticket: u64) {
        if let Some(acct) = self.accounts.get_mut(account) {
            acct.queue.retain(|&t| t != ticket);
            acct.ready.remove(&ticket);
        }
    }

    /// Hands permits to queued tickets in arrival order while the limits allow. Returns how
    /// many were handed and, when the queue is still non-empty, what stops its head.
    fn serve(
        &mut self,
        account: &str,
        now: i64,
        days: Days,
        max_cooldown_ms: i64,
        ledger: Option<&Ledger>,
    ) -> (usize, (Reason, u64)) {
        let limits = self.limits_for(account);
        // Only reachable if a caller's ticket vanished; a 1 ms retry is harmless then.
        let mut blocked = (Reason::Minute, 1);
        let mut handed = 0;
        self.penalty.settle(now);
        let Some(acct) = self.accounts.get_mut(account) else {
            return (handed, blocked);
        };
        acct.settle(now, now.saturating_add(max_cooldown_ms), days);
        while let Some(&ticket) = acct.queue.front() {
            if let Some(refusal) = window::refusal(acct, &self.penalty, limits, days, now) {
                blocked = refusal;
                break;
            }
            acct.queue.pop_front();
            acct.add_minute(now, now);
            acct.add_day(now, 1, days, days.index(now));
            // Fully unlimited accounts have nothing a crash could under-count.
            let seq = ledger.filter(|_| !limits.is_unlimited()).map(|l| {
                l.append(&Record::Grant {
                    a: account.to_owned(),
                    t: now,
                })
            });
            let grant = Grant {
                at_ms: now,
                minute_used: window::minute_used(acct, &self.penalty, now),
                day_used: window::day_used(acct, &self.penalty, days, now),
            };
            acct.ready.insert(ticket, Ready { grant, seq });
            handed += 1;
        }
        if let Some(ledger) = ledger
            && handed > 0
            && ledger.needs_compaction()
        {
            ledger.compact(self.compacted(now, days));
        }
        (handed, blocked)
    }

    /// Loads one ledger record. Whatever it says is bounded first: no time after `now`, no
    /// cool-down past the cap, no "day used up" past the next reset, no minute held full for
    /// more than a minute (see `Account::settle`); `clamped` then asks for a rewrite.
    fn apply(&mut self, record: Record, now: i64, days: Days, max_cooldown_ms: i64) {
        let today = days.index(now);
        let (record, clamped) = bound(record, now, days, max_cooldown_ms);
        self.clamped |= clamped;
        match record {
            Record::Grant { a, t } => {
                let acct = self.accounts.entry(a).or_default();
                acct.add_minute(t, now);
                acct.add_day(t, 1, days, today);
            }
            Record::DayCount { a, t, n } => {
                self.accounts
                    .entry(a)
                    .or_default()
                    .add_day(t, n, days, today);
            }
            Record::CoolDown { a, until } => {
                let acct = self.accounts.entry(a).or_default();
                acct.cooldown_until = acct.cooldown_until.max(until);
            }
            Record::Exhausted { a, until } => {
                let acct = self.accounts.entry(a).or_default();
                acct.exhausted_until = acct.exhausted_until.max(until);
            }
            Record::Unattributed { t, n } => {
                if Penalty::is_relevant(t, now, days) {
                    self.penalty.grants.push((t, n));
                }
            }
            Record::MinuteFull { until } => {
                self.penalty.minute_full_until = self.penalty.minute_full_until.max(until);
            }
            Record::Reset { a, .. } => self.reset(&a),
        }
    }

    fn reset(&mut self, account: &str) {
        if let Some(acct) = self.accounts.get_mut(account) {
            acct.reset();
        }
        self.penalty = Penalty::default();
    }

    /// The live state as ledger content: grants still in a minute window one by one (their
    /// times matter), the rest of today as one count per account, and unexpired blocks.
    /// Loading it reproduces the current windows. Also drops idle state from memory.
    fn compacted(&mut self, now: i64, days: Days) -> Vec<u8> {
        let today = days.index(now);
        let mut out = Vec::new();
        self.accounts.retain(|_, acct| {
            acct.trim(now);
            !acct.is_idle(now, today)
        });
        for (a, acct) in &self.accounts {
            let mut in_day = 0;
            for &t in &acct.minute {
                in_day += u64::from(days.index(t) >= today);
                Record::Grant { a: a.clone(), t }.encode(&mut out);
            }
            let day_used = if acct.day >= today { acct.day_used } else { 0 };
            let rest = day_used.saturating_sub(in_day);
            if rest > 0 {
                // Stamped with a time inside the counted day so it reloads into the same day.
                let t = acct.last_grant.max(now);
                Record::DayCount {
                    a: a.clone(),
                    t,
                    n: rest,
                }
                .encode(&mut out);
            }
            if acct.cooldown_until > now {
                Record::CoolDown {
                    a: a.clone(),
                    until: acct.cooldown_until,
                }
                .encode(&mut out);
            }
            if acct.exhausted_until > now {
                Record::Exhausted {
                    a: a.clone(),
                    until: acct.exhausted_until,
                }
                .encode(&mut out);
            }
        }
        self.penalty
            .grants
            .retain(|&(t, _)| Penalty::is_relevant(t, now, days));
        for &(t, n) in &self.penalty.grants {
            Record::Unattributed { t, n }.encode(&mut out);
        }
        if self.penalty.minute_full_until > now {
            Record::MinuteFull {
                until: self.penalty.minute_full_until,
            }
            .encode(&mut out);
        }
        out
    }
}

/// A queued `acquire_wait`; leaving the queue on drop keeps a cancelled caller from blocking
/// everyone behind it.
struct Waiter {
    quota: Arc<Quota>,
    account: String,
    ticket: u64,
    done: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            self.quota.lock().forget(&self.account, self.ticket);
            self.quota.notify.notify_waiters();
        }
    }
}

enum Step {
    Granted(Ready),
    Refused((Reason, u64)),
    Sleep(u64),
}

impl Waiter {
    async fn run(mut self, deadline_ms: i64) -> Result<Decision, QuotaError> {
        let quota = self.quota.clone();
        loop {
            // Registered before looking at the state, so a wake-up between the look and the
            // sleep is not lost.
            let notified = quota.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = quota.clock.now_ms();
            let (step, wake) = {
                let mut inner = quota.lock();
                let (handed, blocked) = inner.serve(
                    &self.account,
                    now,
                    quota.days,
                    quota.max_cooldown_ms,
                    quota.ledger.as_ref(),
                );
                let mine = inner.take_ready(&self.account, self.ticket);
                let wake = handed > usize::from(mine.is_some());
                let step = match mine {
                    Some(ready) => Step::Granted(ready),
                    None if now >= deadline_ms => {
                        inner.forget(&self.account, self.ticket);
                        Step::Refused(blocked)
                    }
                    None => Step::Sleep(blocked.1.min((deadline_ms - now) as u64).max(1)),
                };
                (step, wake)
            };
            if wake {
                quota.notify.notify_waiters();
            }
            match step {
                Step::Granted(ready) => {
                    self.done = true;
                    if let (Some(seq), Some(ledger)) = (ready.seq, &quota.ledger) {
                        ledger.wait(seq).await?;
                    }
                    return Ok(Decision::Granted(ready.grant));
                }
                Step::Refused(blocked) => {
                    self.done = true;
                    // Leaving may make a later waiter the head.
                    quota.notify.notify_waiters();
                    return Ok(refused(blocked));
                }
                Step::Sleep(ms) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
