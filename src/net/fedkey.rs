//! The federation key file: one Fernet key, 44 characters of URL-safe
//! base64 and a newline, shared by every relay of a federation. It is the
//! only thing keeping NATS, and anyone who can read the subject, out of
//! the relayed traffic, so like the RSA key file it is refused when group
//! or others can read it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::RngExt;

use crate::session::fernet::{self, FernetKey};

/// A new random federation key in its file format: the 44-character key
/// and a newline (what `mcrelay federation-key` prints).
pub fn new_federation_key() -> String {
    let key: [u8; 32] = rand::rng().random();
    format!("{}\n", fernet::encode_key(&key))
}

/// Reads a federation key file.
///
/// # Errors
/// One line naming the file: unreadable, readable by group or others, or
/// not a Fernet key.
pub fn load_federation_key(path: &Path) -> Result<FernetKey, String> {
    let name = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("federation key file {name}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "federation key file {name} is readable by group or others (mode {mode:o}); run: chmod 600 {name}"
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| format!("federation key file {name}: {e}"))?;
    FernetKey::from_base64(text.trim()).ok_or_else(|| {
        format!(
            "federation key file {name} does not hold a Fernet key (44 characters of URL-safe \
             base64; `mcrelay federation-key` makes one)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mcrelay-fedkey-{}-{name}", std::process::id()));
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn new_key_is_the_file_format_and_loads() {
        let k = new_federation_key();
        assert_eq!(k.len(), 45);
        assert!(k.ends_with('\n'));
        assert_ne!(k, new_federation_key());
        let p = file("good", &k, 0o600);
        let key = load_federation_key(&p).unwrap();
        // The loaded key is the printed one: a token sealed with either opens with the other.
        let printed = FernetKey::from_base64(k.trim()).unwrap();
        let mut tok = Vec::new();
        printed.seal_into(1, [0; 16], b"x", &mut tok);
        assert_eq!(key.open(&tok).unwrap(), b"x");
        fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_one_line_naming_them() {
        let good = new_federation_key();
        let cases = [
            (
                "open",
                good.as_str(),
                0o644,
                "readable by group or others (mode 644)",
            ),
            ("short", "abc\n", 0o600, "does not hold a Fernet key"),
            ("empty", "", 0o600, "does not hold a Fernet key"),
        ];
        for (name, text, mode, want) in cases {
            let p = file(name, text, mode);
            let err = load_federation_key(&p).err().unwrap();
            assert!(
                err.contains(want) && err.contains(&p.display().to_string()),
                "{err}"
            );
            assert!(!err.contains('\n'));
            fs::remove_file(p).unwrap();
        }
        let err = load_federation_key(Path::new("/nonexistent/fed.key"))
            .err()
            .unwrap();
        assert!(
            err.starts_with("federation key file /nonexistent/fed.key:"),
            "{err}"
        );
    }
}
