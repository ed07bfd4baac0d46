//! A registry token server on 127.0.0.1, the flow of Docker Hub, GHCR, Harbor and Quay: the
//! distribution registry (`auth: token`) answers `401` with a `Bearer realm=…,service=…` challenge,
//! the client sends its credential as Basic auth to `GET /token?service=S&scope=repository:R:pull`,
//! and gets a JWT the registry verifies.
//!
//! What distribution 2.8 verifies (`registry/auth/token/token.go` `Verify`, and
//! `accesscontroller.go` `Authorized`), and what this server therefore signs:
//! - `iss` is the configured `issuer`, `aud` the configured `service`;
//! - `exp` and `nbf` (checked with a leeway of 60 s), so `expires_in` is a real lifetime;
//! - the signing key: an `x5c` header whose leaf chains to the `rootcertbundle` (here a
//!   self-signed certificate of the signing key, the bundle being that certificate);
//! - the ES256 signature (JWS: `r || s`, 64 bytes) over `base64url(header).base64url(claims)`;
//! - `access`: each action the request needs must be in a `{type, name, actions}` entry, else
//!   `401 insufficient_scope`.
//!
//! Grants: only what a requested scope asks *and* the user may have (`repository` scopes only); a
//! wrong password is `401 UNAUTHORIZED`; no credential gets a token without any access (Docker
//! Hub's answer for a private repository). The user table is mutable ([`TokenServer::set_password`],
//! [`TokenServer::set_grants`]): a rotation takes effect at the next token request, with no restart
//! of the registry. Its log ([`TokenServer::log`]) names the user, the scopes asked and granted,
//! never a password or a token; [`TokenServer::issued`] lists the tokens it issued so a test can
//! grep every output for them.

use crate::server_thread::ServerThread;
use anyhow::{Context as _, Result};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `issuer` the registry is configured to trust.
pub const ISSUER: &str = "pullgate-test-token-server";
/// The `service` (the token's `aud`) the registry is configured with.
pub const SERVICE: &str = "pullgate-test-registry";

/// What a user may do: `(repository pattern, actions)`; a pattern ending in `*` is a prefix.
#[derive(Clone, Debug)]
pub struct Grant {
    pub repository: String,
    pub actions: Vec<String>,
}

impl Grant {
    /// `repository` (or `prefix*`) with `actions` (`pull`, `push`).
    pub fn new(repository: &str, actions: &[&str]) -> Self {
        Self {
            repository: repository.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn covers(&self, repository: &str) -> bool {
        match self.repository.strip_suffix('*') {
            Some(prefix) => repository.starts_with(prefix),
            None => self.repository == repository,
        }
    }
}

struct User {
    password: String,
    grants: Vec<Grant>,
}

struct Inner {
    users: BTreeMap<String, User>,
    expires_in: Duration,
    /// Tokens are issued as if this long ago (`iat`, `nbf`, `exp` shifted back).
    issued_ago: Duration,
    log: Vec<String>,
    issued: Vec<String>,
}

struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The self-signed certificate of `key`, DER (the `x5c` header).
    cert_der: Vec<u8>,
}

/// A running token server. Stopped on drop.
pub struct TokenServer {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    cert_pem: String,
    _server: ServerThread,
}

#[derive(Clone)]
struct AppState {
    inner: Arc<Mutex<Inner>>,
    signer: Arc<Signer>,
}

impl TokenServer {
    /// Starts a token server for `users` (`(user, password, grants)`), tokens valid 5 minutes.
    pub fn start(users: &[(&str, &str, Vec<Grant>)]) -> Result<Self> {
        let key_pair = rcgen::KeyPair::generate().context("token signing key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pullgate test token signer");
        let cert = params
            .self_signed(&key_pair)
            .context("token signing certificate")?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("token signing key for ring: {e}"))?;
        let signer = Arc::new(Signer {
            key,
            rng,
            cert_der: cert.der().to_vec(),
        });
        let inner = Arc::new(Mutex::new(Inner {
            users: users
                .iter()
                .map(|(user, password, grants)| {
                    (
                        user.to_string(),
                        User {
                            password: password.to_string(),
                            grants: grants.clone(),
                        },
                    )
                })
                .collect(),
            expires_in: Duration::from_secs(300),
            issued_ago: Duration::ZERO,
            log: Vec::new(),
            issued: Vec::new(),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = AppState {
            inner: inner.clone(),
            signer,
        };
        let server = ServerThread::spawn(move |stop| async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let app = axum::Router::new()
                .route("/token", axum::routing::get(token))
                .with_state(state);
            tokio::select! {
                _ = axum::serve(listener, app) => {}
                _ = stop => {}
            }
        });
        Ok(Self {
            addr,
            inner,
            cert_pem: cert.pem(),
            _server: server,
        })
    }

    /// The realm: `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate of the signing key, PEM: the registry's `rootcertbundle`.
    pub fn root_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Rotation: `user`'s password changes; the next token request with the old one is refused.
    pub fn set_password(&self, user: &str, password: &str) {
        if let Some(u) = self.lock().users.get_mut(user) {
            u.password = password.to_string();
        }
    }

    /// What `user` may have from now on.
    pub fn set_grants(&self, user: &str, grants: Vec<Grant>) {
        if let Some(u) = self.lock().users.get_mut(user) {
            u.grants = grants;
        }
    }

    /// The lifetime of tokens issued from now on (`expires_in`, and `exp` = now + it).
    pub fn set_expires_in(&self, expires_in: Duration) {
        self.lock().expires_in = expires_in;
    }

    /// Tokens from now on are issued as if `ago` in the past: with `ago` beyond `expires_in` plus
    /// the registry's 60 s leeway, each is expired when handed out.
    pub fn set_issued_ago(&self, ago: Duration) {
        self.lock().issued_ago = ago;
    }

    /// One line per token request: user, scopes asked, status, scopes granted. No secret.
    pub fn log(&self) -> String {
        self.lock().log.join("\n")
    }

    /// Every token issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    /// The signature part of every token issued so far: what identifies each in a leak grep (the
    /// header is the same for all, and a token cut in a log keeps its signature whole or not at
    /// all). Fails when none was issued, so that a grep for them cannot pass vacuously.
    pub fn issued_signatures(&self) -> Result<Vec<String>> {
        let issued = self.issued();
        anyhow::ensure!(!issued.is_empty(), "the token server issued no token");
        Ok(issued
            .iter()
            .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
            .collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One requested resource scope: `repository:team/app:pull,push`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope {
    kind: String,
    name: String,
    actions: Vec<String>,
}

/// The scopes of a token request: every `scope` parameter, each possibly space-separated
/// (distribution's `docs/spec/auth/scope.md`). A name may hold a port-less `host/path`; the
/// actions are after the last colon.
fn scopes(query: &str) -> (Vec<Scope>, Option<String>) {
    let mut out = Vec::new();
    let mut service = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "scope" => {
                for one in value.split(' ').filter(|s| !s.is_empty()) {
                    let Some((kind, rest)) = one.split_once(':') else {
                        continue;
                    };
                    let Some((name, actions)) = rest.rsplit_once(':') else {
                        continue;
                    };
                    out.push(Scope {
                        kind: kind.to_string(),
                        name: name.to_string(),
                        actions: actions
                            .split(',')
                            .filter(|a| !a.is_empty())
                            .map(str::to_string)
                            .collect(),
                    });
                }
            }
            "service" => service = Some(value),
            _ => {}
        }
    }
    (out, service)
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a byte).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(user, password)` of an `Authorization: Basic …` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// What `grants` allow of `asked`: the asked actions a grant covering the repository lists.
fn granted(grants: &[Grant], asked: &[Scope]) -> Vec<Scope> {
    asked
        .iter()
        .filter(|s| s.kind == "repository")
        .filter_map(|s| {
            let actions: Vec<String> = s
                .actions
                .iter()
                .filter(|a| {
                    grants
                        .iter()
                        .any(|g| g.covers(&s.name) && g.actions.contains(a))
                })
                .cloned()
                .collect();
            (!actions.is_empty()).then(|| Scope {
                kind: s.kind.clone(),
                name: s.name.clone(),
                actions,
            })
        })
        .collect()
}

fn shown(scopes: &[Scope]) -> String {
    let list: Vec<String> = scopes
        .iter()
        .map(|s| format!("{}:{}:{}", s.kind, s.name, s.actions.join(",")))
        .collect();
    format!("[{}]", list.join(" "))
}

async fn token(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (asked, service) = scopes(query.as_deref().unwrap_or(""));
    let credentials = basic_credentials(&headers);
    let mut inner = state
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (subject, grants) = match &credentials {
        None => (String::new(), Vec::new()),
        Some((user, password)) => match inner.users.get(user) {
            Some(u) if &u.password == password => (user.clone(), u.grants.clone()),
            _ => {
                let line = format!(
                    "user={user} service={} asked={} -> 401 (wrong user or password)",
                    service.as_deref().unwrap_or(""),
                    shown(&asked)
                );
                inner.log.push(line);
                let body = serde_json::json!({"errors": [{
                    "code": "UNAUTHORIZED",
                    "message": "authentication required",
                    "detail": null,
                }]});
                return (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"pullgate-test-token-server\"",
                    )],
                    axum::Json(body),
                )
                    .into_response();
            }
        },
    };
    let access = granted(&grants, &asked);
    let expires_in = inner.expires_in;
    let issued_ago = inner.issued_ago;
    let jwt = match sign(&state.signer, &subject, &access, expires_in, issued_ago) {
        Ok(jwt) => jwt,
        Err(e) => {
            inner.log.push(format!("user={subject} -> 500 ({e})"));
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    inner.log.push(format!(
        "user={} service={} asked={} -> 200 granted={} expires_in={}s issued_ago={}s",
        if subject.is_empty() {
            "(anonymous)"
        } else {
            &subject
        },
        service.as_deref().unwrap_or(""),
        shown(&asked),
        shown(&access),
        expires_in.as_secs(),
        issued_ago.as_secs()
    ));
    inner.issued.push(jwt.clone());
    let issued_at = (chrono::Utc::now()
        - chrono::Duration::from_std(issued_ago).unwrap_or_default())
    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    axum::Json(serde_json::json!({
        "token": jwt,
        "access_token": jwt,
        "expires_in": expires_in.as_secs(),
        "issued_at": issued_at,
    }))
    .into_response()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT as distribution's `token.go` reads it: header `{typ, alg: ES256, x5c}`, claims `{iss,
/// sub, aud, exp, nbf, iat, jti, access}`.
fn sign(
    signer: &Signer,
    subject: &str,
    access: &[Scope],
    expires_in: Duration,
    issued_ago: Duration,
) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs()
        .saturating_sub(issued_ago.as_secs());
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)],
    });
    let mut jti = [0u8; 16];
    ring::rand::SecureRandom::fill(&signer.rng, &mut jti)
        .map_err(|_| anyhow::anyhow!("random jti"))?;
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": subject,
        "aud": SERVICE,
        "exp": now + expires_in.as_secs(),
        "nbf": now.saturating_sub(1),
        "iat": now,
        "jti": hex::encode(jti),
        "access": access.iter().map(|s| serde_json::json!({
            "type": s.kind,
            "name": s.name,
            "actions": s.actions,
        })).collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        b64url(&serde_json::to_vec(&header)?),
        b64url(&serde_json::to_vec(&claims)?)
    );
    let signature = signer
        .key
        .sign(&signer.rng, signing_input.as_bytes())
        .map_err(|_| anyhow::anyhow!("ES256 signature"))?;
    Ok(format!("{signing_input}.{}", b64url(signature.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_read_as_distribution_writes_them() {
        let (s, service) = scopes(
            "account=u&scope=repository%3Ateam%2Fapp%3Apull%2Cpush&service=reg&scope=repository:a/b:pull+registry:catalog:*",
        );
        assert_eq!(service.as_deref(), Some("reg"));
        let shown = shown(&s);
        assert_eq!(
            shown,
            "[repository:team/app:pull,push repository:a/b:pull registry:catalog:*]"
        );
    }

    #[test]
    fn only_what_is_asked_and_allowed_is_granted() {
        let grants = [
            Grant::new("team/*", &["pull"]),
            Grant::new("own", &["pull", "push"]),
        ];
        let asked = scopes("scope=repository:team/app:pull,push&scope=repository:other/x:pull&scope=repository:own:push&scope=registry:catalog:*").0;
        assert_eq!(
            shown(&granted(&grants, &asked)),
            "[repository:team/app:pull repository:own:push]"
        );
        assert_eq!(shown(&granted(&[], &asked)), "[]");
    }

    /// The token's parts as distribution's `token.go` reads them; the signature verifies with the
    /// certificate's key (ring's ES256 verifier, the JWS `r || s` form libtrust expects).
    #[test]
    fn tokens_carry_what_distribution_verifies() {
        let rng = SystemRandom::new();
        let key_pair = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let params =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
        let cert = params
            .self_signed(&key_pair)
            .unwrap_or_else(|e| panic!("{e}"));
        let signer = Signer {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &key_pair.serialize_der(),
                &rng,
            )
            .unwrap_or_else(|e| panic!("{e}")),
            rng,
            cert_der: cert.der().to_vec(),
        };
        let access = scopes("scope=repository:team/app:pull").0;
        for (ago, expires_in) in [(0, 300), (600, 300), (0, 1)] {
            let jwt = sign(
                &signer,
                "u",
                &access,
                Duration::from_secs(expires_in),
                Duration::from_secs(ago),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3, "{jwt}");
            let decode = |p: &str| {
                serde_json::from_slice::<serde_json::Value>(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(p)
                        .unwrap_or_else(|e| panic!("{e}")),
                )
                .unwrap_or_else(|e| panic!("{e}"))
            };
            let (header, claims) = (decode(parts[0]), decode(parts[1]));
            assert_eq!(header["alg"], "ES256");
            let x5c = base64::engine::general_purpose::STANDARD
                .decode(header["x5c"][0].as_str().unwrap_or(""))
                .unwrap_or_default();
            assert_eq!(x5c, signer.cert_der);
            assert_eq!(claims["iss"], ISSUER);
            assert_eq!(claims["aud"], SERVICE);
            let iat = claims["iat"].as_u64().unwrap_or(0);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            assert!(now - iat >= ago && now - iat <= ago + 5, "{claims}");
            assert_eq!(claims["exp"].as_u64(), Some(iat + expires_in), "{claims}");
            assert!(
                claims["nbf"].as_u64().unwrap_or(u64::MAX) <= iat,
                "{claims}"
            );
            assert_eq!(
                claims["access"],
                serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
            );
            let public = ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                ring::signature::KeyPair::public_key(&signer.key).as_ref(),
            );
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[2])
                .unwrap_or_default();
            assert_eq!(signature.len(), 64);
            public
                .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
                .unwrap_or_else(|_| panic!("the signature does not verify"));
        }
    }

    #[test]
    fn percent_decoding_keeps_what_it_cannot_read() {
        for (input, want) in [
            ("a%2Fb", "a/b"),
            ("a+b", "a b"),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("%4", "%4"),
        ] {
            assert_eq!(percent_decode(input), want, "{input}");
        }
    }
}
