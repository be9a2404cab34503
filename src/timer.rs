//! Hashed timer wheel for client idle timeouts, fragment GC and periodic work.
//!
//! The event loop sleeps until [`TimerWheel::next_deadline`] and then calls [`TimerWheel::expire`], so both are
//! on the hot path and must stay cheap no matter how many clients are connected or how long the loop slept.
//!
//! Time is cut into ticks of `tick` measured from `start`. An item with deadline `d` belongs to tick
//! `ceil((d - start) / tick)` (rounded up so its tick never begins before its deadline) and lives in slot
//! `tick % slots`. Items more than one rotation away share a slot with nearer items and are simply kept when that
//! slot is visited early. Each slot remembers the minimum deadline it holds, which lets `expire` skip slots with
//! nothing due without touching their items and lets `next_deadline` be exact in one pass over the slots.
//!
//! Invariants (with `cur` the first tick not yet fully processed):
//! * every item sits in the slot of a tick `t >= cur`;
//! * if `t > cur`, the item's deadline is after the start of tick `t - 1` (it was not clamped). Only items whose
//!   deadline was already in the past when inserted are clamped, and they go to tick `cur`.

use std::time::{Duration, Instant};

/// The resolution floor: a zero tick would make every deadline its own tick and divide by zero.
const MIN_TICK: Duration = Duration::from_millis(1);

/// Slots whose vector grew this large during a burst give memory back once they drain.
const SHRINK_THRESHOLD: usize = 64;

const NANOS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug)]
struct Entry<T> {
    deadline: Instant,
    item: T,
}

#[derive(Debug)]
struct Slot<T> {
    entries: Vec<Entry<T>>,
    /// Exact minimum deadline of `entries` (kept up to date on insert and on every scan), `None` when empty.
    min: Option<Instant>,
}

/// A hashed timer wheel: O(1) insertion, expiry cost proportional to elapsed ticks (capped at one rotation) plus
/// the items in slots that actually have something due.
///
/// There is no cancellation: callers are expected to validate an expired item (e.g. check that the client's
/// last-activity time still warrants the timeout) and re-arm it if needed, which is cheaper than tracking handles.
#[derive(Debug)]
pub struct TimerWheel<T> {
    start: Instant,
    tick_nanos: u128,
    slots: Box<[Slot<T>]>,
    /// First tick not yet fully processed by `expire`.
    cur: u64,
    len: usize,
    /// Slots visited by `expire`, so tests can prove a large time jump does not loop per tick.
    #[cfg(test)]
    visits: u64,
}

impl<T> TimerWheel<T> {
    /// `tick` is the resolution (the server uses 50 ms), `slots` the wheel size (server uses 512).
    ///
    /// `slots` is raised to at least 1 and `tick` to at least 1 ms so that no configuration can make the wheel
    /// divide by zero or spin.
    #[must_use]
    pub fn new(start: Instant, tick: Duration, slots: usize) -> Self {
        let slots = (0..slots.max(1))
            .map(|_| Slot {
                entries: Vec::new(),
                min: None,
            })
            .collect();
        TimerWheel {
            start,
            tick_nanos: tick.max(MIN_TICK).as_nanos(),
            slots,
            cur: 0,
            len: 0,
            #[cfg(test)]
            visits: 0,
        }
    }

    /// Schedules `item` at `deadline` (a deadline in the past fires on the next `expire`).
    pub fn insert(&mut self, deadline: Instant, item: T) {
        // A past deadline is clamped to the current tick: that slot is always looked at by the next `expire`,
        // and the exact deadline comparison there makes it fire.
        let tick = self.ceil_tick(deadline).max(self.cur);
        let idx = self.slot_index(tick);
        if let Some(slot) = self.slots.get_mut(idx) {
            slot.min = Some(slot.min.map_or(deadline, |m| m.min(deadline)));
            slot.entries.push(Entry { deadline, item });
            self.len = self.len.saturating_add(1);
        }
    }

    /// Moves every item whose deadline is <= now into `out` (in no particular order). Cost is proportional to the
    /// ticks elapsed since the last call (capped at one full rotation) plus the items looked at in those slots —
    /// never a scan of everything when little time passed.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        if self.len == 0 {
            // Still advance so that later inserts of past deadlines land in a slot the next call visits.
            self.cur = self.cur.max(self.floor_tick(now).saturating_add(1));
            return;
        }
        // Ticks up to `now_tick` are complete; tick `now_tick + 1` is partially elapsed, so its slot is scanned
        // too and the exact deadline comparison picks out the items already due. That keeps `expire` exact,
        // which matters because `next_deadline` is exact: an event loop that woke at a deadline that `expire`
        // then refused to fire would spin until the tick boundary.
        let now_tick = self.floor_tick(now);
        let partial = now_tick.saturating_add(1);
        // If the clock went backwards, only clamped items (all in slot `cur`) can possibly be due.
        let last = partial.max(self.cur);
        let n = self.slots.len() as u64;
        let span = last.saturating_sub(self.cur).saturating_add(1).min(n);
        let mut fired = 0usize;
        for k in 0..span {
            let idx = self.slot_index(self.cur.saturating_add(k));
            #[cfg(test)]
            {
                self.visits = self.visits.saturating_add(1);
            }
            if let Some(slot) = self.slots.get_mut(idx) {
                fired = fired.saturating_add(Self::drain_due(slot, now, out));
            }
        }
        self.len = self.len.saturating_sub(fired);
        self.cur = last;
    }

    /// The earliest time `expire` could have work: never later than the true earliest deadline (waking early is
    /// harmless, waking late is a bug). None when empty. Should be exact (the slot's min deadline) when the
    /// earliest item is within one rotation. Must be cheap: at most one pass over the slots, no allocation.
    ///
    /// This implementation is always exact: it walks the slots in tick order from `cur` and stops as soon as the
    /// best minimum found is no later than the end of the tick being visited, because every item in a later
    /// slot belongs to a later tick and therefore has a later deadline. If it never stops early, it has seen the
    /// minimum of every slot.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len();
        let base = self.slot_index(self.cur);
        let mut best: Option<Instant> = None;
        for k in 0..n {
            // base < n and k < n, and a boxed slice of non-zero-sized slots cannot have n near usize::MAX.
            let idx = base.saturating_add(k) % n;
            if let Some(m) = self.slots.get(idx).and_then(|s| s.min) {
                best = Some(best.map_or(m, |b| b.min(m)));
            }
            if let Some(b) = best {
                // A saturated tick number only makes this bound smaller, i.e. the early stop more conservative.
                let tick_end = self.tick_start(self.cur.saturating_add(k as u64));
                if tick_end.is_some_and(|end| b <= end) {
                    return Some(b);
                }
            }
        }
        best
    }

    #[cfg(test)]
    /// Number of scheduled items.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    /// True when nothing is scheduled.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the due items of one slot to `out`, refreshes its minimum and returns how many fired.
    fn drain_due(slot: &mut Slot<T>, now: Instant, out: &mut Vec<T>) -> usize {
        // The cached minimum lets far-future items (later rounds) go untouched on most visits.
        if slot.min.is_none_or(|m| m > now) {
            return 0;
        }
        let mut fired = 0usize;
        let mut min: Option<Instant> = None;
        let mut i = 0;
        while i < slot.entries.len() {
            if slot.entries[i].deadline <= now {
                out.push(slot.entries.swap_remove(i).item);
                fired = fired.saturating_add(1);
            } else {
                let d = slot.entries[i].deadline;
                min = Some(min.map_or(d, |m| m.min(d)));
                i += 1;
            }
        }
        slot.min = min;
        let cap = slot.entries.capacity();
        if cap > SHRINK_THRESHOLD && slot.entries.len() < cap / 4 {
            slot.entries
                .shrink_to(slot.entries.len().saturating_mul(2).max(SHRINK_THRESHOLD));
        }
        fired
    }

    fn elapsed_nanos(&self, t: Instant) -> u128 {
        t.saturating_duration_since(self.start).as_nanos()
    }

    /// Tick whose start is at or after `t`, so an item is never placed in a tick that begins before its deadline.
    fn ceil_tick(&self, t: Instant) -> u64 {
        u64::try_from(self.elapsed_nanos(t).div_ceil(self.tick_nanos)).unwrap_or(u64::MAX)
    }

    /// Last tick whose start is at or before `t`, i.e. the last tick fully reached by `t`.
    fn floor_tick(&self, t: Instant) -> u64 {
        u64::try_from(self.elapsed_nanos(t) / self.tick_nanos).unwrap_or(u64::MAX)
    }

    /// The instant tick `t` begins, or `None` if it is not representable.
    fn tick_start(&self, t: u64) -> Option<Instant> {
        let nanos = u128::from(t).checked_mul(self.tick_nanos)?;
        let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
        let sub = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
        self.start.checked_add(Duration::new(secs, sub))
    }

    fn slot_index(&self, tick: u64) -> usize {
        // The remainder is below the slot count, so it always fits back into usize.
        usize::try_from(tick % self.slots.len() as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::testrng::XorShift;

    const TICK: Duration = Duration::from_millis(50);
    const SLOTS: usize = 512;

    fn ms(base: Instant, m: u64) -> Instant {
        base + Duration::from_millis(m)
    }

    fn drain(w: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        w.expire(now, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, TICK, SLOTS);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
        w.insert(ms(base, 120), 1);
        w.insert(ms(base, 100), 2);
        assert_eq!(w.len(), 2);
        assert_eq!(w.next_deadline(), Some(ms(base, 100)));
        assert!(drain(&mut w, ms(base, 99)).is_empty());
        assert_eq!(drain(&mut w, ms(base, 100)), vec![2]);
        assert_eq!(w.next_deadline(), Some(ms(base, 120)));
        // Mid-tick: 119 ms is inside the tick that ends at 150 ms, yet item 1 must still wait.
        assert!(drain(&mut w, ms(base, 119)).is_empty());
        assert_eq!(drain(&mut w, ms(base, 120)), vec![1]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn sub_tick_deadline_fires_exactly_when_woken_at_next_deadline() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, TICK, SLOTS);
        w.insert(base + Duration::from_micros(10_123), 7);
        let wake = w.next_deadline().unwrap();
        assert_eq!(wake, base + Duration::from_micros(10_123));
        assert!(drain(&mut w, wake - Duration::from_nanos(1)).is_empty());
        assert_eq!(drain(&mut w, wake), vec![7]);
    }

    #[test]
    fn deadlines_beyond_one_rotation() {
        let base = Instant::now();
        let rotation_ms = 50 * SLOTS as u64; // 25.6 s
        let mut w = TimerWheel::new(base, TICK, SLOTS);
        w.insert(ms(base, 60_000), 1);
        w.insert(ms(base, 3_600_000), 2);
        w.insert(ms(base, rotation_ms), 3); // same slot as tick 0
        assert_eq!(w.next_deadline(), Some(ms(base, rotation_ms)));
        let mut t = 0;
        let mut fired_3 = false;
        while t < 60_000 {
            let out = drain(&mut w, ms(base, t));
            if t >= rotation_ms && !fired_3 {
                assert_eq!(out, vec![3], "due at {t}");
                fired_3 = true;
            } else {
                assert!(out.is_empty(), "fired early at {t}");
            }
            assert!(w.next_deadline().unwrap() > ms(base, t));
            t += 37;
        }
        assert!(fired_3);
        assert_eq!(w.next_deadline(), Some(ms(base, 60_000)));
        assert_eq!(drain(&mut w, ms(base, 60_000)), vec![1]);
        assert_eq!(w.next_deadline(), Some(ms(base, 3_600_000)));
        assert!(drain(&mut w, ms(base, 3_599_999)).is_empty());
        assert_eq!(drain(&mut w, ms(base, 3_600_000)), vec![2]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_on_next_expire() {
        let base = Instant::now();
        let start = base + Duration::from_secs(10);
        let mut w = TimerWheel::new(start, TICK, SLOTS);
        // Before the wheel's start.
        w.insert(base, 1);
        assert_eq!(w.next_deadline(), Some(base));
        assert_eq!(drain(&mut w, start), vec![1]);
        // After some progress, a deadline many ticks in the past, queried at the same `now`.
        let now = start + Duration::from_secs(30);
        assert!(drain(&mut w, now).is_empty());
        w.insert(start + Duration::from_secs(1), 2);
        w.insert(now, 3);
        assert_eq!(w.next_deadline(), Some(start + Duration::from_secs(1)));
        assert_eq!(drain(&mut w, now), vec![2, 3]);
        // Same, with the next call slightly later and in a later tick.
        w.insert(start + Duration::from_secs(2), 4);
        assert_eq!(drain(&mut w, now + Duration::from_millis(75)), vec![4]);
        assert!(w.is_empty());
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, TICK, SLOTS);
        assert!(drain(&mut w, ms(base, 10_000)).is_empty());
        w.insert(ms(base, 5_000), 1); // clamped (past)
        w.insert(ms(base, 20_000), 2);
        assert!(drain(&mut w, ms(base, 4_000)).is_empty());
        assert_eq!(drain(&mut w, ms(base, 5_000)), vec![1]);
        assert!(drain(&mut w, ms(base, 1_000)).is_empty());
        assert_eq!(drain(&mut w, ms(base, 20_000)), vec![2]);
    }

    #[test]
    fn many_items_random_schedule_matches_brute_force() {
        let base = Instant::now();
        let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
        for &(slots, tick_ms) in &[(512usize, 50u64), (8, 50), (1, 1), (3, 7)] {
            let mut w = TimerWheel::new(base, Duration::from_millis(tick_ms), slots);
            // Brute-force model: id -> deadline for everything still pending.
            let mut pending: Vec<Option<Instant>> = Vec::new();
            let mut now = base;
            for _round in 0..400 {
                for _ in 0..rng.below(30) {
                    // Mix of near, far (multi-rotation) and past deadlines, some sub-tick.
                    let d = match rng.below(4) {
                        0 => now + Duration::from_micros(rng.below(200_000)),
                        1 => now + Duration::from_millis(rng.below(3_600_000)),
                        2 => base + Duration::from_micros(rng.below(1_000_000)),
                        _ => now + Duration::from_millis(rng.below(60_000)),
                    };
                    let id = pending.len() as u32;
                    pending.push(Some(d));
                    w.insert(d, id);
                }
                let true_min = pending.iter().flatten().min().copied();
                let nd = w.next_deadline();
                assert_eq!(
                    nd, true_min,
                    "next_deadline must equal the brute-force minimum"
                );
                assert_eq!(w.len(), pending.iter().flatten().count());
                // Advance: sometimes exactly to the next deadline, sometimes a random step, sometimes hours.
                now = match rng.below(5) {
                    0 => nd.unwrap_or(now).max(now),
                    1 => now + Duration::from_secs(rng.below(7_200)),
                    _ => now + Duration::from_micros(rng.below(2_000_000)),
                };
                let mut out = Vec::new();
                w.expire(now, &mut out);
                for id in &out {
                    let d = pending[*id as usize].take().expect("fired twice");
                    assert!(d <= now, "fired early");
                }
                assert!(
                    pending.iter().flatten().all(|d| *d > now),
                    "a due item was not fired"
                );
            }
        }
    }

    #[test]
    fn large_jump_visits_at_most_one_rotation() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, Duration::from_millis(1), SLOTS);
        for i in 0..1000u32 {
            w.insert(ms(base, u64::from(i) * 17), i);
        }
        w.insert(ms(base, 5 * 3_600_000 + 1), 5000);
        let before = w.visits;
        let out = drain(&mut w, ms(base, 5 * 3_600_000)); // five hours = 18 million ticks
        assert!(w.visits - before <= SLOTS as u64);
        assert_eq!(out.len(), 1000);
        assert_eq!(w.len(), 1);
        assert_eq!(w.next_deadline(), Some(ms(base, 5 * 3_600_000 + 1)));
        // Small steps afterwards visit only a slot or two each.
        let before = w.visits;
        assert_eq!(drain(&mut w, ms(base, 5 * 3_600_000 + 1)), vec![5000]);
        assert!(w.visits - before <= 2);
        assert!(w.is_empty());
    }

    #[test]
    fn small_steps_cost_one_or_two_slots() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, TICK, SLOTS);
        for i in 0..10_000u32 {
            w.insert(ms(base, 100_000 + u64::from(i)), i);
        }
        let mut out = Vec::new();
        for step in 0..100u64 {
            let before = w.visits;
            w.expire(ms(base, step * 10), &mut out);
            assert!(w.visits - before <= 2);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn degenerate_parameters_and_extreme_instants() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, Duration::ZERO, 0);
        w.insert(base, 1);
        w.insert(ms(base, 3), 2);
        assert_eq!(drain(&mut w, ms(base, 2)), vec![1]);
        assert_eq!(drain(&mut w, ms(base, 3)), vec![2]);

        // The farthest instant we can build: nothing may overflow or panic.
        let mut far = base;
        let mut step = Duration::from_secs(u64::MAX);
        while step > Duration::from_secs(1) {
            if let Some(t) = far.checked_add(step) {
                far = t;
            } else {
                step /= 2;
            }
        }
        let mut w = TimerWheel::new(base, Duration::MAX, SLOTS);
        w.insert(far, 1);
        w.insert(base, 2);
        assert_eq!(w.next_deadline(), Some(base));
        assert_eq!(drain(&mut w, base), vec![2]);
        assert_eq!(w.next_deadline(), Some(far));
        assert_eq!(drain(&mut w, far), vec![1]);

        let mut w = TimerWheel::new(base, Duration::from_millis(1), SLOTS);
        w.insert(far, 1);
        w.insert(ms(base, 5), 2);
        assert_eq!(w.next_deadline(), Some(ms(base, 5)));
        assert_eq!(drain(&mut w, ms(base, 5)), vec![2]);
        assert_eq!(w.next_deadline(), Some(far));
        assert!(drain(&mut w, ms(base, 3_600_000)).is_empty());
        assert_eq!(drain(&mut w, far), vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn slot_memory_is_returned_after_a_burst() {
        let base = Instant::now();
        let mut w = TimerWheel::new(base, TICK, 4);
        for i in 0..10_000u32 {
            w.insert(ms(base, 10), i);
        }
        assert_eq!(drain(&mut w, ms(base, 10)).len(), 10_000);
        assert!(w
            .slots
            .iter()
            .all(|s| s.entries.capacity() <= SHRINK_THRESHOLD));
    }
}
