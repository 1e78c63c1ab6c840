//! The timers of the call services (1:1 and group): the loop that sleeps until the next
//! deadline, or until an input adds an earlier one, then applies what is due; and the steps both
//! services' `fire` share. Both keep their deadlines the same way (a set of `(at_ms, call)` under
//! their lock) and only this loop reads a clock.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::service::ENDED_LINGER_MS;
use super::types::CallId;

/// The call whose deadline is the first one due by `now_ms`, taken out of `deadlines`; or, when
/// none is due, the next deadline (if any) as the error.
pub(super) fn next_due(deadlines: &mut BTreeSet<(u64, CallId)>, now_ms: u64) -> Result<CallId, Option<u64>> {
    match deadlines.first() {
        Some(&(at, _)) if at > now_ms => Err(Some(at)),
        _ => deadlines.pop_first().map(|(_, id)| id).ok_or(None),
    }
}

/// Whether a call that ended at `ended_ms` has been kept long enough (so late actions got
/// `call_ended`) to be purged.
pub(super) fn lingered(ended_ms: u64, now_ms: u64) -> bool {
    ended_ms.saturating_add(ENDED_LINGER_MS) <= now_ms
}

/// Runs until `stop`: `fire(now_ms)` applies the deadlines due by then and returns the next
/// one; `wake` is notified when a deadline is added. `clock` is unix ms.
pub(super) async fn run(wake: &Notify, fire: impl Fn(u64) -> Option<u64>, clock: fn() -> u64, stop: CancellationToken) {
    let mut next = None;
    loop {
        let wait = next.map_or(Duration::from_secs(3600), |at: u64| Duration::from_millis(at.saturating_sub(clock())));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        next = fire(clock());
    }
}
