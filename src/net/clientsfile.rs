//! The clients file on disk: loading it with the checks the relay makes at
//! start (and on reload), and the edits `mcrelay client add|remove` makes.
//! The format and the table are `relay::config::credentials`'.
//!
//! Checks: the file must be a readable regular file of at most
//! [`MAX_FILE_BYTES`] that neither group nor others may write (whoever can
//! write it can admit anyone); it may be world-readable, since it holds only
//! digests of tokens.
//!
//! Edits never leave a half-written file for a relay reloading at that
//! moment: the new text goes to a temporary file in the same directory
//! (same mode, same owner), is synced, and renamed over the old one. Two
//! edits at once are serialised by an exclusive `flock` on the file; the
//! loser re-reads what the winner renamed into place, so no edit is lost.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::TryRng as _;

use crate::relay::config::credentials::{
    token_digest, valid_name, Credentials, Entry, ParseError, Perms, MAX_NAME_LEN,
};

/// Largest clients file accepted: about 200,000 clients. A bound, so a
/// wrong path (a log file, a device) cannot make the relay read without end.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// Random bytes in a token `add` draws: 192 bits, 32 base64url characters,
/// well within the 110 bytes a v2 CREDENTIAL carries.
pub const TOKEN_BYTES: usize = 24;
/// What a new file starts with.
const HEADER: &str = "# mcrelay clients: NAME SHA256_HEX_OF_TOKEN [pub|sub|pubsub]\n";

/// Why a clients file could not be used or edited. Display is one line
/// naming the file.
#[derive(Debug)]
pub enum ClientsFileError {
    /// Opening, reading or writing failed.
    Io(String, io::Error),
    /// Not a regular file.
    NotAFile(String),
    /// Group or others may write the file (its mode).
    Writable(String, u32),
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge(String),
    /// A line is malformed, or a name or digest repeats.
    Parse(String, ParseError),
    /// `add`: the name is in the file already.
    Duplicate(String, String),
    /// `remove`: the name is not in the file.
    NoSuchName(String, String),
    /// `add`: not a valid client name.
    BadName(String),
    /// The OS random number generator failed.
    Random(String),
}

impl fmt::Display for ClientsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientsFileError::Io(p, e) => write!(f, "clients file {p}: {e}"),
            ClientsFileError::NotAFile(p) => write!(f, "clients file {p} is not a regular file"),
            ClientsFileError::Writable(p, m) => write!(
                f,
                "clients file {p} is writable by group or others (mode {m:o}); run: chmod go-w {p}"
            ),
            ClientsFileError::TooLarge(p) => write!(
                f,
                "clients file {p} is larger than {} MiB",
                MAX_FILE_BYTES >> 20
            ),
            ClientsFileError::Parse(p, e) => write!(f, "clients file {p} {e}"),
            ClientsFileError::Duplicate(p, n) => {
                write!(f, "clients file {p} has a client named '{n}' already")
            }
            ClientsFileError::NoSuchName(p, n) => {
                write!(f, "clients file {p} has no client named '{n}'")
            }
            ClientsFileError::BadName(n) => write!(
                f,
                "bad client name '{}': 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -",
                n.escape_debug()
            ),
            ClientsFileError::Random(e) => write!(f, "the OS random number generator failed: {e}"),
        }
    }
}

impl std::error::Error for ClientsFileError {}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Loads and checks the clients file at `path`.
///
/// # Errors
/// [`ClientsFileError`]: unreadable, not a regular file, writable by group
/// or others, too large, or malformed (naming the line).
pub fn load(path: &Path) -> Result<Credentials, ClientsFileError> {
    let file = File::open(path).map_err(|e| ClientsFileError::Io(display(path), e))?;
    let text = read_checked(path, &file)?;
    Credentials::parse(&text).map_err(|e| ClientsFileError::Parse(display(path), e))
}

/// Reads an open clients file after checking what it is (on the open file,
/// so a rename between the check and the read cannot slip another in).
fn read_checked(path: &Path, file: &File) -> Result<String, ClientsFileError> {
    let io = |e| ClientsFileError::Io(display(path), e);
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ClientsFileError::NotAFile(display(path)));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ClientsFileError::Writable(display(path), mode));
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ClientsFileError::TooLarge(display(path)));
    }
    Ok(text)
}

/// A fresh token: [`TOKEN_BYTES`] from the OS RNG as unpadded base64url
/// (URL-safe text, no whitespace, so it survives a token file and a shell).
///
/// # Errors
/// [`ClientsFileError::Random`] if the OS RNG fails.
pub fn new_token() -> Result<String, ClientsFileError> {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::rngs::SysRng
        .try_fill_bytes(&mut raw)
        .map_err(|e| ClientsFileError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Adds client `name` with `perms` and a fresh token; creates the file
/// (mode 0600) if it is missing. Returns the token, which exists nowhere
/// else: the file keeps only its digest.
///
/// # Errors
/// [`ClientsFileError`]: a bad or duplicate name, a file `load` refuses,
/// or a failed write (the old file is then untouched).
pub fn add(path: &Path, name: &str, perms: Perms) -> Result<String, ClientsFileError> {
    if !valid_name(name) {
        return Err(ClientsFileError::BadName(name.to_string()));
    }
    create_if_missing(path)?;
    edit(path, |text, table| {
        if table.get(name).is_some() {
            return Err(ClientsFileError::Duplicate(display(path), name.to_string()));
        }
        let token = new_token()?;
        let entry = Entry {
            name: name.to_string(),
            digest: token_digest(token.as_bytes()),
            perms,
        };
        let mut text = if text.trim().is_empty() {
            HEADER.to_string()
        } else {
            text.to_string()
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&entry.to_line());
        text.push('\n');
        Ok((text, token))
    })
}

/// Removes client `name`: its line goes, every other line (comments
/// included) stays as it was. Returns the removed entry.
///
/// # Errors
/// [`ClientsFileError`]: the name is not in the file, the file is one
/// `load` refuses, or the write failed (the old file is then untouched).
pub fn remove(path: &Path, name: &str) -> Result<Entry, ClientsFileError> {
    edit(path, |text, table| {
        let gone = table
            .get(name)
            .cloned()
            .ok_or_else(|| ClientsFileError::NoSuchName(display(path), name.to_string()))?;
        let mut kept = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let is_it = crate::relay::config::credentials::parse_line(line)
                .ok()
                .flatten()
                .is_some_and(|e| e.name == name);
            if !is_it {
                kept.push_str(line);
            }
        }
        Ok((kept, gone))
    })
}

/// Creates an empty file with mode 0600 unless one exists.
fn create_if_missing(path: &Path) -> Result<(), ClientsFileError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ClientsFileError::Io(display(path), e)),
    }
}

/// Read, change, write back atomically, under an exclusive lock on the
/// file. `change` gets the text and its table and returns the new text.
fn edit<T>(
    path: &Path,
    change: impl FnOnce(&str, &Credentials) -> Result<(String, T), ClientsFileError>,
) -> Result<T, ClientsFileError> {
    let io = |e| ClientsFileError::Io(display(path), e);
    let file = loop {
        let file = File::open(path).map_err(io)?;
        // SAFETY: flock(2) on a descriptor we own; it blocks until another
        // edit (which holds the lock until its rename is done) finishes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(io::Error::last_os_error()));
        }
        // The lock is on the inode we opened: if an edit renamed a new file
        // into place meanwhile, ours is stale; lock the new one instead.
        let ours = file.metadata().map_err(io)?;
        let now = fs::metadata(path).map_err(io)?;
        if (ours.dev(), ours.ino()) == (now.dev(), now.ino()) {
            break file;
        }
    };
    let text = read_checked(path, &file)?;
    let table = Credentials::parse(&text).map_err(|e| ClientsFileError::Parse(display(path), e))?;
    let (new_text, result) = change(&text, &table)?;
    // What we write must load: the same checks as the relay's.
    Credentials::parse(&new_text).map_err(|e| ClientsFileError::Parse(display(path), e))?;
    let meta = file.metadata().map_err(io)?;
    replace(path, &new_text, &meta).map_err(io)?;
    Ok(result)
}

/// Writes `text` to a temporary file beside `path` with the old file's
/// mode and owner, syncs it, and renames it over `path`.
fn replace(path: &Path, text: &str, old: &fs::Metadata) -> io::Result<()> {
    let tmp = temp_path(path);
    // Under the lock only we edit, so a temporary file by our name is left
    // over from a process that died with our pid.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // Keep the owner (root editing the relay user's file must not take
        // it away from the relay), then the mode (umask may have cut it).
        if (old.uid(), old.gid()) != (f.metadata()?.uid(), f.metadata()?.gid()) {
            std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()))?;
        }
        f.set_permissions(fs::Permissions::from_mode(
            old.permissions().mode() & 0o7777,
        ))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Best effort: make the rename itself durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `.NAME.PID.tmp` in the file's directory (the same file system, so the
/// rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "clients".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("mcrelay-clients-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&p);
        p
    }

    #[test]
    fn add_list_remove_round_trip() {
        let p = tmp("round");
        let t1 = add(&p, "alice", Perms::PUBSUB).unwrap();
        let t2 = add(&p, "sensor-1", Perms::PUB).unwrap();
        assert_eq!(t1.len(), 32);
        assert!(t1
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t1, t2);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let table = load(&p).unwrap();
        assert_eq!(table.lookup(t1.as_bytes()).unwrap().name, "alice");
        assert_eq!(table.lookup(t2.as_bytes()).unwrap().perms, Perms::PUB);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(!text.contains(&t1), "the file holds no token");
        assert!(matches!(
            add(&p, "alice", Perms::SUB),
            Err(ClientsFileError::Duplicate(..))
        ));
        assert!(matches!(
            add(&p, "bad name", Perms::SUB),
            Err(ClientsFileError::BadName(..))
        ));
        assert_eq!(remove(&p, "alice").unwrap().name, "alice");
        assert!(matches!(
            remove(&p, "alice"),
            Err(ClientsFileError::NoSuchName(..))
        ));
        let table = load(&p).unwrap();
        assert!(table.lookup(t1.as_bytes()).is_none());
        assert_eq!(table.len(), 1);
        fs::remove_file(p).unwrap();
    }

    /// Comments, blank lines and a missing final newline survive edits, and
    /// the mode the operator chose is kept.
    #[test]
    fn edits_keep_the_rest_of_the_file() {
        let p = tmp("keep");
        let d = crate::session::key::hex(&token_digest(b"x"));
        fs::write(
            &p,
            format!("# office\n\nbob {d} sub # the dashboard\n# end"),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        add(&p, "carol", Perms::PUB).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(&format!(
            "# office\n\nbob {d} sub # the dashboard\n# end\ncarol "
        )));
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        remove(&p, "bob").unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("# office\n\n# end\ncarol "), "{text}");
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn refusals() {
        let p = tmp("refuse");
        fs::write(&p, "").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o620)).unwrap();
        let e = load(&p).unwrap_err();
        assert!(matches!(e, ClientsFileError::Writable(_, 0o620)), "{e}");
        // Edits refuse it too: the file stays as it was.
        assert!(add(&p, "x", Perms::SUB).is_err());
        assert_eq!(fs::read_to_string(&p).unwrap(), "");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, "ok # fine\nbad!\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("line 1: no SHA-256 digest"), "{e}");
        assert!(
            e.starts_with(&format!("clients file {}", p.display())),
            "{e}"
        );
        let e = load(&tmp("missing")).unwrap_err();
        assert!(matches!(e, ClientsFileError::Io(..)), "{e}");
        let e = load(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(e, ClientsFileError::NotAFile(..)), "{e}");
        fs::remove_file(p).unwrap();
    }

    /// Concurrent adds are serialised by the lock: none is lost.
    #[test]
    fn concurrent_adds_all_land() {
        let p = tmp("concurrent");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || add(&p, &format!("c{i}"), Perms::PUB).unwrap())
            })
            .collect();
        let tokens: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let table = load(&p).unwrap();
        assert_eq!(table.len(), 8);
        for t in tokens {
            assert!(table.lookup(t.as_bytes()).is_some());
        }
        fs::remove_file(p).unwrap();
    }
}
