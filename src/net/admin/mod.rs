//! The TCP admin channel: a person with `nc` (or a script) gets live log
//! lines and a few text commands. It lives in the relay's mio loop, so
//! nothing here may block or hog it, whoever is on the other end:
//!
//! - Work is bounded per turn of the loop: a session reads at most
//!   [`READ_CHUNK`] bytes and runs at most [`LINE_BUDGET`] lines, then the
//!   loop serves UDP again. A session with input left over is served on
//!   the next turn without waiting for readiness ([`Admin::busy`]): mio is
//!   edge-triggered and would not report bytes already waiting.
//! - Output is bounded when it is queued, not only when it is flushed:
//!   commands wait while a session has [`REPLY_BUDGET`] bytes unsent (TCP
//!   then pushes back on a sender that never reads), one reply is cut at
//!   [`MAX_REPLY`], and log lines stop at `LOG_BUDGET` (the session is told
//!   how many it lost).
//! - Bad lines in a row (too long, not UTF-8, unknown commands, anything
//!   but `auth`/`quit` before authentication) close the session after
//!   [`MAX_ABUSE`]. Nothing a session sends before `auth` succeeds is
//!   logged: it may be a mistyped token.
//! - A half-close ends input, not output: every command received (a last
//!   line without its newline too) is answered, the replies are flushed,
//!   then the session closes, so `printf 'stats\n' | nc -N host port`
//!   prints the whole reply.

mod commands;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn, LevelFilter};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::net::logring;
use crate::net::prometheus;
use crate::relay::bans::BanTarget;
use crate::relay::config::credentials::valid_name;
use crate::relay::cookie::ct_eq;
use crate::relay::{ClientId, Relay, Transmits};

/// Longest command line, without its line ending.
pub const MAX_LINE: usize = 512;
/// Longest admin token: `auth TOKEN` must fit in one command line.
const MAX_TOKEN_LEN: usize = MAX_LINE - "auth ".len();
/// Bytes read from one session per turn of the loop.
const READ_CHUNK: usize = 4096;
/// Lines (commands, bad or empty lines) handled per session per turn.
const LINE_BUDGET: usize = 32;
/// Unsent output at which a session's commands wait for it to read.
const REPLY_BUDGET: usize = 64 * 1024;
/// Largest single reply: `clients` counts the lines it left out, `log tail`
/// keeps the newest.
const MAX_REPLY: usize = 128 * 1024;
/// Pending output above which a session gets no more log lines.
const LOG_BUDGET: usize = 64 * 1024;
/// Bad lines in a row tolerated before closing.
const MAX_ABUSE: u8 = 5;
/// Wrong tokens tolerated before closing.
const MAX_BAD_AUTH: u8 = 3;

/// Remote members a `clients remote` reply lists at most (the rest are
/// counted): with ids of typical length that fills [`MAX_REPLY`].
pub const REMOTE_MEMBERS_SHOWN: usize = 4096;

/// What the admin channel shows of the federation, refreshed by the loop
/// before commands run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederationView {
    /// The `federation` lines.
    pub lines: Vec<String>,
    /// The `federation_` counters `stats` adds.
    pub counters: Vec<(String, u64)>,
    /// The first [`REMOTE_MEMBERS_SHOWN`] remote members as (relay, id).
    pub remote_members: Vec<(String, String)>,
    /// Remote members in all.
    pub remote_total: usize,
}

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
    /// The last read; refilled only once every byte of it was consumed.
    inbuf: Vec<u8>,
    /// Bytes of `inbuf` already consumed.
    inpos: usize,
    /// The line being assembled (at most `MAX_LINE + 1` bytes).
    line: Vec<u8>,
    /// Dropping input until the next newline (after an over-long line).
    discarding: bool,
    /// The socket may hold unread input: set by readiness, cleared at WouldBlock.
    readable: bool,
    /// The peer half-closed: no more input, but replies are still owed.
    eof: bool,
    /// Commands are waiting for the peer to read (counted once per wait).
    waiting: bool,
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

    /// True if a turn could make progress on this session's input.
    fn has_input_work(&self) -> bool {
        !self.closing
            && self.pending() < REPLY_BUDGET
            && (self.inpos < self.inbuf.len() || self.readable || self.eof)
    }

    /// The next complete line from `inbuf`, if it holds one.
    fn next_line(&mut self) -> Option<Result<String, &'static str>> {
        while self.inpos < self.inbuf.len() {
            let rest = &self.inbuf[self.inpos..];
            let (chunk, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            self.inpos += chunk.len() + usize::from(done);
            if !self.discarding {
                // MAX_LINE + 1: room for a `\r` before the newline.
                if self.line.len() + chunk.len() > MAX_LINE + 1 {
                    self.line.clear();
                    self.discarding = !done;
                    return Some(Err("line too long"));
                }
                self.line.extend_from_slice(chunk);
            }
            if done {
                if std::mem::take(&mut self.discarding) {
                    continue; // the end of a line already reported as too long
                }
                return Some(self.take_line());
            }
        }
        None
    }

    /// The line assembled so far, as text.
    fn take_line(&mut self) -> Result<String, &'static str> {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_LINE {
            return Err("line too long");
        }
        String::from_utf8(line).map_err(|_| "not UTF-8")
    }

    /// Reads once into the (fully consumed) input buffer.
    fn fill(&mut self) {
        self.inbuf.resize(READ_CHUNK, 0);
        self.inpos = 0;
        let got = loop {
            match self.stream.read(&mut self.inbuf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match got {
            Ok(n) => {
                self.inbuf.truncate(n);
                self.eof = n == 0;
            }
            Err(e) => {
                self.inbuf.clear();
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.readable = false;
                } else {
                    // Reset: the peer is gone, nothing more to say.
                    self.closing = true;
                    self.output.truncate(self.written);
                }
            }
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
    /// The interfaces' membership states, as the loop last saw them.
    ifaces: Vec<String>,
    /// The federation's description and counters (None: not federated).
    federation: Option<FederationView>,
    closed_abuse: u64,
    closed_bad_auth: u64,
    reply_waits: u64,
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
            ifaces: Vec::new(),
            federation: None,
            closed_abuse: 0,
            closed_bad_auth: 0,
            reply_waits: 0,
        })
    }

    /// Checks that `token` can be presented with `auth TOKEN`: 1 to 507
    /// bytes (the line fits in a command line), UTF-8 without control
    /// characters, and no whitespace at either end (lines are trimmed).
    ///
    /// # Errors
    /// Says what is wrong with the token, never what it holds.
    pub fn check_token(token: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(token).map_err(|_| "it is not UTF-8".to_string())?;
        if text.is_empty() {
            return Err("it is empty".into());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "it holds {} bytes; at most {MAX_TOKEN_LEN} fit in an `auth` line",
                token.len()
            ));
        }
        if text.chars().any(char::is_control) {
            return Err("it holds control characters".into());
        }
        if text.trim() != text {
            return Err("it starts or ends with whitespace".into());
        }
        Ok(())
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

    /// Replaces the admin token (SIGHUP). Sessions already authenticated stay so.
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

    /// Replaces what the `ifaces` command shows (the loop calls this after
    /// every interface check).
    pub fn set_ifaces(&mut self, lines: Vec<String>) {
        self.ifaces = lines;
    }

    /// What `federation` prints and the `federation_` counters `stats`
    /// adds, refreshed by the loop before commands run.
    pub fn set_federation(&mut self, view: Option<FederationView>) {
        self.federation = view;
    }

    /// Handles readiness of the listener or a session. Session input is
    /// only noted here; [`Admin::run`] reads and executes it.
    pub fn handle(&mut self, registry: &Registry, token: Token) {
        if token == self.listener_token {
            self.accept(registry);
        } else if let Some(s) = token
            .0
            .checked_sub(self.first_session)
            .and_then(|key| self.sessions.get_mut(key))
        {
            // Writable-only events land here too: one read that would block is cheap.
            s.readable = true;
        }
    }

    /// True while some session has input a turn could handle: the loop
    /// must then poll without sleeping and call [`Admin::run`] again.
    pub fn busy(&self) -> bool {
        self.sessions.iter().any(|(_, s)| s.has_input_work())
    }

    /// One turn: every session with input gets at most one read (4 KiB)
    /// and 32 lines.
    pub fn run(&mut self, relay: &mut Relay, out: &mut Transmits, now: Instant) -> Action {
        let mut action = Action::None;
        // Slab keys are below its capacity, which max_sessions bounds.
        for key in 0..self.sessions.capacity() {
            if self.sessions.get(key).is_some_and(Session::has_input_work)
                && self.serve(key, relay, out, now) == Action::Shutdown
            {
                action = Action::Shutdown;
            }
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
            // Logged before the session's cursor is set: its own opening is no news to it.
            info!("admin session from {peer} opened");
            let authed = self.config.token.is_none();
            let mut s = Session {
                stream,
                peer,
                inbuf: Vec::with_capacity(READ_CHUNK),
                inpos: 0,
                line: Vec::new(),
                discarding: false,
                readable: true,
                eof: false,
                waiting: false,
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
        }
    }

    /// One session's share of a turn.
    fn serve(
        &mut self,
        key: usize,
        relay: &mut Relay,
        out: &mut Transmits,
        now: Instant,
    ) -> Action {
        let mut action = Action::None;
        let mut lines = 0;
        let mut read = false;
        while lines < LINE_BUDGET {
            let s = &mut self.sessions[key];
            if s.closing {
                break;
            }
            if s.pending() >= REPLY_BUDGET {
                // The peer is not reading: stop executing until it does.
                if !std::mem::replace(&mut s.waiting, true) {
                    self.reply_waits += 1;
                }
                break;
            }
            s.waiting = false;
            let line = match s.next_line() {
                Some(line) => line,
                None if s.eof => {
                    // Input ended: answer a last line without its newline, then close.
                    s.closing = true;
                    if s.line.is_empty() || s.discarding {
                        break;
                    }
                    s.take_line()
                }
                None if read || !s.readable => break,
                None => {
                    read = true;
                    s.fill();
                    continue;
                }
            };
            lines += 1;
            match line {
                Ok(text) => {
                    if self.command(key, text.trim(), relay, out, now) == Action::Shutdown {
                        action = Action::Shutdown;
                    }
                }
                Err(why) => self.abuse(key, why),
            }
        }
        action
    }

    fn abuse(&mut self, key: usize, why: &str) {
        let s = &mut self.sessions[key];
        s.abuse += 1;
        s.reply(&format!("ERR {why}"));
        if s.abuse >= MAX_ABUSE {
            s.reply("ERR too many bad lines; closing");
            s.closing = true;
            self.closed_abuse += 1;
            warn!(
                "admin session from {} closed after {} bad lines",
                s.peer, s.abuse
            );
        }
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
                if write_pending(s).is_err() || (s.closing && s.pending() == 0) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_fit_an_auth_line() {
        assert!(Admin::check_token(b"s3cret").is_ok());
        assert!(Admin::check_token(b"two words").is_ok());
        assert!(Admin::check_token(&[b'a'; MAX_TOKEN_LEN]).is_ok());
        for (bad, why) in [
            (&b""[..], "empty"),
            (&[b'a'; MAX_TOKEN_LEN + 1][..], "at most 507"),
            (b"\xff\xfe", "UTF-8"),
            (b"tab\there", "control"),
            (b" lead", "whitespace"),
            (b"trail ", "whitespace"),
        ] {
            let err = Admin::check_token(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
