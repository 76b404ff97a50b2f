//! Secrets as types: zeroized on drop, `[redacted]` in `Debug`, compared in
//! constant time; and authenticated encryption (ChaCha20-Poly1305, RFC 8439)
//! for secrets at rest under the broker's master key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// Bytes that must never be printed, logged or left in memory.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps bytes; the caller's copy should be dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    /// Fresh random bytes.
    pub fn random(rng: &mut (impl RngCore + CryptoRng), len: usize) -> Self {
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        Self(v)
    }
    /// The secret bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Constant-time equality.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.ct_eq(other).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Constant-time comparison of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The broker's master key: a 256-bit AEAD key that encrypts every secret at rest.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

const SEALED_VERSION: u8 = 1;

impl MasterKey {
    /// From exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "master key",
            reason: format!("expected 32 bytes, got {}", bytes.len()),
        })?;
        Ok(Self(arr))
    }
    /// A key for one purpose, derived from this one (HMAC-SHA-256 keyed
    /// with the master key over a domain-separated label): what it keys
    /// cannot be used to learn the master key or another purpose's key.
    pub fn derive(&self, label: &str) -> zeroize::Zeroizing<[u8; 32]> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"mandate-derive-v1\0");
        mac.update(label.as_bytes());
        zeroize::Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// A fresh random key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        Self(k)
    }
    /// The key bytes (to write the key file once, at creation).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
    /// Encrypts `plaintext`, binding `aad` (for example the key id and purpose)
    /// so a sealed value cannot be moved to another row. Output: version ‖ nonce ‖ ciphertext.
    pub fn seal(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Crypto("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + 12 + ct.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }
    /// Decrypts what [`MasterKey::seal`] produced with the same `aad`.
    pub fn open(&self, what: &'static str, aad: &[u8], sealed: &[u8]) -> Result<Secret> {
        if sealed.len() < 1 + 12 + 16 || sealed[0] != SEALED_VERSION {
            return Err(Error::Decrypt { what });
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let pt = cipher
            .decrypt(
                Nonce::from_slice(&sealed[1..13]),
                Payload {
                    msg: &sealed[13..],
                    aad,
                },
            )
            .map_err(|_| Error::Decrypt { what })?;
        Ok(Secret::new(pt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn sealed_secret_round_trips_and_binds_aad() {
        let k = MasterKey::generate(&mut OsRng);
        let sealed = k.seal(&mut OsRng, b"kid-1", b"hello").unwrap();
        assert_eq!(k.open("key", b"kid-1", &sealed).unwrap().expose(), b"hello");
        assert!(matches!(
            k.open("key", b"kid-2", &sealed),
            Err(Error::Decrypt { .. })
        ));
        let other = MasterKey::generate(&mut OsRng);
        assert!(other.open("key", b"kid-1", &sealed).is_err());
        let mut altered = sealed;
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(k.open("key", b"kid-1", &altered).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new(b"hunter2".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
        let k = MasterKey::from_bytes(&[7u8; 32]).unwrap();
        assert!(!format!("{k:?}").contains('7'));
    }
}
