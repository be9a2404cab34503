//! `mcrelay serve`: flags → config → sockets → the loop.

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn, LevelFilter};
use mcrelay::logring;
use mcrelay::Config;
use mcrelay::Relay;
use mcrelay::ServerKey;
use mcrelay::{open_udp, IfaceSpec, Listen, Server, Signals};
use mcrelay::{Admin, AdminConfig};

use super::{finish, many, opt, read_token_file};

const HELP: &str = "\
mcrelay serve: run the relay

USAGE:
    mcrelay serve [OPTIONS]

With no options it relays on port 5007 over IPv4 and IPv6, joined to
239.255.0.77 and ff02::77, with a fresh in-memory key.

NETWORK:
    --group ADDR                 multicast group to join, once per family; with a group of
                                 one family only, only that family's group is joined
                                 (unicast still works for both) [default: 239.255.0.77 and ff02::77]
    --port PORT                  UDP port, both families (0 picks a free one) [default: 5007]
    --iface NAME|ADDR            interface to join the groups on, by name (eth0, br-lan) or
                                 by one of its addresses; repeat to serve several networks.
                                 A named interface that is missing or down is joined when it
                                 comes up, and rejoined when it comes back
                                 [default: 0.0.0.0, the kernel's choice]
    --recv-buffer BYTES          SO_RCVBUF, room for bursts; the kernel caps it at
                                 net.core.rmem_max [default: 1048576]
    --max-datagram BYTES         larger datagrams are sent as fragments [default: 1200]

SECURITY:
    --key-file PATH              PKCS#8 PEM RSA-2048 key; created (mode 0600) if missing
                                 [default: a new key in memory only]
    --token-file PATH            access token every client must present [default: none]

GROUP MODE (protocol v2: one signed multicast datagram per message for all members):
    --no-group-mode              never grant group mode; v2 clients are served one by one
    --downlink GROUP:PORT        where group datagrams go, once per family, sent on every
                                 interface the group of that family is joined on; never the
                                 uplink GROUP:PORT [default: each served group, PORT+2]
    --ttl N                      multicast TTL / hop limit of the downlink, 0..=255 [default: 1]

CLIENTS:
    --client-timeout SECS        forget a client after this much silence [default: 60]
    --max-clients N              registered clients at most [default: 1024]
    --max-clients-per-ip N       registered clients per IPv4 address or IPv6 /64
                                 (0: no limit) [default: 64]
    --handshake-rate N           handshakes per second per source address [default: 5]
    --handshake-burst N          burst of handshakes per source address [default: 10]
    --rsa-rate N                 RSA decryptions per second, all sources; one IP may
                                 use a quarter of them [default: 200]

REASSEMBLY (fragments of large messages):
    --reassembly-partials N      partial messages per client [default: 8]
    --reassembly-client-bytes N  bytes buffered per client [default: 262144]
    --reassembly-total-bytes N   bytes buffered in total [default: 8388608]
    --reassembly-message-bytes N largest reassembled message [default: 65536]
    --reassembly-age SECS        drop partial messages older than this [default: 10]

ADMIN (plain text over TCP, e.g. `nc 127.0.0.1 5008`; type help):
    --admin-bind ADDR            address of the admin channel [default: 127.0.0.1]
    --admin-port PORT            TCP admin port (0 picks a free one) [default: 5008]
    --no-admin                   no admin channel
    --admin-max-sessions N       admin sessions at once [default: 4]
    --admin-token-file PATH      sessions must first send `auth TOKEN` [default: none]
    --admin-insecure             allow a non-loopback --admin-bind without a token file

LOGGING:
    --log-level LEVEL            stderr: off, error, warn, info, debug or trace [default: info]
    --log-ring N                 log records kept for admin sessions [default: 1024]
";

/// Parses `serve` flags and runs the relay until a signal stops it.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let defaults = Config::default();
    let mut listen = Listen::default();
    let groups: Vec<IpAddr> = many(&mut args, "--group")?;
    if !groups.is_empty() {
        (listen.group_v4, listen.group_v6) = (None, None);
    }
    for g in groups {
        if !g.is_multicast() {
            return Err(format!("--group {g} is not a multicast address"));
        }
        let clash = match g {
            IpAddr::V4(g) => listen.group_v4.replace(g).is_some(),
            IpAddr::V6(g) => listen.group_v6.replace(g).is_some(),
        };
        if clash {
            return Err(format!("--group {g}: at most one group per address family"));
        }
    }
    listen.port = opt(&mut args, "--port")?.unwrap_or(listen.port);
    let ifaces: Vec<IfaceSpec> = many(&mut args, "--iface")?;
    if !ifaces.is_empty() {
        listen.ifaces = ifaces;
    }
    // The kernel's usual 208 KiB holds only ~2 ms of a 100k/s flood; a bigger
    // buffer lets legitimate handshakes survive bursts.
    listen.recv_buffer =
        Some(ranged(&mut args, "--recv-buffer", 1024..=1 << 30)?.unwrap_or(1 << 20));
    let downlinks: Vec<SocketAddr> = many(&mut args, "--downlink")?;
    listen.downlink_ttl = ranged(&mut args, "--ttl", 0..=255)?.unwrap_or(listen.downlink_ttl);
    let mut config = defaults.clone();
    config.group_mode = !args.contains("--no-group-mode");
    config.max_datagram = opt(&mut args, "--max-datagram")?.unwrap_or(config.max_datagram);
    if !(548..=65507).contains(&config.max_datagram) {
        return Err(format!(
            "--max-datagram {} is outside 548..=65507 (548: what every IPv4 host accepts)",
            config.max_datagram
        ));
    }
    let key_file: Option<String> = opt(&mut args, "--key-file")?;
    let token_file: Option<String> = opt(&mut args, "--token-file")?;
    // Ranges: 0 (or a huge value) would switch a limit off or make it
    // meaningless; a typo must fail at start, not at 3 a.m.
    let secs = |v: Option<u64>, d: Duration| v.map(Duration::from_secs).unwrap_or(d);
    config.client_timeout = secs(
        ranged(&mut args, "--client-timeout", 1..=86_400)?,
        config.client_timeout,
    );
    const MANY: u32 = 1_000_000;
    config.max_clients =
        ranged(&mut args, "--max-clients", 1..=MANY as usize)?.unwrap_or(config.max_clients);
    // 0 = no per-host cap.
    config.max_clients_per_ip = ranged(&mut args, "--max-clients-per-ip", 0..=MANY as usize)?
        .unwrap_or(config.max_clients_per_ip);
    config.handshake_rate =
        ranged(&mut args, "--handshake-rate", 1..=MANY)?.unwrap_or(config.handshake_rate);
    config.handshake_burst =
        ranged(&mut args, "--handshake-burst", 1..=MANY)?.unwrap_or(config.handshake_burst);
    config.rsa_rate = ranged(&mut args, "--rsa-rate", 1..=MANY)?.unwrap_or(config.rsa_rate);
    const GIB: usize = 1 << 30;
    let r = &mut config.reassembly;
    r.max_partials_per_owner =
        ranged(&mut args, "--reassembly-partials", 1..=1024)?.unwrap_or(r.max_partials_per_owner);
    r.max_bytes_per_owner =
        ranged(&mut args, "--reassembly-client-bytes", 1..=GIB)?.unwrap_or(r.max_bytes_per_owner);
    r.max_total_bytes =
        ranged(&mut args, "--reassembly-total-bytes", 1..=GIB)?.unwrap_or(r.max_total_bytes);
    r.max_message_bytes =
        ranged(&mut args, "--reassembly-message-bytes", 1..=GIB)?.unwrap_or(r.max_message_bytes);
    r.max_age = secs(ranged(&mut args, "--reassembly-age", 1..=3600)?, r.max_age);
    let admin_bind: IpAddr =
        opt(&mut args, "--admin-bind")?.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let admin_port: u16 = opt(&mut args, "--admin-port")?.unwrap_or(5008);
    let no_admin = args.contains("--no-admin");
    let admin_max_sessions = ranged(&mut args, "--admin-max-sessions", 1..=64)?.unwrap_or(4);
    let admin_token_file: Option<String> = opt(&mut args, "--admin-token-file")?;
    let admin_insecure = args.contains("--admin-insecure");
    let level: LevelFilter = opt(&mut args, "--log-level")?.unwrap_or(LevelFilter::Info);
    let log_ring = ranged(&mut args, "--log-ring", 1..=65_536)?.unwrap_or(1024);
    finish(args)?;
    if !no_admin && !admin_bind.is_loopback() && admin_token_file.is_none() && !admin_insecure {
        return Err(format!(
            "--admin-bind {admin_bind} is not loopback: give --admin-token-file (or --admin-insecure)"
        ));
    }

    logring::init(level, log_ring);
    if let Some(path) = &token_file {
        config.access_token = Some(read_access_token(path)?);
    }
    let key = match &key_file {
        Some(path) => {
            let (key, created) =
                mcrelay::load_or_create(Path::new(path)).map_err(|e| e.to_string())?;
            if created {
                info!("created key file {path} (mode 0600)");
            }
            key
        }
        None => ServerKey::generate().map_err(|e| e.to_string())?,
    };
    let fingerprint = key.fingerprint();
    check_downlinks(&downlinks, &listen)?;
    let udp = open_udp(&listen)?;
    config.downlinks = downlinks_for(downlinks, &listen, &udp)?;
    let signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let admin = if no_admin {
        None
    } else {
        let token = admin_token_file
            .as_deref()
            .map(read_admin_token)
            .transpose()?;
        let config = AdminConfig {
            bind: SocketAddr::new(admin_bind, admin_port),
            max_sessions: admin_max_sessions,
            token,
        };
        let admin = Admin::bind(config).map_err(|e| {
            format!("cannot listen for admin sessions on {admin_bind}:{admin_port}: {e}")
        })?;
        let addr = admin.local_addr().map_err(|e| e.to_string())?;
        info!("admin listening on {addr}");
        Some(admin)
    };
    // The relay core reads no clock and no OS entropy: it gets both here.
    let unix_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let relay = Relay::new(config, key, Instant::now(), unix_now, rand::random());
    let mut server = Server::new(udp, &listen, relay, signals, admin)
        .map_err(|e| format!("cannot start the event loop: {e}"))?;
    server.on_reload(Box::new(
        move |relay: &mut Relay, admin: Option<&mut Admin>| {
            reload_tokens(
                relay,
                admin,
                token_file.as_deref(),
                admin_token_file.as_deref(),
            )
        },
    ));
    let addrs = server.local_addrs().map_err(|e| e.to_string())?;
    let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let groups: Vec<String> = [
        listen.group_v4.map(IpAddr::V4),
        listen.group_v6.map(IpAddr::V6),
    ]
    .into_iter()
    .flatten()
    .map(|g| g.to_string())
    .collect();
    let ifaces: Vec<String> = listen.ifaces.iter().map(|i| i.to_string()).collect();
    info!(
        "mcrelay {} listening on udp {}, group {} on {}",
        env!("CARGO_PKG_VERSION"),
        addrs.join(" and "),
        if groups.is_empty() {
            "none".to_string()
        } else {
            groups.join(" and ")
        },
        ifaces.join(", ")
    );
    let downlinks = server.downlinks();
    if downlinks.is_empty() {
        info!("group mode off");
    } else {
        let d: Vec<String> = downlinks.iter().map(|d| d.to_string()).collect();
        info!(
            "group mode downlink {} (ttl {})",
            d.join(" and "),
            listen.downlink_ttl
        );
    }
    info!("server key fingerprint (sha256) {fingerprint}");
    server.run().map_err(|e| format!("event loop failed: {e}"))
}

/// The `--downlink` checks that need no socket: multicast, a port, one per
/// family, and a family whose group is served (its interfaces are the ones
/// that group is joined on).
fn check_downlinks(downlinks: &[SocketAddr], listen: &Listen) -> Result<(), String> {
    let mut families = [false; 2];
    for d in downlinks {
        if !d.ip().is_multicast() || d.port() == 0 {
            return Err(format!(
                "--downlink {d} is not a multicast GROUP:PORT with a port"
            ));
        }
        if std::mem::replace(&mut families[usize::from(d.is_ipv6())], true) {
            return Err(format!("--downlink {d}: at most one per address family"));
        }
        let served = match d {
            SocketAddr::V4(_) => listen.group_v4.is_some(),
            SocketAddr::V6(_) => listen.group_v6.is_some(),
        };
        if !served {
            return Err(format!(
                "--downlink {d}: no group of its family is served (--group), so no interface \
                 is joined to send it on"
            ));
        }
    }
    Ok(())
}

/// The downlinks once the port is known: the ones given, or each served
/// group at PORT+2 (IPv6 only when its socket opened). A downlink equal to
/// the uplink GROUP:PORT is refused: members would take the relay's group
/// traffic for their own, and the relay would read its own datagrams.
fn downlinks_for(
    given: Vec<SocketAddr>,
    listen: &Listen,
    udp: &mcrelay::UdpSockets,
) -> Result<Vec<SocketAddr>, String> {
    let port = udp
        .v4
        .iter()
        .chain(&udp.v6)
        .next()
        .map(|s| s.local_addr().map(|a| a.port()))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or(listen.port);
    let downlinks = if given.is_empty() {
        let Some(down) = port.checked_add(2) else {
            return Err(format!(
                "--port {port} leaves no room for the default downlink port; give --downlink"
            ));
        };
        let v4 = listen.group_v4.map(|g| SocketAddr::from((g, down)));
        let v6 = listen
            .group_v6
            .filter(|_| udp.v6.is_some())
            .map(|g| SocketAddr::from((g, down)));
        v4.into_iter().chain(v6).collect()
    } else {
        given
    };
    for d in &downlinks {
        let uplink = [
            listen.group_v4.map(IpAddr::V4),
            listen.group_v6.map(IpAddr::V6),
        ];
        if d.port() == port && uplink.contains(&Some(d.ip())) {
            return Err(format!(
                "--downlink {d} is the uplink GROUP:PORT; give the downlink a port of its own"
            ));
        }
        if d.is_ipv6() && udp.v6.is_none() {
            return Err(format!("--downlink {d}: this host has no IPv6 socket"));
        }
    }
    Ok(downlinks)
}

/// Parses an optional flag that must lie in `range`; the error names the flag.
fn ranged<T>(
    args: &mut pico_args::Arguments,
    name: &'static str,
    range: RangeInclusive<T>,
) -> Result<Option<T>, String>
where
    T: FromStr + PartialOrd + Display,
    T::Err: Display,
{
    match opt::<T>(args, name)? {
        Some(v) if !range.contains(&v) => Err(format!(
            "{name} {v} is outside {}..={}",
            range.start(),
            range.end()
        )),
        v => Ok(v),
    }
}

/// The relay's access token file, checked as at start-up and on SIGHUP.
fn read_access_token(path: &str) -> Result<Vec<u8>, String> {
    let token = read_token_file(path)?;
    if token.len() > mcrelay::wire::MAX_ACCESS_TOKEN_LEN {
        return Err(format!(
            "token file {path} holds {} bytes; at most {} fit in a handshake",
            token.len(),
            mcrelay::wire::MAX_ACCESS_TOKEN_LEN
        ));
    }
    Ok(token)
}

/// The admin token file, checked as at start-up and on SIGHUP.
fn read_admin_token(path: &str) -> Result<Vec<u8>, String> {
    let token = read_token_file(path)?;
    Admin::check_token(&token).map_err(|why| format!("admin token file {path}: {why}"))?;
    Ok(token)
}

/// SIGHUP: re-read both token files with the start-up checks; a file that
/// became unreadable or invalid keeps the old token (and says why).
fn reload_tokens(
    relay: &mut Relay,
    admin: Option<&mut Admin>,
    relay_file: Option<&str>,
    admin_file: Option<&str>,
) {
    if let Some(path) = relay_file {
        match read_access_token(path) {
            Ok(t) => {
                relay.set_access_token(Some(t));
                info!("SIGHUP: re-read token file {path}");
            }
            Err(e) => warn!("SIGHUP: {e}; keeping the old token"),
        }
    }
    if let (Some(path), Some(admin)) = (admin_file, admin) {
        match read_admin_token(path) {
            Ok(t) => {
                admin.set_token(Some(t));
                info!("SIGHUP: re-read admin token file {path}");
            }
            Err(e) => warn!("SIGHUP: {e}; keeping the old admin token"),
        }
    }
    if relay_file.is_none() && admin_file.is_none() {
        info!("SIGHUP: no token files to re-read");
    }
}
