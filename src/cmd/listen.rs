//! `mcrelay listen`: print one line per event until killed. Also home of
//! what `chat` shares with it: the session loop (keepalives, recovery,
//! signals) and how events are printed, as text or as JSON.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mcrelay::wire::RejectReason;
use mcrelay::ClientEvent;
use mcrelay::UdpClient;

use super::client_args::{self, ClientArgs};
use super::finish;
use super::json::Obj;

const HELP: &str = "\
mcrelay listen: print the relay's events, one line each, until killed

USAGE:
    mcrelay listen [OPTIONS]

Lines: `* connected as ID` first, then `[ip:port] text` for a message (control
characters and bytes that are not UTF-8 escaped, e.g. \\n, \\x1b, \\xff, \\\\),
`* ID joined`, `* ID left (REASON)`, `* server closing; reconnecting`,
`* session lost (REASON); reconnecting`, `* reconnected as ID`. A lost session
is re-established by itself, at most one handshake a second; a REJECT (which
anyone can forge) only makes the client handshake again, while the session
keeps working. It exits non-zero only when the server refuses a new handshake
twice in a row, or when only keys other than --pin answer for --timeout.
Ctrl-C or SIGTERM says BYE and exits 0.

OUTPUT:
    --json                one JSON object per line instead [default: off]:
                          {\"event\":\"connected\",\"id\":..,\"server_key\":..},
                          {\"event\":\"message\",\"from\":..,\"text\":..} (plus \"hex\" with the
                          exact bytes when the body is not UTF-8; \"text\" is then escaped
                          as above), {\"event\":\"joined\",\"id\":..},
                          {\"event\":\"left\",\"id\":..,\"reason\":..},
                          {\"event\":\"server_closing\"}, {\"event\":\"session_lost\",\"reason\":..},
                          {\"event\":\"reconnected\",\"id\":..}, {\"event\":\"server_full\"}

";

/// How long the session loop blocks before it looks at signals and input
/// again: short enough that typed lines and Ctrl-C feel immediate.
const TICK: Duration = Duration::from_millis(50);

/// How often a lost session is retried.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Parses `listen` flags, connects and prints events until a signal.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}{}", client_args::help(true));
        return Ok(());
    }
    let format = if args.contains("--json") {
        Format::Json
    } else {
        Format::Text
    };
    let a = client_args::parse(&mut args, true)?;
    finish(args)?;
    let mut c = client_args::connect(&a)?;
    run_session(&mut c, &a, format, |_, _| Ok(true))
}

/// Output style.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Runs an established session until SIGINT/SIGTERM, a fatal error, or
/// until `input` returns false; then says BYE. `input` runs every tick
/// (and after every event) to send what the user typed.
pub fn run_session(
    c: &mut UdpClient,
    a: &ClientArgs,
    format: Format,
    mut input: impl FnMut(&mut UdpClient, &mut Printer) -> Result<bool, String>,
) -> Result<(), String> {
    c.set_keepalive(Some(a.keepalive));
    c.set_auto_reconnect(Some(RECONNECT_EVERY));
    // Registered only now: before, the default action (exit) is right,
    // there is no session to say BYE to.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    let mut p = Printer {
        format,
        fingerprint: c.fingerprint().map(str::to_owned),
        lost: false,
        refused: None,
    };
    let r = (|| {
        p.connected(
            c.id().unwrap_or_default(),
            c.fingerprint().unwrap_or_default(),
        )?;
        while !stop.load(Ordering::Relaxed) {
            if !input(c, &mut p)? {
                break;
            }
            let ev = c
                .recv(TICK)
                .map_err(|e| client_args::connect_error(&e, &a.describe, a.timeout))?;
            if let Some(ev) = ev {
                p.event(ev)?;
            }
        }
        Ok(())
    })();
    // Best effort: the process ends either way.
    let _ = c.bye();
    r
}

/// Prints events and follows the session's health, so that a loss is
/// announced once and the recovery when it happens.
pub struct Printer {
    format: Format,
    /// Fingerprint of the key seen last: a change is worth a warning.
    fingerprint: Option<String>,
    lost: bool,
    /// The refusal reported last, so a retried refusal is said once.
    refused: Option<RejectReason>,
}

impl Printer {
    /// Prints a status line (chat only: text format).
    pub fn note(&mut self, text: &str) -> Result<(), String> {
        self.line(&format!("* {text}"))
    }

    fn line(&mut self, line: &str) -> Result<(), String> {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))
    }

    fn connected(&mut self, id: &str, fingerprint: &str) -> Result<(), String> {
        let line = match self.format {
            Format::Text => format!("* connected as {}", escape(id.as_bytes())),
            Format::Json => json(&[
                ("event", "connected"),
                ("id", id),
                ("server_key", fingerprint),
            ]),
        };
        self.line(&line)
    }

    /// Prints one event; a refusal that retrying cannot fix is an error.
    pub fn event(&mut self, ev: ClientEvent) -> Result<(), String> {
        use Format::{Json, Text};
        let line = match (ev, self.format) {
            (ClientEvent::Message { sender, body }, Text) => {
                format!(
                    "[{}] {}",
                    escape(display_sender(&sender).as_bytes()),
                    escape(&body)
                )
            }
            (ClientEvent::Message { sender, body }, Json) => match std::str::from_utf8(&body) {
                Ok(text) => json(&[("event", "message"), ("from", &sender), ("text", text)]),
                Err(_) => json(&[
                    ("event", "message"),
                    ("from", &sender),
                    ("text", &escape(&body)),
                    ("hex", &mcrelay::hex(&body)),
                ]),
            },
            (ClientEvent::PeerJoined(id), Text) => format!("* {} joined", escape(id.as_bytes())),
            (ClientEvent::PeerJoined(id), Json) => json(&[("event", "joined"), ("id", &id)]),
            (ClientEvent::PeerLeft { id, reason }, f) => {
                let reason = reason.map_or("unknown reason", |r| r.name());
                match f {
                    Text => format!("* {} left ({reason})", escape(id.as_bytes())),
                    Json => json(&[("event", "left"), ("id", &id), ("reason", reason)]),
                }
            }
            (ClientEvent::ServerClosing, f) => {
                self.lost = true;
                match f {
                    Text => "* server closing; reconnecting".into(),
                    Json => json(&[("event", "server_closing")]),
                }
            }
            // A hint the client acts on by handshaking again (possibly
            // forged: the old session keeps working meanwhile).
            (
                ClientEvent::Rejected(
                    r @ (RejectReason::UnknownSession | RejectReason::AuthFailed),
                ),
                f,
            ) => {
                if std::mem::replace(&mut self.lost, true) {
                    return Ok(()); // said once until the next WELCOME
                }
                let why = match r {
                    RejectReason::UnknownSession => "the server no longer knows this client",
                    _ => "the server reports an authentication failure",
                };
                match f {
                    Text => format!("* session lost ({why}); reconnecting"),
                    Json => json(&[("event", "session_lost"), ("reason", why)]),
                }
            }
            (ClientEvent::Rejected(RejectReason::ServerFull), f) => {
                if self.refused.replace(RejectReason::ServerFull).is_some() {
                    return Ok(());
                }
                match f {
                    Text => "* server full; retrying".into(),
                    Json => json(&[("event", "server_full")]),
                }
            }
            // The session stays: only this message was refused (v2 §5).
            (ClientEvent::Rejected(RejectReason::Forbidden), f) => match f {
                Text => "* the server refused a message: this client may not publish".into(),
                Json => json(&[("event", "forbidden")]),
            },
            // A stale cookie only means another HELLO, which the retry sends.
            (ClientEvent::Rejected(RejectReason::BadCookie), _) => return Ok(()),
            (ClientEvent::ServerKey { fingerprint }, _) => {
                if let Some(old) = self.fingerprint.as_deref().filter(|o| *o != fingerprint) {
                    eprintln!("mcrelay: warning: the server key changed from {old} to {fingerprint} (use --pin to refuse that)");
                }
                self.fingerprint = Some(fingerprint);
                return Ok(());
            }
            // Group mode is the transport's business: stdout stays the same.
            (ClientEvent::Downlink(_), _) => return Ok(()),
            (ClientEvent::DownlinkSilent(addr), _) => {
                eprintln!(
                    "mcrelay: nothing signed by the relay arrived on the group downlink {addr} \
                     (multicast does not reach this host); asking the relay to send to this \
                     client directly"
                );
                return Ok(());
            }
            (ClientEvent::Welcome { id }, f) => {
                self.lost = false;
                self.refused = None;
                match f {
                    Text => format!("* reconnected as {}", escape(id.as_bytes())),
                    Json => json(&[("event", "reconnected"), ("id", &id)]),
                }
            }
        };
        self.line(&line)
    }
}

/// How a text line names a sender: a named client (`alice@10.0.0.5:40000`,
/// v2 §5) by its name, anyone else by its id. Names hold no `@`, and
/// addresses never do, so a valid name before the first `@` is a name.
pub fn display_sender(id: &str) -> &str {
    match id.split_once('@') {
        Some((name, _)) if mcrelay::credentials::valid_name(name) => name,
        _ => id,
    }
}

/// Makes untrusted bytes safe for one terminal line: printable UTF-8 stays,
/// backslash, control and invisible formatting characters become escapes
/// (`\n`, `\x1b`, `\u{202e}`), bytes that are not UTF-8 become `\xNN`
/// (NN ≥ 80, so never confused with an escaped ASCII control).
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if c.is_ascii_control() => {
                    let _ = write!(s, "\\x{:02x}", c as u32);
                }
                c if c.is_control() || is_invisible(c) => {
                    let _ = write!(s, "\\u{{{:x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

/// Zero-width, bidirectional-override and line-separator characters: they
/// can make a line display as something other than what it says.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// A flat JSON object of string fields, written by hand.
pub fn json(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .fold(Obj::new(), |o, (k, v)| o.str(k, v))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_keeps_text_and_neutralises_the_rest() {
        assert_eq!(escape("héllo wörld ✓".as_bytes()), "héllo wörld ✓");
        assert_eq!(escape(b"a\nb\tc\\d"), "a\\nb\\tc\\\\d");
        assert_eq!(escape(b"\x1b[31mred\x7f"), "\\x1b[31mred\\x7f");
        assert_eq!(escape(b"caf\xe9 \xff\xfe"), "caf\\xe9 \\xff\\xfe");
        assert_eq!(escape("x\u{202e}y\u{85}".as_bytes()), "x\\u{202e}y\\u{85}");
        assert_eq!(escape(b""), "");
    }

    #[test]
    fn named_senders_print_as_their_name() {
        assert_eq!(display_sender("alice@10.0.0.5:40000"), "alice");
        assert_eq!(display_sender("s.1_x-2@[fe80::1%3]:40000"), "s.1_x-2");
        assert_eq!(display_sender("10.0.0.5:40000"), "10.0.0.5:40000");
        assert_eq!(display_sender("[fe80::1%3]:5"), "[fe80::1%3]:5");
        // Not a valid name: printed whole, never cut.
        assert_eq!(display_sender("bad name@1.2.3.4:5"), "bad name@1.2.3.4:5");
        assert_eq!(display_sender("@1.2.3.4:5"), "@1.2.3.4:5");
    }

    #[test]
    fn json_escapes_quotes_backslashes_and_controls() {
        assert_eq!(
            json(&[
                ("event", "message"),
                ("text", "say \"hi\"\\\n\u{1}\u{2028}é")
            ]),
            r#"{"event":"message","text":"say \"hi\"\\\n\u0001\u2028é"}"#
        );
        assert_eq!(json(&[]), "{}");
    }
}
