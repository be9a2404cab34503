//! `mcrelay send`: one message for scripts and alerting. The exit status
//! says whether the server accepted the session.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use mcrelay::MAX_BODY_LEN;

use super::client_args;

const HELP: &str = "\
mcrelay send: handshake, send one message, say BYE

USAGE:
    mcrelay send [OPTIONS] [--] MESSAGE
    mcrelay send [OPTIONS] [-] < FILE

MESSAGE is sent as it is; without it (or with `-`) all of stdin is, minus one
trailing newline. Exits 0 once the server welcomed the session and the message
went out; non-zero, with a one-line error, if the server is silent for the
timeout, refuses the session twice (e.g. wrong token), or only keys other than
--pin answer within the timeout (a forged answer is waited out, not obeyed).
Messages over 49009 bytes (about 48 KiB) are refused before anything is sent.

";

/// Parses `send` flags and sends one message.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}{}", client_args::help(false));
        return Ok(());
    }
    let a = client_args::parse(&mut args, false)?;
    let body = message(args.finish())?;
    if body.is_empty() {
        return Err("the message is empty; nothing to send".into());
    }
    if body.len() > MAX_BODY_LEN {
        return Err(format!(
            "the message is {} bytes; at most {MAX_BODY_LEN} fit in one message",
            body.len()
        ));
    }
    let mut c = client_args::connect(&a)?;
    let sent = c.send(&body).map_err(|e| format!("cannot send: {e}"));
    let bye = c.bye().map_err(|e| format!("cannot send BYE: {e}"));
    match sent? {
        true => bye.map(drop),
        false => Err("the session ended before the message went out".into()),
    }
}

/// The message from what is left after the flags: one argument, or stdin.
fn message(rest: Vec<OsString>) -> Result<Vec<u8>, String> {
    let rest: Vec<&[u8]> = rest.iter().map(|a| a.as_bytes()).collect();
    let arg = match rest.as_slice() {
        [] | [b"-"] | [b"--"] | [b"--", b"-"] => None,
        [b"--", m] => Some(*m),
        [m] if !m.starts_with(b"-") => Some(*m),
        [m, ..] if m.starts_with(b"-") && *m != b"--" => {
            return Err(format!(
                "unexpected argument '{}' (try --help; put `--` before a message that starts with -)",
                String::from_utf8_lossy(m)
            ));
        }
        _ => {
            return Err(format!(
                "expected one MESSAGE, got {} arguments (quote the message)",
                rest.len()
            ))
        }
    };
    match arg {
        Some(m) => Ok(m.to_vec()),
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read the message from stdin: {e}"))?;
            if body.last() == Some(&b'\n') {
                body.pop();
                if body.last() == Some(&b'\r') {
                    body.pop();
                }
            }
            Ok(body)
        }
    }
}
