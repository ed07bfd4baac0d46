//! Parsing of Docker config data as the kubelet reads it from pull secrets.
//!
//! `.dockerconfigjson` (`{"auths": {KEY: ENTRY}}`) is read only from a `kubernetes.io/dockerconfigjson`
//! secret, the legacy `.dockercfg` (a bare `{KEY: ENTRY}` map) only from a `kubernetes.io/dockercfg`
//! secret. In an entry, `auth` (base64 of `user:password`, split at the first `:`) overrides
//! `username`/`password`; `email`, `identitytoken` and `registrytoken` are ignored, as the kubelet
//! ignores them. Errors name the key, never a value.

use base64::Engine as _;
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One registry entry of a Docker config: a key as written and the credential it holds.
#[derive(Debug, Clone)]
pub struct DockerConfigEntry {
    /// The registry key exactly as written in the secret (`https://registry.example.com:5000/v1/`).
    pub key: String,
    pub username: String,
    pub password: SecretString,
}

/// The two formats a pull secret can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerConfigFormat {
    /// `.dockerconfigjson`: `{"auths": {...}}`.
    ConfigJson,
    /// `.dockercfg`: a bare map of entries.
    Cfg,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerConfigError {
    #[error("not valid JSON for a Docker config ({0})")]
    NotJson(String),
    #[error("entry `{key}`: `auth` is not valid base64")]
    AuthNotBase64 { key: String },
    #[error("entry `{key}`: decoded `auth` has no `:` between user name and password")]
    AuthNoColon { key: String },
    #[error("entry `{key}`: decoded `auth` is not UTF-8")]
    AuthNotUtf8 { key: String },
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
}

// Unknown fields (email, identitytoken, registrytoken, …) are ignored, as the kubelet ignores them.
#[derive(Deserialize, Default)]
struct RawEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// Parses Docker config bytes in the given format. Entries come back in key order (the JSON object
/// order does not matter: the keyring sorts its matches itself).
pub fn parse(
    format: DockerConfigFormat,
    bytes: &[u8],
) -> Result<Vec<DockerConfigEntry>, DockerConfigError> {
    // serde_json's messages quote the offending token at most as a type name, never a value; keep
    // only the category and position to be sure.
    let describe = |e: serde_json::Error| {
        DockerConfigError::NotJson(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    };
    let raw: BTreeMap<String, RawEntry> = match format {
        DockerConfigFormat::ConfigJson => {
            serde_json::from_slice::<ConfigJson>(bytes)
                .map_err(describe)?
                .auths
        }
        DockerConfigFormat::Cfg => serde_json::from_slice(bytes).map_err(describe)?,
    };
    raw.into_iter()
        .map(|(key, entry)| decode_entry(key, entry))
        .collect()
}

fn decode_entry(key: String, entry: RawEntry) -> Result<DockerConfigEntry, DockerConfigError> {
    let (mut username, mut password) = (
        entry.username.unwrap_or_default(),
        entry.password.unwrap_or_default(),
    );
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| DockerConfigError::AuthNotBase64 { key: key.clone() })?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| DockerConfigError::AuthNotUtf8 { key: key.clone() })?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| DockerConfigError::AuthNoColon { key: key.clone() })?;
        username = user.to_string();
        password = pass.to_string();
    }
    Ok(DockerConfigEntry {
        key,
        username,
        password: SecretString::from(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn one(
        format: DockerConfigFormat,
        json: &str,
    ) -> Result<(String, String, String), DockerConfigError> {
        let entries = parse(format, json.as_bytes())?;
        assert_eq!(entries.len(), 1, "{json}");
        let e = &entries[0];
        Ok((
            e.key.clone(),
            e.username.clone(),
            e.password.expose_secret().to_string(),
        ))
    }

    #[test]
    fn entries_table() {
        use DockerConfigFormat::*;
        let auth = b64("alice:s3cr:et");
        let cases: Vec<(DockerConfigFormat, String, Result<(&str, &str, &str), &str>)> = vec![
            (ConfigJson, r#"{"auths":{"r.io":{"username":"u","password":"p"}}}"#.into(), Ok(("r.io", "u", "p"))),
            // auth overrides username/password and splits at the first colon.
            (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"username":"u","password":"p","auth":"{auth}"}}}}}}"#), Ok(("r.io", "alice", "s3cr:et"))),
            // email, identitytoken and registrytoken are ignored.
            (ConfigJson, r#"{"auths":{"r.io":{"username":"u","password":"p","email":"e@x","identitytoken":"t","registrytoken":"r"}}}"#.into(), Ok(("r.io", "u", "p"))),
            // legacy dockercfg is a bare map.
            (Cfg, format!(r#"{{"https://r.io/v1/":{{"auth":"{auth}","email":"e@x"}}}}"#), Ok(("https://r.io/v1/", "alice", "s3cr:et"))),
            (ConfigJson, r#"{"auths":{"r.io":{"auth":"!!!"}}}"#.into(), Err("AuthNotBase64")),
            (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("nocolon")), Err("AuthNoColon")),
            (ConfigJson, "not json".into(), Err("NotJson")),
            // An empty auth falls back to username/password.
            (ConfigJson, r#"{"auths":{"r.io":{"auth":"","username":"u","password":"p"}}}"#.into(), Ok(("r.io", "u", "p"))),
        ];
        for (format, json, expected) in cases {
            let got = one(format, &json);
            match (got, expected) {
                (Ok(got), Ok((k, u, p))) => {
                    assert_eq!(got, (k.to_string(), u.to_string(), p.to_string()), "{json}")
                }
                (Err(e), Err(variant)) => {
                    assert!(format!("{e:?}").starts_with(variant), "{json}: {e:?}")
                }
                (got, expected) => panic!("{json}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_dockercfg_map_is_not_a_dockerconfigjson() {
        // Read as .dockerconfigjson, a bare map has no `auths`: no entries, like the kubelet.
        let entries = parse(
            DockerConfigFormat::ConfigJson,
            br#"{"r.io":{"username":"u","password":"p"}}"#,
        )
        .unwrap();
        assert!(entries.is_empty());
    }

    #[test]
    fn errors_never_carry_values() {
        let secret = "hunter2-secret-value";
        for json in [
            format!(r#"{{"auths":{{"r.io":{{"auth":"{secret}"}}}}}}"#),
            format!(r#"{{"auths":{{"r.io":{{"password":{secret}}}}}}}"#),
            format!(r#"{{"auths":{{"r.io":{{"password":"{secret}"}} broken"#),
        ] {
            let err = parse(DockerConfigFormat::ConfigJson, json.as_bytes()).unwrap_err();
            assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        }
        let ok = parse(
            DockerConfigFormat::ConfigJson,
            format!(r#"{{"auths":{{"r.io":{{"username":"u","password":"{secret}"}}}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("hunter2"));
    }
}
