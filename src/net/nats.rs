//! The NATS socket: one non-blocking TCP connection in the server's mio
//! loop, carrying out what the sans-IO federation [`Link`] decides. It
//! connects where the link says, feeds it what it reads and writes what it
//! has to send; reconnecting, keepalive and every protocol decision are
//! the link's. Also the NATS credentials files (`--nats-password-file`,
//! `--nats-token-file`).
//!
//! In the loop, per turn: [`NatsSocket::handle_event`] for each event of
//! its token, then (after the link's timers and publishes)
//! [`NatsSocket::drive`]. Reads stop after a budget so a flood on the
//! subject cannot starve local relaying; [`NatsSocket::has_pending_read`]
//! then asks for a poll that does not sleep.

use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use log::{debug, warn};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::federation::json::Auth;
use crate::federation::link::{Action, Link};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per turn before other sockets and timers get their turn.
const READ_BUDGET: usize = 16;

/// The NATS connection of one link.
pub struct NatsSocket {
    token: Token,
    stream: Option<TcpStream>,
    server: Option<SocketAddr>,
    /// The TCP handshake completed.
    connected: bool,
    /// The read budget ran out before the socket said WouldBlock.
    more_to_read: bool,
    buf: Box<[u8]>,
}

impl NatsSocket {
    /// A socket that registers under `token` once the link asks for a
    /// connection.
    pub fn new(token: Token) -> Self {
        NatsSocket {
            token,
            stream: None,
            server: None,
            connected: false,
            more_to_read: false,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// The token this socket registers under.
    pub fn token(&self) -> Token {
        self.token
    }

    /// True when bytes may be waiting unread: the next poll must not sleep.
    pub fn has_pending_read(&self) -> bool {
        self.more_to_read
    }

    /// A readiness event for [`NatsSocket::token`]: completes the connect,
    /// reads into the link. Writing waits for [`NatsSocket::drive`].
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        link: &mut Link,
        now: Instant,
    ) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        if !self.connected {
            // mio: a non-blocking connect is done when the socket is
            // writable and has a peer; an error says it failed.
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.lost(registry, link, now, &e),
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.connected = true;
                    debug!("federation: TCP connected to {:?}", self.server);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !event.is_error() => return,
                Err(e) => return self.lost(registry, link, now, &e),
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(registry, link, now);
        }
    }

    /// Carries out the link's connect and close requests, finishes a read
    /// cut short by the budget, and writes what the link has to send.
    /// Call once per loop turn, after every input of the turn.
    pub fn drive(&mut self, registry: &Registry, link: &mut Link, now: Instant) {
        while let Some(action) = link.poll_action() {
            self.close(registry);
            if let Action::Connect(server) = action {
                self.connect(registry, link, now, server);
            }
        }
        if self.more_to_read {
            self.read(registry, link, now);
        }
        self.write(registry, link, now);
        // Writing may have let buffered messages into the output; a
        // close requested while reading is carried out on the next turn.
    }

    fn connect(&mut self, registry: &Registry, link: &mut Link, now: Instant, server: SocketAddr) {
        let opened = TcpStream::connect(server).and_then(|mut s| {
            // Small PUBs must not wait for ACKs (Nagle): latency is the point.
            s.set_nodelay(true)?;
            registry.register(&mut s, self.token, Interest::READABLE | Interest::WRITABLE)?;
            Ok(s)
        });
        match opened {
            Ok(s) => {
                self.stream = Some(s);
                self.server = Some(server);
            }
            Err(e) => {
                debug!("federation: connect to {server}: {e}");
                link.handle_disconnected(now);
            }
        }
    }

    /// Drops the connection without telling the link (it asked for it).
    fn close(&mut self, registry: &Registry) {
        if let Some(mut s) = self.stream.take() {
            // Deregistering a socket about to be dropped cannot matter if it fails.
            let _ = registry.deregister(&mut s);
        }
        self.connected = false;
        self.more_to_read = false;
        self.server = None;
    }

    /// The connection failed under us: drop it and tell the link.
    fn lost(&mut self, registry: &Registry, link: &mut Link, now: Instant, e: &io::Error) {
        debug!("federation: NATS connection {:?}: {e}", self.server);
        self.close(registry);
        link.handle_disconnected(now);
    }

    fn read(&mut self, registry: &Registry, link: &mut Link, now: Instant) {
        self.more_to_read = false;
        for _ in 0..READ_BUDGET {
            let Some(stream) = self.stream.as_mut().filter(|_| self.connected) else {
                return;
            };
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed by server");
                    return self.lost(registry, link, now, &eof);
                }
                Ok(n) => link.handle_read(now, &self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lost(registry, link, now, &e),
            }
        }
        self.more_to_read = true;
    }

    fn write(&mut self, registry: &Registry, link: &mut Link, now: Instant) {
        loop {
            let Some(stream) = self.stream.as_mut().filter(|_| self.connected) else {
                return;
            };
            let data = link.pending_output();
            if data.is_empty() {
                return;
            }
            match stream.write(data) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "socket took nothing");
                    return self.lost(registry, link, now, &e);
                }
                Ok(n) => link.consume_output(n),
                // The WRITABLE edge will come: mio is edge-triggered and we
                // registered for it once.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.lost(registry, link, now, &e),
            }
        }
    }
}

/// NATS credentials from the flags: `--nats-user` with
/// `--nats-password-file`, or `--nats-token-file`, or none. File contents
/// are trimmed; a file group or others can read is used with a warning.
///
/// # Errors
/// One line naming the flag or the file.
pub fn load_auth(
    user: Option<&str>,
    password_file: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Auth, String> {
    match (user, password_file, token_file) {
        (None, None, None) => Ok(Auth::None),
        (Some(user), Some(pass), None) => Ok(Auth::UserPass {
            user: user.to_owned(),
            pass: read_secret(pass)?,
        }),
        (None, None, Some(token)) => Ok(Auth::Token(read_secret(token)?)),
        (_, _, Some(_)) => {
            Err("--nats-token-file cannot be combined with --nats-user/--nats-password-file".into())
        }
        (Some(_), None, None) => Err("--nats-user needs --nats-password-file".into()),
        (None, Some(_), None) => Err("--nats-password-file needs --nats-user".into()),
    }
}

/// A secret file's contents, trimmed; warns when others may read it.
fn read_secret(path: &Path) -> Result<String, String> {
    let name = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("NATS credentials file {name}: {e}"))?;
    if let Some(w) = mode_warning(path, meta.permissions().mode()) {
        warn!("{w}");
    }
    let text =
        fs::read_to_string(path).map_err(|e| format!("NATS credentials file {name}: {e}"))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("NATS credentials file {name} is empty"));
    }
    Ok(secret.to_owned())
}

/// The warning for a secret file group or others can read, if it is one.
fn mode_warning(path: &Path, mode: u32) -> Option<String> {
    let mode = mode & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "NATS credentials file {} is readable by group or others (mode {mode:o}); consider chmod 600",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mcrelay-nats-{}-{name}", std::process::id()));
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn credentials_from_files() {
        let pass = file("pass", "  s3cret \n", 0o600);
        let token = file("token", "tok\n", 0o644);
        let empty = file("empty", " \n", 0o600);
        assert_eq!(load_auth(None, None, None), Ok(Auth::None));
        assert_eq!(
            load_auth(Some("relay"), Some(&pass), None),
            Ok(Auth::UserPass {
                user: "relay".into(),
                pass: "s3cret".into()
            })
        );
        assert_eq!(
            load_auth(None, None, Some(&token)),
            Ok(Auth::Token("tok".into()))
        );
        let err = load_auth(None, None, Some(&empty)).unwrap_err();
        assert!(
            err.contains("is empty") && err.contains("mcrelay-nats-"),
            "{err}"
        );
        assert!(load_auth(Some("u"), None, None).is_err());
        assert!(load_auth(None, Some(&pass), None).is_err());
        assert!(load_auth(Some("u"), Some(&pass), Some(&token)).is_err());
        let missing = Path::new("/nonexistent/mcrelay-nats");
        assert!(load_auth(None, None, Some(missing))
            .unwrap_err()
            .contains("/nonexistent"));
        assert!(mode_warning(&token, 0o100644).is_some_and(|w| w.contains("mode 644")));
        assert_eq!(mode_warning(&pass, 0o100600), None);
        for p in [pass, token, empty] {
            fs::remove_file(p).unwrap();
        }
    }
}
