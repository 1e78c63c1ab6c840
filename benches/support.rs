//! Small helpers the benches share (included with `#[path]`, as benches are separate crates).
#![allow(dead_code)]

use std::time::Duration;

/// The `q` quantile of `values` (sorted in place); the default when empty.
pub fn quantile<T: Copy + PartialOrd + Default>(values: &mut [T], q: f64) -> T {
    if values.is_empty() {
        return T::default();
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
