//! `mcrelay chat`: an interactive terminal client. Lines typed are sent,
//! events print as `listen` prints them.

use std::io::{self, BufRead};
use std::sync::mpsc::{self, Receiver, TryRecvError};

use mcrelay::{UdpClient, MAX_BODY_LEN};

use super::client_args;
use super::finish;
use super::listen::{self, Format, Printer};

const HELP: &str = "\
mcrelay chat: talk through the relay from a terminal

USAGE:
    mcrelay chat [OPTIONS]

Each line typed is sent as one message. Relayed messages print as
`[ip:port] text` (control characters and bytes that are not UTF-8 escaped, e.g.
\\n, \\x1b, \\xff, \\\\), notices as `* ID joined`, `* ID left (REASON)`,
`* server closing; reconnecting`. Keepalives go out by themselves; a lost
session (server restart, SERVER_CLOSING, `* session lost (REASON);
reconnecting`) is re-established by itself, at most one handshake a second,
and `* reconnected as ID` says when. A REJECT, which anyone can forge, only
makes the client handshake again while the session keeps working. End of
input (Ctrl-D), Ctrl-C or SIGTERM says BYE and exits 0.

";

/// Parses `chat` flags, connects and runs until EOF or a signal.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}{}", client_args::help(true));
        return Ok(());
    }
    let a = client_args::parse(&mut args, true)?;
    finish(args)?;
    let mut c = client_args::connect(&a)?;
    let lines = stdin_lines();
    listen::run_session(&mut c, &a, Format::Text, |c, p| send_typed(c, p, &lines))
}

/// Reads stdin on a helper thread, since a blocking read cannot share the
/// loop with the socket; the channel closes at end of input.
fn stdin_lines() -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut line = Vec::new();
            // A read error ends input like EOF does: nothing more can come.
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends every line typed since the last tick; false at end of input.
fn send_typed(
    c: &mut UdpClient,
    p: &mut Printer,
    lines: &Receiver<Vec<u8>>,
) -> Result<bool, String> {
    loop {
        let line = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => return Ok(true),
            Err(TryRecvError::Disconnected) => return Ok(false),
        };
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_BODY_LEN {
            // Refused before sending; the session goes on.
            p.note(&format!(
                "message too large ({} bytes, at most {MAX_BODY_LEN}); not sent",
                line.len()
            ))?;
        } else if !c.is_established() || !c.send(&line).map_err(|e| format!("cannot send: {e}"))? {
            // No queue: delivered minutes later, a chat line misleads.
            p.note("not connected; message not sent")?;
        }
    }
}
