//! The server's RSA-2048 key: generation, the DER public key handed out in
//! SERVER_KEY, its fingerprint, and OAEP decryption. The key *file* is the IO
//! layer's business (`net::keyfile`).

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::{Digest, Sha256};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey};

/// Modulus size the protocol fixes.
pub const KEY_BITS: usize = 2048;

/// Why PEM text is not a usable server key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemError {
    /// Not a PKCS#8 PEM RSA private key.
    Parse,
    /// An RSA key of another size (the number of bits it has).
    Size(usize),
}

/// The server's key pair with its encoded public half.
#[derive(Clone)]
pub struct ServerKey {
    private: PrivateKey,
    public_der: Vec<u8>,
}

impl ServerKey {
    /// Generates a fresh 2048-bit key (tens of milliseconds) from the OS RNG.
    ///
    /// # Errors
    /// The RSA library's message when generation fails.
    pub fn generate() -> Result<Self, String> {
        let private = PrivateKey::new(&mut rand::rng(), KEY_BITS).map_err(|e| e.to_string())?;
        Self::from_private(private).map_err(|e| e.to_string())
    }

    fn from_private(private: PrivateKey) -> Result<Self, rsa::pkcs8::spki::Error> {
        let public_der = private.to_public_key().to_public_key_der()?.into_vec();
        Ok(ServerKey {
            private,
            public_der,
        })
    }

    /// Parses a PKCS#8 PEM RSA-2048 private key.
    ///
    /// # Errors
    /// [`PemError`] when the text is no such key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PemError> {
        let private = PrivateKey::from_pkcs8_pem(pem).map_err(|_| PemError::Parse)?;
        let bits = private.size() * 8;
        if bits != KEY_BITS {
            return Err(PemError::Size(bits));
        }
        Self::from_private(private).map_err(|_| PemError::Parse)
    }

    /// The private key as PKCS#8 PEM (secret: for the key file only).
    ///
    /// # Errors
    /// The encoder's message (never expected for a valid key).
    pub fn to_pkcs8_pem(&self) -> Result<String, String> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| e.to_string())
    }

    /// DER SubjectPublicKeyInfo, the SERVER_KEY value.
    pub fn public_der(&self) -> &[u8] {
        &self.public_der
    }

    /// SHA-256 of the DER public key, lower-case hex.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_der)
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption, blinded
    /// with values from `rng` (the core's seeded CSPRNG, not the OS's).
    pub fn decrypt(&self, rng: &mut impl rand::CryptoRng, ciphertext: &[u8]) -> Option<Vec<u8>> {
        self.private
            .decrypt_blinded(rng, Oaep::<Sha256>::new(), ciphertext)
            .ok()
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

    use rand::SeedableRng;

    #[test]
    fn oaep_round_trip_and_der_parses() {
        let k = ServerKey::generate().unwrap();
        let mut rng = rand::rngs::StdRng::from_seed([3; 32]);
        let public = PublicKey::from_public_key_der(k.public_der()).unwrap();
        let ct = public
            .oaep_encrypt_with_rng::<Sha256, _>(&mut rng, b"secret")
            .unwrap();
        assert_eq!(k.decrypt(&mut rng, &ct).as_deref(), Some(&b"secret"[..]));
        assert_eq!(k.decrypt(&mut rng, &[0u8; 256]), None);
        assert_eq!(k.decrypt(&mut rng, b"short"), None);
    }

    #[test]
    fn pem_round_trip() {
        let k = ServerKey::generate().unwrap();
        let again = ServerKey::from_pkcs8_pem(&k.to_pkcs8_pem().unwrap()).unwrap();
        assert_eq!(k.fingerprint(), again.fingerprint());
        assert_eq!(
            ServerKey::from_pkcs8_pem("junk").err(),
            Some(PemError::Parse)
        );
    }
}
