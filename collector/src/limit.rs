//! Per-respondent rate limits: a small token bucket on tokio time.
//!
//! A [`TokenBucket`] refills at `per_minute / 60` tokens a second up to its
//! burst (one second's worth, at least one request's worth). [`TokenBucket::acquire`]
//! waits until the bucket holds what is asked (or, for a request larger than
//! the burst, until the bucket is full) and takes it, possibly leaving the
//! bucket in debt, which later callers wait out. [`TokenBucket::settle`] gives
//! back (or charges) the difference between an estimate and what a request
//! really cost. Time is `tokio::time`, so tests run on paused virtual time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The longest single wait; only a nonsensical rate or debt reaches it.
const MAX_WAIT_SECS: f64 = 3600.0;

/// The deepest debt, in seconds of refill: a usage a server reports that is
/// far beyond anything real must not stall a respondent for years.
const MAX_DEBT_SECS: f64 = 3600.0;

/// A token bucket refilled continuously at a fixed rate.
#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `per_minute` tokens a minute; `None` when the
    /// limit is 0 (unlimited) or not a positive finite number.
    pub fn per_minute(per_minute: f64) -> Option<Self> {
        if !(per_minute.is_finite() && per_minute > 0.0) {
            return None;
        }
        let rate = per_minute / 60.0;
        let burst = rate.max(1.0);
        Some(Self {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refill(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.last = now;
    }

    /// Takes `n` tokens, waiting as long as needed. A request larger than the
    /// burst waits for a full bucket and leaves it in debt.
    pub async fn acquire(&self, n: f64) {
        let n = if n.is_finite() { n.max(0.0) } else { 0.0 };
        let need = n.min(self.burst);
        loop {
            let wait = {
                let mut state = self.lock();
                self.refill(&mut state, Instant::now());
                if state.tokens >= need {
                    state.tokens -= n;
                    return;
                }
                (need - state.tokens) / self.rate
            };
            // Round up to a millisecond so a wait never ends just short.
            // `wait` is finite and positive; the cap only guards a rate so small
            // (or a debt so deep) that the wait would overflow `Duration`.
            let wait = Duration::try_from_secs_f64(wait.min(MAX_WAIT_SECS))
                .unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(wait + Duration::from_millis(1)).await;
        }
    }

    /// Corrects an earlier charge: `estimated` was taken, `actual` was used.
    pub fn settle(&self, estimated: f64, actual: f64) {
        if !(estimated.is_finite() && actual.is_finite()) {
            return;
        }
        let mut state = self.lock();
        self.refill(&mut state, Instant::now());
        state.tokens =
            (state.tokens + estimated - actual).clamp(-self.rate * MAX_DEBT_SECS, self.burst);
    }

    /// Tokens available now (negative when in debt).
    pub fn available(&self) -> f64 {
        let mut state = self.lock();
        self.refill(&mut state, Instant::now());
        state.tokens
    }
}

/// The token estimate charged before a call: prompt characters / 4 plus
/// `max_tokens` (16 when 0).
pub fn estimate_tokens(prompt: &str, max_tokens: u32) -> f64 {
    let out = if max_tokens > 0 { max_tokens } else { 16 };
    (prompt.chars().count() as f64 / 4.0).ceil() + f64::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_bad_limits_are_unlimited() {
        assert!(TokenBucket::per_minute(0.0).is_none());
        assert!(TokenBucket::per_minute(-1.0).is_none());
        assert!(TokenBucket::per_minute(f64::NAN).is_none());
        assert!(TokenBucket::per_minute(f64::INFINITY).is_none());
    }

    #[test]
    fn estimates_count_prompt_chars_and_output() {
        assert_eq!(estimate_tokens("abcdefgh", 0), 2.0 + 16.0);
        assert_eq!(estimate_tokens("abcdefghi", 100), 3.0 + 100.0);
        assert_eq!(estimate_tokens("", 8), 8.0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate() {
        // 30 a minute: one every 2 s, burst 1.
        let bucket = TokenBucket::per_minute(30.0).expect("limited");
        let start = Instant::now();
        for _ in 0..10 {
            bucket.acquire(1.0).await;
        }
        let took = start.elapsed();
        // The first is free; nine more at 2 s each.
        assert!(took >= Duration::from_secs(18), "{took:?}");
        assert!(took < Duration::from_secs(19), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let bucket = std::sync::Arc::new(TokenBucket::per_minute(120.0).expect("limited"));
        let start = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let b = bucket.clone();
                tokio::spawn(async move { b.acquire(1.0).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        // Burst of 2, then 18 more at 2 a second.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(9), "{took:?}");
        assert!(took < Duration::from_secs(11), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn large_requests_go_into_debt_and_settling_pays_back() {
        // 600 tokens a minute: 10 a second, burst 10.
        let bucket = TokenBucket::per_minute(600.0).expect("limited");
        let start = Instant::now();
        bucket.acquire(50.0).await; // full bucket: goes through, 40 in debt
        assert!(start.elapsed() < Duration::from_millis(10));
        assert!((bucket.available() + 40.0).abs() < 1e-6);
        // The estimate was 50, the reply said 10: 40 come back.
        bucket.settle(50.0, 10.0);
        assert!(bucket.available().abs() < 1e-6);
        bucket.acquire(10.0).await; // waits 1 s for 10 tokens
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(1), "{took:?}");
        assert!(took < Duration::from_millis(1100), "{took:?}");
        // Charging more than estimated pushes the next caller back.
        bucket.settle(10.0, 30.0);
        let before = Instant::now();
        bucket.acquire(10.0).await;
        assert!(
            before.elapsed() >= Duration::from_secs(3),
            "{:?}",
            before.elapsed()
        );
    }
}
