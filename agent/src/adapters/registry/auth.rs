//! The registry's authentication, as a clean-cache pull does it (the distribution token flow):
//! `GET /v2/`; when the registry answers with a `Bearer` challenge, `GET` its token realm (with
//! the credential as Basic auth, or anonymously) for a pull token; otherwise the credential goes
//! as Basic auth on every request.
//!
//! Done here, not by a library, because the realm is whatever URL the registry names: every
//! answer is read within a bound (1 MiB for a token, 64 KiB of an error), an error is reduced to
//! its distribution code and a short message, a plain-HTTP realm is refused for a registry reached
//! over HTTPS (before any request), and the token is kept in a [`SecretString`].

use super::RegistryError;
use super::body::{
    ERROR_BODY_LIMIT, clean_message, distribution_error, read_limited, read_prefix, reason,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

/// The largest token answer read.
pub const TOKEN_LIMIT: usize = 1 << 20;
/// The longest challenge parameter accepted (a realm is a URL).
const PARAM_LIMIT: usize = 2048;

/// One `WWW-Authenticate` challenge: its scheme (lowercase) and parameters (names lowercase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 §11.6.1: `scheme k=v, k="v", scheme2
/// …`). Lenient: what it cannot read ends the list, and never panics. By hand, not `http-auth`
/// (checked): that crate refuses a whole header over one value outside RFC `tchar`s (an unquoted
/// `scope=repository:a/b:pull`), which would turn a registry's Bearer challenge into a Basic
/// attempt and a false alarm; partial reading keeps what the registry did say, as docker's own
/// client does.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let Some((word, after)) = token(rest) else {
            return out;
        };
        let after_ws = after.trim_start_matches([' ', '\t']);
        if let Some(value_part) = after_ws.strip_prefix('=')
            && let Some(current) = out.last_mut()
        {
            // A parameter of the current challenge.
            let value_part = value_part.trim_start_matches([' ', '\t']);
            let (value, tail) = if let Some(quoted) = value_part.strip_prefix('"') {
                match quoted_string(quoted) {
                    Some(parsed) => parsed,
                    None => return out,
                }
            } else {
                match token(value_part) {
                    Some((v, tail)) => (v.to_string(), tail),
                    None => (String::new(), value_part),
                }
            };
            if value.len() <= PARAM_LIMIT {
                current.params.push((word.to_ascii_lowercase(), value));
            }
            rest = tail;
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: Vec::new(),
            });
            rest = after;
        }
    }
}

/// A token (`tchar`s) at the start of `s`, and what follows it.
fn token(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/:".contains(c)))
        .unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// A quoted string's value (after its opening quote), and what follows the closing quote.
fn quoted_string(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// How requests to the registry are authorised.
pub enum Scheme {
    /// The registry asked for nothing (or Basic): the credential, if any, as Basic auth.
    Basic,
    /// A token service: get a token at `realm` for `service`.
    Bearer {
        realm: reqwest::Url,
        service: Option<String>,
    },
}

/// What the `/v2/` answer's challenges ask for. A realm that is not an `http(s)` URL, or a
/// plain-HTTP realm for a registry reached over HTTPS, is refused here: no request is sent to it.
pub fn scheme_for(
    registry: &str,
    registry_plain_http: bool,
    challenges: &[Challenge],
) -> Result<Scheme, RegistryError> {
    let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") else {
        return Ok(Scheme::Basic);
    };
    let Some(realm) = bearer.param("realm") else {
        return Err(RegistryError::Auth(format!(
            "registry {registry}: its Bearer challenge names no token realm"
        )));
    };
    let shown = clean_message(realm);
    let url = reqwest::Url::parse(realm).map_err(|_| {
        RegistryError::Auth(format!(
            "registry {registry}: its token realm `{shown}` is not a URL"
        ))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if registry_plain_http => {}
        "http" => {
            return Err(RegistryError::InsecureRealm {
                registry: registry.to_string(),
                realm: realm_name(&url),
            });
        }
        other => {
            return Err(RegistryError::Auth(format!(
                "registry {registry}: its token realm `{}` is not http(s) ({})",
                realm_name(&url),
                clean_message(other)
            )));
        }
    }
    Ok(Scheme::Bearer {
        realm: url,
        service: bearer.param("service").map(str::to_string),
    })
}

/// A realm as messages name it: scheme, host, port and path (no query, no user info), cut.
pub fn realm_name(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    clean_message(&format!("{}://{host}{port}{}", url.scheme(), url.path()))
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default)]
    access_token: Option<SecretString>,
}

/// A pull token from the realm: `GET realm?scope=repository:REPO:pull&service=S`, with `basic`
/// (an `Authorization: Basic …` value) when there is a credential. The answer is read within
/// [`TOKEN_LIMIT`]; a refusal is its status with the distribution code and a short message.
pub async fn fetch_token(
    http: &reqwest::Client,
    realm: &reqwest::Url,
    service: Option<&str>,
    repository: &str,
    basic: Option<&reqwest::header::HeaderValue>,
    redirects: usize,
) -> Result<SecretString, RegistryError> {
    let what = format!("token service {}", realm_name(realm));
    let mut url = realm.clone();
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("scope", &format!("repository:{repository}:pull"));
        if let Some(service) = service {
            query.append_pair("service", service);
        }
    }
    let mut request = http.get(url);
    if let Some(basic) = basic {
        request = request.header(reqwest::header::AUTHORIZATION, basic.clone());
    }
    let response = request
        .send()
        .await
        .map_err(|e| super::body::transport(&what, &e, redirects))?;
    let status = response.status();
    if !status.is_success() {
        let body = read_prefix(response, ERROR_BODY_LIMIT).await;
        let (code, message) = distribution_error(&body);
        return Err(RegistryError::Status {
            what,
            status: status.as_u16(),
            code,
            message: message.unwrap_or_else(|| reason(status.as_u16())),
        });
    }
    if response
        .content_length()
        .is_some_and(|len| len > TOKEN_LIMIT as u64)
    {
        return Err(RegistryError::TooLarge {
            what,
            limit: TOKEN_LIMIT,
        });
    }
    let body = read_limited(&what, response, TOKEN_LIMIT, redirects).await?;
    // The parse error would quote the body: only its category is kept.
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
        RegistryError::Auth(format!(
            "{what}: the answer is not a token (JSON with `token` or `access_token`)"
        ))
    })?;
    answer
        .token
        .filter(|t| !t.expose_secret().is_empty())
        .or(answer.access_token)
        .filter(|t| !t.expose_secret().is_empty())
        .ok_or_else(|| RegistryError::Auth(format!("{what}: the answer holds no token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn challenge_table() {
        for (header, expected) in [
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                vec![challenge(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                    ],
                )],
            ),
            (
                r#"Basic realm="pullgate-test""#,
                vec![challenge("basic", &[("realm", "pullgate-test")])],
            ),
            (
                r#"bearer Realm = "http://127.0.0.1:5/t?x=1" , scope=repository:a/b:pull"#,
                vec![challenge(
                    "bearer",
                    &[
                        ("realm", "http://127.0.0.1:5/t?x=1"),
                        ("scope", "repository:a/b:pull"),
                    ],
                )],
            ),
            (
                r#"Basic realm="a\"b", Bearer realm="https://t/""#,
                vec![
                    challenge("basic", &[("realm", "a\"b")]),
                    challenge("bearer", &[("realm", "https://t/")]),
                ],
            ),
            ("Negotiate", vec![challenge("negotiate", &[])]),
            // Cut short or garbage: what could be read, never a panic.
            (
                r#"Bearer realm="https://unterminated"#,
                vec![challenge("bearer", &[])],
            ),
            ("", vec![]),
            ("=,=,\"", vec![]),
            ("Bearer ===", vec![challenge("bearer", &[])]),
            ("Bearer realm=\"\\", vec![challenge("bearer", &[])]),
        ] {
            assert_eq!(parse_challenges(header), expected, "{header}");
        }
        let huge = format!(
            r#"Bearer realm="https://{}/", service="s""#,
            "a".repeat(10_000)
        );
        assert_eq!(
            parse_challenges(&huge),
            vec![challenge("bearer", &[("service", "s")])]
        );
    }

    #[test]
    fn realm_policy_table() {
        let bearer = |realm: &str| vec![challenge("bearer", &[("realm", realm), ("service", "s")])];
        // (registry over plain HTTP, challenges, expected: Ok(realm) or the error's text)
        let cases: Vec<(bool, Vec<Challenge>, Result<Option<&str>, &str>)> = vec![
            (false, vec![], Ok(None)),
            (false, vec![challenge("basic", &[("realm", "x")])], Ok(None)),
            (
                false,
                bearer("https://auth.example/token"),
                Ok(Some("https://auth.example/token")),
            ),
            (
                true,
                bearer("https://auth.example/token"),
                Ok(Some("https://auth.example/token")),
            ),
            (
                true,
                bearer("http://127.0.0.1:9/token"),
                Ok(Some("http://127.0.0.1:9/token")),
            ),
            (
                false,
                bearer("http://169.254.169.254/latest/meta-data?x=y"),
                Err(
                    "registry r.io is reached over HTTPS but names a plain-HTTP token realm (http://169.254.169.254/latest/meta-data): refused, no request sent to it",
                ),
            ),
            (
                false,
                bearer("file:///etc/passwd"),
                Err(
                    "authentication failed: registry r.io: its token realm `file:///etc/passwd` is not http(s) (file)",
                ),
            ),
            (
                false,
                bearer("not a url"),
                Err(
                    "authentication failed: registry r.io: its token realm `not a url` is not a URL",
                ),
            ),
            (
                false,
                vec![challenge("bearer", &[("service", "s")])],
                Err(
                    "authentication failed: registry r.io: its Bearer challenge names no token realm",
                ),
            ),
        ];
        for (plain, challenges, expected) in cases {
            let got = scheme_for("r.io", plain, &challenges);
            match (got, expected) {
                (Ok(Scheme::Basic), Ok(None)) => {}
                (Ok(Scheme::Bearer { realm, service }), Ok(Some(want))) => {
                    assert_eq!(realm.as_str(), want);
                    assert_eq!(service.as_deref(), Some("s"));
                }
                (Err(e), Err(want)) => assert_eq!(e.to_string(), want),
                (got, want) => panic!(
                    "{challenges:?}: got {:?}, want {want:?}",
                    got.map(|s| matches!(s, Scheme::Basic))
                ),
            }
        }
    }
}
