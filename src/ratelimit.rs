//! Token-bucket rate limiting, per connection and per source address.
//!
//! Credit is kept in nano-tokens (1 token = 10^9 units). Refilling for `ns` nanoseconds at `rate` tokens per
//! second adds exactly `ns * rate` units, so integer arithmetic loses nothing however often a bucket is touched
//! (a coarser unit would round every small refill down to zero and starve frequently polled buckets).
//! The largest capacity, `u32::MAX` tokens, is about 4.3e18 units and fits in a `u64`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::time::Instant;

/// Credit units per token.
const UNIT: u64 = 1_000_000_000;

/// Shared refill-and-take logic so the single bucket and the keyed table behave identically.
#[derive(Clone, Copy, Debug)]
struct Params {
    rate_per_sec: u64,
    /// Full bucket, in credit units.
    capacity: u64,
}

impl Params {
    fn new(rate_per_sec: u32, burst: u32) -> Self {
        Params {
            rate_per_sec: u64::from(rate_per_sec),
            capacity: u64::from(burst).saturating_mul(UNIT),
        }
    }

    /// Refills `credit` for the time since `last`, then takes one token if available.
    fn refill_and_take(&self, credit: &mut u64, last: &mut Instant, now: Instant) -> bool {
        self.refill_and_take_leaving(credit, last, now, 0)
    }

    /// Like [`Params::refill_and_take`], but takes the token only if `reserve` whole tokens remain after it.
    fn refill_and_take_leaving(
        &self,
        credit: &mut u64,
        last: &mut Instant,
        now: Instant,
        reserve: u32,
    ) -> bool {
        // A clock that steps backwards yields zero elapsed time and leaves `last` where it was, so it can
        // neither mint credit nor postpone the next refill.
        if now > *last {
            let elapsed = now.saturating_duration_since(*last).as_nanos();
            let gained = elapsed.saturating_mul(u128::from(self.rate_per_sec));
            let gained = u64::try_from(gained).unwrap_or(u64::MAX);
            *credit = credit.saturating_add(gained).min(self.capacity);
            *last = now;
        }
        let need = u64::from(reserve).saturating_add(1).saturating_mul(UNIT);
        if *credit >= need {
            *credit -= UNIT;
            true
        } else {
            false
        }
    }
}

/// Classic token bucket with integer arithmetic (credit in nano-tokens, so refills are exact); lazy refill on
/// access.
///
/// Holds at most `burst` tokens and gains `rate_per_sec` tokens per second; it does no work between calls.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    params: Params,
    credit: u64,
    last: Instant,
}

impl TokenBucket {
    /// Creates a full bucket, so a fresh sender may use its whole burst at once. A `rate_per_sec` of 0 means the
    /// bucket never refills (a fixed allowance); a `burst` of 0 refuses everything.
    #[must_use]
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let params = Params::new(rate_per_sec, burst);
        TokenBucket {
            params,
            credit: params.capacity,
            last: now,
        }
    }

    /// Takes one token if available and reports whether the caller may proceed.
    #[must_use]
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.params
            .refill_and_take(&mut self.credit, &mut self.last, now)
    }

    /// Takes one token only if `reserve` whole tokens remain afterwards, so that part of the budget stays for
    /// callers who pass a smaller reserve (a `reserve` of 0 is [`TokenBucket::try_take`]).
    #[must_use]
    pub fn try_take_leaving(&mut self, now: Instant, reserve: u32) -> bool {
        self.params
            .refill_and_take_leaving(&mut self.credit, &mut self.last, now, reserve)
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    credit: u64,
    /// `None` until the slot's first use, which is what makes an untouched slot start full.
    last: Option<Instant>,
}

/// A fixed-size table of buckets indexed by a keyed hash of the source (e.g. `IpAddr` or `SocketAddr`), so memory is
/// bounded whatever the number of sources: colliding sources share a bucket (acceptable: it only makes the limit
/// stricter). Hash key from `std::collections::hash_map::RandomState` so an outsider cannot aim collisions.
///
/// A slot that was never used starts full; a slot that has been idle for `burst / rate` seconds has refilled to
/// full, so stale slots need no separate expiry pass.
#[derive(Debug)]
pub struct KeyedLimiter {
    params: Params,
    hasher: RandomState,
    slots: Box<[Slot]>,
}

impl KeyedLimiter {
    /// Allocates `slots` buckets (at least 1) once; nothing is allocated afterwards, whatever traffic arrives.
    #[must_use]
    pub fn new(slots: usize, rate_per_sec: u32, burst: u32) -> Self {
        let empty = Slot {
            credit: 0,
            last: None,
        };
        KeyedLimiter {
            params: Params::new(rate_per_sec, burst),
            hasher: RandomState::new(),
            slots: vec![empty; slots.max(1)].into_boxed_slice(),
        }
    }

    /// The slot `key` hashes to.
    fn slot<K: Hash>(&self, key: &K) -> usize {
        let n = self.slots.len() as u64;
        // The remainder is below the slot count, so it always fits back into usize.
        usize::try_from(self.hasher.hash_one(key) % n).unwrap_or(0)
    }

    /// True when `a` and `b` share a bucket (tests pick sources that do not).
    #[cfg(test)]
    pub fn collide<K: Hash>(&self, a: &K, b: &K) -> bool {
        self.slot(a) == self.slot(b)
    }

    /// Takes one token from the bucket `key` hashes to and reports whether that source may proceed.
    #[must_use]
    pub fn try_take<K: Hash>(&mut self, now: Instant, key: &K) -> bool {
        let idx = self.slot(key);
        let params = self.params;
        let Some(slot) = self.slots.get_mut(idx) else {
            return false;
        };
        let mut last = match slot.last {
            Some(t) => t,
            None => {
                slot.credit = params.capacity;
                now
            }
        };
        let ok = params.refill_and_take(&mut slot.credit, &mut last, now);
        slot.last = Some(last);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    fn ms(base: Instant, m: u64) -> Instant {
        base + Duration::from_millis(m)
    }

    fn take_n(b: &mut TokenBucket, now: Instant, n: u32) -> u32 {
        (0..n).filter(|_| b.try_take(now)).count() as u32
    }

    #[test]
    fn burst_then_refusal() {
        let base = Instant::now();
        let mut b = TokenBucket::new(10, 5, base);
        assert_eq!(take_n(&mut b, base, 5), 5);
        assert!(!b.try_take(base));
        assert!(!b.try_take(ms(base, 99)));
    }

    #[test]
    fn refills_over_time_and_caps_at_burst() {
        let base = Instant::now();
        let mut b = TokenBucket::new(10, 5, base);
        assert_eq!(take_n(&mut b, base, 5), 5);
        assert!(b.try_take(ms(base, 100)));
        assert!(!b.try_take(ms(base, 100)));
        assert_eq!(take_n(&mut b, ms(base, 350), 10), 2);
        // A long idle period refills only up to the burst.
        assert_eq!(take_n(&mut b, ms(base, 3_600_000), 100), 5);
    }

    #[test]
    fn frequent_polling_does_not_lose_fractional_credit() {
        let base = Instant::now();
        let mut b = TokenBucket::new(1, 1, base);
        assert!(b.try_take(base));
        // Poll every 100 µs for one second: the tiny refills must add up to exactly one token.
        let mut granted = 0;
        for i in 1..=10_000u64 {
            if b.try_take(base + Duration::from_micros(i * 100)) {
                granted += 1;
                assert_eq!(i, 10_000);
            }
        }
        assert_eq!(granted, 1);
    }

    #[test]
    fn rate_zero_never_refills_and_burst_zero_refuses() {
        let base = Instant::now();
        let mut b = TokenBucket::new(0, 3, base);
        assert_eq!(take_n(&mut b, base, 10), 3);
        assert!(!b.try_take(ms(base, 3_600_000 * 24 * 365)));

        let mut b = TokenBucket::new(1000, 0, base);
        assert!(!b.try_take(base));
        assert!(!b.try_take(ms(base, 10_000)));
    }

    #[test]
    fn extreme_parameters_do_not_overflow() {
        let base = Instant::now();
        let mut b = TokenBucket::new(u32::MAX, u32::MAX, base);
        assert!(b.try_take(base));
        assert!(b.try_take(base + Duration::from_secs(100 * 365 * 24 * 3600)));
        // Clock going backwards neither panics nor mints credit.
        let mut b = TokenBucket::new(1, 1, ms(base, 1000));
        assert!(b.try_take(ms(base, 1000)));
        assert!(!b.try_take(base));
        assert!(!b.try_take(ms(base, 1999)));
        assert!(b.try_take(ms(base, 2000)));
    }

    #[test]
    fn a_reserve_keeps_tokens_for_others() {
        let base = Instant::now();
        let mut b = TokenBucket::new(10, 5, base);
        // Keeping 2 back: 3 of the 5 may be taken.
        assert_eq!((0..5).filter(|_| b.try_take_leaving(base, 2)).count(), 3);
        // The reserve is still there for a caller who keeps nothing back.
        assert!(b.try_take(base));
        assert!(b.try_take(base));
        assert!(!b.try_take(base));
        // Refill: 400 ms is 4 tokens; with 2 kept back, 2 are taken.
        assert_eq!(
            (0..5)
                .filter(|_| b.try_take_leaving(ms(base, 400), 2))
                .count(),
            2
        );
        // A reserve beyond the burst refuses everything but does not overflow.
        assert!(!b.try_take_leaving(ms(base, 10_000), u32::MAX));
    }

    #[test]
    fn keyed_burst_refusal_and_refill() {
        let base = Instant::now();
        let mut l = KeyedLimiter::new(64, 2, 3);
        let k = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert!((0..3).all(|_| l.try_take(base, &k)));
        assert!(!l.try_take(base, &k));
        assert!(l.try_take(ms(base, 500), &k));
        assert!(!l.try_take(ms(base, 500), &k));
        // Stale slot: after a long idle time it is full again.
        let later = ms(base, 600_000);
        assert!((0..3).all(|_| l.try_take(later, &k)));
        assert!(!l.try_take(later, &k));
    }

    #[test]
    fn keyed_rate_zero() {
        let base = Instant::now();
        let mut l = KeyedLimiter::new(16, 0, 2);
        let k = SocketAddr::from(([198, 51, 100, 7], 4242));
        assert!(l.try_take(base, &k));
        assert!(l.try_take(ms(base, 1), &k));
        assert!(!l.try_take(ms(base, 86_400_000), &k));
    }

    #[test]
    fn keyed_independent_sources() {
        let base = Instant::now();
        let mut l = KeyedLimiter::new(4096, 1, 2);
        let a = SocketAddr::from(([203, 0, 113, 1], 5000));
        // Pick a second key that does not collide with `a` under this run's random hash key; with 4096 slots the
        // first candidate almost always works.
        let b = (1..=u16::MAX)
            .map(|p| SocketAddr::from(([203, 0, 113, 2], p)))
            .find(|b| !l.collide(b, &a))
            .unwrap();
        assert!(l.try_take(base, &a));
        assert!(l.try_take(base, &a));
        assert!(!l.try_take(base, &a));
        // Exhausting `a` leaves `b` untouched.
        assert!(l.try_take(base, &b));
        assert!(l.try_take(base, &b));
        assert!(!l.try_take(base, &b));
    }

    #[test]
    fn keyed_memory_is_bounded() {
        let base = Instant::now();
        let mut l = KeyedLimiter::new(256, 1, 1);
        let bytes = std::mem::size_of::<Slot>() * l.slots.len();
        assert_eq!(l.slots.len(), 256);
        for i in 0..100_000u32 {
            let k = IpAddr::from(i.to_be_bytes());
            let _ = l.try_take(base, &k);
        }
        assert_eq!(l.slots.len(), 256);
        assert_eq!(std::mem::size_of::<Slot>() * l.slots.len(), bytes);
        assert!(bytes <= 256 * 32);
        // 100k sources over 256 one-token slots: colliding sources share, so most were refused.
        let granted = (0..1000u32)
            .filter(|i| l.try_take(base, &IpAddr::from(i.to_be_bytes())))
            .count();
        assert_eq!(granted, 0);
    }

    #[test]
    fn keyed_zero_slots_is_clamped() {
        let base = Instant::now();
        let mut l = KeyedLimiter::new(0, 1, 1);
        assert_eq!(l.slots.len(), 1);
        assert!(l.try_take(base, &1u8));
        assert!(!l.try_take(base, &2u8));
    }
}
