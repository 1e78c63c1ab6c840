//! Latency histograms, error tallies and the shapes of the reports.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use edgerelay::client::ClientError;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Nanoseconds since the generator started: the clock publishers write into payloads and
/// subscribers read them against (one process, one monotonic clock).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record((d.as_micros() as u64).max(1));
}

/// A latency histogram that many tasks record into.
pub struct SharedLatency(Mutex<Histogram<u64>>);

impl Default for SharedLatency {
    fn default() -> Self {
        SharedLatency(Mutex::new(histogram()))
    }
}

impl SharedLatency {
    fn lock(&self) -> MutexGuard<'_, Histogram<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, d: Duration) {
        record(&mut self.lock(), d);
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.lock())
    }

    /// Adds what this one holds to `total` (shards merged at the end of a run).
    pub fn add_to(&self, total: &mut Histogram<u64>) {
        let _ = total.add(&*self.lock());
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p95_ms: ms(hist.value_at_quantile(0.95)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            self.p50_ms, self.p95_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// What an error is counted as: the relay's code slug when it gave one.
pub fn error_key(err: &ClientError) -> String {
    match err {
        ClientError::Connect(_) => "connect_failed".into(),
        ClientError::Rejected { code, .. } => code.slug().into(),
        ClientError::Closed { code: Some(code), .. } => format!("closed:{}", code.slug()),
        ClientError::Closed { code: None, .. } => "closed".into(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::Timeout(_) => "timeout".into(),
    }
}

/// Errors by code, shared by the tasks of a run.
#[derive(Debug, Default)]
pub struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    pub fn add(&self, key: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(key.into()).or_default() += 1;
    }

    pub fn client(&self, err: &ClientError) {
        self.add(error_key(err));
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

pub fn merge_errors(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    }
}

/// A two-column table, for the end of a run.
pub fn table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("\n{title}\n{}\n", "-".repeat(title.len()));
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}
