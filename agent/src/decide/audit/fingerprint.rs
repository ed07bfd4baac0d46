//! Keyed fingerprints of credentials: HMAC-SHA256 (the `hmac` crate), the one home of the
//! fingerprints `pullgate audit` (`Reused`) and `pullgate auth resolve` (`password_hmac_sha256`)
//! print. The key is the operator's `--fingerprint-key` (`PULLGATE_FINGERPRINT_KEY`), so that runs
//! with the same key can be compared, or else drawn for one run and never shown, so that
//! fingerprints compare within one output only. Either way a fingerprint says nothing about the
//! credential to anyone without the key (nor can it be brute-forced offline, as a plain hash of a
//! short password could be).

use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretBox, SecretString};
use sha2::Sha256;
use std::fmt;

/// The key. `Debug` prints no byte of it; it is zeroed when dropped.
pub struct FingerprintKey {
    bytes: SecretBox<Vec<u8>>,
    per_run: bool,
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey([REDACTED])")
    }
}

/// How to read fingerprints made with a key drawn for one run.
pub const PER_RUN_NOTE: &str = "HMAC-SHA256 with a key drawn for this run and never shown: equal fingerprints mean the same credential within this output only; they cannot be compared across runs (pass --fingerprint-key or PULLGATE_FINGERPRINT_KEY for that)";
/// How to read fingerprints made with the operator's key.
pub const GIVEN_NOTE: &str = "HMAC-SHA256 keyed with --fingerprint-key (PULLGATE_FINGERPRINT_KEY): equal fingerprints mean the same credential, in this output and in any other made with the same key";

impl FingerprintKey {
    /// A key drawn for one run (`pullgate audit` and `auth resolve` draw 32 bytes from the
    /// kernel's CSPRNG).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes: SecretBox::new(Box::new(bytes.to_vec())),
            per_run: true,
        }
    }

    /// The operator's key: the UTF-8 bytes of `--fingerprint-key`.
    pub fn given(key: &SecretString) -> Self {
        Self {
            bytes: SecretBox::new(Box::new(key.expose_secret().as_bytes().to_vec())),
            per_run: false,
        }
    }

    /// Drawn for this run (fingerprints compare within one output only).
    pub fn is_per_run(&self) -> bool {
        self.per_run
    }

    /// How to read the fingerprints this key makes: [`PER_RUN_NOTE`] or [`GIVEN_NOTE`].
    pub fn note(&self) -> &'static str {
        if self.per_run {
            PER_RUN_NOTE
        } else {
            GIVEN_NOTE
        }
    }

    /// Lowercase hex HMAC-SHA256 of `secret`'s bytes: `auth resolve`'s `password_hmac_sha256`
    /// (what `openssl dgst -sha256 -hmac KEY` prints for the same bytes).
    pub fn of_secret(&self, secret: &SecretString) -> String {
        hex::encode(hmac_sha256(
            self.bytes.expose_secret(),
            &[secret.expose_secret().as_bytes()],
        ))
    }

    /// Hex HMAC-SHA256 of the fields, each prefixed with its length (so that `("ab", "c")` and
    /// `("a", "bc")` differ). The fields are streamed into the hash, never concatenated in a buffer.
    pub fn fingerprint(&self, fields: &[&[u8]]) -> String {
        let lengths: Vec<[u8; 8]> = fields
            .iter()
            .map(|f| (f.len() as u64).to_be_bytes())
            .collect();
        let parts: Vec<&[u8]> = fields
            .iter()
            .zip(&lengths)
            .flat_map(|(field, len)| [len.as_slice(), field])
            .collect();
        hex::encode(hmac_sha256(self.bytes.expose_secret(), &parts))
    }
}

/// HMAC-SHA256 of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes a key of any length; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test vectors.
    #[test]
    fn rfc4231_table() {
        let cases: Vec<(Vec<u8>, &[u8], &str)> = vec![
            (
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                &[0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            // A key longer than the block is hashed first.
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, message, expected) in cases {
            assert_eq!(hex::encode(hmac_sha256(&key, &[message])), expected);
        }
    }

    #[test]
    fn fingerprints_are_keyed_and_unambiguous() {
        let a = FingerprintKey::from_bytes([1; 32]);
        let b = FingerprintKey::from_bytes([2; 32]);
        let fields: [&[u8]; 3] = [b"r.io", b"user", b"password"];
        assert_eq!(a.fingerprint(&fields), a.fingerprint(&fields));
        assert_ne!(a.fingerprint(&fields), b.fingerprint(&fields));
        assert_ne!(a.fingerprint(&[b"ab", b"c"]), a.fingerprint(&[b"a", b"bc"]));
        let plain = hex::encode(<Sha256 as sha2::Digest>::digest(b"password"));
        assert_ne!(a.fingerprint(&fields), plain);
        assert_eq!(format!("{a:?}"), "FingerprintKey([REDACTED])");
    }

    /// `password_hmac_sha256`: the plain HMAC of the password's bytes keyed with the UTF-8 bytes of
    /// the given key, as `printf %s PASSWORD | openssl dgst -sha256 -hmac KEY` computes it (RFC
    /// 4231 case 2, and a vector computed with openssl).
    #[test]
    fn given_key_vectors() {
        for (key, password, expected) in [
            (
                "Jefe",
                "what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                "team-fingerprint-key",
                "pg-Secret-Passw0rd-7f3a9c",
                // printf %s pg-Secret-Passw0rd-7f3a9c | openssl dgst -sha256 -hmac team-fingerprint-key
                "2d44d08686cbc950b73c22857fc5182e4d81e90f902486f957d6dbf93233446d",
            ),
        ] {
            let key = FingerprintKey::given(&SecretString::from(key));
            assert!(!key.is_per_run());
            assert_eq!(key.note(), GIVEN_NOTE);
            let fp = key.of_secret(&SecretString::from(password));
            assert_eq!(fp, expected);
            let plain = hex::encode(<Sha256 as sha2::Digest>::digest(password.as_bytes()));
            assert_ne!(fp, plain);
        }
        let drawn = FingerprintKey::from_bytes([3; 32]);
        assert!(drawn.is_per_run());
        assert_eq!(drawn.note(), PER_RUN_NOTE);
    }
}
