//! Credential providers in service-account token mode (KEP-4412; the kubelet's
//! `pkg/credentialprovider/plugin/plugin.go`, beta and on by default from 1.34): which
//! ServiceAccount's token and annotations a provider with `tokenAttributes` is given, whether it
//! is invoked at all, and the ServiceAccount part of its cache key.
//!
//! As the kubelet does it, for the ServiceAccount the pod rule gives (the PullSet's
//! `serviceAccountName`, else `default`):
//! - no ServiceAccount at all: not invoked when `requireServiceAccount` is true, else invoked
//!   without a token or annotations;
//! - a required annotation missing on the ServiceAccount: not invoked (the note names the key);
//! - the ServiceAccount cannot be read (does not exist, forbidden): not invoked;
//! - else a token for `serviceAccountTokenAudience` (TokenRequest, through
//!   [`super::ServiceAccountTokens`]) and exactly the configured annotation keys present on the
//!   ServiceAccount (every required one, the optional ones that are there).
//!
//! The cache key of an answer is the kubelet's (`generateServiceAccountCacheKey`): the
//! `cacheKeyType` key plus the ServiceAccount's namespace, name, UID and the annotations passed,
//! and with `cacheType: Token` the token too. pullgate holds it as one keyed HMAC
//! ([`crate::decide::audit::fingerprint`], a per-process key), never an unkeyed hash of the token.
//!
//! pullgate has no pod: the token it requests is bound to no pod (the kubelet's is bound to the
//! pod being started), so a plugin that reads pod claims from the token sees none. Without an
//! API server (standalone mode, one-shot commands reading a manifest directory) no token can be
//! requested: a provider that requires a ServiceAccount is then not invoked, and says it needs
//! cluster mode; one that does not is invoked as for a pod without a ServiceAccount.

use crate::decide::audit::fingerprint::FingerprintKey;
use crate::model::inventory::{ObjectKey, ServiceAccountObject};
use secrecy::{ExposeSecret as _, SecretString};
use std::collections::BTreeMap;
use std::fmt;

/// `tokenAttributes.cacheType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCacheType {
    /// Credentials cached per token: the token is part of the cache key.
    Token,
    /// Credentials cached per ServiceAccount (namespace, name, UID, annotations passed).
    ServiceAccount,
}

impl TokenCacheType {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenCacheType::Token => "Token",
            TokenCacheType::ServiceAccount => "ServiceAccount",
        }
    }
}

impl fmt::Display for TokenCacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's validated `tokenAttributes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenAttributes {
    /// `serviceAccountTokenAudience`: the one audience of the token.
    pub audience: String,
    pub cache_type: TokenCacheType,
    pub require_service_account: bool,
    pub required_annotation_keys: Vec<String>,
    pub optional_annotation_keys: Vec<String>,
}

/// The ServiceAccount a pull runs as, as the resolver hands it to the plugins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodServiceAccount {
    /// No ServiceAccount at all (`auth resolve --docker-config`): as a static pod.
    None,
    /// The pod rule's ServiceAccount, as the source holds it.
    Found(ServiceAccountObject),
    /// Named by the pod rule but not held: `why` says (`does not exist`, `cannot be read: …`).
    Unavailable { key: ObjectKey, why: String },
}

/// What one provider in service-account token mode does for one pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not invoked; the note says why, naming the ServiceAccount and the setting or key.
    NotInvoked(String),
    /// Invoked without a token or annotations; `note` (verdict `Ok`) when the kubelet would
    /// have sent a token that pullgate cannot request here.
    WithoutToken { note: Option<String> },
    /// Invoked with a token of `account` (UID `uid`) and these annotations.
    WithToken {
        account: ObjectKey,
        uid: String,
        annotations: BTreeMap<String, String>,
    },
}

/// What `provider` (with `attributes`) does for a pull as `service_account`; `tokens`: whether a
/// token can be requested (cluster mode).
pub fn plan(
    provider: &str,
    attributes: &TokenAttributes,
    service_account: &PodServiceAccount,
    tokens: bool,
) -> Plan {
    let require = attributes.require_service_account;
    let found = match service_account {
        PodServiceAccount::None if require => {
            return Plan::NotInvoked(format!(
                "credential provider {provider} not invoked: it requires a ServiceAccount (tokenAttributes.requireServiceAccount: true) and this pull has none"
            ));
        }
        PodServiceAccount::None => return Plan::WithoutToken { note: None },
        PodServiceAccount::Found(sa) => Some(sa),
        PodServiceAccount::Unavailable { .. } => None,
    };
    if let Some(sa) = found
        && let Some(missing) = attributes
            .required_annotation_keys
            .iter()
            .find(|k| !sa.annotations.contains_key(*k))
    {
        return Plan::NotInvoked(format!(
            "credential provider {provider} not invoked: ServiceAccount {} has no annotation `{missing}` (tokenAttributes.requiredServiceAccountAnnotationKeys)",
            sa.key
        ));
    }
    let key = match service_account {
        PodServiceAccount::Found(sa) => &sa.key,
        PodServiceAccount::Unavailable { key, .. } => key,
        PodServiceAccount::None => return Plan::WithoutToken { note: None },
    };
    if !tokens {
        return if require {
            Plan::NotInvoked(format!(
                "credential provider {provider} not invoked: it needs a token of ServiceAccount {key} (tokenAttributes.requireServiceAccount: true), which only cluster mode can request from the API server"
            ))
        } else {
            Plan::WithoutToken {
                note: Some(format!(
                    "credential provider {provider} invoked without a token: the kubelet would send one of ServiceAccount {key}, which only cluster mode can request from the API server"
                )),
            }
        };
    }
    match service_account {
        PodServiceAccount::Found(sa) => Plan::WithToken {
            account: sa.key.clone(),
            uid: sa.uid.clone(),
            annotations: passed_annotations(attributes, sa),
        },
        PodServiceAccount::Unavailable { key, why } => Plan::NotInvoked(format!(
            "credential provider {provider} not invoked: ServiceAccount {key} {why}"
        )),
        PodServiceAccount::None => Plan::WithoutToken { note: None },
    }
}

/// The annotations a provider is passed: every configured key (required or optional) present
/// on the ServiceAccount, with its value; nothing else.
pub fn passed_annotations(
    attributes: &TokenAttributes,
    sa: &ServiceAccountObject,
) -> BTreeMap<String, String> {
    attributes
        .required_annotation_keys
        .iter()
        .chain(&attributes.optional_annotation_keys)
        .filter_map(|k| sa.annotations.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

/// The ServiceAccount part of an answer's cache key, as the kubelet's
/// `generateServiceAccountCacheKey`: namespace, name, UID, the annotations passed (sorted by key),
/// and with [`TokenCacheType::Token`] the token. One HMAC under `key`, each field
/// length-prefixed, so it names nothing and cannot be reversed or brute-forced without the key.
pub fn account_cache_key(
    key: &FingerprintKey,
    cache_type: TokenCacheType,
    account: &ObjectKey,
    uid: &str,
    annotations: &BTreeMap<String, String>,
    token: &SecretString,
) -> String {
    let count = (annotations.len() as u64).to_be_bytes();
    let mut fields: Vec<&[u8]> = vec![
        account.namespace.as_bytes(),
        account.name.as_bytes(),
        uid.as_bytes(),
        count.as_slice(),
    ];
    for (k, v) in annotations {
        fields.push(k.as_bytes());
        fields.push(v.as_bytes());
    }
    if cache_type == TokenCacheType::Token {
        fields.push(b"token");
        fields.push(token.expose_secret().as_bytes());
    }
    format!("sa:{}", key.fingerprint(&fields))
}

/// The kubelet refuses an answer whose password is the token it sent unless `cacheType` is
/// `Token` (a pass-through token cached per ServiceAccount would outlive it).
pub fn echoes_token<'a>(
    cache_type: TokenCacheType,
    token: &SecretString,
    mut passwords: impl Iterator<Item = &'a SecretString>,
) -> bool {
    cache_type != TokenCacheType::Token
        && passwords.any(|p| p.expose_secret() == token.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(require: bool, required: &[&str], optional: &[&str]) -> TokenAttributes {
        TokenAttributes {
            audience: "registry.example".into(),
            cache_type: TokenCacheType::ServiceAccount,
            require_service_account: require,
            required_annotation_keys: required.iter().map(|s| s.to_string()).collect(),
            optional_annotation_keys: optional.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sa(annotations: &[(&str, &str)]) -> PodServiceAccount {
        PodServiceAccount::Found(ServiceAccountObject {
            key: ObjectKey::new("team", "builder"),
            uid: "uid-1".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    fn unavailable() -> PodServiceAccount {
        PodServiceAccount::Unavailable {
            key: ObjectKey::new("team", "ghost"),
            why: "does not exist".into(),
        }
    }

    /// What the plan is, in a word, and the words its note must hold.
    fn shape(p: &Plan) -> (&'static str, String) {
        match p {
            Plan::NotInvoked(note) => ("not invoked", note.clone()),
            Plan::WithoutToken { note } => ("without token", note.clone().unwrap_or_default()),
            Plan::WithToken { annotations, .. } => ("with token", format!("{annotations:?}")),
        }
    }

    #[test]
    fn plan_table() {
        let id = [("example.io/id", "123"), ("other/x", "y")];
        let cases: Vec<(TokenAttributes, PodServiceAccount, bool, &str, &str)> = vec![
            // No ServiceAccount: required → not invoked; allowed → no token.
            (
                attributes(true, &[], &[]),
                PodServiceAccount::None,
                true,
                "not invoked",
                "requireServiceAccount: true",
            ),
            (
                attributes(false, &[], &[]),
                PodServiceAccount::None,
                true,
                "without token",
                "",
            ),
            (
                attributes(false, &[], &[]),
                PodServiceAccount::None,
                false,
                "without token",
                "",
            ),
            // A required annotation missing: not invoked, naming the key (standalone too).
            (
                attributes(true, &["example.io/id", "example.io/type"], &[]),
                sa(&id),
                true,
                "not invoked",
                "has no annotation `example.io/type`",
            ),
            (
                attributes(true, &["example.io/type"], &[]),
                sa(&id),
                false,
                "not invoked",
                "`example.io/type`",
            ),
            // Exactly the configured keys present are passed.
            (
                attributes(true, &["example.io/id"], &["example.io/opt", "other/x"]),
                sa(&id),
                true,
                "with token",
                r#"{"example.io/id": "123", "other/x": "y"}"#,
            ),
            (
                attributes(false, &[], &[]),
                sa(&id),
                true,
                "with token",
                "{}",
            ),
            // No API server: required → needs cluster mode; allowed → invoked without a token.
            (
                attributes(true, &[], &[]),
                sa(&id),
                false,
                "not invoked",
                "only cluster mode",
            ),
            (
                attributes(false, &[], &[]),
                sa(&id),
                false,
                "without token",
                "only cluster mode",
            ),
            (
                attributes(false, &[], &[]),
                unavailable(),
                false,
                "without token",
                "team/ghost",
            ),
            // A ServiceAccount that cannot be read: not invoked.
            (
                attributes(false, &[], &[]),
                unavailable(),
                true,
                "not invoked",
                "ServiceAccount team/ghost does not exist",
            ),
            (
                attributes(true, &["example.io/id"], &[]),
                unavailable(),
                true,
                "not invoked",
                "team/ghost does not exist",
            ),
        ];
        for (attributes, account, tokens, expected, words) in cases {
            let plan = plan("acr", &attributes, &account, tokens);
            let (got, note) = shape(&plan);
            assert_eq!(
                got, expected,
                "{attributes:?} {account:?} tokens={tokens}: {plan:?}"
            );
            assert!(note.contains(words), "{note:?} lacks {words:?}");
            if got == "not invoked" {
                assert!(note.contains("credential provider acr"), "{note}");
            }
        }
        let Plan::WithToken { account, uid, .. } =
            plan("acr", &attributes(false, &[], &[]), &sa(&[]), true)
        else {
            panic!("a token expected");
        };
        assert_eq!(
            (account, uid.as_str()),
            (ObjectKey::new("team", "builder"), "uid-1")
        );
    }

    #[test]
    fn cache_keys_follow_the_cache_type_and_name_nothing() {
        let key = FingerprintKey::from_bytes([7; 32]);
        let account = ObjectKey::new("team", "builder");
        let token_a = SecretString::from("sa-Token-aaaa");
        let token_b = SecretString::from("sa-Token-bbbb");
        let none = BTreeMap::new();
        let one: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let k = |t: TokenCacheType, uid: &str, a: &BTreeMap<String, String>, tok: &SecretString| {
            account_cache_key(&key, t, &account, uid, a, tok)
        };
        use TokenCacheType::*;
        // ServiceAccount: the token plays no part; UID and annotations do.
        assert_eq!(
            k(ServiceAccount, "u1", &none, &token_a),
            k(ServiceAccount, "u1", &none, &token_b)
        );
        assert_ne!(
            k(ServiceAccount, "u1", &none, &token_a),
            k(ServiceAccount, "u2", &none, &token_a)
        );
        assert_ne!(
            k(ServiceAccount, "u1", &none, &token_a),
            k(ServiceAccount, "u1", &one, &token_a)
        );
        // Token: each token its own entry.
        assert_ne!(
            k(Token, "u1", &none, &token_a),
            k(Token, "u1", &none, &token_b)
        );
        assert_ne!(
            k(Token, "u1", &none, &token_a),
            k(ServiceAccount, "u1", &none, &token_a)
        );
        // Keyed: another process's key gives another key; nothing readable in it.
        let other = FingerprintKey::from_bytes([8; 32]);
        let text = k(Token, "u1", &one, &token_a);
        assert_ne!(
            text,
            account_cache_key(&other, Token, &account, "u1", &one, &token_a)
        );
        for word in ["sa-Token", "builder", "team", "u1"] {
            assert!(!text.contains(word), "{text}");
        }
    }

    #[test]
    fn an_echoed_token_is_refused_unless_cached_per_token() {
        let token = SecretString::from("sa-Token-aaaa");
        let same = [SecretString::from("sa-Token-aaaa")];
        let other = [SecretString::from("registry-password")];
        assert!(echoes_token(
            TokenCacheType::ServiceAccount,
            &token,
            same.iter()
        ));
        assert!(!echoes_token(TokenCacheType::Token, &token, same.iter()));
        assert!(!echoes_token(
            TokenCacheType::ServiceAccount,
            &token,
            other.iter()
        ));
    }
}
