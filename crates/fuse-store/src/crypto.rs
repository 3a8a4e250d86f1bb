//! Encryption at rest: AES-256-GCM with a random 96-bit nonce stored before the ciphertext
//! (`nonce ‖ ciphertext ‖ tag`). Used for per-VM secrets and host-agent tokens.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

/// Encryption failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The key is not 64 hex characters.
    #[error("encryption key must be exactly 64 hex characters (32 bytes)")]
    BadKey,
    /// The input is shorter than nonce + tag.
    #[error("ciphertext is too short ({0} bytes)")]
    Short(usize),
    /// Wrong key or tampered bytes.
    #[error("ciphertext does not authenticate (wrong key or tampered data)")]
    Auth,
}

const NONCE: usize = 12;
const TAG: usize = 16;

/// An AES-256-GCM key.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(redacted)")
    }
}

impl Cipher {
    /// From 32 raw bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher(Aes256Gcm::new(key.into()))
    }

    /// From 64 hex characters.
    pub fn from_hex(hex_key: &str) -> Result<Self, CryptoError> {
        let b = hex::decode(hex_key).map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = b.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Cipher::new(&key))
    }

    /// Encrypts with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .unwrap_or_else(|_| {
                unreachable!("AES-GCM encryption of an in-memory buffer cannot fail")
            });
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts and authenticates.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE + TAG {
            return Err(CryptoError::Short(sealed.len()));
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        self.0
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn round_trip_and_fresh_nonces() {
        let c = Cipher::from_hex(KEY).unwrap();
        let a = c.seal(b"token");
        let b = c.seal(b"token");
        assert_ne!(a, b, "nonces differ");
        assert_eq!(a.len(), NONCE + 5 + TAG);
        assert_eq!(c.open(&a).unwrap(), b"token");
        assert_eq!(c.open(&c.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn wrong_key_tampering_and_short_input_fail() {
        let c = Cipher::from_hex(KEY).unwrap();
        let other = Cipher::from_hex(&"ff".repeat(32)).unwrap();
        let sealed = c.seal(b"secret");
        assert_eq!(other.open(&sealed), Err(CryptoError::Auth));
        for i in [0, NONCE, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(c.open(&t), Err(CryptoError::Auth), "flip at {i}");
        }
        assert_eq!(
            c.open(&sealed[..NONCE + TAG - 1]),
            Err(CryptoError::Short(27))
        );
        assert_eq!(
            Cipher::from_hex("abcd").map(|_| ()),
            Err(CryptoError::BadKey)
        );
        assert_eq!(
            Cipher::from_hex(&"zz".repeat(32)).map(|_| ()),
            Err(CryptoError::BadKey)
        );
    }
}
