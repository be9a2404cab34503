//! `mcrelay serve`: flags → config → sockets → the loop.

mod options;

pub use options::*;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use log::{info, warn};
use mcrelay::logring;
use mcrelay::Credentials;
use mcrelay::ServerKey;
use mcrelay::{open_udp, Listen, Server, Signals};
use mcrelay::{Admin, AdminConfig};
use mcrelay::{Relay, Transmits};

use super::read_token_file;
use mcrelay::configfile::{self as config_file};

/// Parses `serve` flags (and config file) and runs the relay until a
/// signal stops it.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    // The command line as given, for re-reading the config file on SIGHUP
    // (`mcrelay serve ARGS`: the arguments after the subcommand).
    let command_line: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let (opts, config_path, print) = options(args)?;
    let mut running = opts.values();
    if print {
        print!("{}", config_file::render(&opts.values(), FLAGS));
        return Ok(());
    }
    let ServeOptions {
        listen,
        mut config,
        downlinks,
        key_file,
        rsa_bits,
        rsa_rate,
        token_file,
        clients_file,
        federation,
        admin_bind,
        admin_port,
        no_admin,
        admin_max_sessions,
        admin_token_file,
        admin_insecure: _,
        level,
        log_ring,
    } = opts;

    logring::init(level, log_ring);
    if let Some(path) = &token_file {
        config.access_token = Some(read_access_token(path)?);
    }
    if let Some(path) = &clients_file {
        let table = load_clients(path, config.access_token.as_deref())?;
        info!("clients file {path}: {} named clients", table.len());
        config.credentials = Some(Arc::new(table));
    }
    let key = match &key_file {
        Some(path) => {
            let (key, created) =
                mcrelay::load_or_create(Path::new(path), rsa_bits).map_err(|e| e.to_string())?;
            if created {
                info!("created key file {path} (mode 0600)");
            }
            key
        }
        None => ServerKey::generate_bits(rsa_bits).map_err(|e| e.to_string())?,
    };
    // A key file keeps its size: the default budget follows the key in use.
    config.rsa_rate = rsa_rate.unwrap_or(default_rsa_rate(key.bits()));
    let fingerprint = key.fingerprint();
    let key_bits = key.bits();
    let rsa_budget = config.rsa_rate;
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
        move |relay: &mut Relay, admin: Option<&mut Admin>, out: &mut Transmits| {
            reload_tokens(
                relay,
                admin,
                token_file.as_deref(),
                admin_token_file.as_deref(),
            );
            if let Some(path) = clients_file.as_deref() {
                reload_clients(relay, path, out);
            }
            if let Some(path) = config_path.as_deref() {
                reload_config(relay, path, &command_line, &mut running);
            }
        },
    ));
    let addrs = server.local_addrs().map_err(|e| e.to_string())?;
    // Federation: the default subject names the group and the bound port.
    let fed_group = listen
        .group_v4
        .map(IpAddr::V4)
        .or(listen.group_v6.map(IpAddr::V6));
    let bound_port = addrs.first().map_or(listen.port, SocketAddr::port);
    if let Some(link) = federation.link(fed_group, bound_port)? {
        server.federate(link);
    }
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
    info!("server key RSA-{key_bits}, at most {rsa_budget} decryptions/s");
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

/// SIGHUP with `--config`: reads the file (and the command line) again,
/// applies what can change while running (log level, client timeout,
/// client caps), and logs every change, saying which need a restart. A
/// file that no longer parses keeps the running configuration.
fn reload_config(
    relay: &mut Relay,
    path: &str,
    command_line: &[std::ffi::OsString],
    running: &mut config_file::Values,
) {
    let (new, _, _) = match options(pico_args::Arguments::from_vec(command_line.to_vec())) {
        Ok(parsed) => parsed,
        Err(e) => {
            warn!("SIGHUP: config file {path}: {e}; keeping the running configuration");
            return;
        }
    };
    let changes = config_file::changes(running, &new.values(), FLAGS);
    if changes.is_empty() {
        info!("SIGHUP: config file {path} unchanged");
    }
    for c in &changes {
        match c.applies {
            config_file::Applies::Reload => info!("SIGHUP: {c}"),
            config_file::Applies::Restart => warn!("SIGHUP: {c}"),
        }
    }
    logring::set_stderr_level(new.level);
    let c = &new.config;
    relay.set_limits(c.client_timeout, c.max_clients, c.max_clients_per_ip);
    // What needs a restart keeps its running value, so it is reported
    // again at the next reload until the relay restarts.
    for change in changes {
        if change.applies == config_file::Applies::Reload {
            if let Some(slot) = running.iter_mut().find(|(k, _)| *k == change.key) {
                slot.1 = change.new;
            }
        }
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

/// The clients file, checked as at start-up (and on SIGHUP): a shared
/// token that is also a named client's would make that client anonymous.
fn load_clients(path: &str, shared: Option<&[u8]>) -> Result<Credentials, String> {
    let table = mcrelay::clientsfile::load(Path::new(path)).map_err(|e| e.to_string())?;
    if let Some(named) = shared.and_then(|t| table.lookup(t)) {
        return Err(format!(
            "clients file {path}: the --token-file token is also {}'s token; give {} its own",
            named.name, named.name
        ));
    }
    Ok(table)
}

/// SIGHUP: re-reads the clients file with the start-up checks and hands
/// the table to the relay, which ends revoked sessions and narrows
/// permissions at once; a file that became unreadable or invalid keeps the
/// old table (and says why).
fn reload_clients(relay: &mut Relay, path: &str, out: &mut Transmits) {
    let shared = relay.access_token().map(<[u8]>::to_vec);
    match load_clients(path, shared.as_deref()) {
        Ok(table) => {
            let change = relay
                .credentials()
                .map(|old| old.diff(&table).to_string())
                .unwrap_or_default();
            let n = table.len();
            let revoked = relay.set_credentials(Some(Arc::new(table)), out);
            info!(
                "SIGHUP: re-read clients file {path}: {n} named clients; {change}; {revoked} sessions revoked"
            );
        }
        Err(e) => warn!("SIGHUP: {e}; keeping the old clients"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::finish;
    use mcrelay::configfile::{changes, Applies};

    fn parsed(args: &[&str]) -> ServeOptions {
        let mut a = pico_args::Arguments::from_vec(args.iter().map(Into::into).collect());
        let o = ServeOptions::parse(&mut a).unwrap();
        finish(a).unwrap();
        o
    }

    /// The config keys are exactly the flags `--help` lists (bar the two
    /// about the config file itself), in the same order.
    #[test]
    fn flags_table_matches_help() {
        let help: Vec<&str> = HELP
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("--"))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|f| !["config", "print-config"].contains(f))
            .collect();
        let keys: Vec<&str> = FLAGS.iter().map(|f| f.name).collect();
        assert_eq!(help, keys);
        let values = parsed(&[]).values();
        assert_eq!(values.iter().map(|(k, _)| *k).collect::<Vec<_>>(), keys);
    }

    /// Two parsed configurations: what a reload applies and what needs a
    /// restart.
    #[test]
    fn reload_plan_between_two_configs() {
        let old = parsed(&["--token-file", "/etc/a", "--log-level", "info"]);
        let new = parsed(&[
            "--token-file",
            "/etc/b",
            "--log-level",
            "debug",
            "--port",
            "6000",
            "--client-timeout",
            "30",
            "--iface",
            "eth0",
            "--clients-file",
            "/etc/clients",
        ]);
        let plan = changes(&old.values(), &new.values(), FLAGS);
        let got: Vec<(&str, Applies)> = plan.iter().map(|c| (c.key, c.applies)).collect();
        assert_eq!(
            got,
            [
                ("port", Applies::Restart),
                ("iface", Applies::Restart),
                // A file's contents are re-read at every reload; another
                // path takes a restart.
                ("token-file", Applies::Restart),
                ("clients-file", Applies::Restart),
                ("client-timeout", Applies::Reload),
                ("log-level", Applies::Reload),
            ]
        );
        assert_eq!(
            plan[1].to_string(),
            "iface: [\"0.0.0.0\"] -> [\"eth0\"] (needs a restart)"
        );
        assert_eq!(
            plan[3].to_string(),
            "clients-file: (not set) -> \"/etc/clients\" (needs a restart)"
        );
        assert!(changes(&new.values(), &new.values(), FLAGS).is_empty());
    }

    #[test]
    fn rsa_rate_follows_the_key_unless_given() {
        assert_eq!(default_rsa_rate(2048), 200);
        assert_eq!(default_rsa_rate(3072), 60);
        assert_eq!(default_rsa_rate(4096), 25);
        let o = parsed(&["--rsa-bits", "4096"]);
        assert_eq!((o.rsa_rate, o.config.rsa_rate), (None, 25));
        let o = parsed(&["--rsa-bits", "4096", "--rsa-rate", "80"]);
        assert_eq!((o.rsa_rate, o.config.rsa_rate), (Some(80), 80));
        let mut a = pico_args::Arguments::from_vec(vec!["--rsa-bits".into(), "1024".into()]);
        assert!(ServeOptions::parse(&mut a)
            .unwrap_err()
            .contains("2048, 3072 or 4096"));
    }
}
