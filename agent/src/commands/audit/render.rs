//! The report as text: one table per namespace (a row per registry entry of each pull secret),
//! then the findings, worst first, each with a one-line hint.

use crate::commands::table::columns;
use crate::decide::audit::analysis::{Report, SecretReport};
use crate::model::inventory::{TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON};

fn short_type(t: Option<&str>) -> String {
    match t {
        None => "(missing)".into(),
        Some(TYPE_DOCKERCONFIGJSON) => "dockerconfigjson".into(),
        Some(TYPE_DOCKERCFG) => "dockercfg (legacy)".into(),
        Some(other) => other.into(),
    }
}

fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

fn secret_rows(s: &SecretReport) -> Vec<Vec<String>> {
    let users = if s.users.is_empty() {
        "-".to_string()
    } else {
        s.users
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let changed = s.data_changed.as_ref().map_or_else(
        || "-".to_string(),
        |c| format!("{} ({})", &c.at[..c.at.len().min(10)], c.basis.as_str()),
    );
    let findings = if s.findings.is_empty() {
        "-".to_string()
    } else {
        s.findings
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let first = [s.name.clone(), short_type(s.type_.as_deref())];
    let last = [changed, users, findings];
    let entries: Vec<[String; 4]> = if s.registries.is_empty() {
        vec![["-".into(), "-".into(), "-".into(), "-".into()]]
    } else {
        s.registries
            .iter()
            .map(|e| {
                let registry = match &e.registry {
                    Some(r) if *r == e.key => r.clone(),
                    Some(r) => format!("{r} (key {})", e.key),
                    None => format!("{} (ignored: not a URL)", e.key),
                };
                [
                    registry,
                    or_dash(Some(&e.username)),
                    e.fingerprint
                        .as_deref()
                        .map_or_else(|| "-".to_string(), |f| f[..f.len().min(12)].to_string()),
                    or_dash(e.expires_at.as_deref()),
                ]
            })
            .collect()
    };
    // The secret's own cells on its first row only.
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let (head, tail) = if i == 0 {
                (first.clone(), last.clone())
            } else {
                Default::default()
            };
            head.into_iter().chain(entry).chain(tail).collect()
        })
        .collect()
}

/// The whole report as text.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    if r.namespaces.is_empty() {
        out.push_str("no pull secret in any namespace, and none referenced\n\n");
    }
    for ns in &r.namespaces {
        out.push_str(&format!("NAMESPACE {}\n", ns.namespace));
        let rows: Vec<Vec<String>> = ns.secrets.iter().flat_map(secret_rows).collect();
        out.push_str(&columns(
            &[
                "SECRET",
                "TYPE",
                "REGISTRY",
                "USERNAME",
                "FINGERPRINT",
                "EXPIRES",
                "DATA CHANGED",
                "USED BY",
                "FINDINGS",
            ],
            &rows,
        ));
        out.push('\n');
    }
    if r.findings.is_empty() {
        out.push_str("no findings\n");
    } else {
        out.push_str(&format!("FINDINGS ({})\n", r.findings.len()));
        for f in &r.findings {
            out.push_str(&format!("{:<12} {}\n", f.kind.as_str(), f.message));
            out.push_str(&format!("{:<12} hint: {}\n", "", f.hint));
        }
    }
    for note in &r.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out.push_str(&format!(
        "\nfingerprints: {}\nExpiresSoon within {}; Old after {} unchanged (DATA CHANGED: managedFields time of the data's manager, else creationTimestamp)\n",
        r.fingerprints, r.expiry_warning, r.max_age
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::audit::analysis::{AuditInput, Options, build};
    use crate::commands::audit::fingerprint::FingerprintKey;
    use crate::model::inventory::{
        KEY_DOCKERCONFIGJSON, ObjectKey, SecretObject, ServiceAccountObject,
    };
    use std::time::{Duration, SystemTime};

    #[test]
    fn one_row_per_registry_entry() {
        let config = r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p1"},"r.io:bad":{"username":"v","password":"p2"}}}"#;
        let key = ObjectKey::new("team", "regcred");
        let mut input = AuditInput::default();
        input.inventory.secrets.insert(
            key.clone(),
            SecretObject {
                key: key.clone(),
                type_: TYPE_DOCKERCONFIGJSON.into(),
                data: [(
                    KEY_DOCKERCONFIGJSON.to_string(),
                    config.as_bytes().to_vec().into(),
                )]
                .into(),
            },
        );
        input.inventory.service_accounts.insert(
            ObjectKey::new("team", "default"),
            ServiceAccountObject {
                key: ObjectKey::new("team", "default"),
                image_pull_secrets: vec!["regcred".into()],
                ..Default::default()
            },
        );
        let options = Options {
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            expiry_warning: Duration::from_secs(3_600),
            max_age: Duration::from_secs(86_400),
        };
        let report = build(&input, &options, &FingerprintKey::from_bytes([1; 32]));
        let text = table(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAMESPACE team");
        assert!(lines[1].starts_with("SECRET   TYPE"), "{text}");
        assert!(
            lines[2].starts_with(
                "regcred  dockerconfigjson  index.docker.io (key https://index.docker.io/v1/)  u "
            ),
            "{text}"
        );
        assert!(lines[2].contains("ServiceAccount default"), "{text}");
        assert!(lines[2].ends_with("Malformed"), "{text}");
        // The second entry: registry cells only; an unparseable key is never echoed.
        assert!(
            lines[3].starts_with(&format!(
                "{:27}<unparseable key, 8 bytes> (ignored: not a URL)",
                ""
            )),
            "{text}"
        );
        assert!(
            text.contains("FINDINGS (1)\nMalformed    registry key `<unparseable key, 8 bytes>`"),
            "{text}"
        );
        assert!(!text.contains("p1") && !text.contains("p2"), "{text}");
        assert!(!text.contains("r.io:bad"), "{text}");
    }
}
