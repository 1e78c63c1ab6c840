//! Rate limits as plain values with time passed in: the publish and presence rates of a
//! connection, the bitrate of a media track.

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32, now_ms: u64) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket { rate_per_ms: f64::from(rate_per_sec) / 1000.0, burst, tokens: burst, last_ms: now_ms }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        self.try_take_n(1, now_ms)
    }

    /// The bucket has refilled to its burst by `now_ms`.
    pub fn is_full(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens + elapsed * self.rate_per_ms >= self.burst
    }

    /// Takes `n` tokens if there are that many (e.g. bytes, for a bitrate).
    pub fn try_take_n(&mut self, n: u64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}
