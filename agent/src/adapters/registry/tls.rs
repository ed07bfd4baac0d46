//! TLS as containerd sets it up per host (`hosts.toml` `ca`, `client`, `skip_verify`, from
//! `decide::registry_hosts`): one reqwest client per distinct setting, cached (bounded; a file
//! changed on disk makes a new one), and a TLS failure named: that it is TLS, the host, what
//! failed, and which `hosts.toml` setting fixes it.

use super::RegistryError;
use crate::decide::registry_hosts::TlsSettings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The most clients kept; past it the cache starts over (a node has a handful of settings).
const MAX_CLIENTS: usize = 64;

/// What the TLS files of a setting were when its client was built: a changed file is a new key.
type FileStamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Clients by TLS setting.
#[derive(Default)]
pub struct Clients {
    cache: Mutex<HashMap<(TlsSettings, FileStamp), reqwest::Client>>,
}

impl Clients {
    /// The client for `tls`, built by `build` from the files' contents when not cached.
    pub fn get(
        &self,
        tls: &TlsSettings,
        build: impl FnOnce(&TlsFiles) -> Result<reqwest::Client, RegistryError>,
    ) -> Result<reqwest::Client, RegistryError> {
        let key = (tls.clone(), stamp(tls));
        if let Some(c) = self.lock().get(&key) {
            return Ok(c.clone());
        }
        let files = TlsFiles::read(tls)?;
        let client = build(&files)?;
        let mut cache = self.lock();
        if cache.len() >= MAX_CLIENTS {
            cache.clear();
        }
        cache.insert(key, client.clone());
        Ok(client)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(TlsSettings, FileStamp), reqwest::Client>> {
        // A panic while holding the lock leaves only a cache behind: keep using it.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn stamp(tls: &TlsSettings) -> FileStamp {
    tls.ca
        .iter()
        .chain(
            tls.client
                .iter()
                .flat_map(|(c, k)| std::iter::once(c).chain(k)),
        )
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            let stamp = meta.and_then(|m| Some((m.modified().ok()?, m.len())));
            (p.clone(), stamp)
        })
        .collect()
}

/// The certificates a setting names, read.
pub struct TlsFiles {
    pub roots: Vec<reqwest::Certificate>,
    /// The first client pair (certificate and key in one PEM), as Go's TLS client offers the
    /// first certificate that fits.
    pub identity: Option<reqwest::Identity>,
    pub skip_verify: bool,
}

impl TlsFiles {
    fn read(tls: &TlsSettings) -> Result<Self, RegistryError> {
        let mut roots = Vec::new();
        for path in &tls.ca {
            let pem = read(path, "ca")?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| bad(path, "ca", "holds no PEM certificate"))?;
            roots.extend(certs);
        }
        let identity = match tls.client.first() {
            None => None,
            Some((cert, key)) => {
                let mut pem = read(cert, "client")?;
                if let Some(key) = key {
                    pem.push(b'\n');
                    pem.extend(read(key, "client")?);
                }
                Some(reqwest::Identity::from_pem(&pem).map_err(|_| {
                    bad(
                        cert,
                        "client",
                        "is not a PEM certificate with its private key (PKCS#8, RSA or EC)",
                    )
                })?)
            }
        };
        Ok(Self {
            roots,
            identity,
            skip_verify: tls.skip_verify,
        })
    }
}

fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|e| bad(path, setting, &e.to_string()))
}

fn bad(path: &Path, setting: &'static str, cause: &str) -> RegistryError {
    RegistryError::TlsFile {
        setting,
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

/// What failed in a TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate's issuer is not trusted.
    UnknownCa,
    /// The certificate does not name the host.
    NameMismatch,
    /// The certificate has expired or is not yet valid.
    Expired,
    /// The server answered without TLS (a plain-HTTP registry).
    NotTls,
    /// The server wants a client certificate, or refused the one offered.
    ClientCertificate,
    /// The handshake failed otherwise (no common version or cipher suite, or a server that
    /// wants a client certificate and says only that).
    Handshake,
}

impl TlsFailure {
    /// The failure a transport error's innermost cause names (rustls's words), if a TLS one.
    pub fn of_cause(cause: &str) -> Option<Self> {
        let c = cause.to_ascii_lowercase();
        if c.contains("unknownissuer") || c.contains("unknown issuer") {
            Some(Self::UnknownCa)
        } else if c.contains("notvalidforname") || c.contains("not valid for name") {
            Some(Self::NameMismatch)
        } else if c.contains("expired") || c.contains("notvalidyet") {
            Some(Self::Expired)
        } else if c.contains("invalidcontenttype") || c.contains("corrupt message") {
            Some(Self::NotTls)
        } else if c.contains("certificaterequired")
            || c.contains("badcertificate")
            || c.contains("unknownca")
        {
            Some(Self::ClientCertificate)
        } else if c.contains("handshakefailure") || c.contains("peerincompatible") {
            Some(Self::Handshake)
        } else {
            None
        }
    }

    /// What failed, in words.
    pub fn what(self) -> &'static str {
        match self {
            Self::UnknownCa => "its certificate is signed by a CA the canary does not trust",
            Self::NameMismatch => "its certificate is not valid for this host name",
            Self::Expired => "its certificate has expired or is not yet valid",
            Self::NotTls => "it answered in plain HTTP, not TLS",
            Self::ClientCertificate => {
                "it refused the connection without an acceptable client certificate"
            }
            Self::Handshake => "the handshake failed",
        }
    }

    /// Which setting fixes it.
    pub fn fix(self) -> &'static str {
        match self {
            Self::UnknownCa => {
                "give its CA with `ca = \"ca.crt\"` in the registry's hosts.toml (or --registry-ca-file)"
            }
            Self::NameMismatch => {
                "name the host the certificate was issued for in the hosts.toml's `server` / `[host.\"…\"]`, or re-issue the certificate"
            }
            Self::Expired => "renew the registry's certificate",
            Self::NotTls => {
                "write `server = \"http://…\"` in the registry's hosts.toml (or pass --insecure-registry)"
            }
            Self::ClientCertificate => {
                "give a client certificate with `client = [[\"client.cert\", \"client.key\"]]` in the registry's hosts.toml"
            }
            Self::Handshake => {
                "check the registry's TLS versions and cipher suites, and whether it wants a client certificate (`client = [[\"client.cert\", \"client.key\"]]` in its hosts.toml)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_named_from_rustls_words() {
        for (cause, want) in [
            (
                "invalid peer certificate: UnknownIssuer",
                Some(TlsFailure::UnknownCa),
            ),
            (
                "invalid peer certificate: NotValidForNameContext { expected: DnsName(\"x\") }",
                Some(TlsFailure::NameMismatch),
            ),
            (
                "invalid peer certificate: ExpiredContext { time: .. }",
                Some(TlsFailure::Expired),
            ),
            (
                "received corrupt message of type InvalidContentType",
                Some(TlsFailure::NotTls),
            ),
            (
                "received fatal alert: CertificateRequired",
                Some(TlsFailure::ClientCertificate),
            ),
            (
                "received fatal alert: BadCertificate",
                Some(TlsFailure::ClientCertificate),
            ),
            (
                "received fatal alert: HandshakeFailure",
                Some(TlsFailure::Handshake),
            ),
            ("Connection refused (os error 111)", None),
            ("dns error: failed to lookup address information", None),
        ] {
            assert_eq!(TlsFailure::of_cause(cause), want, "{cause}");
        }
    }

    #[test]
    fn unreadable_or_wrong_files_name_the_setting_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = dir.path().join("missing.crt");
        for (tls, want) in [
            (
                TlsSettings {
                    ca: vec![missing.clone()],
                    ..TlsSettings::default()
                },
                format!("hosts.toml `ca` {}: ", missing.display()),
            ),
            (
                TlsSettings {
                    ca: vec![junk.clone()],
                    ..TlsSettings::default()
                },
                format!(
                    "hosts.toml `ca` {}: holds no PEM certificate",
                    junk.display()
                ),
            ),
            (
                TlsSettings {
                    client: vec![(junk.clone(), None)],
                    ..TlsSettings::default()
                },
                format!(
                    "hosts.toml `client` {}: is not a PEM certificate",
                    junk.display()
                ),
            ),
        ] {
            let e = Clients::default()
                .get(&tls, |_| unreachable!("no client is built from bad files"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&want), "{e}");
        }
    }
}
