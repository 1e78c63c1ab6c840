//! The timer loop of the call services (1:1 and group): sleep until the next deadline, or until
//! an input adds an earlier one, then apply what is due. Shared so that both services keep
//! their deadlines the same way (a set of `(at_ms, call)` under their lock) and only this loop
//! reads a clock.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
