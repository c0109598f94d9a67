//! The windows themselves: a sliding log of grant times per account for the minute, a counter
//! per calendar day, and the two "blocked until" marks. Pure arithmetic, no I/O, no locking.
use std::collections::{HashMap, VecDeque};

use super::{Grant, Limits, Reason};

pub(super) const MINUTE_MS: i64 = 60_000;
pub(super) const DAY_MS: i64 = 86_400_000;

/// Calendar days at a fixed UTC offset, numbered from the epoch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Days {
    offset_ms: i64,
}

impl Days {
    pub fn new(offset_minutes: i32) -> Self {
        Self {
            offset_ms: i64::from(offset_minutes) * 60_000,
        }
    }
    pub fn index(self, ms: i64) -> i64 {
        (ms + self.offset_ms).div_euclid(DAY_MS)
    }
    pub fn next_reset(self, ms: i64) -> i64 {
        (self.index(ms) + 1) * DAY_MS - self.offset_ms
    }
}

/// A grant handed to a queued waiter that has not collected it yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ready {
    pub grant: Grant,
    /// Ledger sequence number the grant must be durable through before it is returned.
    pub seq: Option<u64>,
}

#[derive(Debug)]
pub(super) struct Account {
    /// Grant times still inside the rolling minute, ascending.
    pub minute: VecDeque<i64>,
    /// Day index `day_used` belongs to.
    pub day: i64,
    pub day_used: u64,
    pub last_grant: i64,
    pub cooldown_until: i64,
    pub exhausted_until: i64,
    /// Tickets of callers waiting for a permit, in arrival order.
    pub queue: VecDeque<u64>,
    pub ready: HashMap<u64, Ready>,
}

impl Default for Account {
    fn default() -> Self {
        Self {
            minute: VecDeque::new(),
            day: i64::MIN,
            day_used: 0,
            last_grant: i64::MIN,
            cooldown_until: i64::MIN,
            exhausted_until: i64::MIN,
            queue: VecDeque::new(),
            ready: HashMap::new(),
        }
    }
}

impl Account {
    /// A grant at `t` is inside the window for every `now` in `[t, t + 60 s)`: at exactly
    /// 60 s it has left, so any 60,000 consecutive milliseconds hold at most `per_minute`.
    pub fn trim(&mut self, now: i64) {
        while self.minute.front().is_some_and(|&t| t <= now - MINUTE_MS) {
            self.minute.pop_front();
        }
    }

    /// `trim` plus the bounds no stored time may exceed: a grant is never later than now (a
    /// clock that ran ahead and was set back must not hold the rolling minute for hours, so
    /// a window never blocks longer than its length), a cool-down never reaches past
    /// `max_cooldown_until`, and "the day is used up" never outlasts the day it was said in.
    /// Clamping a future grant to now keeps it counted, in the current minute and day.
    pub fn settle(&mut self, now: i64, max_cooldown_until: i64, days: Days) {
        if self.minute.back().is_some_and(|&t| t > now) {
            let later = self.minute.iter().rev().take_while(|&&t| t > now).count();
            for t in self.minute.iter_mut().rev().take(later) {
                *t = now;
            }
        }
        self.trim(now);
        // A count kept for a later day is today's (charged, not dropped).
        self.day = self.day.min(days.index(now));
        self.last_grant = self.last_grant.min(now);
        self.cooldown_until = self.cooldown_until.min(max_cooldown_until);
        self.exhausted_until = self.exhausted_until.min(days.next_reset(now));
    }

    /// Forgets usage and blocks (`qwen quota reset`); callers waiting stay queued.
    pub fn reset(&mut self) {
        self.minute.clear();
        self.day = i64::MIN;
        self.day_used = 0;
        self.last_grant = i64::MIN;
        self.cooldown_until = i64::MIN;
        self.exhausted_until = i64::MIN;
    }

    pub fn add_minute(&mut self, t: i64, now: i64) {
        if t <= now - MINUTE_MS {
            return;
        }
        // Sorted insert rather than push: a clock stepped backwards must not break the order
        // `trim` relies on. Times in the future are clamped to now by `settle`.
        let at = self.minute.partition_point(|&x| x <= t);
        self.minute.insert(at, t);
    }

    pub fn add_day(&mut self, t: i64, n: u64, days: Days, today: i64) {
        let idx = days.index(t);
        if idx < today {
            return;
        }
        if idx > self.day {
            self.day = idx;
            self.day_used = 0;
        }
        // idx < self.day only after the clock stepped back; charging the later day keeps
        // the count conservative.
        self.day_used += n;
        self.last_grant = self.last_grant.max(t);
    }

    /// Nothing left worth keeping in memory or in a compacted ledger.
    pub fn is_idle(&self, now: i64, today: i64) -> bool {
        self.minute.is_empty()
            && self.day < today
            && self.cooldown_until <= now
            && self.exhausted_until <= now
            && self.queue.is_empty()
            && self.ready.is_empty()
    }
}

/// Usage that cannot be attributed to an account (rebuilt from a damaged ledger); it charges
/// every account, because the lost records could have belonged to any of them.
#[derive(Debug)]
pub(super) struct Penalty {
    pub grants: Vec<(i64, u64)>,
    pub minute_full_until: i64,
}

impl Default for Penalty {
    fn default() -> Self {
        Self {
            grants: Vec::new(),
            minute_full_until: i64::MIN,
        }
    }
}

impl Penalty {
    pub fn is_relevant(t: i64, now: i64, days: Days) -> bool {
        t > now - MINUTE_MS || days.index(t) >= days.index(now)
    }

    /// The same bounds as `Account::settle`: nothing dated after now, and "every minute
    /// window is full" for at most one minute.
    pub fn settle(&mut self, now: i64) {
        for (t, _) in &mut self.grants {
            *t = (*t).min(now);
        }
        self.minute_full_until = self.minute_full_until.min(now.saturating_add(MINUTE_MS));
    }
}

/// `acct` must be trimmed to `now`.
pub(super) fn minute_used(acct: &Account, pen: &Penalty, now: i64) -> u64 {
    let extra: u64 = pen
        .grants
        .iter()
        .filter(|(t, _)| *t > now - MINUTE_MS)
        .map(|(_, n)| n)
        .sum();
    acct.minute.len() as u64 + extra
}

/// When the `k`-th oldest (0-based) grant inside the window leaves it. `k < minute_used`.
pub(super) fn minute_release(acct: &Account, pen: &Penalty, now: i64, k: u64) -> i64 {
    let k = k as usize;
    if pen.grants.is_empty() {
        return acct.minute.get(k).map_or(now, |t| t + MINUTE_MS);
    }
    let mut all: Vec<i64> = acct.minute.iter().copied().collect();
    for &(t, n) in pen.grants.iter().filter(|(t, _)| *t > now - MINUTE_MS) {
        all.extend(std::iter::repeat_n(t, n as usize));
    }
    all.sort_unstable();
    all.get(k).map_or(now, |t| t + MINUTE_MS)
}

pub(super) fn day_used(acct: &Account, pen: &Penalty, days: Days, now: i64) -> u64 {
    let today = days.index(now);
    let own = if acct.day >= today { acct.day_used } else { 0 };
    let extra: u64 = pen
        .grants
        .iter()
        .filter(|(t, _)| days.index(*t) >= today)
        .map(|(_, n)| n)
        .sum();
    own + extra
}

/// Why `acct` may not have a permit at `now`, and for how long. When several limits refuse,
/// the longest wait is the true one, so that is the one reported. `acct` must be trimmed.
pub(super) fn refusal(
    acct: &Account,
    pen: &Penalty,
    limits: Limits,
    days: Days,
    now: i64,
) -> Option<(Reason, u64)> {
    let mut worst: Option<(Reason, i64)> = None;
    let mut block = |reason, until: i64| {
        if until > now && worst.is_none_or(|(_, u)| until > u) {
            worst = Some((reason, until));
        }
    };
    block(Reason::CoolDown, acct.cooldown_until);
    if let Some(per_day) = limits.per_day {
        // "Used up" means something only where we keep a day: a mark left for an account
        // without one (an older daemon's, for the openai method) blocks nothing.
        block(Reason::Day, acct.exhausted_until);
        if day_used(acct, pen, days, now) >= per_day {
            block(Reason::Day, days.next_reset(now));
        }
    }
    if let Some(per_minute) = limits.per_minute {
        block(Reason::Minute, pen.minute_full_until);
        let used = minute_used(acct, pen, now);
        if used >= per_minute {
            block(
                Reason::Minute,
                minute_release(acct, pen, now, used - per_minute),
            );
        }
    }
    worst.map(|(reason, until)| (reason, (until - now) as u64))
}
