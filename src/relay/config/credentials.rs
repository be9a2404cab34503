//! Named clients: the parsed clients file and the lookup of a presented
//! token. Pure: text in, values out; the file itself (permissions, atomic
//! edits) is `net::clientsfile`'s business.
//!
//! The file format (one client per line):
//!
//! ```text
//! # comment
//! alice   3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b  pubsub
//! sensor1 0C8B...64 hex digits...                                            pub   # trailing comment
//! ```
//!
//! A name is 1 to 32 of `[A-Za-z0-9._-]`, unique in the file; the digest is
//! the SHA-256 of the client's token, 64 hex digits in either case; the
//! permissions are `pub`, `sub` or `pubsub` (the default when left out).
//! The file holds no secret: a token cannot be recovered from its digest
//! when it carries 128 bits or more of entropy, as the tokens
//! `mcrelay client add` draws do.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use rsa::sha2::{Digest, Sha256};

/// Longest client name.
pub const MAX_NAME_LEN: usize = 32;
/// Hex digits of a SHA-256 digest.
const DIGEST_HEX_LEN: usize = 64;

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perms {
    /// May send DATA that the relay passes on.
    pub publish: bool,
    /// May receive what others send, and notices about them.
    pub subscribe: bool,
}

impl Perms {
    /// Publish only (`pub`): a sensor.
    pub const PUB: Perms = Perms {
        publish: true,
        subscribe: false,
    };
    /// Subscribe only (`sub`): a dashboard.
    pub const SUB: Perms = Perms {
        publish: false,
        subscribe: true,
    };
    /// Both (`pubsub`): the default, and what a shared-token client gets.
    pub const PUBSUB: Perms = Perms {
        publish: true,
        subscribe: true,
    };

    /// The rights both grant: what a live session keeps when its line
    /// changes (rights taken away apply at once, rights added at the next
    /// handshake).
    pub fn intersect(self, other: Perms) -> Perms {
        Perms {
            publish: self.publish && other.publish,
            subscribe: self.subscribe && other.subscribe,
        }
    }

    /// True if `other` takes away a right `self` has.
    pub fn loses_with(self, other: Perms) -> bool {
        self.intersect(other) != self
    }
}

impl Default for Perms {
    fn default() -> Self {
        Perms::PUBSUB
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.publish, self.subscribe) {
            (true, true) => "pubsub",
            (true, false) => "pub",
            (false, true) => "sub",
            // Not expressible in the file; shown for a computed intersection.
            (false, false) => "none",
        })
    }
}

impl FromStr for Perms {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pub" => Ok(Perms::PUB),
            "sub" => Ok(Perms::SUB),
            "pubsub" => Ok(Perms::PUBSUB),
            _ => Err(format!("permissions '{s}' are not pub, sub or pubsub")),
        }
    }
}

/// One client of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The client's name, `NAME` in its id `NAME@address:port`.
    pub name: String,
    /// SHA-256 of its token.
    pub digest: [u8; 32],
    /// What it may do.
    pub perms: Perms,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.perms)
    }
}

impl Entry {
    /// The entry as a clients-file line (without the newline).
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {}",
            self.name,
            crate::session::key::hex(&self.digest),
            self.perms
        )
    }
}

/// Why a clients-file line is refused (the line number is added by
/// [`ParseError`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineError {
    /// The name is empty, longer than 32 bytes or has other characters
    /// than `A-Z a-z 0-9 . _ -`.
    BadName(String),
    /// The line has a name but no digest.
    MissingDigest,
    /// The digest is not 64 hex digits.
    BadDigest,
    /// The third field is not `pub`, `sub` or `pubsub`.
    BadPerms(String),
    /// More than three fields before any comment.
    TrailingField(String),
    /// The name is on an earlier line already.
    DuplicateName {
        /// The name.
        name: String,
        /// The earlier line.
        first: usize,
    },
    /// The digest is on an earlier line already: one token would be two clients.
    DuplicateDigest {
        /// The name on the earlier line.
        name: String,
        /// The earlier line.
        first: usize,
    },
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::BadName(n) => write!(
                f,
                "bad name '{}': 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -",
                shorten(n)
            ),
            LineError::MissingDigest => f.write_str("no SHA-256 digest after the name"),
            LineError::BadDigest => f.write_str("the digest is not 64 hex digits"),
            LineError::BadPerms(p) => {
                write!(f, "permissions '{}' are not pub, sub or pubsub", shorten(p))
            }
            LineError::TrailingField(t) => {
                write!(f, "unexpected '{}' after the permissions", shorten(t))
            }
            LineError::DuplicateName { name, first } => {
                write!(f, "name '{name}' is on line {first} already")
            }
            LineError::DuplicateDigest { name, first } => write!(
                f,
                "the same token digest as '{name}' on line {first} (one token, two names)"
            ),
        }
    }
}

/// A field as shown in an error: escaped (one line, no terminal
/// control) and cut after 40 characters.
fn shorten(field: &str) -> String {
    let mut shown: String = field.chars().take(40).collect();
    if shown.len() < field.len() {
        shown.push('…');
    }
    shown.escape_debug().to_string()
}

/// A refused clients file: the first bad line (1-based) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub error: LineError,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

impl std::error::Error for ParseError {}

/// True if `name` may name a client: 1 to 32 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// SHA-256 of a token: what the clients file stores.
pub fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Parses one line: `Ok(None)` for a blank or comment-only line. The
/// uniqueness of names and digests is the table's check, not the line's.
///
/// # Errors
/// [`LineError`] saying what is wrong.
pub fn parse_line(line: &str) -> Result<Option<Entry>, LineError> {
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let mut fields = content.split_ascii_whitespace();
    let Some(name) = fields.next() else {
        return Ok(None);
    };
    if !valid_name(name) {
        return Err(LineError::BadName(name.to_string()));
    }
    let digest = fields.next().ok_or(LineError::MissingDigest)?;
    let digest = parse_digest(digest).ok_or(LineError::BadDigest)?;
    let perms = match fields.next() {
        None => Perms::default(),
        Some(p) => p.parse().map_err(|_| LineError::BadPerms(p.to_string()))?,
    };
    if let Some(extra) = fields.next() {
        return Err(LineError::TrailingField(extra.to_string()));
    }
    Ok(Some(Entry {
        name: name.to_string(),
        digest,
        perms,
    }))
}

/// 64 hex digits, either case, to 32 bytes.
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != DIGEST_HEX_LEN {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The named clients, looked up by the token a client presents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// In file order.
    entries: Vec<Entry>,
    /// Digest → index in `entries`.
    by_digest: HashMap<[u8; 32], usize>,
    /// Name → index in `entries`.
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.entries).finish()
    }
}

impl Credentials {
    /// Parses a clients file's text.
    ///
    /// # Errors
    /// [`ParseError`]: the first bad line and why, one line of text.
    pub fn parse(text: &str) -> Result<Credentials, ParseError> {
        let mut table = Credentials::default();
        let mut lines_of = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |error| ParseError {
                line: line_no,
                error,
            };
            let Some(entry) = parse_line(line).map_err(err)? else {
                continue;
            };
            if let Some(&at) = table.by_name.get(&entry.name) {
                return Err(err(LineError::DuplicateName {
                    name: entry.name,
                    first: lines_of[at],
                }));
            }
            if let Some(&at) = table.by_digest.get(&entry.digest) {
                return Err(err(LineError::DuplicateDigest {
                    name: table.entries[at].name.clone(),
                    first: lines_of[at],
                }));
            }
            lines_of.push(line_no);
            table.insert(entry);
        }
        Ok(table)
    }

    fn insert(&mut self, entry: Entry) {
        let at = self.entries.len();
        self.by_digest.insert(entry.digest, at);
        self.by_name.insert(entry.name.clone(), at);
        self.entries.push(entry);
    }

    /// The client whose token this is, if any.
    ///
    /// The token is hashed and its digest looked up in a hash map, not
    /// compared in constant time: what a timing side channel could reveal
    /// is how far the presented digest matches stored ones, and the stored
    /// digests are no secret (the file may be world-readable). Learning them
    /// does not help: a token of 128 random bits cannot be found from its
    /// SHA-256, and choosing tokens to probe a digest byte by byte would
    /// need SHA-256 preimages.
    pub fn lookup(&self, token: &[u8]) -> Option<&Entry> {
        self.lookup_digest(&token_digest(token))
    }

    /// The client whose token has this digest, if any.
    pub fn lookup_digest(&self, digest: &[u8; 32]) -> Option<&Entry> {
        self.by_digest.get(digest).map(|&i| &self.entries[i])
    }

    /// The client of this name, if any.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// Every client, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file names no client.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What a reload from `self` to `new` changes for live sessions.
    pub fn diff(&self, new: &Credentials) -> CredentialsDiff {
        let mut d = CredentialsDiff::default();
        for old in &self.entries {
            match new.get(&old.name) {
                None => d.removed.push(old.name.clone()),
                Some(n) if n.digest != old.digest => d.token_changed.push(old.name.clone()),
                Some(n) => {
                    if old.perms.loses_with(n.perms) {
                        d.narrowed
                            .push((old.name.clone(), old.perms.intersect(n.perms)));
                    }
                    if n.perms.loses_with(old.perms) {
                        d.widened.push((old.name.clone(), n.perms));
                    }
                }
            }
        }
        for n in &new.entries {
            if self.get(&n.name).is_none() {
                d.added.push(n.name.clone());
            }
        }
        d
    }
}

/// What a reload changes, name by name (each list in file order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialsDiff {
    /// Names no longer in the file: their sessions end (PEER_LEFT reason 5).
    pub removed: Vec<String>,
    /// Names whose token changed: their sessions end as if removed (the
    /// old token is revoked); the new token may then handshake.
    pub token_changed: Vec<String>,
    /// Names that lost a right, with what their live sessions keep (the
    /// intersection of old and new): applies at once.
    pub narrowed: Vec<(String, Perms)>,
    /// Names that gained a right, with their new permissions: applies at
    /// their next handshake (a session keeps what it had).
    pub widened: Vec<(String, Perms)>,
    /// Names new in the file.
    pub added: Vec<String>,
}

impl CredentialsDiff {
    /// True when the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.token_changed.is_empty()
            && self.narrowed.is_empty()
            && self.widened.is_empty()
            && self.added.is_empty()
    }

    /// The names whose sessions must end: removed ones and those whose
    /// token changed.
    pub fn revoked(&self) -> impl Iterator<Item = &str> {
        self.removed
            .iter()
            .chain(&self.token_changed)
            .map(String::as_str)
    }
}

impl fmt::Display for CredentialsDiff {
    /// One line for the log: `removed a, b; token changed c; ...`, or
    /// `no change`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let mut parts = Vec::new();
        let names = |v: &[String]| v.join(", ");
        let with = |v: &[(String, Perms)]| {
            v.iter()
                .map(|(n, p)| format!("{n} ({p})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.removed.is_empty() {
            parts.push(format!("removed {}", names(&self.removed)));
        }
        if !self.token_changed.is_empty() {
            parts.push(format!("token changed {}", names(&self.token_changed)));
        }
        if !self.narrowed.is_empty() {
            parts.push(format!("rights taken {}", with(&self.narrowed)));
        }
        if !self.widened.is_empty() {
            parts.push(format!(
                "rights granted from the next handshake {}",
                with(&self.widened)
            ));
        }
        if !self.added.is_empty() {
            parts.push(format!("added {}", names(&self.added)));
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::key::hex;

    fn line(name: &str, token: &str, perms: &str) -> String {
        format!("{name} {} {perms}\n", hex(&token_digest(token.as_bytes())))
    }

    #[test]
    fn parses_comments_blanks_defaults_and_either_case() {
        let upper = hex(&token_digest(b"t-bob")).to_uppercase();
        let text = format!(
            "# the office\n\n   \n{}bob {upper}   # default perms\n\tcarol {}\tsub\n",
            line("alice", "t-alice", "pub"),
            hex(&token_digest(b"t-carol")),
        );
        let c = Credentials::parse(&text).unwrap();
        assert_eq!(c.len(), 3);
        let names: Vec<&str> = c.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(c.lookup(b"t-alice").unwrap().perms, Perms::PUB);
        assert_eq!(c.lookup(b"t-bob").unwrap().perms, Perms::PUBSUB);
        assert_eq!(c.lookup(b"t-carol").unwrap().name, "carol");
        assert_eq!(c.get("carol").unwrap().perms, Perms::SUB);
        assert!(c.lookup(b"t-dave").is_none());
        assert!(c.lookup(b"").is_none());
        assert!(c.get("dave").is_none());
        assert!(Credentials::parse("").unwrap().is_empty());
        assert!(Credentials::parse("# only\n\n").unwrap().is_empty());
    }

    #[test]
    fn entry_line_parses_back() {
        let e = Entry {
            name: "a.b_c-9".into(),
            digest: token_digest(b"x"),
            perms: Perms::SUB,
        };
        assert_eq!(parse_line(&e.to_line()), Ok(Some(e)));
    }

    #[test]
    fn names() {
        for good in ["a", "A.b_c-9", &"x".repeat(32), "..", "-"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", &"x".repeat(33), "a b", "a@b", "a/b", "é", "a:b", "a\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    /// Each bad file is refused at the right line, with a one-line reason.
    #[test]
    fn bad_lines_are_named() {
        let d = hex(&token_digest(b"t"));
        let d2 = hex(&token_digest(b"u"));
        let cases: Vec<(String, usize, &str)> = vec![
            (format!("# ok\nal!ce {d}\n"), 2, "bad name 'al!ce'"),
            (format!("{} {d}\n", "n".repeat(33)), 1, "bad name"),
            ("alice\n".into(), 1, "no SHA-256 digest"),
            (format!("alice {}\n", &d[..63]), 1, "not 64 hex digits"),
            (format!("alice {}g\n", &d[..63]), 1, "not 64 hex digits"),
            (format!("alice {d}0\n"), 1, "not 64 hex digits"),
            (format!("alice {d} publish\n"), 1, "permissions 'publish'"),
            (format!("alice {d} pub extra\n"), 1, "unexpected 'extra'"),
            (
                format!("alice {d}\n\nalice {d2} sub\n"),
                3,
                "name 'alice' is on line 1 already",
            ),
            (
                format!("alice {d}\nbob {}\n", d.to_uppercase()),
                2,
                "same token digest as 'alice' on line 1",
            ),
        ];
        for (text, at, why) in cases {
            let e = Credentials::parse(&text).unwrap_err();
            assert_eq!(e.line, at, "{text:?}: {e}");
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("line {at}: ")), "{shown}");
            assert!(shown.contains(why), "{text:?}: {shown}");
            assert!(!shown.contains('\n'), "{shown}");
        }
        // Control characters in a bad name are shown escaped: still one
        // line; a long field is cut.
        let e = Credentials::parse("a\u{1b}[2J x\n").unwrap_err();
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
        let e = Credentials::parse(&format!("{}\n", "n".repeat(10_000))).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    /// A `#` ends the line's content wherever it stands.
    #[test]
    fn hash_starts_a_comment_anywhere() {
        let d = hex(&token_digest(b"t"));
        let c = Credentials::parse(&format!("alice {d} sub# no space\n")).unwrap();
        assert_eq!(c.get("alice").unwrap().perms, Perms::SUB);
        let c = Credentials::parse(&format!("alice {d}#pub\n")).unwrap();
        assert_eq!(c.get("alice").unwrap().perms, Perms::PUBSUB);
        assert!(Credentials::parse(&format!("# alice {d} junk junk\n"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn perms_algebra() {
        assert_eq!(Perms::PUBSUB.intersect(Perms::PUB), Perms::PUB);
        assert_eq!(Perms::PUB.intersect(Perms::SUB).to_string(), "none");
        assert!(Perms::PUBSUB.loses_with(Perms::SUB));
        assert!(!Perms::SUB.loses_with(Perms::PUBSUB));
        assert!(!Perms::PUB.loses_with(Perms::PUB));
        for p in ["pub", "sub", "pubsub"] {
            assert_eq!(p.parse::<Perms>().unwrap().to_string(), p);
        }
        assert!("PUB".parse::<Perms>().is_err());
    }

    #[test]
    fn diff_for_reload() {
        let old = Credentials::parse(
            &[
                line("alice", "a", "pubsub"),
                line("bob", "b", "pubsub"),
                line("carol", "c", "sub"),
                line("dave", "d", "pub"),
                line("erin", "e", "pubsub"),
                line("frank", "f", "pub"),
            ]
            .concat(),
        )
        .unwrap();
        let new = Credentials::parse(
            &[
                line("alice", "a", "pubsub"), // unchanged
                line("carol", "c", "pubsub"), // gains publish
                line("dave", "d2", "pub"),    // new token
                line("erin", "e", "sub"),     // loses publish
                line("frank", "f", "sub"),    // loses publish, gains subscribe
                line("grace", "g", "pub"),    // new
            ]
            .concat(),
        )
        .unwrap();
        let d = old.diff(&new);
        assert_eq!(d.removed, ["bob"]);
        assert_eq!(d.token_changed, ["dave"]);
        assert_eq!(
            d.narrowed,
            [
                ("erin".to_string(), Perms::SUB),
                ("frank".to_string(), Perms::PUB.intersect(Perms::SUB)),
            ]
        );
        assert_eq!(
            d.widened,
            [
                ("carol".to_string(), Perms::PUBSUB),
                ("frank".to_string(), Perms::SUB),
            ]
        );
        assert_eq!(d.added, ["grace"]);
        assert_eq!(d.revoked().collect::<Vec<_>>(), ["bob", "dave"]);
        let shown = d.to_string();
        assert!(
            shown.starts_with(
                "removed bob; token changed dave; rights taken erin (sub), frank (none); "
            ),
            "{shown}"
        );
        assert!(shown.ends_with("added grace"), "{shown}");
        assert!(old.diff(&old).is_empty());
        assert_eq!(old.diff(&old).to_string(), "no change");
        // A revoked token no longer looks up; the new one does.
        assert!(new.lookup(b"d").is_none());
        assert_eq!(new.lookup(b"d2").unwrap().name, "dave");
    }
}
