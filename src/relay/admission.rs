//! Who may cost the relay an RSA decryption, and who goes first.
//!
//! One RSA-2048 decryption costs about 2 ms, so the relay spends at most
//! `rsa_rate` of them a second: the global budget. A SESSION_KEY reaches it
//! only with a valid cookie, so its source address is real (the sender can
//! receive there), but one host has as many addresses as it has ports. The
//! gates, each O(1) with fixed memory, in the order a SESSION_KEY meets them:
//!
//! 1. **Per address** (ip:port): `handshake_rate` a second, burst
//!    `handshake_burst`. One socket cannot repeat itself.
//! 2. **Per IP** (an IPv6 source counts by its /64, which one host usually
//!    holds whole): a fixed share of the global budget, `rsa_rate /
//!    IP_SHARES` a second with a burst of as much. However many ports a host
//!    floods from, it spends at most that share, so a newcomer from another
//!    host finds the rest of the budget untouched; it takes `IP_SHARES`
//!    hosts flooding at once to spend it all.
//! 3. The table checks (room in the table, room for another session from
//!    that IP) happen in the handshake, between these gates and the budget.
//! 4. **The global budget, with a reserve** (WireGuard's "under load"
//!    idea): once less than `rsa_rate / RESERVE_SHARES` decryptions are
//!    left in it, only addresses that already hold a session may take from
//!    it. Clients in service can still re-key while many hosts flood;
//!    newcomers wait until the flood eases (`drop_handshake_under_load`).
//!
//! Per-address and per-IP buckets live in fixed tables of keyed-hash slots
//! ([`KeyedLimiter`]): hosts that collide share a bucket, which only makes
//! the limit stricter. Nothing here grows with the number of sources.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use crate::ratelimit::{KeyedLimiter, TokenBucket};
use crate::relay::config::Config;
use crate::relay::drop::Drop;
use crate::relay::LIMITER_SLOTS;

/// One IP may use at most 1/`IP_SHARES` of the RSA budget.
const IP_SHARES: u32 = 4;
/// The last 1/`RESERVE_SHARES` of the RSA budget is kept for addresses that
/// hold a session.
const RESERVE_SHARES: u32 = 4;

/// The host a source address belongs to, for per-IP limits and caps: the
/// IPv4 address, or the /64 prefix of an IPv6 one (IPv4-mapped IPv6
/// addresses count as their IPv4 address).
pub(super) fn host_of(addr: &SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(ip) => IpAddr::V4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(ip) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The gates in front of RSA work (see the module doc).
pub(super) struct Admission {
    per_addr: KeyedLimiter,
    per_ip: KeyedLimiter,
    budget: TokenBucket,
    reserve: u32,
}

impl Admission {
    pub(super) fn new(config: &Config, now: Instant) -> Self {
        let share = (config.rsa_rate / IP_SHARES).max(1);
        Admission {
            per_addr: KeyedLimiter::new(
                LIMITER_SLOTS,
                config.handshake_rate,
                config.handshake_burst,
            ),
            per_ip: KeyedLimiter::new(LIMITER_SLOTS, share, share),
            budget: TokenBucket::new(config.rsa_rate, config.rsa_rate.max(1), now),
            reserve: config.rsa_rate / RESERVE_SHARES,
        }
    }

    /// Gates 1 and 2: the source's own limits.
    pub(super) fn limit(&mut self, now: Instant, src: &SocketAddr) -> Result<(), Drop> {
        if !self.per_addr.try_take(now, src) {
            return Err(Drop::RateLimitedAddr);
        }
        if !self.per_ip.try_take(now, &host_of(src)) {
            return Err(Drop::RateLimitedIp);
        }
        Ok(())
    }

    /// True when the hosts of `a` and `b` share a per-IP bucket.
    #[cfg(test)]
    pub(super) fn hosts_collide(&self, a: &SocketAddr, b: &SocketAddr) -> bool {
        self.per_ip.collide(&host_of(a), &host_of(b))
    }

    /// Gate 4: one decryption from the global budget; `registered` sources
    /// may also take the reserve.
    pub(super) fn spend(&mut self, now: Instant, registered: bool) -> Result<(), Drop> {
        if registered {
            return self
                .budget
                .try_take(now)
                .then_some(())
                .ok_or(Drop::RsaBudget);
        }
        if self.budget.try_take_leaving(now, self.reserve) {
            Ok(())
        } else if self.reserve > 0 {
            Err(Drop::UnderLoad)
        } else {
            Err(Drop::RsaBudget)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hosts() {
        let v4: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        assert_eq!(host_of(&v4), "10.1.2.3".parse::<IpAddr>().unwrap());
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:5".parse().unwrap();
        assert_eq!(host_of(&mapped), host_of(&v4));
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:2".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(host_of(&a), host_of(&b), "one /64");
        assert_ne!(host_of(&a), host_of(&c));
    }

    #[test]
    fn one_host_gets_a_share_and_newcomers_keep_out_of_the_reserve() {
        let t = Instant::now();
        let config = Config {
            rsa_rate: 40,
            handshake_rate: 1000,
            handshake_burst: 1000,
            ..Config::default()
        };
        let mut a = Admission::new(&config, t);
        // Hosts whose per-IP buckets differ under this run's hash key.
        let mut hosts: Vec<SocketAddr> = Vec::new();
        for n in 1..=u8::MAX {
            let h = SocketAddr::from(([10, 0, 0, n], 1));
            if hosts.iter().all(|o| !a.hosts_collide(o, &h)) {
                hosts.push(h);
            }
        }
        // 100 ports of one host: a quarter of the budget (10) gets through.
        let host = |i: u16| SocketAddr::new(hosts[0].ip(), 1000 + i);
        let passed = (0..100)
            .filter(|&i| a.limit(t, &host(i)).is_ok() && a.spend(t, false).is_ok())
            .count();
        assert_eq!(passed, 10);
        assert_eq!(a.limit(t, &host(0)), Err(Drop::RateLimitedIp));
        // Another host is not affected, until only the reserve (10) is left.
        let other = |n: usize| hosts[n];
        for n in 1..=3 {
            for _ in 0..10 {
                if a.limit(t, &other(n)).is_ok() && a.spend(t, false).is_err() {
                    break;
                }
            }
        }
        assert!(a.limit(t, &other(4)).is_ok());
        assert_eq!(a.spend(t, false), Err(Drop::UnderLoad));
        // The reserve is for addresses with a session.
        assert!((0..10).all(|_| a.spend(t, true).is_ok()));
        assert_eq!(a.spend(t, true), Err(Drop::RsaBudget));
        // Refilled, newcomers get in again.
        let later = t + Duration::from_secs(1);
        assert!(a.limit(later, &other(5)).is_ok());
        assert!(a.spend(later, false).is_ok());
    }
}
