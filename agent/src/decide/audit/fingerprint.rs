//! Keyed fingerprints of credentials: HMAC-SHA256 (the `hmac` crate) with a key drawn for
//! one run. Two equal fingerprints in one report mean the same credential; a fingerprint says
//! nothing about the credential to anyone without the key, and the key never leaves the process,
//! so fingerprints of two runs cannot be compared (nor brute-forced offline, as a plain hash of a
//! short password could be).

use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretBox};
use sha2::Sha256;
use std::fmt;

/// The per-run key. `Debug` prints no byte of it; it is zeroed when dropped.
pub struct FingerprintKey(SecretBox<[u8; 32]>);

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey([REDACTED])")
    }
}

impl FingerprintKey {
    /// A key from its bytes (`pullgate audit` draws them from the kernel's CSPRNG per run).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
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
        hex::encode(hmac_sha256(self.0.expose_secret(), &parts))
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
}
