//! The typing debounce a client runs next to its text input, without IO (`now_ms` passed in):
//! while keys are pressed it says "send `typing start`" at most every `start_every_ms`, and
//! "send `typing stop`" once the input was quiet for `quiet_ms` (or when the message is sent).
//! The relay's typing TTL must be longer than `start_every_ms`, so a typist stays shown between
//! refreshes; the defaults (3 s refresh, 5 s quiet) fit the relay's default TTL of 6 s.

/// What to send to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingSignal {
    Start,
    Stop,
}

#[derive(Debug, Clone)]
pub struct TypingDebounce {
    start_every_ms: u64,
    quiet_ms: u64,
    /// When the last `start` was sent, while typing.
    started_at: Option<u64>,
    last_key: u64,
}

impl Default for TypingDebounce {
    fn default() -> Self {
        TypingDebounce::new(3_000, 5_000)
    }
}

impl TypingDebounce {
    pub fn new(start_every_ms: u64, quiet_ms: u64) -> Self {
        TypingDebounce { start_every_ms, quiet_ms, started_at: None, last_key: 0 }
    }

    /// A key was pressed.
    pub fn keystroke(&mut self, now_ms: u64) -> Option<TypingSignal> {
        self.last_key = now_ms;
        match self.started_at {
            Some(at) if now_ms.saturating_sub(at) < self.start_every_ms => None,
            _ => {
                self.started_at = Some(now_ms);
                Some(TypingSignal::Start)
            }
        }
    }

    /// The message was sent or the input cleared: stop now if typing.
    pub fn stop(&mut self) -> Option<TypingSignal> {
        self.started_at.take().map(|_| TypingSignal::Stop)
    }

    /// Time passed: stop after the quiet period. Call it at [`TypingDebounce::deadline`].
    pub fn poll(&mut self, now_ms: u64) -> Option<TypingSignal> {
        match self.deadline() {
            Some(deadline) if now_ms >= deadline => self.stop(),
            _ => None,
        }
    }

    /// When [`TypingDebounce::poll`] will next have something to say, while typing.
    pub fn deadline(&self) -> Option<u64> {
        self.started_at.map(|_| self.last_key.saturating_add(self.quiet_ms))
    }

    pub fn is_typing(&self) -> bool {
        self.started_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_most_every_interval_while_typing() {
        let mut d = TypingDebounce::new(3_000, 5_000);
        let sent: Vec<(u64, TypingSignal)> =
            (0..=70).map(|i| i * 100).filter_map(|t| d.keystroke(t).map(|s| (t, s))).collect();
        assert_eq!(sent, vec![(0, TypingSignal::Start), (3_000, TypingSignal::Start), (6_000, TypingSignal::Start)]);
        assert!(d.is_typing());
    }

    #[test]
    fn stop_after_the_quiet_period() {
        let mut d = TypingDebounce::new(3_000, 5_000);
        assert_eq!(d.keystroke(1_000), Some(TypingSignal::Start));
        assert_eq!(d.keystroke(2_000), None);
        assert_eq!(d.deadline(), Some(7_000));
        assert_eq!(d.poll(6_999), None);
        assert_eq!(d.poll(7_000), Some(TypingSignal::Stop));
        assert_eq!(d.poll(8_000), None, "stop is said once");
        assert_eq!(d.deadline(), None);
        assert_eq!(d.keystroke(8_000), Some(TypingSignal::Start), "typing again starts at once");
    }

    #[test]
    fn sending_the_message_stops_at_once() {
        let mut d = TypingDebounce::default();
        assert_eq!(d.stop(), None, "not typing: nothing to stop");
        d.keystroke(0);
        assert_eq!(d.stop(), Some(TypingSignal::Stop));
        assert_eq!(d.keystroke(100), Some(TypingSignal::Start));
    }
}
