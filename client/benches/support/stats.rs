//! Summary figures (mean, median, p99), the printed table, and the `BENCH` lines that
//! `bench/run` collects into docs/performance.md.
use std::time::Duration;

/// The samples' count, mean, median and 99th percentile.
pub struct Summary {
    pub n: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Summary {
    /// Panics on an empty set: a bench that measured nothing has failed.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort();
        let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
        Summary {
            n: samples.len(),
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// Milliseconds, for the tables.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs from an environment variable (so `bench/run --quick` can shorten them), at least 1.
pub fn runs(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(default, |n: usize| n.max(1))
}

/// The table every bench prints: one row per measure, in milliseconds.
pub fn header() {
    println!(
        "| {:<60} | {:>6} | {:>9} | {:>9} | {:>9} | {:<12} |",
        "measure", "n", "mean ms", "p50 ms", "p99 ms", "target"
    );
    println!(
        "| {:-<60} | {:->6} | {:->9} | {:->9} | {:->9} | {:-<12} |",
        "", "", "", "", "", ""
    );
}

/// Prints a table row and its `BENCH` line (key `key`), and returns the summary.
pub fn row(key: &str, name: &str, samples: Vec<Duration>, target: &str) -> Summary {
    let s = Summary::of(samples);
    println!(
        "| {name:<60} | {:>6} | {:>9.3} | {:>9.3} | {:>9.3} | {target:<12} |",
        s.n,
        ms(s.mean),
        ms(s.p50),
        ms(s.p99),
    );
    record(
        key,
        &[
            ("n", s.n as f64),
            ("mean_us", us(s.mean)),
            ("p50_us", us(s.p50)),
            ("p99_us", us(s.p99)),
        ],
    );
    s
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One machine-readable line: `BENCH <key> field=value ...`. `bench/run` greps the benches'
/// output for these; everything else they print is for people.
pub fn record(key: &str, fields: &[(&str, f64)]) {
    let mut line = format!("BENCH {key}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v:.3}"));
    }
    println!("{line}");
}

/// The instruction total of a callgrind output file (its `totals:` or `summary:` line).
pub fn callgrind_total(out: &std::path::Path) -> Option<f64> {
    std::fs::read_to_string(out)
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
