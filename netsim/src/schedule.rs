//! When the network goes away, and when the client's NAT mapping changes: schedules as pure
//! functions of time since the simulation started.
//!
//! They are kept apart from the per-packet model because they are shared: a blackout hits both
//! directions and every flow at once, the way a train entering a tunnel does.

use std::time::Duration;

/// A window of time, relative to the start of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Duration,
    pub duration: Duration,
}

impl Window {
    pub fn end(&self) -> Duration {
        self.start.saturating_add(self.duration)
    }

    pub fn contains(&self, t: Duration) -> bool {
        t >= self.start && t < self.end()
    }
}

/// A blackout of `duration` every `every`, the first one starting at `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periodic {
    pub first: Duration,
    pub every: Duration,
    pub duration: Duration,
}

/// When nothing gets through: periodic blackouts, blackouts at given times, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blackouts {
    pub periodic: Option<Periodic>,
    pub windows: Vec<Window>,
}

impl Blackouts {
    pub fn none() -> Self {
        Blackouts::default()
    }

    pub fn periodic(first: Duration, every: Duration, duration: Duration) -> Self {
        Blackouts { periodic: Some(Periodic { first, every, duration }), windows: Vec::new() }
    }

    pub fn at(windows: impl IntoIterator<Item = Window>) -> Self {
        Blackouts { periodic: None, windows: windows.into_iter().collect() }
    }

    /// The blackout window active at `t`, if any.
    pub fn active(&self, t: Duration) -> Option<Window> {
        if let Some(w) = self.windows.iter().find(|w| w.contains(t)) {
            return Some(*w);
        }
        let p = self.periodic?;
        if t < p.first || p.every.is_zero() {
            return None;
        }
        let since = (t - p.first).as_nanos();
        let cycles = since / p.every.as_nanos();
        let start = p.first + mul(p.every, cycles);
        let window = Window { start, duration: p.duration };
        window.contains(t).then_some(window)
    }

    /// The first instant at or after `t` at which no blackout is active.
    pub fn clear_at(&self, t: Duration) -> Duration {
        let mut t = t;
        // Windows may overlap or touch; a bounded number of hops covers any sane schedule.
        for _ in 0..64 {
            match self.active(t) {
                Some(w) => t = w.end(),
                None => return t,
            }
        }
        t
    }
}

fn mul(d: Duration, n: u128) -> Duration {
    let nanos = d.as_nanos().saturating_mul(n).min(u128::from(u64::MAX));
    Duration::from_nanos(nanos as u64)
}

/// When the client-side NAT mapping changes (the proxy moves a flow to a new source port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebinds {
    /// Rebind every flow periodically, the first time after one period.
    pub every: Option<Duration>,
    /// Rebind at these times.
    pub at: Vec<Duration>,
}

impl Rebinds {
    pub fn none() -> Self {
        Rebinds::default()
    }

    pub fn every(period: Duration) -> Self {
        Rebinds { every: Some(period), at: Vec::new() }
    }

    /// The first scheduled rebind strictly after `t`.
    pub fn next_after(&self, t: Duration) -> Option<Duration> {
        let fixed = self.at.iter().copied().filter(|&a| a > t).min();
        let periodic = self.every.filter(|p| !p.is_zero()).map(|p| mul(p, t.as_nanos() / p.as_nanos() + 1));
        match (fixed, periodic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn periodic_blackout_windows() {
        let b = Blackouts::periodic(ms(1000), ms(5000), ms(500));
        assert_eq!(b.active(ms(999)), None);
        assert_eq!(b.active(ms(1000)), Some(Window { start: ms(1000), duration: ms(500) }));
        assert!(b.active(ms(1499)).is_some());
        assert_eq!(b.active(ms(1500)), None);
        assert_eq!(b.active(ms(5999)), None);
        assert_eq!(b.active(ms(6200)), Some(Window { start: ms(6000), duration: ms(500) }));
        assert_eq!(b.clear_at(ms(6200)), ms(6500));
        assert_eq!(b.clear_at(ms(7000)), ms(7000));
        // Fraction of time dark over many periods is duration / every.
        let dark = (0..100_000u64).filter(|&i| b.active(ms(1000 + i)).is_some()).count();
        assert_eq!(dark, 20 * 500);
    }

    #[test]
    fn blackouts_at_given_times() {
        let b = Blackouts::at([Window { start: ms(10), duration: ms(5) }, Window { start: ms(15), duration: ms(5) }]);
        assert_eq!(b.active(ms(9)), None);
        assert!(b.active(ms(10)).is_some());
        assert!(b.active(ms(17)).is_some());
        assert_eq!(b.active(ms(20)), None);
        // Touching windows are crossed in one go.
        assert_eq!(b.clear_at(ms(12)), ms(20));
        assert_eq!(Blackouts::none().active(ms(0)), None);
    }

    #[test]
    fn rebind_schedule() {
        let r = Rebinds { every: Some(ms(100)), at: vec![ms(50), ms(250)] };
        assert_eq!(r.next_after(ms(0)), Some(ms(50)));
        assert_eq!(r.next_after(ms(50)), Some(ms(100)));
        assert_eq!(r.next_after(ms(100)), Some(ms(200)));
        assert_eq!(r.next_after(ms(200)), Some(ms(250)));
        assert_eq!(r.next_after(ms(250)), Some(ms(300)));
        let fixed = Rebinds { every: None, at: vec![ms(5)] };
        assert_eq!(fixed.next_after(ms(5)), None);
        assert_eq!(Rebinds::none().next_after(ms(0)), None);
    }
}
