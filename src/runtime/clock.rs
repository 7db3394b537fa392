//! Time as the loop sees it: whole milliseconds since start, read once per pass.

use std::time::{Duration, Instant};

/// A `Duration` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Milliseconds since the loop started.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> u64 {
        millis(self.0.elapsed())
    }
}
