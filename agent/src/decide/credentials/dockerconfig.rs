//! Parsing of Docker config data exactly as the kubelet reads it.
//!
//! `.dockerconfigjson` (`{"auths": {KEY: ENTRY}}`) is read only from a `kubernetes.io/dockerconfigjson`
//! secret, the legacy `.dockercfg` (a bare `{KEY: ENTRY}` map) only from a `kubernetes.io/dockercfg`
//! secret. Field names match case-insensitively (Go's `encoding/json`); unknown fields are ignored.
//! In an entry, a non-empty `auth` — base64 of `user:password`, padded (`StdEncoding`) when it ends
//! in `=` and unpadded otherwise, split at the first `:` — overrides `username`/`password`; `email`
//! is ignored, and so are `identitytoken` and `registrytoken`, which the kubelet does not send
//! (pullgate reads `identitytoken` only to learn a credential's expiry). Errors name the key, never a
//! value.

use super::shown_key::shown;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use secrecy::SecretString;
use serde_json::{Map, Value};

/// One registry entry of a Docker config: a key as written and the credential it holds.
#[derive(Debug, Clone)]
pub struct DockerConfigEntry {
    /// The registry key exactly as written (`https://registry.example.com:5000/v1/`).
    pub key: String,
    pub username: String,
    pub password: SecretString,
    /// Read for its expiry, and to scrub it from messages; never sent.
    pub identity_token: Option<SecretString>,
    /// `registrytoken`: read only to scrub it from messages; never sent.
    pub registry_token: Option<SecretString>,
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
    #[error("not a JSON object of registry entries")]
    NotAnObject,
    // Keys are shown as `shown_key` shows them: never userinfo, nothing of an unparseable key.
    #[error("entry `{}`: field `{field}` is not a string", shown(key))]
    NotAString { key: String, field: &'static str },
    #[error("entry `{}`: `auth` is not valid base64", shown(key))]
    AuthNotBase64 { key: String },
    #[error(
        "entry `{}`: decoded `auth` is not formatted as base64(username:password)",
        shown(key)
    )]
    AuthNoColon { key: String },
}

// Go's decoders are lenient about non-canonical trailing bits; so is this.
const PADDED: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);
const UNPADDED: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Parses Docker config bytes in the given format. Entries come back in key order (the kubelet's
/// own order within one config is Go's random map order; the keyring sorts matches itself).
pub fn parse(
    format: DockerConfigFormat,
    bytes: &[u8],
) -> Result<Vec<DockerConfigEntry>, DockerConfigError> {
    // Only the category and position of a JSON error: never a token that could be a secret.
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        DockerConfigError::NotJson(format!(
            "{:?} error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let entries = match format {
        DockerConfigFormat::ConfigJson => {
            let Value::Object(top) = value else {
                return Err(DockerConfigError::NotAnObject);
            };
            match field(&top, "auths") {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::Object(auths)) => auths.clone(),
                Some(_) => return Err(DockerConfigError::NotAnObject),
            }
        }
        DockerConfigFormat::Cfg => match value {
            Value::Object(map) => map,
            Value::Null => return Ok(Vec::new()),
            _ => return Err(DockerConfigError::NotAnObject),
        },
    };
    let mut out: Vec<DockerConfigEntry> = entries
        .iter()
        .map(|(key, entry)| decode_entry(key, entry))
        .collect::<Result<_, _>>()?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Go's field matching: an exact name first, then the first case-insensitive one.
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn string_field(
    map: &Map<String, Value>,
    key: &str,
    name: &'static str,
) -> Result<String, DockerConfigError> {
    match field(map, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(DockerConfigError::NotAString {
            key: key.to_string(),
            field: name,
        }),
    }
}

fn decode_entry(key: &str, entry: &Value) -> Result<DockerConfigEntry, DockerConfigError> {
    let map = match entry {
        Value::Object(map) => map,
        Value::Null => &Map::new(),
        _ => return Err(DockerConfigError::NotAnObject),
    };
    let mut username = string_field(map, key, "username")?;
    let mut password = string_field(map, key, "password")?;
    let auth = string_field(map, key, "auth")?;
    // Read for expiry only; the kubelet ignores it, and a wrong type is not worth failing for.
    let token = |name: &str| match field(map, name) {
        Some(Value::String(t)) if !t.is_empty() => Some(SecretString::from(t.clone())),
        _ => None,
    };
    let identity_token = token("identitytoken");
    let registry_token = token("registrytoken");
    // `email` must still be a string for Go to accept the entry.
    string_field(map, key, "email")?;
    if !auth.is_empty() {
        (username, password) = decode_auth(key, &auth)?;
    }
    Ok(DockerConfigEntry {
        key: key.to_string(),
        username,
        password: SecretString::from(password),
        identity_token,
        registry_token,
    })
}

/// `base64(user:password)`, decoded as the kubelet decodes it.
fn decode_auth(key: &str, auth: &str) -> Result<(String, String), DockerConfigError> {
    // Go's base64 decoders skip \r and \n.
    let cleaned: String = auth.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let engine = if auth.trim().ends_with('=') {
        &PADDED
    } else {
        &UNPADDED
    };
    let decoded = engine
        .decode(cleaned)
        .map_err(|_| DockerConfigError::AuthNotBase64 {
            key: key.to_string(),
        })?;
    // Go converts bytes to a string without validation; invalid UTF-8 is replaced here.
    let decoded = String::from_utf8_lossy(&decoded);
    let (user, pass) = decoded
        .split_once(':')
        .ok_or_else(|| DockerConfigError::AuthNoColon {
            key: key.to_string(),
        })?;
    Ok((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests;
