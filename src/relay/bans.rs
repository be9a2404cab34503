//! Bans (admin `ban`, `unban`, `bans`): an address (`ip:port`), a whole
//! host (a bare IP) or a name kept out for a while or until unbanned.
//! Address and host bans are checked right after the cookie, before any
//! RSA work; a name is known only after the decryption, so a name ban is
//! checked with the credential. A ban also ends the sessions it covers
//! (told to the client itself with REASON 3, v2 §5). The list is bounded
//! and expired entries are dropped as they are met; bans live in memory
//! only (a restart forgets them).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::relay::clients::ClientId;
use crate::relay::config::credentials::valid_name;
use crate::relay::{Relay, Transmits};
use crate::wire::LeaveReason;

/// Bans held at most; one more is refused (the operator unbans first).
pub const MAX_BANS: usize = 1024;

/// What a ban keeps out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// One address and port (`ip:port`, or the address of `NAME@ip:port`).
    Addr(SocketAddr),
    /// Every port of one IP address.
    Host(IpAddr),
    /// Every session of a clients-file name.
    Name(String),
}

impl FromStr for BanTarget {
    type Err = String;

    /// `ip:port`, `NAME@ip:port` (its address), a bare IP, or a name.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(id) = s.parse::<ClientId>() {
            return Ok(BanTarget::Addr(id.addr()));
        }
        // A bracketed IPv6 without a port is a host too.
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(BanTarget::Host(ip));
        }
        if valid_name(s) {
            return Ok(BanTarget::Name(s.to_string()));
        }
        Err(format!(
            "'{s}' is not ip:port, an IP address or a client name"
        ))
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Addr(a) => a.fmt(f),
            BanTarget::Host(ip) => ip.fmt(f),
            BanTarget::Name(n) => f.write_str(n),
        }
    }
}

/// The bans in force, each with its end (None: until unbanned).
#[derive(Default)]
pub(super) struct Bans {
    list: Vec<(BanTarget, Option<Instant>)>,
}

impl Bans {
    fn live(until: Option<Instant>, now: Instant) -> bool {
        until.is_none_or(|u| now < u)
    }

    fn purge(&mut self, now: Instant) {
        self.list.retain(|(_, until)| Self::live(*until, now));
    }

    fn covers(&self, now: Instant, f: impl Fn(&BanTarget) -> bool) -> bool {
        !self.list.is_empty()
            && self
                .list
                .iter()
                .any(|(t, until)| Self::live(*until, now) && f(t))
    }

    /// True if `addr` (its address, or its host) is banned at `now`.
    pub(super) fn addr_banned(&self, now: Instant, addr: &SocketAddr) -> bool {
        self.covers(now, |t| match t {
            BanTarget::Addr(a) => a == addr,
            BanTarget::Host(ip) => *ip == addr.ip(),
            BanTarget::Name(_) => false,
        })
    }

    /// True if `name` is banned at `now`.
    pub(super) fn name_banned(&self, now: Instant, name: &str) -> bool {
        self.covers(now, |t| matches!(t, BanTarget::Name(n) if n == name))
    }
}

impl Relay {
    /// Bans `target` for `time` (None: until [`Relay::unban`]) and ends the
    /// sessions it covers (REASON 3 to them and to the others). A new ban
    /// of a target already banned replaces its time. Returns how many
    /// sessions ended.
    ///
    /// # Errors
    /// When [`MAX_BANS`] bans are in force already.
    pub fn ban(
        &mut self,
        target: BanTarget,
        time: Option<Duration>,
        now: Instant,
        out: &mut Transmits,
    ) -> Result<usize, String> {
        self.bans.purge(now);
        let until = time.map(|t| now + t);
        let list = &mut self.bans.list;
        match list.iter().position(|(t, _)| *t == target) {
            Some(i) => list[i].1 = until,
            None if list.len() >= MAX_BANS => {
                return Err(format!("{MAX_BANS} bans in force already; unban one first"));
            }
            None => list.push((target.clone(), until)),
        }
        let hit: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| match &target {
                BanTarget::Addr(a) => c.id.addr() == *a,
                BanTarget::Host(ip) => c.id.addr().ip() == *ip,
                BanTarget::Name(n) => c.id.name() == Some(n.as_str()),
            })
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &hit {
            self.end_session(slot, LeaveReason::Kicked, out);
        }
        self.settle(out);
        Ok(hit.len())
    }

    /// Lifts the ban of `target`; false if there was none.
    pub fn unban(&mut self, target: &BanTarget) -> bool {
        let before = self.bans.list.len();
        self.bans.list.retain(|(t, _)| t != target);
        self.bans.list.len() != before
    }

    /// The bans in force at `now`, each with the time left (None: until
    /// unbanned).
    pub fn bans(&mut self, now: Instant) -> Vec<(BanTarget, Option<Duration>)> {
        self.bans.purge(now);
        self.bans
            .list
            .iter()
            .map(|(t, until)| (t.clone(), until.map(|u| u.saturating_duration_since(now))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_the_admin_writes_them() {
        let a: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        assert_eq!("10.0.0.5:40000".parse(), Ok(BanTarget::Addr(a)));
        assert_eq!("alice@10.0.0.5:40000".parse(), Ok(BanTarget::Addr(a)));
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!("10.0.0.5".parse(), Ok(BanTarget::Host(ip)));
        let ip6: IpAddr = "2001:db8::5".parse().unwrap();
        assert_eq!("2001:db8::5".parse(), Ok(BanTarget::Host(ip6)));
        assert_eq!("[2001:db8::5]".parse(), Ok(BanTarget::Host(ip6)));
        assert_eq!("alice".parse(), Ok(BanTarget::Name("alice".into())));
        assert!("bad name".parse::<BanTarget>().is_err());
        for t in ["10.0.0.5:40000", "10.0.0.5", "alice"] {
            assert_eq!(t.parse::<BanTarget>().unwrap().to_string(), t);
        }
    }

    #[test]
    fn a_ban_ends_at_its_time() {
        let now = Instant::now();
        let mut b = Bans::default();
        let a: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let other: SocketAddr = "10.0.0.5:40001".parse().unwrap();
        b.list
            .push((BanTarget::Host(a.ip()), Some(now + Duration::from_secs(5))));
        b.list.push((BanTarget::Name("eve".into()), None));
        assert!(b.addr_banned(now, &a) && b.addr_banned(now, &other));
        assert!(!b.addr_banned(now + Duration::from_secs(5), &a));
        assert!(b.name_banned(now + Duration::from_secs(3600), "eve"));
        assert!(!b.name_banned(now, "alice"));
        b.purge(now + Duration::from_secs(6));
        assert_eq!(b.list.len(), 1);
    }
}
