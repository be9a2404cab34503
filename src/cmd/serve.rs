//! `mcrelay serve`: flags → config → sockets → the loop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn, LevelFilter};
use mcrelay::logring;
use mcrelay::Config;
use mcrelay::Relay;
use mcrelay::ServerKey;
use mcrelay::{open_udp, Listen, Server, Signals};
use mcrelay::{Admin, AdminConfig};

use super::{finish, many, opt, read_token_file};

const HELP: &str = "\
mcrelay serve: run the relay

USAGE:
    mcrelay serve [OPTIONS]

With no options it relays on 239.255.0.77:5007 with a fresh in-memory key.

NETWORK:
    --group ADDR                 multicast group to join [default: 239.255.0.77]
    --port PORT                  UDP port (0 picks a free one) [default: 5007]
    --iface ADDR                 interface address to join the group on; repeat to
                                 serve several networks [default: 0.0.0.0, the kernel's choice]
    --recv-buffer BYTES          SO_RCVBUF, room for bursts; the kernel caps it at
                                 net.core.rmem_max [default: 1048576]
    --max-datagram BYTES         larger datagrams are sent as fragments [default: 1200]

SECURITY:
    --key-file PATH              PKCS#8 PEM RSA-2048 key; created (mode 0600) if missing
                                 [default: a new key in memory only]
    --token-file PATH            access token every client must present [default: none]

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
    if let Some(g) = opt::<Ipv4Addr>(&mut args, "--group")? {
        if !g.is_multicast() {
            return Err(format!("--group {g} is not a multicast address"));
        }
        listen.group = g;
    }
    listen.port = opt(&mut args, "--port")?.unwrap_or(listen.port);
    let ifaces: Vec<Ipv4Addr> = many(&mut args, "--iface")?;
    if !ifaces.is_empty() {
        listen.ifaces = ifaces;
    }
    // The kernel's usual 208 KiB holds only ~2 ms of a 100k/s flood; a bigger
    // buffer lets legitimate handshakes survive bursts.
    listen.recv_buffer = Some(opt(&mut args, "--recv-buffer")?.unwrap_or(1 << 20));
    let mut config = defaults.clone();
    config.max_datagram = opt(&mut args, "--max-datagram")?.unwrap_or(config.max_datagram);
    if !(548..=65507).contains(&config.max_datagram) {
        return Err(format!(
            "--max-datagram {} is outside 548..=65507 (548: what every IPv4 host accepts)",
            config.max_datagram
        ));
    }
    let key_file: Option<String> = opt(&mut args, "--key-file")?;
    let token_file: Option<String> = opt(&mut args, "--token-file")?;
    let secs = |v: Option<u64>, d: Duration| v.map(Duration::from_secs).unwrap_or(d);
    config.client_timeout = secs(opt(&mut args, "--client-timeout")?, config.client_timeout);
    if config.client_timeout.is_zero() {
        return Err("--client-timeout must be at least 1".into());
    }
    config.max_clients = opt(&mut args, "--max-clients")?.unwrap_or(config.max_clients);
    config.max_clients_per_ip =
        opt(&mut args, "--max-clients-per-ip")?.unwrap_or(config.max_clients_per_ip);
    config.handshake_rate = opt(&mut args, "--handshake-rate")?.unwrap_or(config.handshake_rate);
    config.handshake_burst = opt(&mut args, "--handshake-burst")?.unwrap_or(config.handshake_burst);
    config.rsa_rate = opt(&mut args, "--rsa-rate")?.unwrap_or(config.rsa_rate);
    let r = &mut config.reassembly;
    r.max_partials_per_owner =
        opt(&mut args, "--reassembly-partials")?.unwrap_or(r.max_partials_per_owner);
    r.max_bytes_per_owner =
        opt(&mut args, "--reassembly-client-bytes")?.unwrap_or(r.max_bytes_per_owner);
    r.max_total_bytes = opt(&mut args, "--reassembly-total-bytes")?.unwrap_or(r.max_total_bytes);
    r.max_message_bytes =
        opt(&mut args, "--reassembly-message-bytes")?.unwrap_or(r.max_message_bytes);
    r.max_age = secs(opt(&mut args, "--reassembly-age")?, r.max_age);
    let admin_bind: IpAddr =
        opt(&mut args, "--admin-bind")?.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let admin_port: u16 = opt(&mut args, "--admin-port")?.unwrap_or(5008);
    let no_admin = args.contains("--no-admin");
    let admin_max_sessions: usize = opt(&mut args, "--admin-max-sessions")?.unwrap_or(4);
    let admin_token_file: Option<String> = opt(&mut args, "--admin-token-file")?;
    let admin_insecure = args.contains("--admin-insecure");
    let level: LevelFilter = opt(&mut args, "--log-level")?.unwrap_or(LevelFilter::Info);
    let log_ring: usize = opt(&mut args, "--log-ring")?.unwrap_or(1024);
    finish(args)?;
    if !no_admin && !admin_bind.is_loopback() && admin_token_file.is_none() && !admin_insecure {
        return Err(format!(
            "--admin-bind {admin_bind} is not loopback: give --admin-token-file (or --admin-insecure)"
        ));
    }

    logring::init(level, log_ring);
    if let Some(path) = &token_file {
        let token = read_token_file(path)?;
        if token.len() > mcrelay::wire::MAX_ACCESS_TOKEN_LEN {
            return Err(format!(
                "token file {path} holds {} bytes; at most {} fit in a handshake",
                token.len(),
                mcrelay::wire::MAX_ACCESS_TOKEN_LEN
            ));
        }
        config.access_token = Some(token);
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
    let udp = open_udp(&listen)?;
    let signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let admin = if no_admin {
        None
    } else {
        let token = admin_token_file
            .as_deref()
            .map(read_token_file)
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
    let relay = Relay::new(config, key, Instant::now());
    let mut server = Server::new(udp, relay, signals, admin)
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
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    let ifaces: Vec<String> = listen.ifaces.iter().map(|i| i.to_string()).collect();
    info!(
        "mcrelay {} listening on udp {addr}, group {} on {}",
        env!("CARGO_PKG_VERSION"),
        listen.group,
        ifaces.join(", ")
    );
    info!("server key fingerprint (sha256) {fingerprint}");
    server.run().map_err(|e| format!("event loop failed: {e}"))
}

/// SIGHUP: re-read both token files; a file that became unreadable keeps the old token.
fn reload_tokens(
    relay: &mut Relay,
    admin: Option<&mut Admin>,
    relay_file: Option<&str>,
    admin_file: Option<&str>,
) {
    if let Some(path) = relay_file {
        match read_token_file(path) {
            Ok(t) => {
                relay.set_access_token(Some(t));
                info!("SIGHUP: re-read token file {path}");
            }
            Err(e) => warn!("SIGHUP: {e}; keeping the old token"),
        }
    }
    if let (Some(path), Some(admin)) = (admin_file, admin) {
        match read_token_file(path) {
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
