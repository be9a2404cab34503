//! The federation flags of `mcrelay serve` (`--federate` and its company)
//! and the link they make: seeds resolved to addresses once at start (the
//! loop never waits on DNS), the key and credentials files read, the
//! relay's name and subject settled.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use mcrelay::configfile::{toml_string, Values};
use mcrelay::{load_federation_key, load_nats_auth, Link, LinkConfig};

use super::{many, opt};

/// The default NATS client port.
const NATS_PORT: u16 = 4222;

/// The federation flags, as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederationOptions {
    /// `--federate`, split at commas.
    pub seeds: Vec<String>,
    /// `--federation-key-file`.
    pub key_file: Option<String>,
    /// `--relay-name`.
    pub relay_name: Option<String>,
    /// `--federation-subject`.
    pub subject: Option<String>,
    /// `--announce-period` in seconds.
    pub announce_period: u64,
    /// `--nats-user`.
    pub nats_user: Option<String>,
    /// `--nats-password-file`.
    pub nats_password_file: Option<String>,
    /// `--nats-token-file`.
    pub nats_token_file: Option<String>,
}

impl FederationOptions {
    /// Takes the federation flags out of `args` and checks each alone and
    /// together.
    ///
    /// # Errors
    /// One line naming the flag.
    pub fn parse(args: &mut pico_args::Arguments) -> Result<Self, String> {
        let seeds: Vec<String> = many::<String>(args, "--federate")?
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for s in &seeds {
            host_port(s)?;
        }
        let o = FederationOptions {
            seeds,
            key_file: opt(args, "--federation-key-file")?,
            relay_name: opt(args, "--relay-name")?,
            subject: opt(args, "--federation-subject")?,
            announce_period: opt(args, "--announce-period")?.unwrap_or(5),
            nats_user: opt(args, "--nats-user")?,
            nats_password_file: opt(args, "--nats-password-file")?,
            nats_token_file: opt(args, "--nats-token-file")?,
        };
        if !(1..=3600).contains(&o.announce_period) {
            return Err(format!(
                "--announce-period {} is outside 1..=3600",
                o.announce_period
            ));
        }
        if let Some(name) = &o.relay_name {
            if !valid_relay_name(name) {
                return Err(format!(
                    "--relay-name '{name}': use 1-64 letters, digits, '.', '-' and '_'"
                ));
            }
        }
        if o.enabled() && o.key_file.is_none() {
            return Err("--federate needs --federation-key-file".into());
        }
        Ok(o)
    }

    /// True with `--federate`.
    pub fn enabled(&self) -> bool {
        !self.seeds.is_empty()
    }

    /// The keys' effective values, in `FLAGS` order.
    pub fn values(&self) -> Values {
        let path = |p: &Option<String>| p.as_deref().map(toml_string);
        let seeds: Vec<String> = self.seeds.iter().map(|s| toml_string(s)).collect();
        vec![
            ("federate", Some(format!("[{}]", seeds.join(", ")))),
            ("federation-key-file", path(&self.key_file)),
            ("relay-name", path(&self.relay_name)),
            ("federation-subject", path(&self.subject)),
            ("announce-period", Some(self.announce_period.to_string())),
            ("nats-user", path(&self.nats_user)),
            ("nats-password-file", path(&self.nats_password_file)),
            ("nats-token-file", path(&self.nats_token_file)),
        ]
    }

    /// The link (None when not federated): seeds resolved, key and
    /// credentials read, name and subject settled. `group` is the group
    /// the default subject is named after, `port` the bound UDP port.
    ///
    /// # Errors
    /// One line naming the flag or file.
    pub fn link(&self, group: Option<IpAddr>, port: u16) -> Result<Option<Link>, String> {
        if !self.enabled() {
            return Ok(None);
        }
        let mut servers = Vec::new();
        for s in &self.seeds {
            let (host, p) = host_port(s)?;
            let found = (host.as_str(), p)
                .to_socket_addrs()
                .map_err(|e| format!("--federate {s}: {e}"))?;
            for a in found {
                if !servers.contains(&a) {
                    servers.push(a);
                }
            }
        }
        if servers.is_empty() {
            return Err("--federate: no address found".into());
        }
        let key_file = self
            .key_file
            .as_deref()
            .ok_or("--federate needs --federation-key-file")?;
        let key = load_federation_key(Path::new(key_file))?;
        let name = match &self.relay_name {
            Some(n) => n.clone(),
            None => {
                let host = host_name()?;
                if !valid_relay_name(&host) {
                    return Err(format!(
                        "the host name '{host}' is no relay name: give --relay-name"
                    ));
                }
                host
            }
        };
        let subject = match &self.subject {
            Some(s) => s.clone(),
            None => default_subject(group, port),
        };
        let mut config = LinkConfig::new(servers, &subject, &name);
        config.announce_period = Duration::from_secs(self.announce_period);
        config.auth = load_nats_auth(
            self.nats_user.as_deref(),
            self.nats_password_file.as_deref().map(Path::new),
            self.nats_token_file.as_deref().map(Path::new),
        )?;
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let link = Link::new(config, key, Instant::now(), unix_ms, rand::random())
            .map_err(|e| e.to_string())?;
        log::info!("federation: relay {name} on subject {subject}");
        Ok(Some(link))
    }
}

/// `nats://HOST:PORT` (scheme and port optional) as host and port.
fn host_port(seed: &str) -> Result<(String, u16), String> {
    let rest = seed.strip_prefix("nats://").unwrap_or(seed);
    let bad = || format!("--federate {seed}: expected nats://HOST:PORT");
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    // [v6]:port, host:port, or a bare host.
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => NATS_PORT,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') && !host.is_empty() => {
            Ok((host.to_string(), p.parse().map_err(|_| bad())?))
        }
        Some(_) => Err(bad()),
        None => Ok((rest.to_string(), NATS_PORT)),
    }
}

/// `mcrelay.<group>.<port>`, the group's dots and colons as dashes.
pub fn default_subject(group: Option<IpAddr>, port: u16) -> String {
    let group = group.map_or("none".to_string(), |g| {
        g.to_string().replace(['.', ':'], "-")
    });
    format!("mcrelay.{group}.{port}")
}

/// `[A-Za-z0-9._-]{1,64}`.
fn valid_relay_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The kernel's host name.
fn host_name() -> Result<String, String> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map_err(|e| format!("cannot read the host name ({e}): give --relay-name"))?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_subjects() {
        assert_eq!(
            host_port("nats://127.0.0.1:4222"),
            Ok(("127.0.0.1".into(), 4222))
        );
        assert_eq!(
            host_port("nats.example:5000"),
            Ok(("nats.example".into(), 5000))
        );
        assert_eq!(host_port("nats://[::1]:7"), Ok(("::1".into(), 7)));
        assert_eq!(host_port("nats://[::1]"), Ok(("::1".into(), 4222)));
        assert_eq!(host_port("hub"), Ok(("hub".into(), 4222)));
        for bad in ["nats://", "nats://u:p@h:1", "h:x", "tls://h:1", "::1:5"] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            default_subject(Some("239.255.0.77".parse().unwrap()), 5007),
            "mcrelay.239-255-0-77.5007"
        );
        assert_eq!(
            default_subject(Some("ff02::77".parse().unwrap()), 5007),
            "mcrelay.ff02--77.5007"
        );
        assert!(valid_relay_name("office-1.lan_a"));
        assert!(
            !valid_relay_name("a/b") && !valid_relay_name("") && !valid_relay_name(&"a".repeat(65))
        );
    }

    #[test]
    fn federate_needs_a_key_file() {
        let parse = |a: &[&str]| {
            let mut args = pico_args::Arguments::from_vec(a.iter().map(Into::into).collect());
            FederationOptions::parse(&mut args)
        };
        assert!(parse(&["--federate", "nats://127.0.0.1:4222"])
            .unwrap_err()
            .contains("--federation-key-file"));
        let o = parse(&[
            "--federate",
            "nats://a:1,nats://b:2",
            "--federate",
            "c:3",
            "--federation-key-file",
            "k",
        ])
        .unwrap();
        assert_eq!(o.seeds, ["nats://a:1", "nats://b:2", "c:3"]);
        assert!(parse(&["--relay-name", "a b"]).is_err());
        assert!(parse(&["--announce-period", "0"]).is_err());
        assert!(!parse(&[]).unwrap().enabled());
    }
}
