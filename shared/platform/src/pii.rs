//! Personal data at rest: AES-256-GCM for names, mobiles, ID numbers, plates and VINs,
//! and a keyed blind index (HMAC-SHA-256) so a mobile can be found without decrypting.
//!
//! **Keys.** The master keys come from configuration as a keyring, newest first
//! (`PII_KEYS="2:<64 hex>,1:<64 hex>"`; a lone `PII_KEY=<64 hex>` is version 1). Each
//! service derives its own encryption and index keys from every master key with HKDF
//! and its name, so a value sealed by one service does not open in another, and the
//! index reveals nothing about the ciphertexts or the master key. Writes use the newest
//! version; reads accept every listed one, so a key is rotated by listing a new one
//! first, re-sealing with `renewal pii rotate` ([`crate::resealing`]), then dropping the
//! old one.
//!
//! **Sealed values** are `[key version][12-byte nonce][ciphertext + 16-byte tag]`. The
//! associated data binds each one to where it lives (key version, table, column and row
//! key, a [`Place`]), so a ciphertext copied into another row or column does not open.

use std::sync::Mutex;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

/// Bytes of the HMAC kept as the blind index: enough to tell 10^9 mobiles apart.
pub const INDEX_LEN: usize = 16;
/// A blind index.
pub type BlindIndex = [u8; INDEX_LEN];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiError {
    #[error("the key must be 64 hex digits (32 bytes)")]
    BadKey,
    #[error(
        "the keyring must list `version:key` entries (versions 1-255, each once), newest first"
    )]
    BadKeyring,
    #[error("a sealed value is damaged, was sealed for another place, or under a key not listed")]
    Unreadable,
    #[error("the system random source failed")]
    Random,
}

/// Where a sealed value lives: its associated data. `row` is the row's stable key (a
/// policy number, a case id, a message id).
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub table: &'static str,
    pub column: &'static str,
    pub row: &'a str,
}

impl<'a> Place<'a> {
    pub fn new(table: &'static str, column: &'static str, row: &'a str) -> Self {
        Place { table, column, row }
    }

    fn aad(&self, version: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(3 + self.table.len() + self.column.len() + self.row.len());
        aad.push(version);
        for part in [self.table, self.column] {
            aad.extend_from_slice(part.as_bytes());
            aad.push(0);
        }
        aad.extend_from_slice(self.row.as_bytes());
        aad
    }
}

/// One master key's derived keys.
struct Version {
    number: u8,
    key: LessSafeKey,
    index: hmac::Key,
}

/// Seals and opens personal data, and computes blind indexes. Cheap to share.
pub struct PiiCipher {
    /// Newest first.
    versions: Vec<Version>,
    nonces: Mutex<NonceSource>,
}

impl std::fmt::Debug for PiiCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<u8> = self.versions.iter().map(|v| v.number).collect();
        write!(f, "PiiCipher(versions {versions:?})")
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

fn derive(master: &[u8], service: &str, purpose: &str) -> Result<[u8; 32], PiiError> {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"renewal.pii.v2");
    let prk = salt.extract(master);
    let info = [service.as_bytes(), b"/", purpose.as_bytes()];
    let okm = prk.expand(&info, Len(32)).map_err(|_| PiiError::BadKey)?;
    let mut out = [0u8; 32];
    okm.fill(&mut out).map_err(|_| PiiError::BadKey)?;
    Ok(out)
}

/// Parses a keyring: `N:hex` entries separated by commas or spaces, newest first, or
/// one bare key (version 1).
fn parse_keyring(text: &str) -> Result<Vec<(u8, Vec<u8>)>, PiiError> {
    let entries: Vec<&str> = text
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut keys = Vec::with_capacity(entries.len());
    for entry in &entries {
        let (version, hex_key) = match entry.split_once(':') {
            Some((v, k)) => (v.parse::<u8>().map_err(|_| PiiError::BadKeyring)?, k),
            None if entries.len() == 1 => (1, *entry),
            None => return Err(PiiError::BadKeyring),
        };
        let master = hex::decode(hex_key).map_err(|_| PiiError::BadKey)?;
        if master.len() != 32 {
            return Err(PiiError::BadKey);
        }
        if version == 0 || keys.iter().any(|(v, _)| *v == version) {
            return Err(PiiError::BadKeyring);
        }
        keys.push((version, master));
    }
    if keys.is_empty() {
        return Err(PiiError::BadKey);
    }
    Ok(keys)
}

impl PiiCipher {
    /// `service`'s cipher from the configured keyring (see the module comment).
    pub fn for_service(keyring: &SecretString, service: &str) -> Result<Self, PiiError> {
        let mut versions = Vec::new();
        for (number, master) in parse_keyring(keyring.expose_secret())? {
            let enc = derive(&master, service, "aes-256-gcm")?;
            let idx = derive(&master, service, "blind-index")?;
            let key = UnboundKey::new(&AES_256_GCM, &enc).map_err(|_| PiiError::BadKey)?;
            versions.push(Version {
                number,
                key: LessSafeKey::new(key),
                index: hmac::Key::new(hmac::HMAC_SHA256, &idx),
            });
        }
        let mut prefix = [0u8; 8];
        SystemRandom::new()
            .fill(&mut prefix)
            .map_err(|_| PiiError::Random)?;
        Ok(PiiCipher {
            versions,
            nonces: Mutex::new(NonceSource { prefix, counter: 0 }),
        })
    }

    /// The version new values are sealed with.
    pub fn newest_version(&self) -> u8 {
        self.versions[0].number
    }

    fn newest(&self) -> &Version {
        &self.versions[0]
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

    /// Encrypts one value for `place` under the newest key.
    pub fn seal(&self, plaintext: &str, place: Place<'_>) -> Result<Vec<u8>, PiiError> {
        self.seal_bytes(plaintext.as_bytes(), place)
    }

    /// Encrypts bytes (a message kept whole: a dead letter) for `place` under the
    /// newest key.
    pub fn seal_bytes(&self, plaintext: &[u8], place: Place<'_>) -> Result<Vec<u8>, PiiError> {
        let version = self.newest();
        let nonce = self.nonce()?;
        let mut body = Vec::with_capacity(plaintext.len() + 16);
        body.extend_from_slice(plaintext);
        version
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad(version.number)),
                &mut body,
            )
            .map_err(|_| PiiError::Unreadable)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(version.number);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a value sealed by [`seal`](Self::seal) for the same place, under any key
    /// of the keyring.
    pub fn open(&self, sealed: &[u8], place: Place<'_>) -> Result<String, PiiError> {
        String::from_utf8(self.open_bytes(sealed, place)?).map_err(|_| PiiError::Unreadable)
    }

    /// Decrypts bytes sealed by [`seal_bytes`](Self::seal_bytes) (or [`seal`](Self::seal))
    /// for the same place, under any key of the keyring.
    pub fn open_bytes(&self, sealed: &[u8], place: Place<'_>) -> Result<Vec<u8>, PiiError> {
        if sealed.len() < 1 + NONCE_LEN + 16 {
            return Err(PiiError::Unreadable);
        }
        let version = self
            .versions
            .iter()
            .find(|v| v.number == sealed[0])
            .ok_or(PiiError::Unreadable)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let len = version
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad(version.number)),
                &mut body,
            )
            .map_err(|_| PiiError::Unreadable)?
            .len();
        // The plain text in place, without its tag: no second copy.
        body.truncate(len);
        Ok(body)
    }

    /// Seals a value as JSON (a contact: name, mobile, plate together, one open to read).
    pub fn seal_json<T: serde::Serialize>(
        &self,
        value: &T,
        place: Place<'_>,
    ) -> Result<Vec<u8>, PiiError> {
        let json = serde_json::to_string(value).map_err(|_| PiiError::Unreadable)?;
        self.seal(&json, place)
    }

    /// Opens a value sealed by [`seal_json`](Self::seal_json).
    pub fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        sealed: &[u8],
        place: Place<'_>,
    ) -> Result<T, PiiError> {
        serde_json::from_str(&self.open(sealed, place)?).map_err(|_| PiiError::Unreadable)
    }

    /// Whether a sealed value was sealed under an older key than the newest.
    pub fn is_stale(&self, sealed: &[u8]) -> bool {
        sealed.first() != Some(&self.newest_version())
    }

    /// The blind index of a value already in canonical form (a mobile in E.164), under
    /// the newest key: what is written.
    pub fn blind_index(&self, canonical: &str) -> BlindIndex {
        index_under(&self.newest().index, canonical)
    }

    /// Its blind index under every key of the keyring, newest first: what a lookup
    /// matches while rows sealed under older keys remain.
    pub fn blind_indexes(&self, canonical: &str) -> Vec<BlindIndex> {
        self.versions
            .iter()
            .map(|v| index_under(&v.index, canonical))
            .collect()
    }

    /// [`blind_indexes`](Self::blind_indexes) as byte vectors, to bind as `bytea[]`.
    pub fn blind_indexes_bytes(&self, canonical: &str) -> Vec<Vec<u8>> {
        self.blind_indexes(canonical)
            .iter()
            .map(|i| i.to_vec())
            .collect()
    }

    /// A keyed digest of several fields (a row as loaded), to tell a changed row from a
    /// repeat without keeping its personal data in the clear.
    pub fn digest(&self, fields: &[&str]) -> BlindIndex {
        let mut ctx = hmac::Context::with_key(&self.newest().index);
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

fn index_under(key: &hmac::Key, canonical: &str) -> BlindIndex {
    let tag = hmac::sign(key, canonical.as_bytes());
    let mut out = [0u8; INDEX_LEN];
    out.copy_from_slice(&tag.as_ref()[..INDEX_LEN]);
    out
}

/// The keyring from the environment: `PII_KEYS`, else `PII_KEY` (one key, version 1).
pub fn keyring_from<F: Fn(&str) -> Option<String>>(
    env: &crate::config::Env<F>,
) -> Option<(&'static str, SecretString)> {
    env.secret("PII_KEYS")
        .map(|k| ("PII_KEYS", k))
        .or_else(|| env.secret("PII_KEY").map(|k| ("PII_KEY", k)))
}

/// `service`'s cipher from the environment, or why not.
pub fn cipher_from_env<F: Fn(&str) -> Option<String>>(
    env: &crate::config::Env<F>,
    service: &str,
) -> Result<PiiCipher, crate::config::ConfigError> {
    let (var, keyring) = keyring_from(env).ok_or_else(|| crate::config::ConfigError::Missing {
        var: "PII_KEYS".into(),
    })?;
    PiiCipher::for_service(&keyring, service).map_err(|e| crate::config::ConfigError::Invalid {
        var: var.into(),
        reason: e.to_string(),
    })
}

/// Keeps the first three and last four digits: 138****5678.
pub fn mask_mobile(mobile: &str) -> String {
    let digits: Vec<char> = mobile.chars().filter(char::is_ascii_digit).collect();
    let digits = if digits.len() > 11 {
        &digits[digits.len() - 11..]
    } else {
        &digits[..]
    };
    if digits.len() < 7 {
        return "*".repeat(digits.len());
    }
    let head: String = digits[..3].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(digits.len() - 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_middle_of_a_mobile() {
        assert_eq!(mask_mobile("13812345678"), "138****5678");
        assert_eq!(mask_mobile("+86 138 1234 5678"), "138****5678");
        assert_eq!(mask_mobile("123"), "***");
    }

    fn cipher(keyring: &str, service: &str) -> PiiCipher {
        PiiCipher::for_service(&SecretString::from(keyring.to_owned()), service)
            .expect("valid keyring")
    }

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const HERE: Place<'static> = Place {
        table: "lists.policies",
        column: "name_enc",
        row: "P1",
    };

    #[test]
    fn sealed_values_open_only_under_their_key_service_and_place() {
        let a = cipher(KEY_A, "lists");
        let sealed = a.seal("张三", HERE).expect("seals");
        assert!(!sealed.windows(3).any(|w| w == "张".as_bytes()));
        assert_eq!(a.open(&sealed, HERE).expect("opens"), "张三");
        assert_eq!(
            cipher(KEY_B, "lists").open(&sealed, HERE),
            Err(PiiError::Unreadable)
        );
        assert_eq!(
            cipher(KEY_A, "dispatch").open(&sealed, HERE),
            Err(PiiError::Unreadable),
            "another service's key does not open it"
        );
        for elsewhere in [
            Place::new("lists.policies", "name_enc", "P2"),
            Place::new("lists.policies", "mobile_enc", "P1"),
            Place::new("lists.other", "name_enc", "P1"),
        ] {
            assert_eq!(
                a.open(&sealed, elsewhere),
                Err(PiiError::Unreadable),
                "moved to {elsewhere:?}"
            );
        }
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(a.open(&tampered, HERE), Err(PiiError::Unreadable));
    }

    #[test]
    fn a_keyring_reads_every_version_and_writes_the_newest() {
        let old = cipher(KEY_A, "scheduler");
        let sealed_old = old.seal("+8613812345678", HERE).expect("seals");
        let ring = cipher(&format!("2:{KEY_B}, 1:{KEY_A}"), "scheduler");
        assert_eq!(ring.newest_version(), 2);
        assert_eq!(
            ring.open(&sealed_old, HERE).expect("old opens"),
            "+8613812345678"
        );
        assert!(ring.is_stale(&sealed_old));
        let sealed_new = ring.seal("+8613812345678", HERE).expect("seals");
        assert!(!ring.is_stale(&sealed_new));
        assert_eq!(sealed_new[0], 2);
        assert_eq!(
            old.open(&sealed_new, HERE),
            Err(PiiError::Unreadable),
            "the old ring alone cannot read the new key's values"
        );
        let indexes = ring.blind_indexes("+8613812345678");
        assert_eq!(indexes.len(), 2);
        assert_eq!(indexes[1], old.blind_index("+8613812345678"));
        assert_eq!(indexes[0], ring.blind_index("+8613812345678"));
    }

    #[test]
    fn the_same_value_seals_differently_but_indexes_the_same() {
        let a = cipher(KEY_A, "lists");
        assert_ne!(
            a.seal("+8613812345678", HERE),
            a.seal("+8613812345678", HERE)
        );
        assert_eq!(
            a.blind_index("+8613812345678"),
            cipher(KEY_A, "lists").blind_index("+8613812345678")
        );
        assert_ne!(
            a.blind_index("+8613812345678"),
            cipher(KEY_B, "lists").blind_index("+8613812345678")
        );
        assert_ne!(
            a.blind_index("+8613812345678"),
            cipher(KEY_A, "dispatch").blind_index("+8613812345678")
        );
        assert_ne!(a.digest(&["ab", "c"]), a.digest(&["a", "bc"]));
    }

    #[test]
    fn a_bad_key_or_keyring_is_refused() {
        for bad in [
            "".to_owned(),
            "abc".into(),
            KEY_A[..62].into(),
            format!("{KEY_A}00"),
            "zz".repeat(32),
            format!("{KEY_A},{KEY_B}"),
            format!("1:{KEY_A},1:{KEY_B}"),
            format!("0:{KEY_A}"),
            format!("300:{KEY_A}"),
        ] {
            assert!(
                PiiCipher::for_service(&SecretString::from(bad.clone()), "lists").is_err(),
                "{bad}"
            );
        }
    }
}
