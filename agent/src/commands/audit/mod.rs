//! `pullgate audit`: the cluster-wide blast-radius report of pull secrets, for an admin (never run
//! by the DaemonSet, whose RBAC cannot list Secrets).
//!
//! For every namespace: the pull secrets, the registries they cover (keys as written and as the
//! kubelet normalises them), the ServiceAccounts, PullSets and workloads that use them, and the
//! findings — a credential reused across namespaces (by a keyed fingerprint, never the value),
//! credentials that expire soon or have expired, Secrets whose data is old, legacy or mistyped
//! Secrets, malformed Docker configs, unused pull secrets, and references to Secrets or
//! ServiceAccounts that do not exist. A table, or `--json`.
//!
//! [`crate::decide::audit`] decides (plain types, data-table tests; the keyed fingerprint),
//! [`crate::adapters::kube::audit_lists`] lists from the API server, [`render`] prints; this
//! module draws the run's key and wires them.

pub mod render;

use crate::adapters::kube::audit_lists as cluster;
use crate::adapters::kube::kubeconfig::{KubeconfigError, connect};
use crate::cli::AuditArgs;
use crate::decide::audit::{analysis, fingerprint};
use std::io::Read as _;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Client(#[from] KubeconfigError),
    #[error(transparent)]
    List(#[from] cluster::ListError),
    #[error("cannot draw the fingerprint key from /dev/urandom: {0}")]
    Random(std::io::Error),
}

/// Lists, judges and prints. `Ok(true)` when nothing was flagged, `Ok(false)` with findings.
pub async fn audit(args: AuditArgs) -> Result<bool, AuditError> {
    let AuditArgs {
        cluster,
        expiry_warning,
        max_age,
        fingerprint,
        json,
    } = args;
    let key = fingerprint_key(fingerprint.fingerprint_key).map_err(AuditError::Random)?;
    let client = connect(&cluster).await?.client;
    let input = cluster::load(&client).await?;
    let options = analysis::Options {
        now: SystemTime::now(),
        expiry_warning: *expiry_warning,
        max_age: *max_age,
    };
    let report = analysis::build(&input, &options, &key);
    drop(input);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            crate::model::printable::printable_text(&render::table(&report))
        );
    }
    Ok(report.findings.is_empty())
}

/// The fingerprint key of `audit` and `auth resolve`: the operator's `--fingerprint-key`, else
/// one drawn for this run.
pub fn fingerprint_key(
    given: Option<secrecy::SecretString>,
) -> std::io::Result<fingerprint::FingerprintKey> {
    match given {
        Some(key) => Ok(fingerprint::FingerprintKey::given(&key)),
        None => random_key(),
    }
}

/// A key drawn for this run: 32 bytes from the kernel's CSPRNG.
fn random_key() -> std::io::Result<fingerprint::FingerprintKey> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(fingerprint::FingerprintKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_keys_differ() {
        let (a, b) = (
            super::random_key().unwrap_or_else(|e| panic!("{e}")),
            super::random_key().unwrap_or_else(|e| panic!("{e}")),
        );
        assert_ne!(a.fingerprint(&[b"x"]), b.fingerprint(&[b"x"]));
    }
}
