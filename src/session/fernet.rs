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
        // HMAC zero-pads a short key to the hash's 64-byte block; doing it
        // here gives the fixed-size (infallible) constructor the same key.
        let mut block = [0u8; 64];
        block[..16].copy_from_slice(signing);
        FernetKey {
            mac: <Hmac<Sha256> as KeyInit>::new(&block.into()),
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
        let plain_len = buf.len();
        buf.reserve(raw_len(plain_len) - plain_len);
        buf.resize(plain_len + HEADER_LEN, 0);
        buf.copy_within(..plain_len, HEADER_LEN);
        buf[..HEADER_LEN].copy_from_slice(&header);
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

/// Appends the text form of the raw token `buf[..raw_len]` to `buf` and
/// returns where it starts: one reused buffer holds both, so a fan-out of
/// text tokens allocates nothing once the buffer has grown.
pub fn append_text(buf: &mut Vec<u8>, raw_len: usize) -> usize {
    let text_len = base64::encoded_len(raw_len, true).unwrap_or(0);
    buf.truncate(raw_len);
    buf.resize(raw_len + text_len, 0);
    let (raw, text) = buf.split_at_mut(raw_len);
    let n = B64.encode_slice(raw, text).unwrap_or(0);
    buf.truncate(raw_len + n);
    raw_len
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::testrng::XorShift;

    /// Vectors of the Fernet specification, github.com/fernet/spec at
    /// commit 20dead4 (generate.json, verify.json, invalid.json): all use
    /// this key; the valid token seals "hello" at 1985-10-26T01:20:00-07:00
    /// under the IV 0, 1, …, 15.
    const SPEC_SECRET: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    const SPEC_TOKEN: &str = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";
    const SPEC_NOW: u64 = 499_162_800;
    const SPEC_IV: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    fn spec_key() -> FernetKey {
        FernetKey::from_base64(SPEC_SECRET).unwrap()
    }

    fn decode(text: &str) -> Vec<u8> {
        B64.decode(text).unwrap()
    }

    #[test]
    fn spec_generate_vector() {
        let key = spec_key();
        assert_eq!(key.seal_text(SPEC_NOW, SPEC_IV, b"hello"), SPEC_TOKEN);
        let mut raw = Vec::new();
        key.seal_into(SPEC_NOW, SPEC_IV, b"hello", &mut raw);
        assert_eq!(raw, decode(SPEC_TOKEN));
        assert_eq!(raw.len(), raw_len(5));
        let mut in_place = b"hello".to_vec();
        key.seal_in_place(SPEC_NOW, SPEC_IV, &mut in_place);
        assert_eq!(in_place, raw);
        assert_eq!(timestamp(SPEC_TOKEN.as_bytes()), Some(SPEC_NOW));
        assert_eq!(timestamp(&raw), Some(SPEC_NOW));
    }

    #[test]
    fn spec_verify_vector_in_both_forms() {
        let key = spec_key();
        assert_eq!(key.open(SPEC_TOKEN.as_bytes()).unwrap(), b"hello");
        assert_eq!(key.open(&decode(SPEC_TOKEN)).unwrap(), b"hello");
        // Unpadded text is the same token.
        let unpadded = SPEC_TOKEN.trim_end_matches('=');
        assert_eq!(key.open(unpadded.as_bytes()).unwrap(), b"hello");
    }

    #[test]
    fn spec_invalid_vectors() {
        let key = spec_key();
        // invalid.json's tokens that no clock makes valid, each refused for
        // its own reason.
        let refused = [
            ("incorrect mac", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykQUFBQUFBQUFBQQ==", FernetError::BadMac),
            ("too short", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPA==", FernetError::Malformed),
            ("invalid base64", "%%%%%%%%%%%%%AECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-p1YsUD2Q==", FernetError::Malformed),
            ("payload size not multiple of block size", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPOm73QeoCk9uGib28Xe5vz6oxq5nmxbx_v7mrfyudzUm", FernetError::Malformed),
            ("payload padding error", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0ODz4LEpdELGQAad7aNEHbf-JkLPIpuiYRLQ3RtXatOYREu2FWke6CnJNYIbkuKNqOhw==", FernetError::BadPadding),
            ("incorrect IV (causes padding error)", "gAAAAAAdwJ6xBQECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAkLhFLHpGtDBRLRTZeUfWgHSv49TF2AUEZ1TIvcZjK1zQ==", FernetError::BadPadding),
        ];
        for (desc, token, why) in refused {
            assert_eq!(key.open(token.as_bytes()), Err(why), "{desc}");
            if let Ok(raw) = B64.decode(token) {
                assert_eq!(key.open(&raw), Err(why), "{desc}, raw");
            }
        }
        // invalid.json also lists a token stamped 10 hours after the
        // verifier's clock ("far-future TS") and one opened 90 s after it
        // was stamped with a 60 s TTL ("expired TTL"). Both are authentic
        // and we ACCEPT them on purpose: no end of ours checks a Fernet
        // timestamp, because clocks on routers and boards are wrong
        // (protocol v2 §7); the SEQ window is what refuses old tokens.
        let accepted = [
            ("far-future TS", "gAAAAAAdwStRAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAnja1xKYyhd-Y6mSkTOyTGJmw2Xc2a6kBd-iX9b_qXQcw==", SPEC_NOW + 1 + 36_000),
            ("expired TTL", "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-p1YsUD2Q==", SPEC_NOW + 1),
        ];
        for (desc, token, ts) in accepted {
            assert_eq!(timestamp(token.as_bytes()), Some(ts), "{desc}");
            // Both seal the empty plaintext (the `fernet` crate, given a
            // matching clock, opens them to the same).
            let plain = key
                .open(token.as_bytes())
                .unwrap_or_else(|e| panic!("{desc}: {e:?}"));
            assert_eq!(plain, b"", "{desc}");
            assert_eq!(key.open(&decode(token)).unwrap(), b"", "{desc}, raw");
        }
    }

    #[test]
    fn keys_must_decode_to_32_bytes() {
        assert!(FernetKey::from_base64(SPEC_SECRET).is_some());
        assert!(FernetKey::from_base64(SPEC_SECRET.trim_end_matches('=')).is_some());
        assert!(FernetKey::from_base64("short").is_none());
        assert!(FernetKey::from_base64(&"!".repeat(44)).is_none());
        assert!(
            FernetKey::from_base64(&"A".repeat(48)).is_none(),
            "36 bytes"
        );
        assert!(FernetKey::from_base64(&"A".repeat(100_000)).is_none());
        let bytes = [0x42; 32];
        assert_eq!(encode_key(&bytes).len(), 44);
        assert!(FernetKey::from_base64(&encode_key(&bytes)).is_some());
    }

    #[test]
    fn junk_is_refused_without_panicking() {
        let key = spec_key();
        let mut rng = XorShift::new(0xfe57);
        let mut out = Vec::new();
        for _ in 0..2000 {
            let mut junk = rng.some_bytes(0, 200);
            // Half of them look like one form or the other at first glance.
            match (rng.below(3), junk.first_mut()) {
                (0, Some(b)) => *b = VERSION,
                (1, Some(b)) => *b = TEXT_FIRST,
                _ => {}
            }
            assert!(key.open_into(&junk, &mut out).is_err());
        }
        for empty in [&b""[..], b"\x80", b"g", b"gAAAA", &[0x80; MIN_RAW_LEN - 1]] {
            assert_eq!(key.open(empty), Err(FernetError::Malformed));
        }
    }

    /// Flips one bit of a raw token; returns it.
    fn flip(raw: &[u8], rng: &mut XorShift) -> Vec<u8> {
        let mut t = raw.to_vec();
        let i = rng.index(t.len());
        t[i] ^= 1 << rng.below(8);
        t
    }

    /// The crate refuses timestamps more than 60 s ahead of the time it is
    /// given; this time is ahead of every timestamp, so that check never
    /// fires and only authenticity decides.
    const ORACLE_NOW: u64 = u64::MAX - 60;

    #[test]
    fn differential_against_the_fernet_crate() {
        let mut rng = XorShift::new(0xd1ff);
        let mut out = Vec::new();
        for round in 0..400 {
            let key_bytes: [u8; 32] = rng.bytes(32).try_into().unwrap();
            let text_key = encode_key(&key_bytes);
            let ours = FernetKey::from_bytes(&key_bytes);
            let theirs = ::fernet::Fernet::new(&text_key).unwrap();
            // Sizes around block boundaries and up to a large message.
            let len = match round % 4 {
                0 => rng.index(40),
                1 => 16 * rng.index(8) + rng.index(3),
                _ => rng.index(2000),
            };
            let plain = rng.bytes(len);
            // Timestamps anywhere: the past, now, centuries ahead.
            let ts = match round % 3 {
                0 => rng.below(2_000_000_000),
                1 => 1_700_000_000 + 600,
                _ => rng.next() >> 1,
            };
            let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();

            // Ours seals, the crate opens.
            let text = ours.seal_text(ts, iv, &plain);
            assert_eq!(
                theirs.decrypt_at_time(&text, None, ts).as_deref(),
                Ok(&plain[..]),
                "round {round}"
            );
            // The crate seals (its own IV, our timestamp), ours opens both forms.
            let theirs_text = theirs.encrypt_at_time(&plain, ts);
            assert_eq!(ours.open(theirs_text.as_bytes()).as_deref(), Ok(&plain[..]));
            let raw = decode(&theirs_text);
            ours.open_into(&raw, &mut out).unwrap();
            assert_eq!(out, plain);
            assert_eq!(timestamp(&raw), Some(ts));

            // One flipped bit anywhere: refused by both, in both forms.
            let bad = flip(&raw, &mut rng);
            assert!(ours.open(&bad).is_err(), "round {round}: raw tamper");
            let bad_text = to_text(&bad);
            let mut both = bad.clone();
            let at = append_text(&mut both, bad.len());
            assert_eq!(&both[at..], bad_text.as_bytes());
            assert!(ours.open(bad_text.as_bytes()).is_err());
            assert!(theirs.decrypt_at_time(&bad_text, None, ORACLE_NOW).is_err());
            // Cut short at any length: refused by both.
            let cut = &raw[..rng.index(raw.len())];
            assert!(ours.open(cut).is_err());
            assert!(theirs
                .decrypt_at_time(&to_text(cut), None, ORACLE_NOW)
                .is_err());
            // Another key: refused by both.
            let other = FernetKey::from_bytes(&[round as u8 ^ 0x55; 32]);
            assert_eq!(other.open(&raw), Err(FernetError::BadMac));
        }
    }

    /// Median cost of sealing and opening, ours and the `fernet` crate's, at
    /// 100 and 1000 bytes. Run in release:
    /// `cargo test --release --lib fernet_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn fernet_cost() {
        use std::hint::black_box;
        use std::time::Instant;
        const N: u32 = 20_000;
        const RUNS: usize = 9;
        fn median_ns(mut f: impl FnMut()) -> f64 {
            let mut runs: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..N {
                        f();
                    }
                    t.elapsed().as_nanos() as f64 / f64::from(N)
                })
                .collect();
            runs.sort_by(f64::total_cmp);
            runs[RUNS / 2]
        }
        let key_bytes = [0x17; 32];
        let ours = FernetKey::from_bytes(&key_bytes);
        let theirs = ::fernet::Fernet::new(&encode_key(&key_bytes)).unwrap();
        for len in [100, 1000] {
            let plain = vec![0x5a; len];
            let mut scratch = Vec::with_capacity(2048);
            let mut iv = [0u8; 16];
            let seal_ours = median_ns(|| {
                iv[0] = iv[0].wrapping_add(1);
                scratch.clear();
                scratch.extend_from_slice(&plain);
                ours.seal_in_place(1_700_000_000, iv, &mut scratch);
                black_box(to_text(&scratch));
            });
            let seal_theirs = median_ns(|| {
                black_box(theirs.encrypt_at_time(&plain, 1_700_000_000));
            });
            let token = ours.seal_text(1_700_000_000, iv, &plain);
            let mut raw = Vec::new();
            ours.seal_into(1_700_000_000, iv, &plain, &mut raw);
            let mut out = Vec::with_capacity(2048);
            let open_ours = median_ns(|| {
                ours.open_into(black_box(token.as_bytes()), &mut out)
                    .unwrap();
            });
            let open_ours_raw = median_ns(|| {
                ours.open_into(black_box(&raw), &mut out).unwrap();
            });
            let open_theirs = median_ns(|| {
                black_box(theirs.decrypt_at_time(&token, None, 1_700_000_000).unwrap());
            });
            println!(
                "{len:>5} B  seal: ours {seal_ours:.0} ns, crate {seal_theirs:.0} ns  |  \
                 open text: ours {open_ours:.0} ns, crate {open_theirs:.0} ns  |  \
                 open raw: ours {open_ours_raw:.0} ns"
            );
        }
    }
}
