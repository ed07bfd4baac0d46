//! `pullgate auth resolve`: which credentials the kubelet would try for an image, in its order,
//! never showing a password (a table, or `--json`).

use crate::adapters::credential_plugin::{PluginError, kubelet_resolver_with_tokens};
use crate::cli::ResolveArgs;
use crate::commands::one_shot::{OneShotError, select};
use crate::commands::table::columns;
use crate::decide::audit::fingerprint::FingerprintKey;
use crate::decide::credentials::Resolution;
use crate::decide::credentials::shown_key::shown;
use crate::model::image_ref::{ImageRef, ImageRefError};
use crate::model::time::rfc3339_seconds;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Image(#[from] ImageRefError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Selection(#[from] OneShotError),
    #[error("cannot draw the fingerprint key from /dev/urandom: {0}")]
    Random(std::io::Error),
}

#[derive(Serialize)]
struct Report {
    image: String,
    registry: String,
    repository: String,
    /// In the order the kubelet would try them. Empty: an anonymous pull.
    candidates: Vec<CandidateReport>,
    /// What resolution found on the way (missing secrets, near misses…).
    verdicts: Vec<VerdictReport>,
    /// The kubelet would fail the pull before trying anything.
    blocked: bool,
    /// How to read `password_hmac_sha256`.
    fingerprints: &'static str,
    /// The fingerprint key was drawn for this run (no `--fingerprint-key`): fingerprints compare
    /// within this output only.
    fingerprint_key_per_run: bool,
}

#[derive(Serialize)]
struct CandidateReport {
    source: String,
    /// The key as written in its source, as keys are shown (no userinfo; nothing of an
    /// unparseable key).
    key: String,
    username: String,
    /// Lowercase hex HMAC-SHA256 of the password's bytes, keyed with `--fingerprint-key` (else a
    /// key drawn for this run): compare two credentials without seeing either.
    password_hmac_sha256: String,
    /// RFC 3339, when the credential carries its own expiry; null otherwise.
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct VerdictReport {
    verdict: crate::model::verdict::Verdict,
    message: String,
}

/// `pullgate auth resolve`: prints the report; `Ok(true)` when the kubelet would have at least one
/// credential to try and nothing blocks the pull.
pub async fn resolve(args: ResolveArgs) -> Result<bool, AuthError> {
    let ResolveArgs {
        image,
        selection,
        node_credentials,
        fingerprint,
        json,
    } = args;
    let key = crate::commands::audit::fingerprint_key(fingerprint.fingerprint_key)
        .map_err(AuthError::Random)?;
    let image = ImageRef::parse(&image)?;
    let selected = select(&selection).await?;
    // Cluster objects: the providers in service-account token mode get real tokens.
    let resolver = kubelet_resolver_with_tokens(&node_credentials, selected.tokens())?;
    let resolution = selected.resolve(&resolver, &image).await?;
    let report = report(&image, &resolution, &key);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            crate::model::printable::printable_text(&table(&report))
        );
    }
    Ok(!report.blocked && !report.candidates.is_empty())
}

fn report(image: &ImageRef, resolution: &Resolution, key: &FingerprintKey) -> Report {
    Report {
        image: image.to_string(),
        registry: image.registry.clone(),
        repository: image.name(),
        candidates: resolution
            .candidates
            .iter()
            .map(|c| CandidateReport {
                source: c.source.origin(),
                key: shown(c.source.key()),
                username: c.username.clone(),
                password_hmac_sha256: key.of_secret(&c.password),
                expires_at: c.expires_at.map(rfc3339_seconds),
            })
            .collect(),
        verdicts: resolution
            .findings
            .iter()
            .map(|f| VerdictReport {
                verdict: f.verdict,
                message: f.message.clone(),
            })
            .collect(),
        blocked: resolution.blocked.is_some(),
        fingerprints: key.note(),
        fingerprint_key_per_run: key.is_per_run(),
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "image       {}\nregistry    {}\nrepository  {}\n\n",
        r.image, r.registry, r.repository
    );
    if r.blocked {
        out.push_str(
            "the kubelet would fail this pull before trying any credential (see below)\n\n",
        );
    } else if r.candidates.is_empty() {
        out.push_str("no credential matches: the kubelet pulls anonymously\n\n");
    } else {
        let rows: Vec<[String; 6]> = r
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                [
                    (i + 1).to_string(),
                    c.source.clone(),
                    c.key.clone(),
                    c.username.clone(),
                    c.password_hmac_sha256.chars().take(12).collect(),
                    c.expires_at.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&columns(
            &[
                "#",
                "source",
                "key",
                "username",
                "password hmac-sha256",
                "expires",
            ],
            &rows,
        ));
        out.push_str(&format!("\npassword hmac-sha256: {}\n\n", r.fingerprints));
    }
    for v in &r.verdicts {
        out.push_str(&format!("{:<24}{}\n", v.verdict.as_str(), v.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::credentials::{Candidate, CredentialSource};
    use crate::model::inventory::ObjectKey;
    use crate::model::time::{AFTER_9999, BEFORE_1970, from_unix_seconds};
    use secrecy::SecretString;

    /// A crafted `exp` (issue #13): the report and the table say the expiry is out of range, and
    /// neither panics nor shows the password.
    #[test]
    fn out_of_range_expiry_is_reported() {
        let image = ImageRef::parse("r.io/app:1").unwrap_or_else(|e| panic!("{e}"));
        let candidate = |secs: i128| Candidate {
            source: CredentialSource::PullSecret {
                secret: ObjectKey::new("ns", "regcred"),
                key: "r.io".into(),
            },
            username: "u".into(),
            password: SecretString::from("hunter2-password".to_string()),
            tokens: vec![],
            expires_at: from_unix_seconds(secs),
        };
        let resolution = Resolution {
            candidates: vec![
                candidate(568_971_849_600),
                candidate(i128::from(u64::MAX)),
                candidate(-1),
            ],
            findings: vec![],
            blocked: None,
        };
        let r = report(&image, &resolution, &FingerprintKey::from_bytes([5; 32]));
        let expires: Vec<Option<&str>> = r
            .candidates
            .iter()
            .map(|c| c.expires_at.as_deref())
            .collect();
        assert_eq!(
            expires,
            [Some(AFTER_9999), Some(AFTER_9999), Some(BEFORE_1970)]
        );
        let text = table(&r);
        let json = serde_json::to_string(&r).unwrap_or_default();
        for out in [&text, &json] {
            assert!(out.contains(AFTER_9999), "{out}");
            assert!(!out.contains("hunter2-password"), "{out}");
        }
    }

    /// `password_hmac_sha256` is the HMAC of the password keyed with `--fingerprint-key`: the same
    /// with the same key, different without one; the output says which; no plain SHA-256.
    #[test]
    fn passwords_are_fingerprinted_with_the_key() {
        let image = ImageRef::parse("r.io/app:1").unwrap_or_else(|e| panic!("{e}"));
        let resolution = Resolution {
            candidates: vec![Candidate {
                source: CredentialSource::PullSecret {
                    secret: ObjectKey::new("ns", "regcred"),
                    key: "https://robot:tok-Key-Secret-1@r.io".into(),
                },
                username: "u".into(),
                password: SecretString::from("pg-Secret-Passw0rd-7f3a9c"),
                tokens: vec![],
                expires_at: None,
            }],
            findings: vec![],
            blocked: None,
        };
        let given = || FingerprintKey::given(&SecretString::from("team-fingerprint-key"));
        let (a, b) = (
            report(&image, &resolution, &given()),
            report(&image, &resolution, &given()),
        );
        // printf %s pg-Secret-Passw0rd-7f3a9c | openssl dgst -sha256 -hmac team-fingerprint-key
        let expected = "2d44d08686cbc950b73c22857fc5182e4d81e90f902486f957d6dbf93233446d";
        assert_eq!(a.candidates[0].password_hmac_sha256, expected);
        assert_eq!(b.candidates[0].password_hmac_sha256, expected);
        assert!(!a.fingerprint_key_per_run);
        let drawn = |n| report(&image, &resolution, &FingerprintKey::from_bytes([n; 32]));
        let (c, d) = (drawn(1), drawn(2));
        assert_ne!(
            c.candidates[0].password_hmac_sha256,
            d.candidates[0].password_hmac_sha256
        );
        assert!(c.fingerprint_key_per_run);
        let plain = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            "pg-Secret-Passw0rd-7f3a9c",
        ));
        for r in [&a, &c] {
            let text = table(r);
            let json = serde_json::to_string(r).unwrap_or_default();
            assert!(text.contains("password hmac-sha256"), "{text}");
            assert!(text.contains(r.fingerprints), "{text}");
            assert!(json.contains("\"password_hmac_sha256\""), "{json}");
            assert!(json.contains("\"fingerprint_key_per_run\""), "{json}");
            for out in [&text, &json] {
                assert!(!out.contains(&plain[..12]), "{out}");
                assert!(!out.contains("pg-Secret-Passw0rd-7f3a9c"), "{out}");
                assert!(!out.contains("tok-Key-Secret-1"), "{out}");
            }
        }
        assert!(table(&c).contains("within this output only"));
        assert!(table(&a).contains("--fingerprint-key"));
    }
}
