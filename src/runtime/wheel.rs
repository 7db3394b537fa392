//! A hierarchical timer wheel: every timeout in the proxy (connect, header, idle, response,
//! probe rounds) lives here, so nothing ever scans all connections.
//!
//! Time is whole milliseconds passed in by the caller; the wheel never reads a clock. Level `L`
//! has 64 slots of `64^L` ms each. A timer goes to the lowest level whose window still holds
//! both "now" and its deadline (the highest bit in which they differ picks the level), so the
//! first occupied slot found scanning up from level 0 is always the earliest. When a slot of a
//! higher level comes due, its timers drop to lower levels. Insert and cancel are O(1).

use slab::Slab;

const SLOT_BITS: u32 = 6;
const SLOTS: u64 = 1 << SLOT_BITS;
const LEVELS: usize = 7;
const NIL: usize = usize::MAX;

/// Names one armed timer; stale once it fired or was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId {
    key: u32,
    generation: u32,
}

struct Entry<T> {
    when: u64,
    payload: T,
    generation: u32,
    level: usize,
    slot: usize,
    prev: usize,
    next: usize,
}

struct Level {
    occupied: u64,
    heads: [usize; SLOTS as usize],
}

pub struct Wheel<T> {
    entries: Slab<Entry<T>>,
    levels: [Level; LEVELS],
    elapsed: u64,
    generation: u32,
}

impl<T: Copy> Wheel<T> {
    pub fn new(now: u64) -> Wheel<T> {
        Wheel {
            entries: Slab::new(),
            levels: std::array::from_fn(|_| Level { occupied: 0, heads: [NIL; SLOTS as usize] }),
            elapsed: now,
            generation: 0,
        }
    }

    /// Arms a timer for `when`; one already due fires at the next `poll`.
    pub fn insert(&mut self, when: u64, payload: T) -> TimerId {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let key = self.entries.insert(Entry {
            when: when.max(self.elapsed),
            payload,
            generation,
            level: 0,
            slot: 0,
            prev: NIL,
            next: NIL,
        });
        self.link(key);
        // More than 4 billion armed timers would exhaust memory long before this truncates.
        TimerId { key: key as u32, generation }
    }

    /// Disarms a timer; a stale id (fired, cancelled) is ignored.
    pub fn cancel(&mut self, id: TimerId) {
        let key = id.key as usize;
        if self.entries.get(key).is_some_and(|e| e.generation == id.generation) {
            self.unlink(key);
            self.entries.remove(key);
        }
    }

    /// The earliest deadline among armed timers (rounded down to its slot's start).
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_expiration().map(|(_, _, deadline)| deadline)
    }

    /// Moves time to `now` and appends the payload of every timer due by then to `fired`.
    pub fn poll(&mut self, now: u64, fired: &mut Vec<T>) {
        while let Some((level, slot, deadline)) = self.next_expiration() {
            if deadline > now {
                break;
            }
            self.elapsed = self.elapsed.max(deadline);
            let mut key = std::mem::replace(&mut self.levels[level].heads[slot], NIL);
            self.levels[level].occupied &= !(1 << slot);
            while key != NIL {
                let entry = &mut self.entries[key];
                let next = entry.next;
                if entry.when <= now {
                    fired.push(entry.payload);
                    self.entries.remove(key);
                } else {
                    self.link(key);
                }
                key = next;
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn link(&mut self, key: usize) {
        let when = self.entries[key].when;
        let level = level_for(self.elapsed, when);
        let slot = ((when >> (level as u32 * SLOT_BITS)) % SLOTS) as usize;
        let head = self.levels[level].heads[slot];
        if head != NIL {
            self.entries[head].prev = key;
        }
        let entry = &mut self.entries[key];
        entry.level = level;
        entry.slot = slot;
        entry.prev = NIL;
        entry.next = head;
        self.levels[level].heads[slot] = key;
        self.levels[level].occupied |= 1 << slot;
    }

    fn unlink(&mut self, key: usize) {
        let Entry { level, slot, prev, next, .. } = self.entries[key];
        if prev == NIL {
            self.levels[level].heads[slot] = next;
        } else {
            self.entries[prev].next = next;
        }
        if next != NIL {
            self.entries[next].prev = prev;
        }
        if self.levels[level].heads[slot] == NIL {
            self.levels[level].occupied &= !(1 << slot);
        }
    }

    /// The first occupied slot at or after "now": (level, slot, the slot's start time).
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        self.levels.iter().enumerate().find_map(|(level, l)| {
            if l.occupied == 0 {
                return None;
            }
            let slot_range = 1u64 << (level as u32 * SLOT_BITS);
            let level_range = slot_range << SLOT_BITS;
            let now_slot = ((self.elapsed / slot_range) % SLOTS) as u32;
            let slot = (l.occupied.rotate_right(now_slot).trailing_zeros() + now_slot) % SLOTS as u32;
            let level_start = self.elapsed & !(level_range - 1);
            let mut deadline = level_start + u64::from(slot) * slot_range;
            if deadline + slot_range <= self.elapsed {
                deadline += level_range;
            }
            Some((level, slot as usize, deadline))
        })
    }
}

/// The level whose window holds both `elapsed` and `when`.
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS - 1);
    let significant = 63 - masked.leading_zeros();
    ((significant / SLOT_BITS) as usize).min(LEVELS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(w: &mut Wheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        w.poll(now, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn levels_follow_the_highest_differing_bit() {
        assert_eq!(level_for(0, 0), 0);
        assert_eq!(level_for(0, 63), 0);
        assert_eq!(level_for(0, 64), 1);
        assert_eq!(level_for(60, 70), 1);
        assert_eq!(level_for(0, 4095), 1);
        assert_eq!(level_for(0, 4096), 2);
        assert_eq!(level_for(1000, 1000 + 86_400_000), 4);
        assert_eq!(level_for(0, u64::MAX), LEVELS - 1);
    }

    #[test]
    fn fires_each_timer_exactly_at_its_deadline() {
        // Exhaustive over the boundaries of the first three levels, from several start times.
        for start in [0u64, 1, 63, 64, 4095, 4096, 262_143, 1_000_000] {
            for delay in (0..300).chain([4095, 4096, 4097, 262_143, 262_144, 262_145]) {
                let mut w = Wheel::new(start);
                w.insert(start + delay, 7u32);
                if delay > 0 {
                    assert_eq!(poll(&mut w, start + delay - 1), Vec::<u32>::new(), "start {start} delay {delay}");
                    assert!(w.next_deadline().is_some_and(|d| d <= start + delay));
                }
                assert_eq!(poll(&mut w, start + delay), vec![7], "start {start} delay {delay}");
                assert!(w.is_empty());
            }
        }
    }

    #[test]
    fn polling_in_small_steps_fires_everything_once_and_in_time() {
        let mut w = Wheel::new(0);
        let deadlines: Vec<u64> = (0..500).map(|i| (i * 7919) % 20_000).collect();
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(d, i as u32);
        }
        let mut seen = vec![false; deadlines.len()];
        let mut now = 0;
        while now <= 20_000 {
            for i in poll(&mut w, now) {
                assert!(!seen[i as usize], "fired twice");
                assert!(deadlines[i as usize] <= now && now - deadlines[i as usize] < 13);
                seen[i as usize] = true;
            }
            now += 13;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn cancel_is_exact_and_stale_ids_are_ignored() {
        let mut w = Wheel::new(0);
        let a = w.insert(100, 1u32);
        let b = w.insert(100, 2);
        let c = w.insert(100, 3);
        w.cancel(b);
        w.cancel(b);
        assert_eq!(poll(&mut w, 100), vec![1, 3]);
        w.cancel(a); // fired already: must not touch the entry that reuses its key
        let d = w.insert(200, 4);
        w.cancel(c);
        assert_eq!(poll(&mut w, 300), vec![4]);
        w.cancel(d);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_timer_in_the_past_fires_at_the_next_poll() {
        let mut w = Wheel::new(1000);
        w.insert(10, 9u32);
        assert_eq!(w.next_deadline(), Some(1000));
        assert_eq!(poll(&mut w, 1000), vec![9]);
    }

    #[test]
    fn a_long_idle_jump_fires_everything_due() {
        let mut w = Wheel::new(5);
        w.insert(70_000, 1u32);
        w.insert(3_600_000, 2);
        w.insert(90_000_000, 3);
        assert_eq!(poll(&mut w, 4_000_000), vec![1, 2]);
        assert!(w.next_deadline().is_some_and(|d| d <= 90_000_000));
        assert_eq!(poll(&mut w, 89_999_999), Vec::<u32>::new());
        assert_eq!(poll(&mut w, 90_000_000), vec![3]);
    }
}
