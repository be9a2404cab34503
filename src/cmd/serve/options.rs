//! `mcrelay serve`'s options: the flags, their table (the config file's
//! keys), their checks, and the effective configuration.

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;
use mcrelay::Config;
use mcrelay::KEY_SIZES;
use mcrelay::{IfaceSpec, Listen};

use crate::cmd::federate::FederationOptions;
use crate::cmd::{finish, many, opt};
use mcrelay::configfile::{self as config_file, toml_string, Arity, Flag, Values};

pub const HELP: &str = "\
mcrelay serve: run the relay

USAGE:
    mcrelay serve [OPTIONS]

With no options it relays on port 5007 over IPv4 and IPv6, joined to
239.255.0.77 and ff02::77, with a fresh in-memory key.

CONFIGURATION:
    --config PATH                a TOML file whose keys are these flags' long names:
                                 `client-timeout = 60`, `iface = [\"br-lan\", \"lan0.20\"]`,
                                 `no-admin = true`; flags given here override its keys
    --print-config               print the effective configuration (every key) as TOML
                                 and exit

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
    --key-file PATH              PKCS#8 PEM RSA key (2048, 3072 or 4096 bits); created
                                 (mode 0600) if missing [default: a new key in memory only]
    --rsa-bits BITS              size of a key generated here: 2048, 3072 or 4096 (a key
                                 file that exists keeps its size) [default: 2048]
    --token-file PATH            access token every client must present [default: none]
    --clients-file PATH          named clients: `NAME SHA256_HEX_OF_TOKEN [pub|sub|pubsub]`
                                 per line (see `mcrelay client`); a client must present a
                                 listed token, or the --token-file token when both are given
                                 [default: none]

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
                                 use a quarter of them [default: by the key's size: 200
                                 for 2048 bits, 60 for 3072, 25 for 4096]

REASSEMBLY (fragments of large messages):
    --reassembly-partials N      partial messages per client [default: 8]
    --reassembly-client-bytes N  bytes buffered per client [default: 262144]
    --reassembly-total-bytes N   bytes buffered in total [default: 8388608]
    --reassembly-message-bytes N largest reassembled message [default: 65536]
    --reassembly-age SECS        drop partial messages older than this [default: 10]

FEDERATION (one group across relays, through NATS; see README):
    --federate nats://HOST:PORT[,nats://...]
                                 NATS servers to start from (the cluster's others are
                                 learned from them); repeatable [default: not federated]
    --federation-key-file PATH   the Fernet key every relay of the federation shares
                                 (`mcrelay federation-key`); required with --federate
    --relay-name NAME            this relay's name in the federation, unique in it:
                                 1-64 of A-Z a-z 0-9 . _ - [default: the host name]
    --federation-subject SUBJECT the NATS subject the relays share
                                 [default: mcrelay.<group>.<port>, '.' and ':' of the
                                 group as '-'; the IPv4 group, else the IPv6 one]
    --announce-period SECS       how often the member list is announced; a relay silent
                                 for three periods is gone [default: 5]
    --nats-user USER             NATS user, with --nats-password-file
    --nats-password-file PATH    NATS password (the file's contents, trimmed)
    --nats-token-file PATH       NATS token instead of user and password

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

/// Every `serve` flag, in `--help` order: the config file's keys.
pub const FLAGS: &[Flag] = &[
    flag("group", Arity::List, false),
    flag("port", Arity::Value, false),
    flag("iface", Arity::List, false),
    flag("recv-buffer", Arity::Value, false),
    flag("max-datagram", Arity::Value, false),
    unset("key-file", false, "not set: a new key in memory only"),
    flag("rsa-bits", Arity::Value, false),
    unset("token-file", false, "not set: no shared token"),
    unset("clients-file", false, "not set: no named clients"),
    flag("no-group-mode", Arity::Switch, false),
    flag("downlink", Arity::List, false),
    flag("ttl", Arity::Value, false),
    flag("client-timeout", Arity::Value, true),
    flag("max-clients", Arity::Value, true),
    flag("max-clients-per-ip", Arity::Value, true),
    flag("handshake-rate", Arity::Value, false),
    flag("handshake-burst", Arity::Value, false),
    unset(
        "rsa-rate",
        false,
        "not set: by the key's size, 200 for 2048 bits, 60 for 3072, 25 for 4096",
    ),
    flag("reassembly-partials", Arity::Value, false),
    flag("reassembly-client-bytes", Arity::Value, false),
    flag("reassembly-total-bytes", Arity::Value, false),
    flag("reassembly-message-bytes", Arity::Value, false),
    flag("reassembly-age", Arity::Value, false),
    flag("federate", Arity::List, false),
    unset(
        "federation-key-file",
        false,
        "not set: required with federate",
    ),
    unset("relay-name", false, "not set: the host name"),
    unset(
        "federation-subject",
        false,
        "not set: mcrelay.<group>.<port>",
    ),
    flag("announce-period", Arity::Value, false),
    unset("nats-user", false, "not set: no NATS user"),
    unset("nats-password-file", false, "not set: no NATS password"),
    unset("nats-token-file", false, "not set: no NATS token"),
    flag("admin-bind", Arity::Value, false),
    flag("admin-port", Arity::Value, false),
    flag("no-admin", Arity::Switch, false),
    flag("admin-max-sessions", Arity::Value, false),
    unset("admin-token-file", false, "not set: no admin token"),
    flag("admin-insecure", Arity::Switch, false),
    flag("log-level", Arity::Value, true),
    flag("log-ring", Arity::Value, false),
];

const fn flag(name: &'static str, arity: Arity, reload: bool) -> Flag {
    Flag {
        name,
        arity,
        reload,
        unset: "",
    }
}

const fn unset(name: &'static str, reload: bool, unset: &'static str) -> Flag {
    Flag {
        name,
        arity: Arity::Value,
        reload,
        unset,
    }
}

/// The RSA decryptions per second allowed by default for a key of `bits`:
/// a decryption's cost grows with the cube of the size, and the budget
/// keeps a handshake flood to under half a core.
pub fn default_rsa_rate(bits: usize) -> u32 {
    match bits {
        0..=2048 => 200,
        2049..=3072 => 60,
        _ => 25,
    }
}

/// Everything `serve` was told, by flags and config file together.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Port, groups, interfaces, receive buffer.
    pub listen: Listen,
    /// The relay core's tunables (its `rsa_rate` is settled once the key's
    /// size is known, from `rsa_rate` below).
    pub config: Config,
    /// `--downlink` (checked against the sockets once they are open).
    pub downlinks: Vec<SocketAddr>,
    /// `--key-file`.
    pub key_file: Option<String>,
    /// `--rsa-bits`: the size of a key generated here.
    pub rsa_bits: usize,
    /// `--rsa-rate`, if given (else by the key's size).
    pub rsa_rate: Option<u32>,
    /// `--token-file`.
    pub token_file: Option<String>,
    /// `--clients-file`.
    pub clients_file: Option<String>,
    /// `--federate` and the other federation flags.
    pub federation: FederationOptions,
    /// `--admin-bind`.
    pub admin_bind: IpAddr,
    /// `--admin-port`.
    pub admin_port: u16,
    /// `--no-admin`.
    pub no_admin: bool,
    /// `--admin-max-sessions`.
    pub admin_max_sessions: usize,
    /// `--admin-token-file`.
    pub admin_token_file: Option<String>,
    /// `--admin-insecure`.
    pub admin_insecure: bool,
    /// `--log-level`.
    pub level: LevelFilter,
    /// `--log-ring`.
    pub log_ring: usize,
}

impl ServeOptions {
    /// Takes every `serve` flag out of `args` (what is left is the
    /// caller's to refuse). Checks each flag's own value; [`Self::check`]
    /// does the checks that involve several.
    ///
    /// # Errors
    /// One line naming the flag.
    pub fn parse(args: &mut pico_args::Arguments) -> Result<Self, String> {
        let mut listen = Listen::default();
        let groups: Vec<IpAddr> = many(args, "--group")?;
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
        listen.port = opt(args, "--port")?.unwrap_or(listen.port);
        let ifaces: Vec<IfaceSpec> = many(args, "--iface")?;
        if !ifaces.is_empty() {
            listen.ifaces = ifaces;
        }
        // The kernel's usual 208 KiB holds only ~2 ms of a 100k/s flood; a bigger
        // buffer lets legitimate handshakes survive bursts.
        listen.recv_buffer =
            Some(ranged(args, "--recv-buffer", 1024..=1 << 30)?.unwrap_or(1 << 20));
        let downlinks: Vec<SocketAddr> = many(args, "--downlink")?;
        listen.downlink_ttl = ranged(args, "--ttl", 0..=255)?.unwrap_or(listen.downlink_ttl);
        let mut config = Config::default();
        config.group_mode = !args.contains("--no-group-mode");
        config.max_datagram = opt(args, "--max-datagram")?.unwrap_or(config.max_datagram);
        if !(548..=65507).contains(&config.max_datagram) {
            return Err(format!(
                "--max-datagram {} is outside 548..=65507 (548: what every IPv4 host accepts)",
                config.max_datagram
            ));
        }
        let key_file: Option<String> = opt(args, "--key-file")?;
        let rsa_bits: usize = opt(args, "--rsa-bits")?.unwrap_or(KEY_SIZES[0]);
        if !KEY_SIZES.contains(&rsa_bits) {
            return Err(format!("--rsa-bits {rsa_bits}: 2048, 3072 or 4096"));
        }
        let token_file: Option<String> = opt(args, "--token-file")?;
        let clients_file: Option<String> = opt(args, "--clients-file")?;
        // Ranges: 0 (or a huge value) would switch a limit off or make it
        // meaningless; a typo must fail at start, not at 3 a.m.
        let secs = |v: Option<u64>, d: Duration| v.map(Duration::from_secs).unwrap_or(d);
        config.client_timeout = secs(
            ranged(args, "--client-timeout", 1..=86_400)?,
            config.client_timeout,
        );
        const MANY: u32 = 1_000_000;
        config.max_clients =
            ranged(args, "--max-clients", 1..=MANY as usize)?.unwrap_or(config.max_clients);
        // 0 = no per-host cap.
        config.max_clients_per_ip = ranged(args, "--max-clients-per-ip", 0..=MANY as usize)?
            .unwrap_or(config.max_clients_per_ip);
        config.handshake_rate =
            ranged(args, "--handshake-rate", 1..=MANY)?.unwrap_or(config.handshake_rate);
        config.handshake_burst =
            ranged(args, "--handshake-burst", 1..=MANY)?.unwrap_or(config.handshake_burst);
        let rsa_rate = ranged(args, "--rsa-rate", 1..=MANY)?;
        config.rsa_rate = rsa_rate.unwrap_or(default_rsa_rate(rsa_bits));
        const GIB: usize = 1 << 30;
        let r = &mut config.reassembly;
        r.max_partials_per_owner =
            ranged(args, "--reassembly-partials", 1..=1024)?.unwrap_or(r.max_partials_per_owner);
        r.max_bytes_per_owner =
            ranged(args, "--reassembly-client-bytes", 1..=GIB)?.unwrap_or(r.max_bytes_per_owner);
        r.max_total_bytes =
            ranged(args, "--reassembly-total-bytes", 1..=GIB)?.unwrap_or(r.max_total_bytes);
        r.max_message_bytes =
            ranged(args, "--reassembly-message-bytes", 1..=GIB)?.unwrap_or(r.max_message_bytes);
        r.max_age = secs(ranged(args, "--reassembly-age", 1..=3600)?, r.max_age);
        let federation = FederationOptions::parse(args)?;
        config.federation = federation.enabled();
        Ok(ServeOptions {
            listen,
            config,
            downlinks,
            key_file,
            rsa_bits,
            rsa_rate,
            token_file,
            clients_file,
            federation,
            admin_bind: opt(args, "--admin-bind")?.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            admin_port: opt(args, "--admin-port")?.unwrap_or(5008),
            no_admin: args.contains("--no-admin"),
            admin_max_sessions: ranged(args, "--admin-max-sessions", 1..=64)?.unwrap_or(4),
            admin_token_file: opt(args, "--admin-token-file")?,
            admin_insecure: args.contains("--admin-insecure"),
            level: opt(args, "--log-level")?.unwrap_or(LevelFilter::Info),
            log_ring: ranged(args, "--log-ring", 1..=65_536)?.unwrap_or(1024),
        })
    }

    /// The checks that involve several flags.
    ///
    /// # Errors
    /// One line naming the flags.
    pub fn check(&self) -> Result<(), String> {
        let bind = self.admin_bind;
        if !self.no_admin
            && !bind.is_loopback()
            && self.admin_token_file.is_none()
            && !self.admin_insecure
        {
            return Err(format!(
                "--admin-bind {bind} is not loopback: give --admin-token-file (or --admin-insecure)"
            ));
        }
        Ok(())
    }

    /// Every key's effective value as TOML text, in [`FLAGS`] order
    /// (`None`: not set, and no default stands for it).
    pub fn values(&self) -> Values {
        let int = |v: u64| Some(v.to_string());
        let path = |p: &Option<String>| p.as_deref().map(toml_string);
        let list = |items: Vec<String>| {
            let quoted: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
            Some(format!("[{}]", quoted.join(", ")))
        };
        let l = &self.listen;
        let c = &self.config;
        let r = &c.reassembly;
        let groups = [l.group_v4.map(IpAddr::V4), l.group_v6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .map(|g| g.to_string())
            .collect();
        // `any` would read back as an interface name: the kernel's choice is 0.0.0.0.
        let ifaces = l
            .ifaces
            .iter()
            .map(|i| match i {
                IfaceSpec::Any => "0.0.0.0".to_string(),
                other => other.to_string(),
            })
            .collect();
        let mut values = vec![
            ("group", list(groups)),
            ("port", int(l.port.into())),
            ("iface", list(ifaces)),
            ("recv-buffer", l.recv_buffer.and_then(|b| int(b as u64))),
            ("max-datagram", int(c.max_datagram as u64)),
            ("key-file", path(&self.key_file)),
            ("rsa-bits", int(self.rsa_bits as u64)),
            ("token-file", path(&self.token_file)),
            ("clients-file", path(&self.clients_file)),
            ("no-group-mode", Some((!c.group_mode).to_string())),
            (
                "downlink",
                list(self.downlinks.iter().map(|d| d.to_string()).collect()),
            ),
            ("ttl", int(l.downlink_ttl.into())),
            ("client-timeout", int(c.client_timeout.as_secs())),
            ("max-clients", int(c.max_clients as u64)),
            ("max-clients-per-ip", int(c.max_clients_per_ip as u64)),
            ("handshake-rate", int(c.handshake_rate.into())),
            ("handshake-burst", int(c.handshake_burst.into())),
            ("rsa-rate", self.rsa_rate.and_then(|r| int(r.into()))),
            ("reassembly-partials", int(r.max_partials_per_owner as u64)),
            ("reassembly-client-bytes", int(r.max_bytes_per_owner as u64)),
            ("reassembly-total-bytes", int(r.max_total_bytes as u64)),
            ("reassembly-message-bytes", int(r.max_message_bytes as u64)),
            ("reassembly-age", int(r.max_age.as_secs())),
        ];
        values.extend(self.federation.values());
        values.extend([
            (
                "admin-bind",
                Some(toml_string(&self.admin_bind.to_string())),
            ),
            ("admin-port", int(self.admin_port.into())),
            ("no-admin", Some(self.no_admin.to_string())),
            ("admin-max-sessions", int(self.admin_max_sessions as u64)),
            ("admin-token-file", path(&self.admin_token_file)),
            ("admin-insecure", Some(self.admin_insecure.to_string())),
            (
                "log-level",
                Some(toml_string(&self.level.to_string().to_lowercase())),
            ),
            ("log-ring", int(self.log_ring as u64)),
        ]);
        values
    }
}

/// Reads `--config`, `--print-config` and the flags: the effective options
/// (file keys the command line does not give, then the command line), the
/// config file's path, and whether to print them and exit.
///
/// # Errors
/// One line: a bad flag, or a config key, naming its line.
pub fn options(
    mut args: pico_args::Arguments,
) -> Result<(ServeOptions, Option<String>, bool), String> {
    let config_path: Option<String> = opt(&mut args, "--config")?;
    let print = args.contains("--print-config");
    let cli = args.finish();
    let merged = match &config_path {
        Some(path) => {
            let entries = config_file::read(path, FLAGS)?;
            // Each key alone through the flag parser: its error names it.
            for e in &entries {
                let mut one =
                    pico_args::Arguments::from_vec(e.args.iter().map(Into::into).collect());
                ServeOptions::parse(&mut one)
                    .and_then(|_| finish(one))
                    .map_err(|why| {
                        format!(
                            "config file {path} line {}: {}",
                            e.line,
                            why.replace(&format!("--{}", e.key), e.key)
                        )
                    })?;
            }
            config_file::merge(&entries, cli)
        }
        None => cli,
    };
    let mut args = pico_args::Arguments::from_vec(merged);
    let opts = ServeOptions::parse(&mut args)?;
    finish(args)?;
    opts.check()?;
    Ok((opts, config_path, print))
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
