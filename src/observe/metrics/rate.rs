//! Requests per second over the last minute, per target, for the status page's sparkline: a
//! ring of per-second buckets on the loop clock, added up across workers.

use super::RATE_SECONDS;

/// Requests per second over the last minute, one bucket per second of the loop clock.
#[derive(Clone)]
pub(super) struct Rate {
    pub(super) buckets: [u32; RATE_SECONDS],
    /// The second the newest bucket counts.
    pub(super) last: u64,
}

impl Rate {
    pub(super) fn tick(&mut self, now_ms: u64) {
        let sec = now_ms / 1000;
        self.advance(sec);
        let at = (sec % RATE_SECONDS as u64) as usize;
        self.buckets[at] = self.buckets[at].saturating_add(1);
    }

    /// Moves the newest bucket to `sec`, emptying the seconds skipped.
    fn advance(&mut self, sec: u64) {
        if sec > self.last {
            let stale = (sec - self.last).min(RATE_SECONDS as u64);
            for s in sec + 1 - stale..=sec {
                self.buckets[(s % RATE_SECONDS as u64) as usize] = 0;
            }
            self.last = sec;
        }
    }

    /// Adds another worker's counts, second by second.
    pub(super) fn absorb(&mut self, other: &Rate) {
        self.advance(other.last);
        let window = RATE_SECONDS as u64;
        for s in self.last.saturating_sub(window - 1)..=self.last {
            if s <= other.last && s + window > other.last {
                let at = (s % window) as usize;
                self.buckets[at] = self.buckets[at].saturating_add(other.buckets[at]);
            }
        }
    }

    /// The last `RATE_SECONDS` whole seconds before `now_ms`, oldest first (zeros before the
    /// loop started).
    pub(super) fn series(&self, now_ms: u64) -> impl Iterator<Item = u32> + '_ {
        let sec = now_ms / 1000 + RATE_SECONDS as u64;
        (sec - RATE_SECONDS as u64..sec).map(move |s| {
            let Some(s) = s.checked_sub(RATE_SECONDS as u64) else {
                return 0;
            };
            let held = s <= self.last && s + (RATE_SECONDS as u64) > self.last;
            if held {
                self.buckets[(s % RATE_SECONDS as u64) as usize]
            } else {
                0
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_whole_seconds_and_forgets_after_a_minute() {
        let mut r = Rate { buckets: [0; RATE_SECONDS], last: 0 };
        for ms in [1000, 1500, 1999, 3000] {
            r.tick(ms);
        }
        let s: Vec<u32> = r.series(4000).collect();
        assert_eq!(s.len(), RATE_SECONDS);
        assert_eq!(&s[s.len() - 3..], &[2 + 1, 0, 1][..]);
        let later: Vec<u32> = r.series(120_000).collect();
        assert!(later.iter().all(|&n| n == 0), "{later:?}");
        r.tick(200_000);
        assert_eq!(r.series(201_000).last(), Some(1));
    }
}
