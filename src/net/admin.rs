//! The TCP admin channel: a person with `nc` (or a script) gets live log
//! lines and a few text commands. It lives in the relay's mio loop, so
//! nothing here may block: reads and writes stop at WouldBlock, output
//! per session is bounded, and a session that stops reading loses log
//! lines (and is told how many) instead of holding the loop.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info, warn, LevelFilter};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::net::logring;
use crate::relay::cookie::ct_eq;
use crate::relay::{Relay, Transmits};

/// Longest command line, without its line ending.
pub const MAX_LINE: usize = 512;
/// Pending output above which a session gets no more log lines.
const LOG_BUDGET: usize = 64 * 1024;
/// Pending output above which a session that never reads is closed.
const HARD_LIMIT: usize = 1024 * 1024;
/// Protocol abuse (over-long or non-UTF-8 lines) tolerated before closing.
const MAX_ABUSE: u8 = 5;
/// Wrong tokens tolerated before closing.
const MAX_BAD_AUTH: u8 = 3;

const HELP: &str = "\
help               this list
clients            one line per client: id, idle seconds, messages/bytes in and out, partial fragments
stats              counters, one `name value` per line
kick ID            remove client ID (ip:port); the others are told it was kicked
log LEVEL|off      live log level of this session: error, warn, info, debug, trace or off
log tail N         the last N lines of the log ring
fingerprint        SHA-256 fingerprint of the server key
version            the server's version
shutdown           tell every client the server is closing, then exit
quit               close this session
auth TOKEN         authenticate (when the server has an admin token)
";

/// Admin channel settings.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Sessions at once; one more gets `ERR busy`.
    pub max_sessions: usize,
    /// Token each session must present with `auth`, if set.
    pub token: Option<Vec<u8>>,
}

/// What the loop must do after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Shut the server down.
    Shutdown,
}

struct Session {
    stream: TcpStream,
    peer: SocketAddr,
    input: Vec<u8>,
    /// Dropping input until the next newline (after an over-long line).
    discarding: bool,
    output: Vec<u8>,
    written: usize,
    cursor: u64,
    level: LevelFilter,
    authed: bool,
    bad_auth: u8,
    abuse: u8,
    closing: bool,
}

impl Session {
    fn pending(&self) -> usize {
        self.output.len() - self.written
    }

    fn reply(&mut self, text: &str) {
        self.output.extend_from_slice(text.as_bytes());
        if !text.is_empty() && !text.ends_with('\n') {
            self.output.push(b'\n');
        }
    }
}

/// The listener and its sessions.
pub struct Admin {
    listener: TcpListener,
    listener_token: Token,
    first_session: usize,
    sessions: Slab<Session>,
    config: AdminConfig,
    lines_dropped: u64,
    sessions_total: u64,
}

impl Admin {
    /// Binds the listener (not yet registered).
    pub fn bind(config: AdminConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(config.bind)?;
        Ok(Admin {
            listener,
            listener_token: Token(usize::MAX),
            first_session: usize::MAX,
            sessions: Slab::new(),
            config,
            lines_dropped: 0,
            sessions_total: 0,
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Registers the listener as `listener`; sessions get tokens from `first_session` up.
    pub fn register(
        &mut self,
        registry: &Registry,
        listener: Token,
        first_session: usize,
    ) -> io::Result<()> {
        self.listener_token = listener;
        self.first_session = first_session;
        registry.register(&mut self.listener, listener, Interest::READABLE)
    }

    /// Replaces the admin token (SIGHUP).
    pub fn set_token(&mut self, token: Option<Vec<u8>>) {
        self.config.token = token;
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// True if `token` belongs to the admin channel.
    pub fn owns(&self, token: Token) -> bool {
        token == self.listener_token || token.0 >= self.first_session
    }

    /// Handles readiness of the listener or a session.
    pub fn handle(
        &mut self,
        registry: &Registry,
        token: Token,
        relay: &mut Relay,
        out: &mut Transmits,
        now: Instant,
    ) -> Action {
        if token == self.listener_token {
            self.accept(registry);
            return Action::None;
        }
        let key = token.0 - self.first_session;
        if !self.sessions.contains(key) {
            return Action::None;
        }
        let action = self.read_session(key, relay, out, now);
        if self.sessions[key].closing && self.sessions[key].pending() == 0 {
            self.close(registry, key);
        }
        action
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("admin accept: {e}");
                    return;
                }
            };
            if self.sessions.len() >= self.config.max_sessions {
                // Best effort: a fresh socket has room for 9 bytes.
                let _ = stream.write(b"ERR busy\n");
                info!("admin session from {peer} refused: busy");
                continue;
            }
            let entry = self.sessions.vacant_entry();
            let token = Token(self.first_session + entry.key());
            if let Err(e) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                warn!("admin register: {e}");
                continue;
            }
            let authed = self.config.token.is_none();
            let mut s = Session {
                stream,
                peer,
                input: Vec::new(),
                discarding: false,
                output: Vec::new(),
                written: 0,
                cursor: logring::with_ring(|r| r.end()),
                level: LevelFilter::Info,
                authed,
                bad_auth: 0,
                abuse: 0,
                closing: false,
            };
            s.reply(&format!(
                "mcrelay {} admin; type help{}",
                env!("CARGO_PKG_VERSION"),
                if authed { "" } else { " (auth required)" }
            ));
            entry.insert(s);
            self.sessions_total += 1;
            info!("admin session from {peer} opened");
        }
    }

    fn read_session(
        &mut self,
        key: usize,
        relay: &mut Relay,
        out: &mut Transmits,
        now: Instant,
    ) -> Action {
        let mut buf = [0u8; 1024];
        let mut action = Action::None;
        loop {
            let s = &mut self.sessions[key];
            if s.closing {
                return action;
            }
            let n = match s.stream.read(&mut buf) {
                Ok(0) => {
                    s.closing = true;
                    s.output.truncate(s.written); // the peer is gone: nothing more to say
                    return action;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return action,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    s.closing = true;
                    s.output.truncate(s.written);
                    return action;
                }
            };
            for &b in &buf[..n] {
                let s = &mut self.sessions[key];
                if s.closing {
                    break;
                }
                if b != b'\n' {
                    if s.discarding {
                        continue;
                    }
                    if s.input.len() > MAX_LINE {
                        // Over-long: say so once, drop the rest of the line.
                        s.input.clear();
                        s.discarding = true;
                        self.abuse(key, "line too long");
                    } else {
                        s.input.push(b);
                    }
                    continue;
                }
                if std::mem::take(&mut s.discarding) {
                    continue;
                }
                let mut line = std::mem::take(&mut s.input);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > MAX_LINE {
                    self.abuse(key, "line too long");
                    continue;
                }
                match String::from_utf8(line) {
                    Ok(text) => {
                        if self.command(key, text.trim(), relay, out, now) == Action::Shutdown {
                            action = Action::Shutdown;
                        }
                    }
                    Err(_) => self.abuse(key, "not UTF-8"),
                }
            }
        }
    }

    fn abuse(&mut self, key: usize, why: &str) {
        let s = &mut self.sessions[key];
        s.abuse += 1;
        s.reply(&format!("ERR {why}"));
        if s.abuse >= MAX_ABUSE {
            s.reply("ERR too many bad lines; closing");
            s.closing = true;
            warn!(
                "admin session from {} closed after {} bad lines",
                s.peer, s.abuse
            );
        }
    }

    fn command(
        &mut self,
        key: usize,
        line: &str,
        relay: &mut Relay,
        out: &mut Transmits,
        now: Instant,
    ) -> Action {
        if line.is_empty() {
            return Action::None;
        }
        let (cmd, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        let s = &mut self.sessions[key];
        if cmd != "auth" {
            debug!("admin {}: {cmd}", s.peer);
        }
        if !s.authed {
            if cmd == "auth" {
                let want = self.config.token.as_deref().unwrap_or_default();
                if ct_eq(want, arg.as_bytes()) {
                    s.authed = true;
                    s.cursor = logring::with_ring(|r| r.end());
                    info!("admin session from {} authenticated", s.peer);
                    s.reply("OK");
                } else {
                    s.bad_auth += 1;
                    warn!("admin session from {}: bad token", s.peer);
                    s.reply("ERR bad token");
                    if s.bad_auth >= MAX_BAD_AUTH {
                        s.closing = true;
                    }
                }
            } else if cmd == "quit" {
                s.reply("OK");
                s.closing = true;
            } else {
                s.reply("ERR auth required");
            }
            return Action::None;
        }
        match (cmd, arg) {
            ("help", "") => {
                s.reply(HELP);
                s.reply("OK");
            }
            ("clients", "") => {
                let mut text = String::new();
                for c in relay.clients(now) {
                    text.push_str(&format!(
                        "{} idle={} in={}/{} out={}/{} partials={}\n",
                        c.id,
                        c.idle.as_secs(),
                        c.msgs_in,
                        c.bytes_in,
                        c.msgs_out,
                        c.bytes_out,
                        c.partials
                    ));
                }
                s.reply(&text);
                s.reply("OK");
            }
            ("stats", "") => {
                let mut text = format!(
                    "uptime {}\nclients {}\nreassembly_bytes {}\n",
                    now.saturating_duration_since(relay.started()).as_secs(),
                    relay.client_count(),
                    relay.reassembly_bytes()
                );
                relay
                    .stats()
                    .for_each(|name, v| text.push_str(&format!("{name} {v}\n")));
                text.push_str(&format!(
                    "admin_sessions {}\nadmin_sessions_total {}\nlog_lines_dropped {}\n",
                    self.sessions.len(),
                    self.sessions_total,
                    self.lines_dropped
                ));
                let s = &mut self.sessions[key];
                s.reply(&text);
                s.reply("OK");
            }
            ("kick", id) if !id.is_empty() => {
                if id.parse().is_ok_and(|id| relay.kick(&id, out)) {
                    info!("admin {}: kicked {id}", s.peer);
                    s.reply("OK");
                } else {
                    s.reply(&format!("ERR no client {id}"));
                }
            }
            ("log", arg) => {
                let mut words = arg.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("tail"), Some(n), None) => match n.parse::<usize>() {
                        Ok(n) => {
                            let mut text = String::new();
                            logring::with_ring(|r| {
                                for l in r.tail(n) {
                                    text.push_str(&l.text);
                                    text.push('\n');
                                }
                            });
                            s.reply(&text);
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
            _ => s.reply(&format!(
                "ERR unknown command or bad arguments: {cmd} (try help)"
            )),
        }
        Action::None
    }

    /// Copies new log lines into every session's buffer and writes what the
    /// sockets accept. Call once per loop iteration.
    pub fn flush(&mut self, registry: &Registry) {
        let mut dropped = 0u64;
        let mut to_close = Vec::new();
        logring::with_ring(|ring| {
            for (key, s) in self.sessions.iter_mut() {
                if s.authed && !s.closing {
                    dropped += copy_log_lines(ring, s);
                }
                if write_pending(s).is_err()
                    || s.pending() > HARD_LIMIT
                    || (s.closing && s.pending() == 0)
                {
                    to_close.push(key);
                }
            }
        });
        self.lines_dropped += dropped;
        for key in to_close {
            self.close(registry, key);
        }
    }

    /// Sends `line` to every session and tries (briefly, without blocking)
    /// to get everything out: used just before the process exits.
    pub fn farewell(&mut self, registry: &Registry, line: &str) {
        for (_, s) in self.sessions.iter_mut() {
            s.reply(line);
            let _ = write_pending(s);
        }
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(registry, key);
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if let Some(mut s) = self.sessions.try_remove(key) {
            let _ = registry.deregister(&mut s.stream);
            info!("admin session from {} closed", s.peer);
        }
    }
}

/// Moves ring lines past the session's cursor into its output, within the
/// log budget. Returns how many lines the session lost.
fn copy_log_lines(ring: &logring::Ring, s: &mut Session) -> u64 {
    let (lost, lines) = ring.read_from(s.cursor);
    let mut dropped = 0;
    if lost > 0 {
        s.reply(&format!("... {lost} lines dropped"));
        dropped += lost;
        s.cursor += lost;
    }
    for l in lines {
        if s.pending() >= LOG_BUDGET {
            break; // the ring keeps them; if it overwrites them the session is told
        }
        s.cursor = l.seq + 1;
        if l.level <= s.level {
            s.reply(&l.text);
        }
    }
    dropped
}

/// Writes until the socket would block. Err means the session is dead.
fn write_pending(s: &mut Session) -> io::Result<()> {
    while s.pending() > 0 {
        match s.stream.write(&s.output[s.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => s.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // Reclaim the sent prefix once it dominates, so the buffer stays bounded.
    if s.written > 0 && (s.written == s.output.len() || s.written > s.output.len() / 2) {
        s.output.drain(..s.written);
        s.written = 0;
    }
    Ok(())
}
