//! The server's RSA-2048 key: generation, the 0600 key file, the DER public
//! key handed out in SERVER_KEY, its fingerprint, and OAEP decryption.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::{Digest, Sha256};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey};

/// Modulus size the protocol fixes.
pub const KEY_BITS: usize = 2048;

/// Why a key file could not be used. Display is one line naming the file.
#[derive(Debug)]
pub enum KeyError {
    /// Reading or writing the file failed.
    Io(String, io::Error),
    /// Group or others may read the file.
    Permissions(String, u32),
    /// The file is not a PKCS#8 PEM RSA key.
    Parse(String),
    /// The key is not 2048 bits.
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
                write!(f, "key file {p} holds a {bits}-bit key; need {KEY_BITS}")
            }
            KeyError::Generate(e) => write!(f, "RSA key generation failed: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The server's key pair with its encoded public half.
#[derive(Clone)]
pub struct ServerKey {
    private: PrivateKey,
    public_der: Vec<u8>,
}

impl ServerKey {
    /// Generates a fresh 2048-bit key (tens of milliseconds).
    pub fn generate() -> Result<Self, KeyError> {
        let private = PrivateKey::new(&mut rand::rng(), KEY_BITS)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private(private).map_err(|e| KeyError::Generate(e.to_string()))
    }

    fn from_private(private: PrivateKey) -> Result<Self, rsa::pkcs8::spki::Error> {
        let public_der = private.to_public_key().to_public_key_der()?.into_vec();
        Ok(ServerKey {
            private,
            public_der,
        })
    }

    /// Loads the key at `path`, or creates one there (mode 0600) when the
    /// file does not exist. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        let name = path.display().to_string();
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Permissions(name, mode));
                }
                let pem = fs::read_to_string(path).map_err(|e| KeyError::Io(name.clone(), e))?;
                let private =
                    PrivateKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Parse(name.clone()))?;
                let bits = private.size() * 8;
                if bits != KEY_BITS {
                    return Err(KeyError::Size(name, bits));
                }
                let key = Self::from_private(private).map_err(|_| KeyError::Parse(name))?;
                Ok((key, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.write_new(path).map_err(|e| KeyError::Io(name, e))?;
                Ok((key, true))
            }
            Err(e) => Err(KeyError::Io(name, e)),
        }
    }

    /// Writes the private key as PKCS#8 PEM to a new file with mode 0600
    /// (set at creation, so it is never readable by others, not even briefly).
    fn write_new(&self, path: &Path) -> io::Result<()> {
        let pem = self
            .private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    }

    /// DER SubjectPublicKeyInfo, the SERVER_KEY value.
    pub fn public_der(&self) -> &[u8] {
        &self.public_der
    }

    /// SHA-256 of the DER public key, lower-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_der)
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption, blinded.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        self.private.decrypt(Oaep::<Sha256>::new(), ciphertext).ok()
    }
}

/// Lower-case hex SHA-256 of a DER public key: what users pin.
pub fn fingerprint(public_der: &[u8]) -> String {
    hex(&Sha256::digest(public_der))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::PublicKey;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mcrelay-keys-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&dir);
        dir
    }

    #[test]
    fn create_then_load_same_key() {
        let p = tmp("create");
        let (a, created) = ServerKey::load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, created) = ServerKey::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn group_readable_refused() {
        let p = tmp("perm");
        ServerKey::load_or_create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let err = ServerKey::load_or_create(&p).err().unwrap();
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
        assert!(matches!(
            ServerKey::load_or_create(&p),
            Err(KeyError::Parse(_))
        ));
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn oaep_round_trip_and_der_parses() {
        let k = ServerKey::generate().unwrap();
        let public = PublicKey::from_public_key_der(k.public_der()).unwrap();
        let ct = public.oaep_encrypt::<Sha256>(b"secret").unwrap();
        assert_eq!(k.decrypt(&ct).as_deref(), Some(&b"secret"[..]));
        assert_eq!(k.decrypt(&[0u8; 256]), None);
        assert_eq!(k.decrypt(b"short"), None);
    }
}
