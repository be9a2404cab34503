//! The SESSION_KEY ciphertexts that registered a session, remembered so that
//! none registers a session twice.
//!
//! A v1 SESSION_KEY is not bound to its address or time: a captured COOKIE +
//! SESSION_KEY replayed later, from any address with a fresh cookie of its
//! own, would register the captured key again, with both SEQ windows
//! restarted, so every token captured under it could be replayed into the new
//! session. The relay keeps 8-byte digests of accepted ciphertexts for 24
//! hours or the last 65,536 handshakes, whichever is shorter, and refuses a
//! ciphertext it holds. The same ciphertext from the address it registered,
//! while that session lives, is a client whose WELCOME was lost: the
//! handshake code answers it with the stored WELCOME instead.
//!
//! A v2 SESSION_KEY2 is bound (its BIND names the cookie it came with, and
//! a cookie lives at most two cookie epochs), so its digest only has to
//! outlive the cookie: [`SeenSessionKeys::bound`] keeps each one exactly
//! that long, and never evicts one sooner. When that set is full, new
//! bound handshakes are refused until digests age out (at the default RSA
//! budget, 200 a second for 120 s, it holds at most 24,000).
//!
//! Memory is bounded: a ring of (digest, time) in arrival order, oldest
//! evicted first, and a hash set of the same digests for O(1) lookups, at
//! most 65,536 of each (about 2 MiB when full).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use rsa::sha2::{Digest, Sha256};

use crate::relay::cookie;

/// Ciphertexts remembered at most.
pub(super) const CAPACITY: usize = 65_536;
/// How long a ciphertext is remembered at most.
pub(super) const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a bound (v2) ciphertext is remembered: as long as the cookie it
/// names can still be valid (the current and the previous cookie epoch).
pub(super) const BOUND_AGE: Duration = Duration::from_secs(2 * cookie::EPOCH.as_secs());

/// The first 8 bytes of SHA-256 of a SESSION_KEY ciphertext.
pub(super) fn digest(ciphertext: &[u8]) -> u64 {
    let d = Sha256::digest(ciphertext);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Digests of accepted ciphertexts, oldest first (see the module doc).
pub(super) struct SeenSessionKeys {
    start: Instant,
    /// (digest, seconds since `start` when it was accepted), oldest first.
    ring: VecDeque<(u64, u32)>,
    set: HashSet<u64>,
    max_age: Duration,
    /// When full: evict the oldest (v1), or refuse new digests (bound v2,
    /// whose digests must outlive their cookie).
    evict_oldest: bool,
}

impl SeenSessionKeys {
    /// The v1 set: [`MAX_AGE`] or the last [`CAPACITY`], oldest evicted.
    pub(super) fn new(now: Instant) -> Self {
        SeenSessionKeys {
            start: now,
            ring: VecDeque::new(),
            set: HashSet::new(),
            max_age: MAX_AGE,
            evict_oldest: true,
        }
    }

    /// The v2 set: each digest for [`BOUND_AGE`], none evicted sooner; at
    /// most [`CAPACITY`] (see [`SeenSessionKeys::has_room`]).
    pub(super) fn bound(now: Instant) -> Self {
        SeenSessionKeys {
            max_age: BOUND_AGE,
            evict_oldest: false,
            ..Self::new(now)
        }
    }

    /// False when a digest could only be remembered by forgetting one too
    /// early (a bound set that is full at `now`).
    pub(super) fn has_room(&mut self, now: Instant) -> bool {
        self.expire(now);
        self.evict_oldest || self.ring.len() < CAPACITY
    }

    fn secs(&self, now: Instant) -> u32 {
        let s = now.saturating_duration_since(self.start).as_secs();
        u32::try_from(s).unwrap_or(u32::MAX)
    }

    /// Forgets digests older than [`MAX_AGE`] at `now`.
    fn expire(&mut self, now: Instant) {
        let now = self.secs(now);
        let max_age = self.max_age.as_secs();
        while let Some(&(d, at)) = self.ring.front() {
            if u64::from(now.saturating_sub(at)) < max_age {
                break;
            }
            self.ring.pop_front();
            self.set.remove(&d);
        }
    }

    /// True if `digest` registered a session within the window.
    pub(super) fn contains(&mut self, now: Instant, digest: u64) -> bool {
        self.expire(now);
        self.set.contains(&digest)
    }

    /// Remembers `digest` (one that is not held: see [`Self::contains`]),
    /// evicting the oldest when full; a full bound set remembers nothing
    /// more (its caller checked [`Self::has_room`] first).
    pub(super) fn insert(&mut self, now: Instant, digest: u64) {
        if !self.has_room(now) || !self.set.insert(digest) {
            return;
        }
        if self.ring.len() == CAPACITY {
            if let Some((old, _)) = self.ring.pop_front() {
                self.set.remove(&old);
            }
        }
        let at = self.secs(now);
        self.ring.push_back((digest, at));
    }

    /// Digests held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn remembered_for_24_hours() {
        let t = Instant::now();
        let mut s = SeenSessionKeys::new(t);
        s.insert(t, 1);
        s.insert(t + HOUR, 2);
        assert!(s.contains(t + 23 * HOUR, 1));
        assert!(!s.contains(t + 24 * HOUR, 1), "forgotten after 24 h");
        assert!(s.contains(t + 24 * HOUR, 2));
        assert!(!s.contains(t + 25 * HOUR, 2));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn the_oldest_is_evicted_past_65536() {
        let t = Instant::now();
        let mut s = SeenSessionKeys::new(t);
        for d in 0..CAPACITY as u64 {
            s.insert(t, d);
        }
        assert!(s.contains(t, 0));
        s.insert(t, u64::MAX);
        assert_eq!((s.len(), s.set.len()), (CAPACITY, CAPACITY));
        assert!(!s.contains(t, 0), "the oldest went first");
        assert!(s.contains(t, 1) && s.contains(t, u64::MAX));
        // Inserting one that is held changes nothing.
        s.insert(t, 1);
        assert!(s.contains(t, 1) && s.contains(t, 2));
        assert_eq!(s.len(), CAPACITY);
    }

    #[test]
    fn bound_digests_outlive_their_cookie_and_are_never_evicted_sooner() {
        let t = Instant::now();
        let mut s = SeenSessionKeys::bound(t);
        s.insert(t, 1);
        assert!(s.contains(t + BOUND_AGE - Duration::from_secs(1), 1));
        assert!(!s.contains(t + BOUND_AGE, 1), "the cookie it named is dead");
        for d in 0..CAPACITY as u64 {
            s.insert(t + BOUND_AGE, d);
        }
        assert!(!s.has_room(t + BOUND_AGE));
        s.insert(t + BOUND_AGE, u64::MAX);
        assert!(s.contains(t + BOUND_AGE, 0), "the oldest stays");
        assert!(
            !s.contains(t + BOUND_AGE, u64::MAX),
            "refused, not evicting"
        );
        assert!(
            s.has_room(t + 2 * BOUND_AGE),
            "room again once they age out"
        );
    }

    #[test]
    fn digests_differ_per_ciphertext() {
        assert_ne!(digest(b"a"), digest(b"b"));
        assert_eq!(digest(b"a"), digest(b"a"));
    }
}
