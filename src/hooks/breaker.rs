//! A circuit breaker per hook, as a plain value with `now` passed in.
//!
//! Closed: calls go to the backend; `failures_to_open` failures in a row open it. Open: calls
//! get the hook's fallback at once, without IO, for `open_ms`. Then half-open: one probe call
//! goes through; its success closes the breaker, its failure opens it again. A probe whose
//! outcome never comes back (its caller went away) is replaced after another `open_ms`.

/// What the breaker says of a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Make the call.
    Call,
    /// Make the call: it is the half-open breaker's probe.
    Probe,
    /// Do not call: the fallback applies.
    Reject,
}

/// The breaker's state, as the metrics report it (0 closed, 1 half-open, 2 open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until_ms: u64,
    },
    /// A probe went out at `since_ms`.
    Probing {
        since_ms: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    failures_to_open: u32,
    open_ms: u64,
    inner: Inner,
}

impl Breaker {
    pub fn new(failures_to_open: u32, open_ms: u64) -> Breaker {
        Breaker { failures_to_open: failures_to_open.max(1), open_ms, inner: Inner::Closed { failures: 0 } }
    }

    pub fn admit(&mut self, now_ms: u64) -> Admit {
        let probe_at = match self.inner {
            Inner::Closed { .. } => return Admit::Call,
            Inner::Open { until_ms } => until_ms,
            Inner::Probing { since_ms } => since_ms.saturating_add(self.open_ms),
        };
        if now_ms < probe_at {
            return Admit::Reject;
        }
        self.inner = Inner::Probing { since_ms: now_ms };
        Admit::Probe
    }

    /// A call (or the probe) succeeded.
    pub fn success(&mut self) {
        self.inner = Inner::Closed { failures: 0 };
    }

    /// A call (or the probe) failed at `now_ms`.
    pub fn failure(&mut self, now_ms: u64) {
        self.inner = match self.inner {
            Inner::Closed { failures } if failures + 1 < self.failures_to_open => {
                Inner::Closed { failures: failures + 1 }
            }
            _ => Inner::Open { until_ms: now_ms.saturating_add(self.open_ms) },
        };
    }

    pub fn state(&self, now_ms: u64) -> State {
        match self.inner {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until_ms } if now_ms < until_ms => State::Open,
            Inner::Open { .. } | Inner::Probing { .. } => State::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_open_it_and_a_success_resets_the_count() {
        let mut b = Breaker::new(3, 1000);
        for _ in 0..2 {
            assert_eq!(b.admit(0), Admit::Call);
            b.failure(0);
        }
        b.success();
        for _ in 0..2 {
            b.failure(10);
        }
        assert_eq!(b.state(10), State::Closed, "two failures after a success do not open it");
        b.failure(10);
        assert_eq!(b.state(10), State::Open);
        assert_eq!(b.admit(500), Admit::Reject);
        assert_eq!(b.admit(1009), Admit::Reject);
    }

    #[test]
    fn after_the_open_time_one_probe_decides() {
        let mut b = Breaker::new(1, 1000);
        b.failure(0);
        assert_eq!(b.state(1000), State::HalfOpen);
        assert_eq!(b.admit(1000), Admit::Probe);
        assert_eq!(b.admit(1001), Admit::Reject, "one probe at a time");
        b.failure(1200);
        assert_eq!(b.state(1300), State::Open, "a failed probe opens it again");
        assert_eq!(b.admit(2199), Admit::Reject);
        assert_eq!(b.admit(2200), Admit::Probe);
        b.success();
        assert_eq!(b.state(2200), State::Closed);
        assert_eq!(b.admit(2200), Admit::Call);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let mut b = Breaker::new(1, 1000);
        b.failure(0);
        assert_eq!(b.admit(1000), Admit::Probe);
        assert_eq!(b.admit(1999), Admit::Reject);
        assert_eq!(b.admit(2000), Admit::Probe);
    }
}
