//! The server key file: PKCS#8 PEM, created with mode 0600, refused when
//! group or others can read it.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::session::key::{PemError, ServerKey};

/// Why a key file could not be used. Display is one line naming the file.
#[derive(Debug)]
pub enum KeyError {
    /// Reading or writing the file failed.
    Io(String, io::Error),
    /// Group or others may read the file.
    Permissions(String, u32),
    /// The file is not a PKCS#8 PEM RSA key.
    Parse(String),
    /// The key is not 2048, 3072 or 4096 bits.
    Size(String, usize),
    /// Key generation failed.
    Generate(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Io(p, e) => write!(f, "key file {p}: {e}"),
            KeyError::Permissions(p, m) => write!(
                f,
                "key file {p} is readable by group or others (mode {m:o}); run: chmod 600 {p}"
            ),
            KeyError::Parse(p) => write!(f, "key file {p} is not a PKCS#8 PEM RSA private key"),
            KeyError::Size(p, bits) => {
                write!(
                    f,
                    "key file {p} holds a {bits}-bit key; need 2048, 3072 or 4096"
                )
            }
            KeyError::Generate(e) => write!(f, "RSA key generation failed: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Loads the key at `path`, or creates one of `bits` there (mode 0600)
/// when the file does not exist. A key file that exists keeps its size
/// (2048, 3072 or 4096 bits), whatever `bits` says. Returns the key and
/// whether it was created.
///
/// # Errors
/// [`KeyError`], one line naming the file.
pub fn load_or_create(path: &Path, bits: usize) -> Result<(ServerKey, bool), KeyError> {
    let name = path.display().to_string();
    match load(path) {
        Err(KeyError::Io(_, e)) if e.kind() == io::ErrorKind::NotFound => {
            let key = ServerKey::generate_bits(bits).map_err(KeyError::Generate)?;
            write_new(&key, path).map_err(|e| KeyError::Io(name, e))?;
            Ok((key, true))
        }
        other => other.map(|key| (key, false)),
    }
}

/// Loads the key at `path`: a PKCS#8 PEM RSA key of 2048, 3072 or 4096
/// bits that neither group nor others can read.
///
/// # Errors
/// [`KeyError`], one line naming the file.
pub fn load(path: &Path) -> Result<ServerKey, KeyError> {
    let name = path.display().to_string();
    let meta = fs::metadata(path).map_err(|e| KeyError::Io(name.clone(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions(name, mode));
    }
    let pem = fs::read_to_string(path).map_err(|e| KeyError::Io(name.clone(), e))?;
    match ServerKey::from_pkcs8_pem(&pem) {
        Ok(key) => Ok(key),
        Err(PemError::Parse) => Err(KeyError::Parse(name)),
        Err(PemError::Size(bits)) => Err(KeyError::Size(name, bits)),
    }
}

/// Writes the private key as PKCS#8 PEM to a new file with mode 0600
/// (set at creation, so it is never readable by others, not even briefly).
fn write_new(key: &ServerKey, path: &Path) -> io::Result<()> {
    let pem = key.to_pkcs8_pem().map_err(io::Error::other)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mcrelay-keys-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&dir);
        dir
    }

    #[test]
    fn create_then_load_same_key() {
        let p = tmp("create");
        let (a, created) = load_or_create(&p, 2048).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, created) = load_or_create(&p, 2048).unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        fs::remove_file(p).unwrap();
    }

    /// A created key has the size asked for; a file that exists keeps its
    /// own size whatever is asked.
    #[test]
    fn sizes() {
        let p = tmp("sizes");
        let (k, created) = load_or_create(&p, 3072).unwrap();
        assert!(created);
        assert_eq!(k.bits(), 3072);
        let (again, created) = load_or_create(&p, 2048).unwrap();
        assert!(!created);
        assert_eq!(again.bits(), 3072);
        assert_eq!(load(&p).unwrap().fingerprint(), k.fingerprint());
        fs::remove_file(&p).unwrap();
        assert!(matches!(load(&p), Err(KeyError::Io(..))));
        assert!(matches!(
            load_or_create(&p, 1024),
            Err(KeyError::Generate(_))
        ));
        assert!(!p.exists());
    }

    #[test]
    fn group_readable_refused() {
        let p = tmp("perm");
        load_or_create(&p, 2048).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create(&p, 2048).err().unwrap();
        assert!(matches!(err, KeyError::Permissions(_, 0o640)), "{err}");
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn garbage_refused() {
        let p = tmp("garbage");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        fs::write(&p, "not a key").unwrap();
        assert!(matches!(load_or_create(&p, 2048), Err(KeyError::Parse(_))));
        fs::remove_file(p).unwrap();
    }
}
