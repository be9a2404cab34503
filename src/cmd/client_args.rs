//! The flags `chat`, `send` and `listen` share, and the connection step
//! they share: open the socket, handshake, tell the user the server's key.

use std::ffi::CString;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs};
use std::time::Duration;

use mcrelay::wire::{RejectReason, MAX_ACCESS_TOKEN_LEN};
use mcrelay::{ClientError, ClientOptions};
use mcrelay::{ConnectError, MulticastIface, Target, UdpClient, DEFAULT_KEEPALIVE};

use super::{opt, read_token_file};

/// `--help` text of the shared flags; `keepalive` adds `--keepalive`
/// (chat and listen, which stay connected).
pub fn help(keepalive: bool) -> String {
    let mut h = String::from(
        "\
CONNECTION (unicast unless --group is given):
    --server HOST:PORT    the relay's unicast address, IPv4 or IPv6 in brackets
                          ([2001:db8::1]:5007; link-local with its interface,
                          [fe80::1%eth0]:5007) [default: 127.0.0.1:5007]
    --group ADDR          reach the relay through this multicast group instead,
                          IPv4 (239.255.0.77) or IPv6 (ff02::77)
                          [default: none, unicast to --server]
    --port PORT           the group's UDP port (with --group) [default: 5007]
    --iface NAME|ADDR     interface to send group traffic from and to join the group
                          downlink on (with --group): a name (eth0, br-lan), one of its
                          addresses, or for IPv6 its index [default: the kernel's choice;
                          an IPv6 link-local group such as ff02::77 needs one]
    --ttl N               multicast TTL, or hop limit for IPv6 (with --group), 0..=255;
                          0 keeps it on this host [default: 1]
    --group-mode          ask a v2 relay for group mode: one signed multicast copy of each
                          message, on the relay's downlink, for all members [default: with
                          --group; a client that hears nothing on the downlink falls back
                          to per-recipient delivery by itself]
    --no-group-mode       do not ask for group mode: every message is sent to this client
                          alone [default: with --server, as a client behind a NAT cannot
                          hear the downlink]

SECURITY:
    --pin SHA256          ignore answers whose key has another fingerprint, waiting for
                          this one until --timeout (the 64 hex digits `mcrelay
                          fingerprint` prints) [default: none: trust on first use;
                          the fingerprint is printed on stderr to pin later]
    --token-file PATH     access token to present, one trailing newline ignored
                          [default: none]

TUNING:
    --max-datagram BYTES  larger datagrams go out as fragments [default: 1200]
    --timeout SECS        give up a handshake after this long [default: 5]
",
    );
    if keepalive {
        h.push_str(&format!(
            "    --keepalive SECS      send a KEEPALIVE after this much silence; keep it well
                          inside the server's --client-timeout [default: {}]
",
            DEFAULT_KEEPALIVE.as_secs()
        ));
    }
    h
}

/// How to reach the relay, parsed from the shared flags.
pub struct ClientArgs {
    /// Unicast server or multicast group.
    pub target: Target,
    /// Pin, token and datagram size for the core.
    pub opts: ClientOptions,
    /// Handshake timeout.
    pub timeout: Duration,
    /// Interval of automatic keepalives.
    pub keepalive: Duration,
    /// The target as the user wrote it, for messages.
    pub describe: String,
}

/// Consumes the shared flags (and `--keepalive` when `keepalive`) from `args`.
pub fn parse(args: &mut pico_args::Arguments, keepalive: bool) -> Result<ClientArgs, String> {
    let server: Option<String> = opt(args, "--server")?;
    let group: Option<IpAddr> = opt(args, "--group")?;
    let port: Option<u16> = opt(args, "--port")?;
    let iface: Option<MulticastIface> = opt(args, "--iface")?;
    let ttl: Option<u32> = opt(args, "--ttl")?;
    let (target, describe) = match group {
        Some(_) if server.is_some() => {
            return Err("give either --server or --group, not both".into());
        }
        Some(group) => {
            if !group.is_multicast() {
                return Err(format!("--group {group} is not a multicast address"));
            }
            let port = port.unwrap_or(5007);
            let ttl = ttl.unwrap_or(1);
            if ttl > 255 {
                return Err(format!("--ttl {ttl} is outside 0..=255"));
            }
            let iface = iface.unwrap_or(MulticastIface::Any);
            let mut describe = format!("group {}", SocketAddr::new(group, port));
            if iface != MulticastIface::Any {
                describe.push_str(&format!(" on {iface}"));
            }
            let target = Target::Multicast {
                group,
                port,
                iface,
                ttl,
            };
            (target, describe)
        }
        None => {
            if port.is_some() || iface.is_some() || ttl.is_some() {
                return Err("--port, --iface and --ttl go with --group \
                            (for unicast use --server HOST:PORT)"
                    .into());
            }
            let server = server.unwrap_or_else(|| "127.0.0.1:5007".into());
            (Target::Unicast(resolve(&server)?), server)
        }
    };

    // Through the group the client is on the relay's link and can hear the
    // downlink; by unicast it may be anywhere, behind a NAT.
    let by_group = matches!(target, Target::Multicast { .. });
    let (ask, refuse) = (
        args.contains("--group-mode"),
        args.contains("--no-group-mode"),
    );
    if ask && refuse {
        return Err("--group-mode and --no-group-mode exclude each other".into());
    }
    let mut opts = ClientOptions {
        group: ask || (by_group && !refuse),
        ..ClientOptions::default()
    };
    if let Some(pin) = opt::<String>(args, "--pin")? {
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "--pin {pin} is not a SHA-256 fingerprint (64 hex digits, \
                 as `mcrelay fingerprint` prints)"
            ));
        }
        opts.pin = Some(pin.to_ascii_lowercase());
    }
    if let Some(path) = opt::<String>(args, "--token-file")? {
        let token = read_token_file(&path)?;
        if token.len() > MAX_ACCESS_TOKEN_LEN {
            return Err(format!(
                "token file {path} holds {} bytes; at most {MAX_ACCESS_TOKEN_LEN} fit in a handshake",
                token.len()
            ));
        }
        opts.access_token = Some(token);
    }
    opts.max_datagram = opt(args, "--max-datagram")?.unwrap_or(opts.max_datagram);
    if !(64..=65507).contains(&opts.max_datagram) {
        return Err(format!(
            "--max-datagram {} is outside 64..=65507",
            opts.max_datagram
        ));
    }
    let timeout = seconds(opt(args, "--timeout")?, "--timeout")?.unwrap_or(Duration::from_secs(5));
    let keepalive = if keepalive {
        seconds(opt(args, "--keepalive")?, "--keepalive")?.unwrap_or(DEFAULT_KEEPALIVE)
    } else {
        DEFAULT_KEEPALIVE
    };
    Ok(ClientArgs {
        target,
        opts,
        timeout,
        keepalive,
        describe,
    })
}

/// Positive (possibly fractional) seconds.
fn seconds(v: Option<f64>, name: &str) -> Result<Option<Duration>, String> {
    match v {
        None => Ok(None),
        Some(s) => match Duration::try_from_secs_f64(s) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(format!("{name} {s} must be a positive number of seconds")),
        },
    }
}

/// HOST:PORT to an address. A name that resolves to both families gives
/// its IPv4 address: a relay always serves IPv4, IPv6 only where the host
/// has it. A link-local IPv6 address may name its interface
/// (`[fe80::1%eth0]:5007`): the name becomes the numeric scope.
fn resolve(server: &str) -> Result<SocketAddr, String> {
    if let Some(addr) = scoped_by_name(server)? {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = server
        .to_socket_addrs()
        .map_err(|e| format!("bad --server '{server}' (expected HOST:PORT, [IPv6]:PORT): {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("--server '{server}' resolves to no address"))
}

/// `[ADDR%NAME]:PORT` with an interface name as the scope, which
/// `SocketAddr` does not parse (it takes `%3` only); None for any other
/// form.
fn scoped_by_name(server: &str) -> Result<Option<SocketAddr>, String> {
    let Some((host, port)) = server
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"))
    else {
        return Ok(None);
    };
    let Some((ip, name)) = host.split_once('%') else {
        return Ok(None);
    };
    if name.parse::<u32>().is_ok() {
        return Ok(None); // numeric: SocketAddr reads it
    }
    let bad = |why: String| format!("bad --server '{server}': {why}");
    let ip: Ipv6Addr = ip.parse().map_err(|e| bad(format!("{e}")))?;
    let port: u16 = port.parse().map_err(|e| bad(format!("port: {e}")))?;
    let index = CString::new(name)
        // SAFETY: a valid NUL-terminated string, read only.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
        .unwrap_or(0);
    if index == 0 {
        return Err(bad(format!("no interface named {name}")));
    }
    Ok(Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, index))))
}

/// Opens the socket and runs the handshake. Without a pin, prints the
/// server's fingerprint on stderr so that the user can pin it next time.
pub fn connect(a: &ClientArgs) -> Result<UdpClient, String> {
    let mut c = UdpClient::new(a.target.clone(), a.opts.clone())
        .map_err(|e| format!("cannot open a UDP socket for {}: {e}", a.describe))?;
    c.connect(a.timeout)
        .map_err(|e| connect_error(&e, a.describe.as_str(), a.timeout))?;
    if a.opts.pin.is_none() {
        if let Some(fp) = c.fingerprint() {
            eprintln!(
                "mcrelay: server key fingerprint {fp} (not pinned; add --pin {fp} to require it)"
            );
        }
    }
    Ok(c)
}

/// A one-line description of a failed handshake or session.
pub fn connect_error(e: &ConnectError, describe: &str, timeout: Duration) -> String {
    match e {
        ConnectError::Timeout => format!(
            "no answer from {describe} within {}s",
            timeout.as_secs_f64()
        ),
        ConnectError::Rejected(r) => format!("{describe} refused the session: {}", reject_text(*r)),
        ConnectError::Revoked => format!("{describe} revoked this client's credential"),
        ConnectError::Pin(ClientError::PinMismatch { expected, got }) => format!(
            "server key fingerprint {got} does not match the pinned {expected}; refusing to talk to it"
        ),
        ConnectError::Io(e) => format!("network error talking to {describe}: {e}"),
    }
}

/// What a REJECT reason means to a user.
pub fn reject_text(r: RejectReason) -> &'static str {
    match r {
        RejectReason::UnknownSession => "unknown session",
        RejectReason::AuthFailed => "wrong or missing access token (--token-file)",
        RejectReason::ServerFull => "server full",
        RejectReason::BadCookie => "stale cookie",
        RejectReason::Forbidden => "this client may not publish",
    }
}
