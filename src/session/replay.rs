//! RFC 6479 anti-replay window for per-session SEQ numbers.
//!
//! The bitmap is a ring of `u64` blocks indexed by `seq / 64`. Moving the window forward only zeroes the blocks
//! that newly come into range (at most the whole ring), never shifts bits, so a large jump costs the same as a
//! small one. Because a 1024-bit window need not start on a block boundary it can touch 17 blocks, so the ring
//! holds one block more than `WINDOW_SIZE / 64`; the accepted range is therefore exactly `WINDOW_SIZE` wide
//! (WireGuard instead uses the ring size minus one block as its window).
//!
//! Precisely, with `h = highest()`: a `seq` is acceptable iff `seq != 0` and either `seq > h`, or
//! `h - seq < WINDOW_SIZE` (i.e. `seq` is one of the `WINDOW_SIZE` values `h - WINDOW_SIZE + 1 ..= h`) and `seq`
//! has not been recorded.

/// Number of SEQ values (ending at the highest one recorded) for which duplicates are detected; anything older is
/// refused outright since it can no longer be told apart from a replay.
pub const WINDOW_SIZE: u64 = 1024;

const BLOCK_BITS: u64 = u64::BITS as u64;
/// One extra block so a window that straddles block boundaries still fits entirely in the ring.
const RING_BLOCKS: usize = (WINDOW_SIZE / BLOCK_BITS) as usize + 1;

/// Sliding anti-replay window for SEQ numbers (u64, starting at 1; 0 is never valid). Window of `WINDOW_SIZE` = 1024 bits
/// as a ring of u64 blocks (like WireGuard's replay filter).
///
/// Fixed size (a few hundred bytes), no allocation, constant-time operations whatever the SEQ values.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    highest: u64,
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every SEQ from 1 upwards is acceptable.
    #[must_use]
    pub fn new() -> Self {
        ReplayWindow {
            highest: 0,
            ring: [0; RING_BLOCKS],
        }
    }

    /// True if `seq` would be accepted (not seen, not older than the window, not 0). Does not record it: callers check
    /// before the expensive decryption and record only after the token authenticated.
    #[must_use]
    pub fn check(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.highest {
            return true;
        }
        if self.highest - seq >= WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(seq);
        self.ring[block] & bit == 0
    }

    /// Records `seq` as seen (call only after `check() == true` and authentication succeeded). Returns false if it was not acceptable.
    pub fn update(&mut self, seq: u64) -> bool {
        if !self.check(seq) {
            return false;
        }
        if seq > self.highest {
            let old_block = self.highest / BLOCK_BITS;
            let new_block = seq / BLOCK_BITS;
            // Clearing more than the whole ring would only repeat work, so the loop is bounded by RING_BLOCKS.
            let advance = (new_block - old_block).min(RING_BLOCKS as u64);
            for i in 1..=advance {
                // old_block + i <= new_block, so this cannot overflow.
                if let Some(b) = self.ring.get_mut(Self::ring_index(old_block + i)) {
                    *b = 0;
                }
            }
            self.highest = seq;
        }
        let (block, bit) = Self::position(seq);
        self.ring[block] |= bit;
        true
    }

    #[cfg(test)]
    /// The highest SEQ recorded so far (0 before any).
    #[must_use]
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Ring index and bit mask for `seq`.
    fn position(seq: u64) -> (usize, u64) {
        (
            Self::ring_index(seq / BLOCK_BITS),
            1u64 << (seq % BLOCK_BITS),
        )
    }

    fn ring_index(block: u64) -> usize {
        // The remainder is below RING_BLOCKS, so it always fits in usize.
        usize::try_from(block % RING_BLOCKS as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_within_window_accepted_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), 0);
        for s in [1, 3, 2] {
            assert!(w.check(s));
            assert!(w.update(s));
        }
        assert_eq!(w.highest(), 3);
        for s in [1, 2, 3] {
            assert!(!w.check(s));
            assert!(!w.update(s));
        }
        assert!(w.check(4));
    }

    #[test]
    fn check_does_not_record() {
        let w = ReplayWindow::default();
        assert!(w.check(5));
        assert!(w.check(5));
        let mut w = w;
        assert!(w.update(5));
        assert!(!w.check(5));
        assert_eq!(w.highest(), 5);
    }

    #[test]
    fn zero_is_never_valid() {
        let mut w = ReplayWindow::new();
        assert!(!w.check(0));
        assert!(!w.update(0));
        assert_eq!(w.highest(), 0);
        assert!(w.update(1));
        assert!(!w.update(0));
    }

    #[test]
    fn window_edge_is_exact() {
        let mut w = ReplayWindow::new();
        let h = 5000;
        assert!(w.update(h));
        let oldest = h - WINDOW_SIZE + 1;
        assert!(!w.check(oldest - 1), "one past the window is refused");
        assert!(!w.update(oldest - 1));
        assert!(
            w.check(oldest),
            "the oldest in-window SEQ is accepted if unseen"
        );
        assert!(w.update(oldest));
        assert!(!w.check(oldest), "and refused once seen");
        // Moving forward by one pushes `oldest` out of the window.
        assert!(w.update(h + 1));
        assert!(!w.check(oldest));
        assert!(w.check(oldest + 1));
    }

    #[test]
    fn every_value_in_a_full_window_is_tracked() {
        // Every possible alignment of the window relative to block boundaries.
        for start in 1..=(2 * BLOCK_BITS) {
            let mut w = ReplayWindow::new();
            let h = start + WINDOW_SIZE - 1;
            for s in start..=h {
                assert!(w.update(s));
            }
            for s in start..=h {
                assert!(!w.check(s), "replay of {s} accepted (start {start})");
            }
            assert!(w.check(h + 1));
            assert!(!w.check(start.saturating_sub(1)));
        }
    }

    #[test]
    fn older_than_window_refused() {
        let mut w = ReplayWindow::new();
        assert!(w.update(10));
        assert!(w.update(10 + WINDOW_SIZE + 100));
        assert!(!w.check(10));
        assert!(!w.check(11), "unseen but too old");
        assert!(!w.check(1));
    }

    #[test]
    fn big_jump_forward_clears_stale_bits() {
        let mut w = ReplayWindow::new();
        for s in 1..=2000 {
            assert!(w.update(s));
        }
        // Jump far ahead; every SEQ in the new window below the jump target must be fresh.
        let target = 1_000_000_007;
        assert!(w.update(target));
        for s in (target - WINDOW_SIZE + 1)..target {
            assert!(w.check(s), "{s} should be unseen after the jump");
        }
        // Jumps by smaller multiples that alias the same ring positions.
        let mut w = ReplayWindow::new();
        for s in 1..=WINDOW_SIZE {
            assert!(w.update(s));
        }
        let jump = WINDOW_SIZE + RING_BLOCKS as u64 * BLOCK_BITS;
        assert!(w.update(jump));
        for s in (jump - WINDOW_SIZE + 1)..jump {
            assert!(w.check(s), "{s} should be unseen");
        }
    }

    #[test]
    fn u64_max_without_overflow() {
        let mut w = ReplayWindow::new();
        assert!(w.update(1));
        assert!(w.update(u64::MAX));
        assert_eq!(w.highest(), u64::MAX);
        assert!(!w.check(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - 1));
        assert!(w.check(u64::MAX - WINDOW_SIZE + 1));
        assert!(!w.check(u64::MAX - WINDOW_SIZE));
        assert!(!w.check(1));
        assert!(!w.check(0));
    }

    #[test]
    fn random_sequence_matches_brute_force() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0u64;
        for _ in 0..200_000 {
            let r = rnd();
            let seq = match r % 4 {
                0 => highest.saturating_add(r >> 54), // forward, sometimes by more than the window
                _ => highest.saturating_sub((r >> 8) % (WINDOW_SIZE + 64)),
            };
            let expect =
                seq != 0 && !seen.contains(&seq) && (seq > highest || highest - seq < WINDOW_SIZE);
            assert_eq!(w.check(seq), expect, "seq {seq} highest {highest}");
            assert_eq!(w.update(seq), expect);
            if expect {
                seen.insert(seq);
                highest = highest.max(seq);
            }
            assert_eq!(w.highest(), highest);
        }
    }
}
