//! The admin commands: what each line a session sends does, and the
//! `stats` lines. The session plumbing (reads, writes, limits) is in
//! `net::admin`.

use super::*;

pub(super) const COMMANDS: [&str; 15] = [
    "help",
    "federation",
    "ifaces",
    "clients",
    "stats",
    "kick",
    "ban",
    "unban",
    "bans",
    "log",
    "fingerprint",
    "version",
    "shutdown",
    "quit",
    "auth",
];

pub(super) const HELP: &str = "\
help               this list
clients            one line per client: id, idle seconds, messages/bytes in and out, partial fragments, name (if named), permissions, mode (v1, v2, group)
clients remote     one line per member of the other federated relays: RELAY/ID relay=RELAY mode=remote
clients all        the local clients, then the remote members
stats              counters, one `name value` per line
stats prometheus   the same in the Prometheus text format (0.0.4)
kick ID|NAME       remove client ID (ip:port or NAME@ip:port), or every session of NAME; it and the others are told it was kicked
ban ID|NAME|IP [SECS] keep out an address (ip:port or NAME@ip:port), a host (IP) or a name, for SECS or until unban; ends its sessions
unban ID|NAME|IP   lift that ban
bans               one line per ban: target and seconds left (or `until unban`)
log LEVEL|off      live log level of this session: error, warn, info, debug, trace or off
log tail N         the last N lines of the log ring
fingerprint        SHA-256 fingerprint of the server key
federation         the NATS link (state, server), one line per remote relay (members, seconds since heard, alive|unreachable), the link counters
ifaces             each served interface: per family joined, waiting, error or n/a
version            the server's version
shutdown           tell every client the server is closing, then exit
quit               close this session
auth TOKEN         authenticate (when the server has an admin token)
";

impl Admin {
    /// What `stats` prints, as (name, value): the relay's gauges and
    /// counters, then the admin channel's own. `stats prometheus` renders
    /// the same list.
    pub(super) fn stats_lines(&self, relay: &Relay, now: Instant) -> Vec<(String, u64)> {
        let mut lines = vec![
            (
                "uptime".to_string(),
                now.saturating_duration_since(relay.started()).as_secs(),
            ),
            ("clients".to_string(), relay.client_count() as u64),
            (
                "reassembly_bytes".to_string(),
                relay.reassembly_bytes() as u64,
            ),
        ];
        relay
            .stats()
            .for_each(|name, v| lines.push((name.to_string(), v)));
        for (name, v) in [
            ("admin_sessions", self.sessions.len() as u64),
            ("admin_sessions_total", self.sessions_total),
            ("admin_closed_abuse", self.closed_abuse),
            ("admin_closed_bad_auth", self.closed_bad_auth),
            ("admin_reply_waits", self.reply_waits),
            ("log_lines_dropped", self.lines_dropped),
        ] {
            lines.push((name.to_string(), v));
        }
        if let Some(view) = &self.federation {
            lines.extend(view.counters.iter().cloned());
        }
        lines
    }

    pub(super) fn command(
        &mut self,
        key: usize,
        line: &str,
        relay: &mut Relay,
        out: &mut Transmits,
        now: Instant,
    ) -> Action {
        let (cmd, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        let s = &mut self.sessions[key];
        if !s.authed {
            // Not logged: the line may be a mistyped token.
            match cmd {
                "auth" => {
                    let want = self.config.token.as_deref().unwrap_or_default();
                    if ct_eq(want, arg.as_bytes()) {
                        s.authed = true;
                        s.abuse = 0;
                        s.cursor = logring::with_ring(|r| r.end());
                        info!("admin session from {} authenticated", s.peer);
                        s.reply("OK");
                    } else {
                        s.bad_auth += 1;
                        warn!("admin session from {}: bad token", s.peer);
                        s.reply("ERR bad token");
                        if s.bad_auth >= MAX_BAD_AUTH {
                            s.closing = true;
                            self.closed_bad_auth += 1;
                        }
                    }
                }
                "quit" => {
                    s.reply("OK");
                    s.closing = true;
                }
                _ => self.abuse(key, "auth required"),
            }
            return Action::None;
        }
        if line.is_empty() {
            return Action::None;
        }
        if !COMMANDS.contains(&cmd) {
            self.abuse(key, &format!("unknown command: {cmd} (try help)"));
            return Action::None;
        }
        if cmd != "auth" {
            debug!("admin {}: {cmd}", s.peer);
        }
        s.abuse = 0;
        match (cmd, arg) {
            ("federation", "") => match &self.federation {
                Some(view) => {
                    for line in &view.lines {
                        s.reply(line);
                    }
                    s.reply("OK");
                }
                None => s.reply("ERR federation is off"),
            },
            ("ifaces", "") => {
                for line in &self.ifaces {
                    s.reply(line);
                }
                s.reply("OK");
            }
            ("help", "") => {
                s.reply(HELP);
                s.reply("OK");
            }
            ("clients", "remote") if self.federation.is_none() => {
                s.reply("ERR federation is off");
            }
            ("clients", which @ ("" | "remote" | "all")) => {
                let mut text = String::new();
                let mut more = 0usize;
                let local = if which == "remote" {
                    Vec::new()
                } else {
                    relay.clients(now)
                };
                for c in local {
                    if text.len() >= MAX_REPLY {
                        more += 1;
                        continue;
                    }
                    let name = c.id.name().map(|n| format!("name={n} "));
                    text.push_str(&format!(
                        "{} idle={} in={}/{} out={}/{} partials={} {}perms={} mode={}\n",
                        c.id,
                        c.idle.as_secs(),
                        c.msgs_in,
                        c.bytes_in,
                        c.msgs_out,
                        c.bytes_out,
                        c.partials,
                        name.unwrap_or_default(),
                        c.perms,
                        c.mode
                    ));
                }
                if more > 0 {
                    text.push_str(&format!("... {more} more clients\n"));
                }
                if let Some(view) = self.federation.as_ref().filter(|_| !which.is_empty()) {
                    // A remote member's id is RELAY/ID; its relay is
                    // repeated so a script need not split ids.
                    let mut shown = 0usize;
                    for (relay, id) in &view.remote_members {
                        if text.len() >= MAX_REPLY {
                            break;
                        }
                        text.push_str(&format!("{relay}/{id} relay={relay} mode=remote\n"));
                        shown += 1;
                    }
                    if view.remote_total > shown {
                        let more = view.remote_total - shown;
                        text.push_str(&format!("... {more} more remote members\n"));
                    }
                }
                s.reply(&text);
                s.reply("OK");
            }
            ("stats", "") => {
                let mut text = String::new();
                for (name, v) in self.stats_lines(relay, now) {
                    text.push_str(&format!("{name} {v}\n"));
                }
                let s = &mut self.sessions[key];
                s.reply(&text);
                s.reply("OK");
            }
            ("stats", "prometheus") => {
                let lines = self.stats_lines(relay, now);
                let text = prometheus::render(
                    lines.iter().map(|(n, v)| (n.as_str(), *v)),
                    env!("CARGO_PKG_VERSION"),
                );
                let s = &mut self.sessions[key];
                s.reply(&text);
                s.reply("OK");
            }
            ("kick", id) if !id.is_empty() => {
                // An id (`ip:port`, `NAME@ip:port`) ends that session; a
                // bare name every session of that name.
                let kicked = match id.parse::<ClientId>() {
                    Ok(cid) => usize::from(relay.kick(&cid, out)),
                    Err(_) if valid_name(id) => relay.kick_name(id, out),
                    Err(_) => 0,
                };
                if kicked > 0 {
                    info!("admin {}: kicked {id} ({kicked} sessions)", s.peer);
                    s.reply("OK");
                } else {
                    s.reply(&format!("ERR no client {id}"));
                }
            }
            ("ban", arg) => {
                let mut words = arg.split_whitespace();
                let parsed = match (words.next(), words.next(), words.next()) {
                    (Some(t), secs, None) => t.parse::<BanTarget>().and_then(|t| {
                        let secs = secs
                            .map(|v| {
                                v.parse::<u64>()
                                    .ok()
                                    .filter(|&n| n > 0)
                                    .ok_or(format!("'{v}' is not a number of seconds"))
                            })
                            .transpose()?;
                        Ok((t, secs.map(Duration::from_secs)))
                    }),
                    _ => Err("usage: ban ID|NAME|IP [SECS]".to_string()),
                };
                match parsed.and_then(|(t, d)| relay.ban(t.clone(), d, now, out).map(|n| (t, d, n)))
                {
                    Ok((t, d, n)) => {
                        let time = d.map_or("until unban".to_string(), |d| {
                            format!("for {} s", d.as_secs())
                        });
                        info!("admin {}: banned {t} {time} ({n} sessions ended)", s.peer);
                        s.reply("OK");
                    }
                    Err(e) => s.reply(&format!("ERR {e}")),
                }
            }
            ("unban", arg) if !arg.is_empty() => match arg.parse::<BanTarget>() {
                Ok(t) if relay.unban(&t) => {
                    info!("admin {}: unbanned {t}", s.peer);
                    s.reply("OK");
                }
                Ok(t) => s.reply(&format!("ERR no ban of {t}")),
                Err(e) => s.reply(&format!("ERR {e}")),
            },
            ("bans", "") => {
                let mut text = String::new();
                for (t, left) in relay.bans(now) {
                    match left {
                        Some(d) => text.push_str(&format!("{t} {}\n", d.as_secs_f64().ceil())),
                        None => text.push_str(&format!("{t} until unban\n")),
                    }
                }
                s.reply(&text);
                s.reply("OK");
            }
            ("log", arg) => {
                let mut words = arg.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("tail"), Some(n), None) => match n.parse::<usize>() {
                        Ok(n) => {
                            s.reply(&log_tail(n));
                            s.reply("OK");
                        }
                        Err(_) => s.reply("ERR log tail needs a number"),
                    },
                    (Some(level), None, None) => match level.parse::<LevelFilter>() {
                        Ok(level) => {
                            s.level = level;
                            let most = self.sessions.iter().map(|(_, s)| s.level).max();
                            logring::set_ring_level(most.unwrap_or(LevelFilter::Info));
                            self.sessions[key].reply("OK");
                        }
                        Err(_) => {
                            s.reply("ERR level must be off, error, warn, info, debug or trace")
                        }
                    },
                    _ => s.reply("ERR usage: log LEVEL|off or log tail N"),
                }
            }
            ("fingerprint", "") => {
                s.reply(&relay.fingerprint());
                s.reply("OK");
            }
            ("version", "") => {
                s.reply(&format!("mcrelay {}", env!("CARGO_PKG_VERSION")));
                s.reply("OK");
            }
            ("shutdown", "") => {
                info!("admin {}: shutdown", s.peer);
                s.reply("OK");
                return Action::Shutdown;
            }
            ("quit", "") => {
                s.reply("OK");
                s.closing = true;
            }
            ("auth", _) => s.reply("OK"),
            _ => s.reply(&format!("ERR bad arguments for {cmd} (try help)")),
        }
        Action::None
    }
}

/// The newest of the last `n` ring lines that fit in [`MAX_REPLY`].
fn log_tail(n: usize) -> String {
    logring::with_ring(|r| {
        let mut size = 0;
        let newest_first: Vec<&str> = r
            .tail(n)
            .rev()
            .map(|l| l.text.as_str())
            .take_while(|t| {
                size += t.len() + 1;
                size <= MAX_REPLY
            })
            .collect();
        let mut text = String::with_capacity(size);
        for t in newest_first.iter().rev() {
            text.push_str(t);
            text.push('\n');
        }
        text
    })
}
