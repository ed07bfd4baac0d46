//! How the kubelet reads one pull Secret into registry entries, written once for the resolver,
//! `diagnose` and `audit` (each words the outcome its own way).
//!
//! A `kubernetes.io/dockerconfigjson` Secret is read from its `.dockerconfigjson` key, a
//! `kubernetes.io/dockercfg` Secret from `.dockercfg` ([`super::dockerconfig`] parses either); a
//! Secret of any other type is ignored, and so is one whose data key is missing or empty. Data the
//! kubelet cannot parse fails every pull that uses the Secret.

use super::dockerconfig::{self, DockerConfigEntry, DockerConfigError, DockerConfigFormat};
use crate::model::inventory::{
    KEY_DOCKERCFG, KEY_DOCKERCONFIGJSON, SecretObject, TYPE_DOCKERCFG, TYPE_DOCKERCONFIGJSON,
};
use secrecy::ExposeSecret as _;

/// What the kubelet makes of a Secret's Docker config key.
#[derive(Debug)]
pub enum KeyRead {
    /// The registry entries, in key order.
    Entries(Vec<DockerConfigEntry>),
    /// The key is missing or empty: the kubelet ignores the Secret.
    Absent,
    /// What the kubelet cannot parse: every pull that uses the Secret fails.
    Unparsable(DockerConfigError),
}

/// The format and data key the kubelet reads a Secret of this type with; `None`: a type it ignores.
pub fn kubelet_format(secret_type: &str) -> Option<(DockerConfigFormat, &'static str)> {
    match secret_type {
        TYPE_DOCKERCONFIGJSON => Some((DockerConfigFormat::ConfigJson, KEY_DOCKERCONFIGJSON)),
        TYPE_DOCKERCFG => Some((DockerConfigFormat::Cfg, KEY_DOCKERCFG)),
        _ => None,
    }
}

/// The Secret as the kubelet reads it: the data key its type names, and what that key holds;
/// `None`: a type the kubelet ignores.
pub fn read_pull_secret(secret: &SecretObject) -> Option<(&'static str, KeyRead)> {
    let (format, data_key) = kubelet_format(&secret.type_)?;
    Some((data_key, read_data_key(secret, format, data_key)))
}

/// `data_key` read in `format` with the kubelet's rules, whatever the Secret's type (`audit`
/// also reads a Docker config that sits in a Secret of another type, to report it).
pub fn read_data_key(secret: &SecretObject, format: DockerConfigFormat, data_key: &str) -> KeyRead {
    match secret.data.get(data_key) {
        Some(bytes) if !bytes.expose_secret().is_empty() => {
            match dockerconfig::parse(format, bytes.expose_secret()) {
                Ok(entries) => KeyRead::Entries(entries),
                Err(error) => KeyRead::Unparsable(error),
            }
        }
        _ => KeyRead::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::ObjectKey;

    fn secret(type_: &str, data: &[(&str, &str)]) -> SecretObject {
        SecretObject {
            key: ObjectKey::new("ns", "s"),
            type_: type_.into(),
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec().into()))
                .collect(),
        }
    }

    #[test]
    fn read_as_the_kubelet_reads_it() {
        let json = r#"{"auths":{"r.io":{"username":"u","password":"pw-secret"}}}"#;
        let cfg = r#"{"r.io":{"username":"u","password":"pw-secret"}}"#;
        for (type_, data, expected) in [
            (
                TYPE_DOCKERCONFIGJSON,
                vec![(KEY_DOCKERCONFIGJSON, json)],
                "entries .dockerconfigjson 1",
            ),
            (
                TYPE_DOCKERCFG,
                vec![(KEY_DOCKERCFG, cfg)],
                "entries .dockercfg 1",
            ),
            // The type picks the key: a .dockercfg key in a dockerconfigjson Secret is not read.
            (
                TYPE_DOCKERCONFIGJSON,
                vec![(KEY_DOCKERCFG, cfg)],
                "no-data .dockerconfigjson",
            ),
            (
                TYPE_DOCKERCONFIGJSON,
                vec![(KEY_DOCKERCONFIGJSON, "")],
                "no-data .dockerconfigjson",
            ),
            (
                TYPE_DOCKERCONFIGJSON,
                vec![(KEY_DOCKERCONFIGJSON, "{")],
                "unparsable .dockerconfigjson",
            ),
            (
                TYPE_DOCKERCFG,
                vec![(KEY_DOCKERCFG, "[]")],
                "unparsable .dockercfg",
            ),
            ("Opaque", vec![(KEY_DOCKERCONFIGJSON, json)], "wrong-type"),
            ("kubernetes.io/tls", vec![], "wrong-type"),
        ] {
            let read = read_pull_secret(&secret(type_, &data));
            let got = match &read {
                Some((data_key, KeyRead::Entries(entries))) => {
                    format!("entries {data_key} {}", entries.len())
                }
                None => "wrong-type".into(),
                Some((data_key, KeyRead::Absent)) => format!("no-data {data_key}"),
                Some((data_key, KeyRead::Unparsable(_))) => format!("unparsable {data_key}"),
            };
            assert_eq!(got, expected, "{type_} {data:?}");
            assert!(!format!("{read:?}").contains("pw-secret"));
        }
        // A Docker config in a Secret of another type, read on purpose.
        let opaque = secret("Opaque", &[(KEY_DOCKERCONFIGJSON, json)]);
        assert!(matches!(
            read_data_key(
                &opaque,
                DockerConfigFormat::ConfigJson,
                KEY_DOCKERCONFIGJSON
            ),
            KeyRead::Entries(_)
        ));
    }
}
