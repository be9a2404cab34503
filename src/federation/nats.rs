//! The NATS client protocol as bytes: a sans-IO codec, no socket, no clock.
//!
//! [`Decoder`] turns what the server sends (INFO, MSG, PING, PONG, +OK,
//! -ERR) into [`ServerOp`]s, incrementally: bytes go in as they arrive, in
//! any split, and complete operations come out borrowing the decoder's
//! buffer. The `write_*` functions append what a client sends (CONNECT,
//! SUB, UNSUB, PUB, PING, PONG) to the caller's buffer.
//!
//! Hard bounds, because the server is a peer like any other: a control line
//! longer than [`MAX_CONTROL_LINE`] or one that does not parse poisons the
//! decoder (the stream can no longer be framed: the caller drops the
//! connection); a MSG payload larger than the limit is *skipped* as it
//! streams past, never buffered, and reported as [`ServerOp::Oversize`],
//! because one oversize publish on a shared subject must not tear down the
//! connection of every subscriber. The buffer therefore never holds more
//! than one incomplete operation plus the chunk just fed.
//!
//! INFO and CONNECT carry JSON: that is `federation::json`. We never ask for headers
//! (CONNECT says `"headers":false`), so HMSG is a protocol error here.
//! Reference: <https://docs.nats.io/reference/protocols/client>.

use std::fmt;
use std::ops::Range;

use super::json::{parse_info, ServerInfo};

/// Longest control line accepted from the server, CRLF included. INFO is
/// the longest op the server sends; with a large cluster's `connect_urls`
/// it stays within a few KiB.
pub const MAX_CONTROL_LINE: usize = 16 * 1024;

/// Our own cap on a MSG payload, whatever the server's `max_payload` says
/// (1 MiB is the NATS default).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Longest subject accepted by [`valid_subject`].
pub const MAX_SUBJECT_LEN: usize = 256;

/// Why the server's byte stream cannot be framed any more. Once returned,
/// the decoder returns the same error forever: drop the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No CRLF within [`MAX_CONTROL_LINE`] bytes.
    LineTooLong,
    /// A line ended in a bare LF, or an op had the wrong arguments.
    BadLine,
    /// An op a client never receives, or one we did not ask for (HMSG).
    UnknownOp,
    /// INFO did not carry a JSON object we could read.
    BadInfo,
    /// A MSG payload was not followed by CRLF.
    BadPayloadEnd,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::LineTooLong => "control line too long",
            DecodeError::BadLine => "malformed control line",
            DecodeError::UnknownOp => "unexpected operation",
            DecodeError::BadInfo => "unreadable INFO",
            DecodeError::BadPayloadEnd => "payload not followed by CRLF",
        })
    }
}

/// One operation from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}`: at connect and whenever the cluster changes.
    Info(ServerInfo),
    /// `MSG subject sid [reply] size`, then the payload.
    Msg {
        /// Subject it was published on.
        subject: &'a [u8],
        /// Our subscription id it matched.
        sid: &'a [u8],
        /// Reply subject, if the publisher gave one.
        reply: Option<&'a [u8]>,
        /// The payload (exactly `size` bytes).
        payload: &'a [u8],
    },
    /// A MSG whose payload exceeded the limit; it was skipped unread.
    Oversize {
        /// Its announced size.
        size: u64,
    },
    /// Keepalive from the server: answer PONG.
    Ping,
    /// Answer to one of our PINGs.
    Pong,
    /// `+OK` (only in verbose mode, which we never ask for).
    Ok,
    /// `-ERR 'text'`, quotes removed.
    Err(&'a [u8]),
}

/// Incremental parser of the server's stream.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the bytes not yet parsed.
    pos: usize,
    /// Largest payload buffered; larger ones are skipped.
    max_payload: usize,
    /// Payload (and its CRLF) bytes of an oversize MSG still to discard.
    skip: u64,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

/// Capacity kept across operations; a buffer grown past it for one large
/// payload gives the memory back once that payload is consumed.
const KEEP_CAPACITY: usize = 64 * 1024;

impl Decoder {
    /// A decoder that buffers payloads of up to `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            pos: 0,
            max_payload,
            skip: 0,
            failed: None,
        }
    }

    /// Sets the payload limit; the link passes the smaller of its own cap
    /// and the server's `max_payload` once INFO has said it.
    pub fn set_max_payload(&mut self, max_payload: usize) {
        self.max_payload = max_payload;
    }

    /// Forgets everything buffered, for a new connection.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.skip = 0;
        self.failed = None;
    }

    #[cfg(any(test, fuzzing))]
    /// Bytes held for an incomplete operation.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends bytes read from the socket. Call [`Decoder::next`] until it
    /// returns `Ok(None)` before feeding again, so at most one incomplete
    /// operation is ever carried over.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.skip > 0 {
            let n = usize::try_from(self.skip).map_or(data.len(), |s| s.min(data.len()));
            data = &data[n..];
            self.skip -= n as u64;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf.shrink_to(KEEP_CAPACITY);
            }
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete operation, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// [`DecodeError`] when the stream cannot be framed; the decoder stays
    /// failed until [`Decoder::reset`].
    // A stream of ops with a fallible, borrowing step is not an Iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<ServerOp<'_>>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.step() {
            Ok(Some(step)) => Ok(Some(self.op(step))),
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    /// Parses one operation at `pos`, advances past it and says where its
    /// parts lie (so the borrow of the buffer starts after the advance).
    fn step(&mut self) -> Result<Option<Step>, DecodeError> {
        // A skip left over from a MSG header parsed in this same buffer.
        if self.skip > 0 {
            let avail = self.buf.len() - self.pos;
            let n = usize::try_from(self.skip).map_or(avail, |s| s.min(avail));
            self.pos += n;
            self.skip -= n as u64;
            if self.skip > 0 {
                return Ok(None);
            }
        }
        let rest = &self.buf[self.pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() >= MAX_CONTROL_LINE {
                return Err(DecodeError::LineTooLong);
            }
            return Ok(None);
        };
        if lf + 1 > MAX_CONTROL_LINE {
            return Err(DecodeError::LineTooLong);
        }
        if lf == 0 || rest[lf - 1] != b'\r' {
            return Err(DecodeError::BadLine);
        }
        let line = &rest[..lf - 1];
        let line_end = self.pos + lf + 1;
        let (name, args) = split_op(line);
        let base = self.pos;
        let step = if name.eq_ignore_ascii_case(b"MSG") {
            let mut a = fields(line, args);
            let (Some(subject), Some(sid), Some(third), fourth, None) =
                (a.next(), a.next(), a.next(), a.next(), a.next())
            else {
                return Err(DecodeError::BadLine);
            };
            let (reply, size) = match fourth {
                Some(size) => (Some(third), size),
                None => (None, third),
            };
            let size = parse_size(&line[size]).ok_or(DecodeError::BadLine)?;
            if size > self.max_payload as u64 {
                self.pos = line_end;
                self.skip = size + 2;
                return Ok(Some(Step::Oversize(size)));
            }
            // Below max_payload, which is a usize.
            let size = size as usize;
            let end = line_end + size;
            if self.buf.len() < end + 2 {
                return Ok(None);
            }
            if &self.buf[end..end + 2] != b"\r\n" {
                return Err(DecodeError::BadPayloadEnd);
            }
            self.pos = end + 2;
            Step::Msg {
                subject: shift(subject, base),
                sid: shift(sid, base),
                reply: reply.map(|r| shift(r, base)),
                payload: line_end..end,
            }
        } else {
            let rest = trim_range(line, args);
            let step = if name.eq_ignore_ascii_case(b"INFO") {
                Step::Info(parse_info(&line[rest]).ok_or(DecodeError::BadInfo)?)
            } else if name.eq_ignore_ascii_case(b"-ERR") {
                let text = &line[rest.clone()];
                let quoted = text.len() >= 2 && text[0] == b'\'' && text[text.len() - 1] == b'\'';
                let inner = if quoted {
                    rest.start + 1..rest.end - 1
                } else {
                    rest
                };
                Step::Err(shift(inner, base))
            } else {
                let bare = if name.eq_ignore_ascii_case(b"PING") {
                    Step::Ping
                } else if name.eq_ignore_ascii_case(b"PONG") {
                    Step::Pong
                } else if name.eq_ignore_ascii_case(b"+OK") {
                    Step::Ok
                } else {
                    return Err(DecodeError::UnknownOp);
                };
                if !rest.is_empty() {
                    return Err(DecodeError::BadLine);
                }
                bare
            };
            self.pos = line_end;
            step
        };
        Ok(Some(step))
    }

    fn op(&self, step: Step) -> ServerOp<'_> {
        let b = &self.buf;
        match step {
            Step::Info(info) => ServerOp::Info(info),
            Step::Msg {
                subject,
                sid,
                reply,
                payload,
            } => ServerOp::Msg {
                subject: &b[subject],
                sid: &b[sid],
                reply: reply.map(|r| &b[r]),
                payload: &b[payload],
            },
            Step::Oversize(size) => ServerOp::Oversize { size },
            Step::Ping => ServerOp::Ping,
            Step::Pong => ServerOp::Pong,
            Step::Ok => ServerOp::Ok,
            Step::Err(r) => ServerOp::Err(&b[r]),
        }
    }
}

/// Where a parsed operation's parts lie in the buffer.
enum Step {
    Info(ServerInfo),
    Msg {
        subject: Range<usize>,
        sid: Range<usize>,
        reply: Option<Range<usize>>,
        payload: Range<usize>,
    },
    Oversize(u64),
    Ping,
    Pong,
    Ok,
    Err(Range<usize>),
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The op name and the range of the line after it.
fn split_op(line: &[u8]) -> (&[u8], Range<usize>) {
    let end = line.iter().position(|&b| is_blank(b)).unwrap_or(line.len());
    (&line[..end], end..line.len())
}

/// `r` (a range of `line`) without leading and trailing blanks.
fn trim_range(line: &[u8], r: Range<usize>) -> Range<usize> {
    let s = &line[r.clone()];
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_blank(b))
        .map_or(start, |e| e + 1);
    r.start + start..r.start + end
}

/// The blank-separated fields of `line[args]` (a run of blanks is one
/// separator), as ranges of `line`.
fn fields(line: &[u8], args: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut at = args.start;
    let end = args.end;
    std::iter::from_fn(move || {
        while at < end && is_blank(line[at]) {
            at += 1;
        }
        if at == end {
            return None;
        }
        let start = at;
        while at < end && !is_blank(line[at]) {
            at += 1;
        }
        Some(start..at)
    })
}

fn shift(r: Range<usize>, base: usize) -> Range<usize> {
    r.start + base..r.end + base
}

/// A MSG size: 1 to 10 decimal digits (10 digits cannot overflow a u64).
fn parse_size(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// Appends `SUB subject sid`.
pub fn write_sub(out: &mut Vec<u8>, subject: &str, sid: &str) {
    for part in [
        b"SUB ".as_slice(),
        subject.as_bytes(),
        b" ",
        sid.as_bytes(),
        b"\r\n",
    ] {
        out.extend_from_slice(part);
    }
}

/// Appends `UNSUB sid`.
pub fn write_unsub(out: &mut Vec<u8>, sid: &str) {
    for part in [b"UNSUB ".as_slice(), sid.as_bytes(), b"\r\n"] {
        out.extend_from_slice(part);
    }
}

/// Appends `PUB subject size`, the payload and its CRLF.
pub fn write_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.reserve(subject.len() + payload.len() + 20);
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `PING`.
pub fn write_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

/// Appends `PONG`.
pub fn write_pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

/// A subject we publish and subscribe on: dot-separated tokens of ASCII
/// letters, digits, `-` and `_`, none empty, at most [`MAX_SUBJECT_LEN`]
/// bytes. Narrower than NATS allows, and free of wildcards and blanks, so
/// it can never break a control line or match more than itself.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT_LEN
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a decoder yields for `input` fed in chunks of `chunk`,
    /// as owned debug strings (so ops outlive the borrow).
    fn decode_all(input: &[u8], chunk: usize) -> (Vec<String>, Option<DecodeError>) {
        let mut d = Decoder::new(64);
        let mut ops = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            d.feed(part);
            loop {
                match d.next() {
                    Ok(Some(op)) => ops.push(format!("{op:?}")),
                    Ok(None) => break,
                    Err(e) => return (ops, Some(e)),
                }
            }
        }
        (ops, None)
    }

    const STREAM: &[u8] =
        b"INFO {\"server_id\":\"NAB\",\"max_payload\":1048576,\"auth_required\":true,\
\"connect_urls\":[\"127.0.0.1:4222\",\"[::1]:4223\"],\"x\":{\"y\":[1,2.5e3,null,\"\\\"\"]}} \r\n\
PING\r\nMSG fed.a 1 5\r\nhello\r\nmsg fed.a  1\tinbox.9 0\r\n\r\n+OK\r\nPONG\r\n\
-ERR 'Authorization Violation'\r\n";

    #[test]
    fn golden_stream_in_any_split() {
        let (whole, err) = decode_all(STREAM, STREAM.len());
        assert_eq!(err, None);
        let expected = [
            "Info(ServerInfo { server_id: \"NAB\", max_payload: Some(1048576), \
             connect_urls: [\"127.0.0.1:4222\", \"[::1]:4223\"], auth_required: true })",
            "Ping",
            "Msg { subject: [102, 101, 100, 46, 97], sid: [49], reply: None, \
             payload: [104, 101, 108, 108, 111] }",
            "Msg { subject: [102, 101, 100, 46, 97], sid: [49], \
             reply: Some([105, 110, 98, 111, 120, 46, 57]), payload: [] }",
            "Ok",
            "Pong",
            "Err([65, 117, 116, 104, 111, 114, 105, 122, 97, 116, 105, 111, 110, 32, \
             86, 105, 111, 108, 97, 116, 105, 111, 110])",
        ];
        assert_eq!(whole, expected);
        for chunk in 1..STREAM.len() {
            assert_eq!(
                decode_all(STREAM, chunk),
                (whole.clone(), None),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn oversize_payload_is_skipped_not_buffered() {
        let mut input = b"MSG s 1 100\r\n".to_vec();
        input.extend([b'x'; 100]);
        input.extend(b"\r\nPING\r\n");
        for chunk in [1, 7, 50, input.len()] {
            let mut d = Decoder::new(64);
            let mut ops = Vec::new();
            for part in input.chunks(chunk) {
                d.feed(part);
                while let Some(op) = d.next().unwrap() {
                    ops.push(format!("{op:?}"));
                }
                assert!(d.buffered() < 16, "buffered {}", d.buffered());
            }
            assert_eq!(ops, ["Oversize { size: 100 }", "Ping"], "chunk {chunk}");
        }
    }

    #[test]
    fn framing_errors_are_fatal_and_sticky() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"PING\n", DecodeError::BadLine),
            (b"PING x\r\n", DecodeError::BadLine),
            (b"HMSG a 1 2 2\r\n", DecodeError::UnknownOp),
            (b"\r\n", DecodeError::UnknownOp),
            (b"MSG a 1\r\n", DecodeError::BadLine),
            (b"MSG a 1 2 3 4\r\n", DecodeError::BadLine),
            (b"MSG a 1 -1\r\n", DecodeError::BadLine),
            (b"MSG a 1 99999999999\r\n", DecodeError::BadLine),
            (b"MSG a 1 2\r\nabXY", DecodeError::BadPayloadEnd),
            (b"INFO {\"a\":}\r\n", DecodeError::BadInfo),
            (b"INFO {} x\r\n", DecodeError::BadInfo),
            (b"INFO [1]\r\n", DecodeError::BadInfo),
        ];
        for (input, want) in cases {
            let (_, err) = decode_all(input, input.len());
            assert_eq!(err, Some(*want), "{:?}", String::from_utf8_lossy(input));
        }
        let mut d = Decoder::default();
        d.feed(b"BOGUS\r\nPING\r\n");
        assert_eq!(d.next(), Err(DecodeError::UnknownOp));
        assert_eq!(d.next(), Err(DecodeError::UnknownOp));
        d.reset();
        d.feed(b"PING\r\n");
        assert_eq!(d.next(), Ok(Some(ServerOp::Ping)));
    }

    #[test]
    fn control_line_is_bounded() {
        let mut d = Decoder::default();
        let junk = vec![b'A'; MAX_CONTROL_LINE - 1];
        d.feed(&junk);
        assert_eq!(d.next(), Ok(None));
        d.feed(b"B");
        assert_eq!(d.next(), Err(DecodeError::LineTooLong));
        // A line that is complete but too long is refused too.
        let mut d = Decoder::default();
        let mut line = b"INFO ".to_vec();
        line.resize(MAX_CONTROL_LINE + 10, b' ');
        line.extend(b"{}\r\n");
        d.feed(&line);
        assert_eq!(d.next(), Err(DecodeError::LineTooLong));
    }

    #[test]
    fn client_ops_golden_bytes() {
        let mut out = Vec::new();
        write_sub(&mut out, "mcrelay.g.5007", "1");
        write_pub(&mut out, "mcrelay.g.5007", b"\x80\x00");
        write_unsub(&mut out, "1");
        write_ping(&mut out);
        write_pong(&mut out);
        assert_eq!(
            out,
            b"SUB mcrelay.g.5007 1\r\nPUB mcrelay.g.5007 2\r\n\x80\x00\r\nUNSUB 1\r\nPING\r\nPONG\r\n"
        );
    }

    #[test]
    fn subjects() {
        assert!(valid_subject("mcrelay.239-255-0-77.5007"));
        for bad in [
            "",
            "a..b",
            "a.",
            "a b",
            "a.*",
            "a.>",
            "a\r\n",
            &"x".repeat(257),
        ] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        let mut rng = crate::sim::testrng::XorShift::new(7);
        let alphabet: &[&[u8]] = &[
            b"MSG ", b"INFO ", b"PING", b"PONG", b"+OK", b"-ERR '", b"\r\n", b" ", b"\t", b"1",
            b"12", b"999", b"{", b"}", b"\"", b":", b",", b"[", b"]", b"a", b"\n", b"\r",
        ];
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(40) {
                input.extend_from_slice(alphabet[rng.index(alphabet.len())]);
            }
            let mut d = Decoder::new(256);
            for part in input.chunks(1 + rng.index(8)) {
                d.feed(part);
                while let Ok(Some(_)) = d.next() {}
                assert!(d.buffered() <= MAX_CONTROL_LINE + 256 + 2 + 8);
            }
        }
    }
}
