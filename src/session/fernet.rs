//! Fernet tokens (<https://github.com/fernet/spec>), sealed and opened with
//! the caller's time and IV, and with no timestamp check.
//!
//! A token is `0x80 | timestamp (u64 BE) | IV (16) | AES-128-CBC PKCS#7
//! ciphertext | HMAC-SHA256 (32)` over everything before the HMAC. This
//! module owns that layout in both of its forms: the raw bytes and the
//! URL-safe base64 text (protocol v2 §4 "Raw tokens"). [`FernetKey::open`]
//! accepts either, told apart by the first byte (0x80 raw, `g` text).
//!
//! Why not the `fernet` crate: it draws the IV from the OS inside `encrypt`
//! (a sans-IO core takes its randomness from its caller), reads the system
//! clock, and refuses tokens stamped more than 60 s in the future, so a
//! peer whose clock runs ahead could not talk to us (issue 10). Here the
//! timestamp is written (the spec wants one) but never checked, past or
//! future: freshness comes from the session's SEQ window, not from clocks.
//! The crate stays a dev-dependency, as the oracle of the differential tests.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit as _};
use aes::Aes128;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine as _, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use rsa::sha2::Sha256;

/// The version byte, the first byte of every raw token.
pub const VERSION: u8 = 0x80;
/// The first character of every text token (base64 of 0x80).
pub const TEXT_FIRST: u8 = b'g';
/// Version, timestamp and IV: the bytes before the ciphertext.
const HEADER_LEN: usize = 1 + 8 + 16;
/// HMAC-SHA256 tag length.
const TAG_LEN: usize = 32;
/// AES block length.
const BLOCK: usize = 16;
/// The shortest raw token: header, one block of ciphertext, tag.
pub const MIN_RAW_LEN: usize = HEADER_LEN + BLOCK + TAG_LEN;

/// URL-safe base64 with padding on output; on input padding may be there
/// or not, as in the `fernet` crate (the HMAC covers the decoded bytes, so
/// leniency here cannot make a forgery pass).
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FernetError {
    /// Not a token at all: bad base64, wrong version byte, too short, or a
    /// ciphertext that is not whole blocks.
    Malformed,
    /// The HMAC does not match: forged, corrupt, or another key.
    BadMac,
    /// Authentic but its padding is invalid (sealed wrongly by a key holder).
    BadPadding,
}

/// A Fernet key: the HMAC key (first 16 bytes) and the AES key (last 16),
/// both expanded once so sealing and opening a token schedule no key.
#[derive(Clone)]
pub struct FernetKey {
    mac: Hmac<Sha256>,
    aes: Aes128,
}

impl FernetKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        let (signing, encryption) = key.split_at(16);
        FernetKey {
            // HMAC takes keys of any length, so this cannot fail.
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(signing)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
            aes: Aes128::new(GenericArray::from_slice(encryption)),
        }
    }

    /// A key from its URL-safe base64 text (44 characters); `None` unless it
    /// decodes to exactly 32 bytes.
    pub fn from_base64(text: &str) -> Option<Self> {
        // Longer text cannot decode to 32 bytes; refusing it first bounds the work.
        if text.len() > 64 {
            return None;
        }
        let bytes = B64.decode(text).ok()?;
        let key: &[u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self::from_bytes(key))
    }

    /// Appends the raw token for `plain` to `out`, stamped `unix_secs`
    /// (informational: no receiver of ours checks it) and encrypted under
    /// `iv`, which must be unpredictable (the caller's seeded CSPRNG).
    pub fn seal_into(&self, unix_secs: u64, iv: [u8; 16], plain: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(raw_len(plain.len()));
        out.push(VERSION);
        out.extend_from_slice(&unix_secs.to_be_bytes());
        out.extend_from_slice(&iv);
        out.extend_from_slice(plain);
        self.finish(out, start, iv);
    }

    /// Turns the plaintext in `buf` into its raw token, in place (the
    /// plaintext moves up by the header's 25 bytes; no other buffer).
    pub fn seal_in_place(&self, unix_secs: u64, iv: [u8; 16], buf: &mut Vec<u8>) {
        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        header[1..9].copy_from_slice(&unix_secs.to_be_bytes());
        header[9..].copy_from_slice(&iv);
        buf.reserve(raw_len(buf.len()) - buf.len());
        buf.splice(0..0, header);
        self.finish(buf, 0, iv);
    }

    /// The text form of a new token: URL-safe base64 of the raw token.
    pub fn seal_text(&self, unix_secs: u64, iv: [u8; 16], plain: &[u8]) -> String {
        let mut raw = Vec::new();
        self.seal_into(unix_secs, iv, plain, &mut raw);
        B64.encode(raw)
    }

    /// `buf[start..]` holds header and plaintext: pads, encrypts and
    /// appends the tag.
    fn finish(&self, buf: &mut Vec<u8>, start: usize, iv: [u8; 16]) {
        let plain_len = buf.len() - start - HEADER_LEN;
        // PKCS#7: always 1..=16 bytes, each holding the count.
        let pad = BLOCK - plain_len % BLOCK;
        buf.resize(buf.len() + pad, pad as u8);
        let mut cbc = cbc::Encryptor::<Aes128>::inner_iv_init(
            self.aes.clone(),
            GenericArray::from_slice(&iv),
        );
        for block in buf[start + HEADER_LEN..].chunks_exact_mut(BLOCK) {
            cbc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        let tag = self.mac.clone().chain_update(&buf[start..]).finalize();
        buf.extend_from_slice(&tag.into_bytes());
    }

    /// Authenticates and decrypts a token in either form and returns the
    /// plaintext. The HMAC is checked (in constant time) before anything is
    /// decrypted; the timestamp is never checked.
    ///
    /// # Errors
    /// [`FernetError`] says which check failed.
    pub fn open(&self, token: &[u8]) -> Result<Vec<u8>, FernetError> {
        let mut out = Vec::new();
        self.open_into(token, &mut out)?;
        Ok(out)
    }

    /// [`FernetKey::open`] into a caller's buffer (replacing its contents),
    /// so a receive loop can reuse one allocation. On error `out` holds
    /// nothing useful.
    ///
    /// # Errors
    /// [`FernetError`] says which check failed.
    pub fn open_into(&self, token: &[u8], out: &mut Vec<u8>) -> Result<(), FernetError> {
        out.clear();
        match token.first() {
            Some(&VERSION) => {
                let ct = self.authenticate(token)?;
                out.extend_from_slice(ct);
                let iv = iv_of(token);
                let n = self.decrypt_in_place(iv, out)?;
                out.truncate(n);
                Ok(())
            }
            Some(&TEXT_FIRST) => {
                // Decoded into `out` itself: the plaintext is then decrypted
                // where it lies and moved to the front.
                B64.decode_vec(token, out)
                    .map_err(|_| FernetError::Malformed)?;
                if out.first() != Some(&VERSION) {
                    return Err(FernetError::Malformed);
                }
                let ct_len = self.authenticate(out)?.len();
                let iv = iv_of(out);
                let ct = HEADER_LEN..HEADER_LEN + ct_len;
                let n = self.decrypt_in_place(iv, &mut out[ct.clone()])?;
                out.copy_within(HEADER_LEN..HEADER_LEN + n, 0);
                out.truncate(n);
                Ok(())
            }
            _ => Err(FernetError::Malformed),
        }
    }

    /// Checks the shape and the tag of a raw token; returns its ciphertext.
    fn authenticate<'t>(&self, raw: &'t [u8]) -> Result<&'t [u8], FernetError> {
        if raw.len() < MIN_RAW_LEN || (raw.len() - HEADER_LEN - TAG_LEN) % BLOCK != 0 {
            return Err(FernetError::Malformed);
        }
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        self.mac
            .clone()
            .chain_update(signed)
            .verify_slice(tag)
            .map_err(|_| FernetError::BadMac)?;
        Ok(&signed[HEADER_LEN..])
    }

    /// Decrypts whole blocks in place; returns the plaintext length.
    fn decrypt_in_place(&self, iv: [u8; 16], buf: &mut [u8]) -> Result<usize, FernetError> {
        cbc::Decryptor::<Aes128>::inner_iv_init(self.aes.clone(), GenericArray::from_slice(&iv))
            .decrypt_padded_mut::<Pkcs7>(buf)
            .map(|p| p.len())
            .map_err(|_| FernetError::BadPadding)
    }
}

/// The IV of a raw token at least [`HEADER_LEN`] long.
fn iv_of(raw: &[u8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&raw[9..HEADER_LEN]);
    iv
}

/// Length of the raw token for a plaintext of `plain_len` bytes.
pub const fn raw_len(plain_len: usize) -> usize {
    HEADER_LEN + (plain_len / BLOCK + 1) * BLOCK + TAG_LEN
}

/// The URL-safe base64 text of a 32-byte key (what SESSION_KEY carries).
pub fn encode_key(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// The text form of a raw token.
pub fn to_text(raw: &[u8]) -> String {
    B64.encode(raw)
}

/// The timestamp a raw or text token carries, unauthenticated (for
/// diagnostics and tests; nothing decides on it).
pub fn timestamp(token: &[u8]) -> Option<u64> {
    let raw;
    let bytes = match token.first() {
        Some(&VERSION) => token,
        Some(&TEXT_FIRST) => {
            // 12 characters decode to the 9 bytes of version and timestamp.
            raw = B64.decode(token.get(..12)?).ok()?;
            &raw
        }
        _ => return None,
    };
    let ts: [u8; 8] = bytes.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(ts))
}
