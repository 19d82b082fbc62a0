//! Personal data at rest: AES-256-GCM for names, mobiles and ID numbers, and a keyed
//! blind index (HMAC-SHA-256) so a mobile can be found without decrypting the table.
//!
//! One 32-byte master key comes from configuration (`PII_KEY`, 64 hex digits); the
//! encryption key and the index key are derived from it with HKDF, so the index
//! reveals nothing about the ciphertexts and neither about the master key. A sealed
//! value is `[key version][12-byte nonce][ciphertext + 16-byte tag]`; the version byte
//! leaves room for rotation.

use std::sync::Mutex;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

const KEY_VERSION: u8 = 1;
/// Bytes of the HMAC kept as the blind index: enough to tell 10^9 mobiles apart.
pub const INDEX_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiError {
    #[error("the key must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error("a sealed value is damaged or was sealed under another key")]
    Unreadable,
    #[error("the system random source failed")]
    Random,
}

/// Seals and opens personal data, and computes blind indexes. Cheap to share.
pub struct PiiCipher {
    key: LessSafeKey,
    index: hmac::Key,
    nonces: Mutex<NonceSource>,
}

impl std::fmt::Debug for PiiCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PiiCipher(..)")
    }
}

/// Nonces are a random 64-bit prefix and a 32-bit counter; the prefix is drawn anew
/// before the counter wraps, so no nonce repeats within a process and a repeat across
/// processes needs two 64-bit draws to collide.
struct NonceSource {
    prefix: [u8; 8],
    counter: u32,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(master: &[u8], info: &'static [u8]) -> Result<[u8; 32], PiiError> {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"renewal.pii.v1");
    let prk = salt.extract(master);
    let info = [info];
    let okm = prk.expand(&info, Len(32)).map_err(|_| PiiError::BadKey)?;
    let mut out = [0u8; 32];
    okm.fill(&mut out).map_err(|_| PiiError::BadKey)?;
    Ok(out)
}

impl PiiCipher {
    /// From the configured master key (64 hex digits).
    pub fn from_hex(hex_key: &SecretString) -> Result<Self, PiiError> {
        let master = hex::decode(hex_key.expose_secret().trim()).map_err(|_| PiiError::BadKey)?;
        if master.len() != 32 {
            return Err(PiiError::BadKey);
        }
        let enc = derive(&master, b"aes-256-gcm")?;
        let idx = derive(&master, b"blind-index")?;
        let key = UnboundKey::new(&AES_256_GCM, &enc).map_err(|_| PiiError::BadKey)?;
        let mut prefix = [0u8; 8];
        SystemRandom::new()
            .fill(&mut prefix)
            .map_err(|_| PiiError::Random)?;
        Ok(PiiCipher {
            key: LessSafeKey::new(key),
            index: hmac::Key::new(hmac::HMAC_SHA256, &idx),
            nonces: Mutex::new(NonceSource { prefix, counter: 0 }),
        })
    }

    fn nonce(&self) -> Result<[u8; NONCE_LEN], PiiError> {
        let mut source = self.nonces.lock().map_err(|_| PiiError::Random)?;
        if source.counter == u32::MAX {
            SystemRandom::new()
                .fill(&mut source.prefix)
                .map_err(|_| PiiError::Random)?;
            source.counter = 0;
        }
        source.counter += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&source.prefix);
        nonce[8..].copy_from_slice(&source.counter.to_be_bytes());
        Ok(nonce)
    }

    /// Encrypts one value.
    pub fn seal(&self, plaintext: &str) -> Result<Vec<u8>, PiiError> {
        let nonce = self.nonce()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(KEY_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext.as_bytes());
        let mut body = out.split_off(1 + NONCE_LEN);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([KEY_VERSION]),
                &mut body,
            )
            .map_err(|_| PiiError::Unreadable)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a value sealed by [`seal`](Self::seal) under the same key.
    pub fn open(&self, sealed: &[u8]) -> Result<String, PiiError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != KEY_VERSION {
            return Err(PiiError::Unreadable);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([KEY_VERSION]),
                &mut body,
            )
            .map_err(|_| PiiError::Unreadable)?;
        String::from_utf8(plain.to_vec()).map_err(|_| PiiError::Unreadable)
    }

    /// The blind index of a value already in canonical form (a mobile in E.164).
    pub fn blind_index(&self, canonical: &str) -> [u8; INDEX_LEN] {
        let tag = hmac::sign(&self.index, canonical.as_bytes());
        let mut out = [0u8; INDEX_LEN];
        out.copy_from_slice(&tag.as_ref()[..INDEX_LEN]);
        out
    }

    /// A keyed digest of several fields (a row as loaded), to tell a changed row from a
    /// repeat without keeping its personal data in the clear.
    pub fn digest(&self, fields: &[&str]) -> [u8; INDEX_LEN] {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(b"digest\x00");
        for field in fields {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field.as_bytes());
        }
        let tag = ctx.sign();
        let mut out = [0u8; INDEX_LEN];
        out.copy_from_slice(&tag.as_ref()[..INDEX_LEN]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(hex_key: &str) -> PiiCipher {
        PiiCipher::from_hex(&SecretString::from(hex_key.to_owned())).expect("valid key")
    }

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_values_open_only_under_their_key() {
        let a = cipher(KEY_A);
        let sealed = a.seal("张三").expect("seals");
        assert!(!sealed.windows(3).any(|w| w == "张".as_bytes()));
        assert_eq!(a.open(&sealed).expect("opens"), "张三");
        assert_eq!(cipher(KEY_B).open(&sealed), Err(PiiError::Unreadable));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(a.open(&tampered), Err(PiiError::Unreadable));
    }

    #[test]
    fn the_same_value_seals_differently_but_indexes_the_same() {
        let a = cipher(KEY_A);
        assert_ne!(a.seal("+8613812345678"), a.seal("+8613812345678"));
        assert_eq!(
            a.blind_index("+8613812345678"),
            cipher(KEY_A).blind_index("+8613812345678")
        );
        assert_ne!(
            a.blind_index("+8613812345678"),
            cipher(KEY_B).blind_index("+8613812345678")
        );
        assert_ne!(a.digest(&["ab", "c"]), a.digest(&["a", "bc"]));
    }

    #[test]
    fn a_bad_key_is_refused() {
        for bad in [
            "",
            "abc",
            &KEY_A[..62],
            &format!("{KEY_A}00"),
            &"zz".repeat(32),
        ] {
            assert!(PiiCipher::from_hex(&SecretString::from(bad.to_owned())).is_err());
        }
    }
}
