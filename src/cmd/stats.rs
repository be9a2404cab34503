//! `mcrelay stats`: one `stats` (or `stats prometheus`) over the admin
//! channel, printed once, for cron jobs and the node exporter's textfile
//! collector.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{finish, opt, read_token_file};

const HELP: &str = "\
mcrelay stats: print a running relay's counters once, from its admin channel

USAGE:
    mcrelay stats [--admin HOST:PORT] [--admin-token-file PATH] [--prometheus]

    --admin HOST:PORT         the relay's admin channel [default: 127.0.0.1:5008]
    --admin-token-file PATH   the relay's admin token, if it has one
    --prometheus              the Prometheus text format (0.0.4) instead of
                              `name value` lines
    --timeout SECS            give up after this long [default: 10]

Exit status 0 with the counters on stdout, or non-zero with one line on stderr.
For the node exporter's textfile collector (write, then rename):
    mcrelay stats --prometheus > mcrelay.prom.tmp && mv mcrelay.prom.tmp mcrelay.prom
";

/// Longest reply line accepted: a relay's lines are far shorter.
const MAX_LINE: usize = 64 * 1024;
/// Most reply bytes accepted in total (the relay cuts a reply at 128 KiB).
const MAX_REPLY: usize = 1 << 20;

/// Runs `mcrelay stats`.
pub fn run(mut args: pico_args::Arguments) -> Result<(), String> {
    if args.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let admin: String = opt(&mut args, "--admin")?.unwrap_or_else(|| "127.0.0.1:5008".into());
    let token_file: Option<String> = opt(&mut args, "--admin-token-file")?;
    let prometheus = args.contains("--prometheus");
    let timeout: u64 = opt(&mut args, "--timeout")?.unwrap_or(10);
    finish(args)?;
    if !(1..=3600).contains(&timeout) {
        return Err(format!("--timeout {timeout} is outside 1..=3600"));
    }
    let token = token_file.as_deref().map(read_token_file).transpose()?;
    let token = token
        .map(|t| String::from_utf8(t).map_err(|_| "admin token file is not UTF-8".to_string()))
        .transpose()?;
    let command = if prometheus {
        "stats prometheus"
    } else {
        "stats"
    };
    let body = query(
        &admin,
        token.as_deref(),
        command,
        Duration::from_secs(timeout),
    )?;
    let mut out = std::io::stdout().lock();
    out.write_all(body.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

/// One admin session: greeting, `auth`, `log off`, the command, `quit`.
/// Returns the command's reply without its final `OK`.
fn query(
    admin: &str,
    token: Option<&str>,
    command: &str,
    timeout: Duration,
) -> Result<String, String> {
    let addrs: Vec<SocketAddr> = admin
        .to_socket_addrs()
        .map_err(|e| format!("--admin {admin}: {e}"))?
        .collect();
    let mut last = None;
    let stream = addrs
        .iter()
        .find_map(|a| match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => Some(s),
            Err(e) => {
                last = Some(e);
                None
            }
        })
        .ok_or_else(|| match last {
            Some(e) => format!("cannot reach the admin channel at {admin}: {e}"),
            None => format!("--admin {admin}: no address"),
        })?;
    let fail = |e: std::io::Error| format!("admin channel {admin}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    let mut session = Session {
        reader: BufReader::new(stream.try_clone().map_err(fail)?),
        stream,
        admin,
        read: 0,
    };
    let greeting = session.line()?;
    if greeting.starts_with("ERR") {
        return Err(format!("admin channel {admin}: {greeting}"));
    }
    if let Some(token) = token {
        // Not echoed in any error: the reply says only whether it was right.
        session.send(&format!("auth {token}"))?;
        session.reply("auth")?;
    }
    // Log lines would otherwise interleave with the reply.
    session.send("log off")?;
    session.reply("log off")?;
    session.send(command)?;
    let body = session.reply(command)?;
    let _ = session.send("quit");
    Ok(body)
}

struct Session<'a> {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    admin: &'a str,
    read: usize,
}

impl Session<'_> {
    fn send(&mut self, line: &str) -> Result<(), String> {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("admin channel {}: {e}", self.admin))
    }

    /// The next line, without its line ending, within the size bounds.
    fn line(&mut self) -> Result<String, String> {
        let mut buf = Vec::new();
        let n = Read::take(&mut self.reader, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| format!("admin channel {}: {e}", self.admin))?;
        self.read += n;
        if n == 0 {
            return Err(format!("admin channel {} closed the session", self.admin));
        }
        if buf.len() > MAX_LINE || self.read > MAX_REPLY {
            return Err(format!("admin channel {}: reply too long", self.admin));
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Lines up to the final `OK` (returned joined, each with its newline);
    /// an `ERR ...` final line is an error naming `what`.
    fn reply(&mut self, what: &str) -> Result<String, String> {
        let mut body = String::new();
        loop {
            let line = self.line()?;
            if line == "OK" {
                return Ok(body);
            }
            if let Some(why) = line.strip_prefix("ERR") {
                return Err(format!(
                    "admin channel {}: {what}: {}",
                    self.admin,
                    why.trim_start()
                ));
            }
            body.push_str(&line);
            body.push('\n');
        }
    }
}
