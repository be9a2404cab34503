//! A tiny deterministic generator for tests and test-input builders: a
//! failure replays with the same bytes, and no random-number crate is
//! needed. Not for anything secret.

/// xorshift64 (Marsaglia).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0, xorshift's fixed point, is replaced by 1).
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // an infinite stream, not an Iterator
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Roughly uniform in `0..n` (n > 0), good enough for test input.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Roughly uniform index in `0..n` (n > 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.index(i + 1));
        }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }

    /// Random bytes, `min..=max` of them.
    pub fn some_bytes(&mut self, min: usize, max: usize) -> Vec<u8> {
        let n = min + self.index(max - min + 1);
        self.bytes(n)
    }
}
