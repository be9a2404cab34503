//! Stateless address validation (protocol §3 COOKIE).
//!
//! A cookie is HMAC-SHA256(secret, ip | port | epoch) truncated to 16 bytes.
//! Epochs last 60 s and the secret rotates with each epoch; the previous
//! secret is kept, so a cookie stays valid for 60–120 s. Checking one costs
//! a hash, which is why it comes before any RSA work.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rsa::sha2::Sha256;

use crate::wire::COOKIE_LEN;

/// How long one secret is current.
pub const EPOCH: Duration = Duration::from_secs(60);

/// Issues and checks cookies; owns the rotating secrets.
pub struct CookieJar {
    start: Instant,
    epoch: u64,
    current: [u8; 32],
    previous: [u8; 32],
}

impl CookieJar {
    /// Starts epoch 0 at `now` with a fresh random secret.
    pub fn new(now: Instant, rng: &mut impl rand::Rng) -> Self {
        let mut current = [0; 32];
        let mut previous = [0; 32];
        rng.fill_bytes(&mut current);
        rng.fill_bytes(&mut previous);
        CookieJar {
            start: now,
            epoch: 0,
            current,
            previous,
        }
    }

    /// Rotates the secrets if an epoch boundary passed. After a gap of two
    /// or more epochs both secrets are replaced.
    pub fn rotate(&mut self, now: Instant, rng: &mut impl rand::Rng) {
        let epoch = epoch_of(self.start, now);
        if epoch <= self.epoch {
            return;
        }
        if epoch == self.epoch + 1 {
            self.previous = self.current;
        } else {
            rng.fill_bytes(&mut self.previous);
        }
        rng.fill_bytes(&mut self.current);
        self.epoch = epoch;
    }

    /// When the secret next rotates.
    pub fn next_rotation(&self) -> Instant {
        let secs = EPOCH.as_secs().saturating_mul(self.epoch.saturating_add(1));
        self.start + Duration::from_secs(secs)
    }

    /// The cookie for `addr` in the current epoch.
    pub fn issue(&self, addr: SocketAddr) -> [u8; COOKIE_LEN] {
        mac(&self.current, addr, self.epoch)
    }

    /// True if `cookie` was issued to `addr` in this or the previous epoch.
    /// Compared in constant time.
    pub fn check(&self, addr: SocketAddr, cookie: &[u8]) -> bool {
        let now_ok = ct_eq(&mac(&self.current, addr, self.epoch), cookie);
        let prev_ok = self.epoch > 0 && ct_eq(&mac(&self.previous, addr, self.epoch - 1), cookie);
        now_ok | prev_ok
    }
}

fn epoch_of(start: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(start).as_secs() / EPOCH.as_secs()
}

fn mac(secret: &[u8; 32], addr: SocketAddr, epoch: u64) -> [u8; COOKIE_LEN] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    match addr.ip() {
        IpAddr::V4(ip) => m.update(&ip.to_ipv6_mapped().octets()),
        IpAddr::V6(ip) => m.update(&ip.octets()),
    }
    m.update(&addr.port().to_be_bytes());
    m.update(&epoch.to_be_bytes());
    let full = m.finalize().into_bytes();
    let mut out = [0; COOKIE_LEN];
    out.copy_from_slice(&full[..COOKIE_LEN]);
    out
}

/// Constant-time equality; lengths are not secret.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn valid_for_60_to_120_seconds() {
        let t0 = Instant::now();
        let mut rng = rand::rngs::StdRng::from_seed([7; 32]);
        let mut jar = CookieJar::new(t0, &mut rng);
        let c = jar.issue(addr(1000));
        assert!(jar.check(addr(1000), &c));
        assert!(!jar.check(addr(1001), &c), "bound to the port");
        jar.rotate(t0 + Duration::from_secs(119), &mut rng);
        assert!(jar.check(addr(1000), &c), "previous epoch still accepted");
        jar.rotate(t0 + Duration::from_secs(120), &mut rng);
        assert!(!jar.check(addr(1000), &c), "two epochs later it is stale");
    }

    #[test]
    fn long_gap_replaces_both_secrets() {
        let t0 = Instant::now();
        let mut rng = rand::rngs::StdRng::from_seed([7; 32]);
        let mut jar = CookieJar::new(t0, &mut rng);
        let c = jar.issue(addr(7));
        jar.rotate(t0 + Duration::from_secs(600), &mut rng);
        assert!(!jar.check(addr(7), &c));
        assert_eq!(jar.next_rotation(), t0 + Duration::from_secs(660));
    }

    #[test]
    fn wrong_length_refused() {
        let jar = CookieJar::new(Instant::now(), &mut rand::rngs::StdRng::from_seed([8; 32]));
        assert!(!jar.check(addr(1), &[]));
        assert!(!jar.check(addr(1), &[0; 17]));
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
