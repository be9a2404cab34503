//! Interfaces by name or address, and multicast memberships that follow
//! them as they come and go.
//!
//! Routers create interfaces late (PPPoE, DHCP, VLANs made after boot) and
//! delete and re-create them (a VLAN rebuilt, a link redialled). So the
//! relay does not join once at start: [`Memberships::reconcile`] compares
//! what each served interface *should* have joined, given a fresh
//! [`snapshot`] of the system's interfaces, with what it *has* joined, and
//! joins or leaves the difference. The loop calls it every
//! [`RECHECK`]: one `getifaddrs(3)` per period costs microseconds, needs no
//! netlink socket and no parsing of kernel messages, and bounds the time to
//! rejoin after an interface comes back by the period. Netlink would react
//! faster, but the contract is "within 5 s", and a poll cannot miss an
//! event or get out of step after a dropped notification.
//!
//! Joining is done through the [`Joiner`] trait so that the decisions are
//! tested here without sockets; `net::server` implements it on its UDP
//! sockets.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// How often the interfaces are looked at again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// One interface as the system reports it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// Kernel name (`eth0`, `br-lan`, `lan0.20`).
    pub name: String,
    /// Kernel index (what IPv6 joins are keyed by).
    pub index: u32,
    /// IFF_UP and IFF_RUNNING... as far as the flags say it can carry traffic.
    pub up: bool,
    /// IFF_MULTICAST: IPv6 multicast is delivered only on such interfaces
    /// (IPv4 on loopback works without it, IPv6 does not).
    pub multicast: bool,
    /// IPv4 addresses.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses.
    pub v6: Vec<Ipv6Addr>,
}

/// Reads every interface with its addresses (`getifaddrs(3)`).
///
/// # Errors
/// The OS error when the call fails.
pub fn snapshot() -> io::Result<Vec<IfaceInfo>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut by_name: BTreeMap<String, IfaceInfo> = BTreeMap::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let cname = unsafe { CStr::from_ptr(ifa.ifa_name) };
        let name = cname.to_string_lossy().into_owned();
        let entry = by_name.entry(name.clone()).or_insert_with(|| IfaceInfo {
            // SAFETY: a valid C string.
            index: unsafe { libc::if_nametoindex(cname.as_ptr()) },
            name,
            ..IfaceInfo::default()
        });
        let flags = ifa.ifa_flags;
        entry.up = flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_RUNNING as u32 != 0;
        entry.multicast = flags & libc::IFF_MULTICAST as u32 != 0;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its type.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: family AF_INET means a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                entry
                    .v4
                    .push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                entry.v6.push(Ipv6Addr::from(sin6.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(by_name.into_values().collect())
}

/// An interface as the operator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfaceSpec {
    /// The kernel's choice (`0.0.0.0` / `::`): the default route's interface.
    Any,
    /// An interface by name.
    Name(String),
    /// The interface that holds this address.
    Addr(IpAddr),
}

impl IfaceSpec {
    /// Reads `--iface`: an address, or else a name.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(if ip.is_unspecified() {
                IfaceSpec::Any
            } else {
                IfaceSpec::Addr(ip)
            });
        }
        // IFNAMSIZ is 16 with the NUL; names are short printable words.
        let ok = !s.is_empty()
            && s.len() < 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@:".contains(&b));
        if ok {
            Ok(IfaceSpec::Name(s.to_string()))
        } else {
            Err(format!(
                "--iface {s:?} is neither an address nor an interface name"
            ))
        }
    }

    /// The interface this spec designates in `now`, if it is there.
    fn find<'a>(&self, now: &'a [IfaceInfo]) -> Option<&'a IfaceInfo> {
        match self {
            IfaceSpec::Any => None,
            IfaceSpec::Name(n) => now.iter().find(|i| &i.name == n),
            IfaceSpec::Addr(IpAddr::V4(a)) => now.iter().find(|i| i.v4.contains(a)),
            IfaceSpec::Addr(IpAddr::V6(a)) => now.iter().find(|i| i.v6.contains(a)),
        }
    }
}

impl std::str::FromStr for IfaceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        IfaceSpec::parse(s)
    }
}

impl fmt::Display for IfaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IfaceSpec::Any => f.write_str("any"),
            IfaceSpec::Name(n) => f.write_str(n),
            IfaceSpec::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Where a group of one family should be joined on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JoinTarget {
    /// IPv4: `IP_ADD_MEMBERSHIP` on this interface index (0: the kernel's
    /// choice). By index, not address, so that a membership of an interface
    /// that was deleted can still be left (the kernel keeps it on the
    /// socket, and a socket may hold only `igmp_max_memberships` of them).
    V4(u32),
    /// IPv6: `IPV6_JOIN_GROUP` on this interface index (0: the kernel's choice).
    V6(u32),
}

/// What the sockets can do; `net::server` implements it.
pub trait Joiner {
    /// Joins `group` at `at`.
    ///
    /// # Errors
    /// The OS error; "address in use" means already joined and is success.
    fn join(&mut self, group: IpAddr, at: JoinTarget) -> io::Result<()>;
    /// Leaves `group` at `at` (errors are ignored by the caller: the
    /// kernel drops memberships of a deleted interface by itself).
    fn leave(&mut self, group: IpAddr, at: JoinTarget) -> io::Result<()>;
}

/// The state of one family on one served interface, for the `ifaces` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FamilyState {
    /// Joined at this target.
    Joined(JoinTarget),
    /// The interface is missing or down, or has no address of this family yet.
    Waiting(&'static str),
    /// The last join failed (the OS error text); retried every period.
    Error(String),
    /// No group of this family is served.
    NotServed,
}

impl fmt::Display for FamilyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FamilyState::Joined(JoinTarget::V4(i) | JoinTarget::V6(i)) => {
                write!(f, "joined (index {i})")
            }
            FamilyState::Waiting(why) => write!(f, "waiting ({why})"),
            FamilyState::Error(e) => write!(f, "error ({e})"),
            FamilyState::NotServed => f.write_str("n/a"),
        }
    }
}

/// A change worth a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Joined `group` on the interface.
    Joined(String, IpAddr, JoinTarget),
    /// Left (the interface went away, went down or changed).
    Left(String, IpAddr, JoinTarget),
    /// A join failed; the text is the OS error.
    Failed(String, IpAddr, String),
    /// Not joined, and why (the interface is missing, down, or has no
    /// address of the family yet); reported when the reason changes.
    Waiting(String, IpAddr, &'static str),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Joined(i, g, t) => write!(f, "member of {g} on {i} ({})", target(t)),
            Change::Left(i, g, t) => write!(f, "no longer member of {g} on {i} ({})", target(t)),
            Change::Failed(i, g, e) => write!(f, "cannot join {g} on {i}: {e}"),
            Change::Waiting(i, g, why) => {
                write!(
                    f,
                    "waiting to join {g} on {i}: {why}; checking every {}s",
                    RECHECK.as_secs()
                )
            }
        }
    }
}

fn target(t: &JoinTarget) -> String {
    match t {
        JoinTarget::V4(i) | JoinTarget::V6(i) => format!("index {i}"),
    }
}

/// One served interface and its two families.
#[derive(Clone, Debug)]
struct Served {
    spec: IfaceSpec,
    v4: FamilyState,
    v6: FamilyState,
}

/// The groups to serve and the memberships held, per served interface.
#[derive(Clone, Debug)]
pub struct Memberships {
    group_v4: Option<Ipv4Addr>,
    group_v6: Option<Ipv6Addr>,
    served: Vec<Served>,
}

impl Memberships {
    /// Serves `group_v4` and/or `group_v6` on every interface of `ifaces`.
    pub fn new(
        group_v4: Option<Ipv4Addr>,
        group_v6: Option<Ipv6Addr>,
        ifaces: &[IfaceSpec],
    ) -> Self {
        let state = |served: bool| {
            if served {
                FamilyState::Waiting("not looked at yet")
            } else {
                FamilyState::NotServed
            }
        };
        Memberships {
            served: ifaces
                .iter()
                .map(|spec| Served {
                    spec: spec.clone(),
                    v4: state(group_v4.is_some()),
                    v6: state(group_v6.is_some()),
                })
                .collect(),
            group_v4,
            group_v6,
        }
    }

    /// Brings the memberships in line with the interfaces in `now`, and
    /// reports what changed. Failures are states, never fatal.
    pub fn reconcile(&mut self, now: &[IfaceInfo], sockets: &mut impl Joiner) -> Vec<Change> {
        let mut changes = Vec::new();
        for s in &mut self.served {
            let found = s.spec.find(now);
            let label = found.map_or_else(|| s.spec.to_string(), |i| i.name.clone());
            if let Some(g) = self.group_v4 {
                let want = want_v4(&s.spec, found);
                step(
                    &mut s.v4,
                    IpAddr::V4(g),
                    want,
                    &label,
                    sockets,
                    &mut changes,
                );
            }
            if let Some(g) = self.group_v6 {
                let want = want_v6(&s.spec, found);
                step(
                    &mut s.v6,
                    IpAddr::V6(g),
                    want,
                    &label,
                    sockets,
                    &mut changes,
                );
            }
        }
        changes
    }

    /// Leaves every joined group (at shutdown or before a rebuild).
    pub fn leave_all(&mut self, sockets: &mut impl Joiner) {
        for s in &mut self.served {
            for (state, group) in [
                (&mut s.v4, self.group_v4.map(IpAddr::V4)),
                (&mut s.v6, self.group_v6.map(IpAddr::V6)),
            ] {
                if let (FamilyState::Joined(t), Some(g)) = (&*state, group) {
                    let _ = sockets.leave(g, *t);
                    *state = FamilyState::Waiting("left");
                }
            }
        }
    }

    /// One line per served interface: `SPEC v4 STATE v6 STATE`.
    pub fn describe(&self) -> Vec<String> {
        self.served
            .iter()
            .map(|s| format!("{} v4 {} v6 {}", s.spec, s.v4, s.v6))
            .collect()
    }

    /// Where a group is joined now, each (family, interface) once: the
    /// interfaces the group mode downlink sends on.
    pub fn joined(&self) -> Vec<JoinTarget> {
        let mut v: Vec<JoinTarget> = self
            .served
            .iter()
            .flat_map(|s| [&s.v4, &s.v6])
            .filter_map(|state| match state {
                FamilyState::Joined(t) => Some(*t),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// True when at least one group is joined somewhere.
    #[cfg(test)]
    pub fn any_joined(&self) -> bool {
        self.served.iter().any(|s| {
            matches!(s.v4, FamilyState::Joined(_)) || matches!(s.v6, FamilyState::Joined(_))
        })
    }
}

/// Where the IPv4 group should be joined for `spec`, or why not.
fn want_v4(spec: &IfaceSpec, found: Option<&IfaceInfo>) -> Result<JoinTarget, &'static str> {
    match (spec, found) {
        (IfaceSpec::Any, _) => Ok(JoinTarget::V4(0)),
        (_, None) => Err("no such interface"),
        (_, Some(i)) if !i.up => Err("interface down"),
        (_, Some(i)) if i.v4.is_empty() => Err("no IPv4 address"),
        (_, Some(i)) => Ok(JoinTarget::V4(i.index)),
    }
}

/// Where the IPv6 group should be joined for `spec`, or why not.
fn want_v6(spec: &IfaceSpec, found: Option<&IfaceInfo>) -> Result<JoinTarget, &'static str> {
    match (spec, found) {
        (IfaceSpec::Any, _) => Ok(JoinTarget::V6(0)),
        (_, None) => Err("no such interface"),
        (_, Some(i)) if !i.up => Err("interface down"),
        (_, Some(i)) if i.v6.is_empty() => Err("no IPv6 address"),
        (_, Some(i)) if !i.multicast => Err("no multicast on this interface"),
        (_, Some(i)) => Ok(JoinTarget::V6(i.index)),
    }
}

/// Moves one family of one interface from its state towards `want`.
fn step(
    state: &mut FamilyState,
    group: IpAddr,
    want: Result<JoinTarget, &'static str>,
    label: &str,
    sockets: &mut impl Joiner,
    changes: &mut Vec<Change>,
) {
    if let FamilyState::Joined(have) = state {
        if want == Ok(*have) {
            return;
        }
        let have = *have;
        let _ = sockets.leave(group, have);
        changes.push(Change::Left(label.to_string(), group, have));
    }
    *state = match want {
        Err(why) => {
            if *state != FamilyState::Waiting(why) {
                changes.push(Change::Waiting(label.to_string(), group, why));
            }
            FamilyState::Waiting(why)
        }
        Ok(at) => match sockets.join(group, at) {
            Ok(()) => {
                changes.push(Change::Joined(label.to_string(), group, at));
                FamilyState::Joined(at)
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => FamilyState::Joined(at),
            Err(e) => {
                let text = e.to_string();
                // Log a failure once, not every period.
                if *state != FamilyState::Error(text.clone()) {
                    changes.push(Change::Failed(label.to_string(), group, text.clone()));
                }
                FamilyState::Error(text)
            }
        },
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records joins and leaves; fails joins on listed indexes.
    #[derive(Default)]
    struct Fake {
        joined: Vec<(IpAddr, JoinTarget)>,
        fail_v6: bool,
    }

    impl Joiner for Fake {
        fn join(&mut self, group: IpAddr, at: JoinTarget) -> io::Result<()> {
            if self.fail_v6 && matches!(at, JoinTarget::V6(_)) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            if self.joined.contains(&(group, at)) {
                return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
            }
            self.joined.push((group, at));
            Ok(())
        }
        fn leave(&mut self, group: IpAddr, at: JoinTarget) -> io::Result<()> {
            self.joined.retain(|j| *j != (group, at));
            Ok(())
        }
    }

    const G4: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 77);
    const G6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x77);

    fn lan(index: u32, up: bool, v4: &[Ipv4Addr], v6: bool) -> IfaceInfo {
        IfaceInfo {
            name: "lan0.20".into(),
            index,
            up,
            multicast: true,
            v4: v4.to_vec(),
            v6: if v6 {
                vec!["fe80::1".parse().unwrap()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn spec_parses_names_and_addresses() {
        assert_eq!(IfaceSpec::parse("0.0.0.0"), Ok(IfaceSpec::Any));
        assert_eq!(IfaceSpec::parse("::"), Ok(IfaceSpec::Any));
        assert_eq!(
            IfaceSpec::parse("br-lan"),
            Ok(IfaceSpec::Name("br-lan".into()))
        );
        assert_eq!(
            IfaceSpec::parse("10.0.0.1"),
            Ok(IfaceSpec::Addr("10.0.0.1".parse().unwrap()))
        );
        assert!(IfaceSpec::parse("").is_err());
        assert!(IfaceSpec::parse("a name with spaces").is_err());
        assert!(IfaceSpec::parse("waytoolonginterfacename").is_err());
    }

    #[test]
    fn a_late_interface_is_joined_when_it_appears_with_addresses() {
        let mut m = Memberships::new(Some(G4), Some(G6), &[IfaceSpec::Name("lan0.20".into())]);
        let mut s = Fake::default();
        let first = m.reconcile(&[], &mut s);
        assert!(matches!(
            &first[..],
            [Change::Waiting(..), Change::Waiting(..)]
        ));
        assert!(m.reconcile(&[], &mut s).is_empty(), "said once");
        assert_eq!(
            m.describe(),
            ["lan0.20 v4 waiting (no such interface) v6 waiting (no such interface)"]
        );
        let a = Ipv4Addr::new(10, 0, 20, 1);
        // Up without addresses (DHCP still running): still waiting.
        m.reconcile(&[lan(7, true, &[], false)], &mut s);
        assert!(!m.any_joined());
        let changes = m.reconcile(&[lan(7, true, &[a], true)], &mut s);
        assert!(matches!(
            &changes[..],
            [Change::Joined(..), Change::Joined(..)]
        ));
        assert_eq!(
            s.joined,
            [
                (IpAddr::V4(G4), JoinTarget::V4(7)),
                (IpAddr::V6(G6), JoinTarget::V6(7))
            ]
        );
        // Nothing changed: nothing done.
        assert!(m.reconcile(&[lan(7, true, &[a], true)], &mut s).is_empty());
        assert_eq!(m.joined(), [JoinTarget::V4(7), JoinTarget::V6(7)]);
    }

    #[test]
    fn a_recreated_interface_is_rejoined_on_its_new_index() {
        let mut m = Memberships::new(None, Some(G6), &[IfaceSpec::Name("lan0.20".into())]);
        let mut s = Fake::default();
        m.reconcile(&[lan(7, true, &[], true)], &mut s);
        let gone = m.reconcile(&[], &mut s);
        assert!(matches!(&gone[..], [Change::Left(..), Change::Waiting(..)]));
        assert!(s.joined.is_empty());
        m.reconcile(&[lan(9, true, &[], true)], &mut s);
        assert_eq!(s.joined, [(IpAddr::V6(G6), JoinTarget::V6(9))]);
        assert_eq!(m.describe(), ["lan0.20 v4 n/a v6 joined (index 9)"]);
    }

    #[test]
    fn down_means_leave_and_a_failed_join_is_a_state_logged_once() {
        let mut m = Memberships::new(
            Some(G4),
            Some(G6),
            &[IfaceSpec::Addr("10.0.20.1".parse().unwrap())],
        );
        let mut s = Fake {
            fail_v6: true,
            ..Fake::default()
        };
        let a = Ipv4Addr::new(10, 0, 20, 1);
        let first = m.reconcile(&[lan(7, true, &[a], true)], &mut s);
        assert_eq!(first.len(), 2, "{first:?}"); // joined v4, failed v6
        assert!(m.describe()[0].contains("v6 error ("), "{:?}", m.describe());
        // The same failure again is not logged again.
        assert_eq!(m.reconcile(&[lan(7, true, &[a], true)], &mut s).len(), 0);
        assert_eq!(m.joined(), [JoinTarget::V4(7)], "v6 failed: not joined");
        m.reconcile(&[lan(7, false, &[a], true)], &mut s);
        assert!(s.joined.is_empty());
        assert!(m.joined().is_empty());
        assert!(m.describe()[0].starts_with("10.0.20.1 v4 waiting (interface down)"));
    }

    #[test]
    fn the_snapshot_sees_loopback() {
        let now = snapshot().unwrap();
        let lo = now.iter().find(|i| i.name == "lo").expect("lo listed");
        assert!(lo.index > 0 && lo.up);
        assert!(lo.v4.contains(&Ipv4Addr::LOCALHOST));
    }
}
