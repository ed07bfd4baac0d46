//! `pullgate auth resolve`: which credentials the kubelet would try for an image, in its order,
//! never showing a password (a table, or `--json`).

use crate::adapters::credential_plugin::{PluginError, kubelet_resolver};
use crate::cli::ResolveArgs;
use crate::commands::one_shot::{OneShotError, resolve_selection};
use crate::commands::table::columns;
use crate::decide::credentials::Resolution;
use crate::model::image_ref::{ImageRef, ImageRefError};
use crate::model::time::rfc3339_seconds;
use secrecy::ExposeSecret as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Image(#[from] ImageRefError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Selection(#[from] OneShotError),
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
}

#[derive(Serialize)]
struct CandidateReport {
    source: String,
    /// The key as written in its source.
    key: String,
    username: String,
    /// Hex sha256 of the password: compare two credentials without seeing either.
    password_sha256: String,
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
        json,
    } = args;
    let image = ImageRef::parse(&image)?;
    let resolver = kubelet_resolver(&node_credentials)?;
    let resolution = resolve_selection(&selection, &resolver, &image).await?;
    let report = report(&image, &resolution);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(!report.blocked && !report.candidates.is_empty())
}

fn report(image: &ImageRef, resolution: &Resolution) -> Report {
    Report {
        image: image.to_string(),
        registry: image.registry.clone(),
        repository: image.name(),
        candidates: resolution
            .candidates
            .iter()
            .map(|c| CandidateReport {
                source: c.source.origin(),
                key: c.source.key().to_string(),
                username: c.username.clone(),
                password_sha256: hex::encode(Sha256::digest(c.password.expose_secret().as_bytes())),
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
                    c.password_sha256[..12].to_string(),
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
                "password sha256",
                "expires",
            ],
            &rows,
        ));
        out.push('\n');
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
        let r = report(&image, &resolution);
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
}
