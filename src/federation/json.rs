//! The JSON the NATS client protocol carries: INFO from the server (read)
//! and CONNECT from the client (written).
//!
//! Only what the federation link needs is read from INFO (`server_id`,
//! `max_payload`, `connect_urls`, `auth_required`), with a small bounded
//! scanner rather than a JSON dependency: the line is already bounded by
//! the decoder, nesting is bounded here, and every step consumes input, so
//! a hostile INFO costs linear time and no more memory than its own size.

use std::fmt;

/// `connect_urls` entries kept from one INFO; the rest are ignored.
pub const MAX_CONNECT_URLS: usize = 32;

/// Nesting the INFO scanner follows before giving up.
const MAX_JSON_DEPTH: u8 = 16;

/// The parts of INFO the link uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's unique id (empty if absent).
    pub server_id: String,
    /// Largest payload the server accepts in a PUB, when it says.
    pub max_payload: Option<u64>,
    /// Client URLs of the cluster's servers (`host:port`), at most
    /// [`MAX_CONNECT_URLS`].
    pub connect_urls: Vec<String>,
    /// The server wants credentials in CONNECT.
    pub auth_required: bool,
}

/// Reads the fields we use from INFO's JSON object; `None` unless the
/// whole line is one well-formed object (within the depth bound).
pub fn parse_info(json: &[u8]) -> Option<ServerInfo> {
    let mut p = Json { s: json, i: 0 };
    let mut info = ServerInfo::default();
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if !p.try_eat(b'}') {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            match key.as_str() {
                "server_id" => info.server_id = p.string()?,
                "max_payload" => info.max_payload = p.integer(),
                "auth_required" => info.auth_required = p.boolean()?,
                "connect_urls" => info.connect_urls = p.strings(MAX_CONNECT_URLS)?,
                _ => p.skip(0)?,
            }
            p.ws();
            if p.try_eat(b'}') {
                break;
            }
            p.eat(b',')?;
        }
    }
    p.ws();
    (p.i == json.len()).then_some(info)
}

/// A cursor over JSON text. Every method consumes input or fails, and
/// nesting is bounded, so a hostile line costs at most linear time.
struct Json<'a> {
    s: &'a [u8],
    i: usize,
}

impl Json<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn try_eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += usize::from(hit);
        hit
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.try_eat(c).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.literal(b"true").is_some() {
            Some(true)
        } else {
            self.literal(b"false").map(|()| false)
        }
    }

    /// A number; its value if it is a non-negative integer that fits a u64
    /// (anything else is skipped and reads as absent).
    fn integer(&mut self) -> Option<u64> {
        let start = self.i;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .ok()?
            .parse()
            .ok()
    }

    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            let code = u32::from_str_radix(hex, 16).ok()?;
                            self.i += 4;
                            // A lone surrogate half cannot be a char: the
                            // fields we read never hold one anyway.
                            let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => out.push(c),
            }
        }
    }

    /// An array of strings, keeping the first `keep`.
    fn strings(&mut self, keep: usize) -> Option<Vec<String>> {
        let mut v = Vec::new();
        self.eat(b'[')?;
        self.ws();
        if self.try_eat(b']') {
            return Some(v);
        }
        loop {
            self.ws();
            let s = self.string()?;
            if v.len() < keep {
                v.push(s);
            }
            self.ws();
            if self.try_eat(b']') {
                return Some(v);
            }
            self.eat(b',')?;
        }
    }

    /// Skips one value of any type.
    fn skip(&mut self, depth: u8) -> Option<()> {
        if depth >= MAX_JSON_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                self.integer();
                (self.i > start).then_some(())
            }
            open @ (b'[' | b'{') => {
                let close = if open == b'[' { b']' } else { b'}' };
                self.i += 1;
                self.ws();
                if self.try_eat(close) {
                    return Some(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.skip(depth + 1)?;
                    self.ws();
                    if self.try_eat(close) {
                        return Some(());
                    }
                    self.eat(b',')?;
                }
            }
            _ => None,
        }
    }
}

/// Credentials for CONNECT.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// None: the server is open (or trusts the network).
    #[default]
    None,
    /// `user` and `pass`.
    UserPass {
        /// User name.
        user: String,
        /// Password.
        pass: String,
    },
    /// `auth_token`.
    Token(String),
}

impl fmt::Debug for Auth {
    // Secrets stay out of logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserPass { user, .. } => write!(f, "UserPass({user:?}, <password>)"),
            Auth::Token(_) => f.write_str("Token(<token>)"),
        }
    }
}

/// Appends `CONNECT {json}` CRLF: no +OK for each op (`verbose:false`), no
/// echo of our own publishes (`echo:false`), no headers.
pub fn write_connect(out: &mut Vec<u8>, name: &str, auth: &Auth) {
    out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false");
    out.extend_from_slice(b",\"name\":");
    push_json_str(out, name);
    out.extend_from_slice(b",\"lang\":\"rust\",\"version\":");
    push_json_str(out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b",\"protocol\":1,\"echo\":false,\"headers\":false");
    match auth {
        Auth::None => {}
        Auth::UserPass { user, pass } => {
            out.extend_from_slice(b",\"user\":");
            push_json_str(out, user);
            out.extend_from_slice(b",\"pass\":");
            push_json_str(out, pass);
        }
        Auth::Token(t) => {
            out.extend_from_slice(b",\"auth_token\":");
            push_json_str(out, t);
        }
    }
    out.extend_from_slice(b"}\r\n");
}

/// A JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields() {
        let i = parse_info(br#"{"server_id":"S\u0041","max_payload":-1,"connect_urls":[]}"#);
        assert_eq!(
            i,
            Some(ServerInfo {
                server_id: "SA".into(),
                ..Default::default()
            })
        );
        let urls: Vec<String> = (0..40).map(|i| format!("\"h:{i}\"")).collect();
        let json = format!("{{\"connect_urls\":[{}]}}", urls.join(","));
        let i = parse_info(json.as_bytes()).unwrap();
        assert_eq!(i.connect_urls.len(), MAX_CONNECT_URLS);
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(20), "]".repeat(20));
        assert_eq!(parse_info(deep.as_bytes()), None, "depth is bounded");
        assert_eq!(parse_info(b"{\"a\":\"\x01\"}"), None);
        assert_eq!(parse_info(b"{\"a\":tru}"), None);
        assert_eq!(parse_info(b" { } "), Some(ServerInfo::default()));
    }

    #[test]
    fn connect_golden_bytes() {
        let mut out = Vec::new();
        write_connect(
            &mut out,
            "of\"fice",
            &Auth::UserPass {
                user: "u".into(),
                pass: "p\n".into(),
            },
        );
        let want = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\
             \"name\":\"of\\\"fice\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\
             \"echo\":false,\"headers\":false,\"user\":\"u\",\"pass\":\"p\\u000a\"}}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut out = Vec::new();
        write_connect(&mut out, "r", &Auth::Token("t".into()));
        assert!(out.ends_with(b",\"auth_token\":\"t\"}\r\n"));
        assert_eq!(
            format!("{:?}", Auth::Token("secret".into())),
            "Token(<token>)"
        );
    }
}
