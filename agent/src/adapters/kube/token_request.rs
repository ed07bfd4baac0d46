//! ServiceAccount tokens from the TokenRequest API (`POST
//! /api/v1/namespaces/NS/serviceaccounts/NAME/token`, authentication.k8s.io/v1), for the
//! credential providers in service-account token mode (KEP-4412): [`TokenRequests`] implements
//! the resolver's [`ServiceAccountTokens`].
//!
//! - The request: `spec.audiences: [audience]`, `spec.expirationSeconds`
//!   [`EXPIRATION_SECONDS`] (600, the shortest the API server accepts; the kubelet leaves it to
//!   the server's default of an hour, and binds the token to the pod, which pullgate does not
//!   have), `metadata.uid` the ServiceAccount's UID when known (as the kubelet sends it: the
//!   server refuses a token for a ServiceAccount recreated under the same name), under one
//!   deadline ([`REQUEST_TIMEOUT`]).
//! - A token is reused until 80% of its lifetime has passed (the kubelet's token manager
//!   refreshes at the same point), keyed by ServiceAccount, UID and audience; at most
//!   [`MAX_TOKENS`] are held (expired ones dropped first, then all).
//! - A failure is not asked again before its backoff elapses (`decide::retry::Retry`: 10 s
//!   doubling to 5 min; a 403 or 404 straight to the cap), and is the answer meanwhile.
//! - The token lives in a `SecretString` from the moment it is decoded (the answer is decoded
//!   into a type of this module, never into `k8s_openapi`'s `TokenRequest` with its plain
//!   `String`); errors carry the ServiceAccount, the API error's kind and the server's message
//!   (a `Status`, which holds no token), never the body.
//!
//! RBAC: `create` on `serviceaccounts/token` with `resourceNames` naming the ServiceAccounts,
//! beside the namespace's Secrets (`manifests/namespace-access/role.yaml`).

use crate::decide::credentials::ServiceAccountTokens;
use crate::decide::retry::{ApiErrorKind, Retry};
use crate::model::inventory::ObjectKey;
use futures::future::BoxFuture;
use kube::api::{Api, PostParams};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The lifetime asked for: the API server's minimum (`expirationSeconds` below 600 is refused).
pub const EXPIRATION_SECONDS: i64 = 600;
/// The deadline of one TokenRequest.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens held at most.
pub const MAX_TOKENS: usize = 1024;
/// The first backoff step after a failure, and its cap.
pub const FAILURE_BACKOFF_MIN: Duration = Duration::from_secs(10);
pub const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    #[error("the API server refused a token of ServiceAccount {account} ({}): {message}", kind.label())]
    Refused {
        account: ObjectKey,
        kind: ApiErrorKind,
        message: String,
    },
    #[error("the TokenRequest for ServiceAccount {account} failed ({}); the request is not shown", kind.label())]
    Failed {
        account: ObjectKey,
        kind: ApiErrorKind,
    },
    #[error("the TokenRequest for ServiceAccount {account} got no answer within {}s", after.as_secs())]
    Timeout { account: ObjectKey, after: Duration },
    #[error(
        "the API server's answer to the TokenRequest for ServiceAccount {account} holds no token"
    )]
    Empty { account: ObjectKey },
    #[error("not asked again for {}s after a failure: {last}", retry_in.as_secs().max(1))]
    Backoff { last: String, retry_in: Duration },
}

impl TokenRequestError {
    fn kind(&self) -> ApiErrorKind {
        match self {
            Self::Refused { kind, .. } | Self::Failed { kind, .. } => *kind,
            Self::Timeout { .. } | Self::Empty { .. } | Self::Backoff { .. } => {
                ApiErrorKind::Transport
            }
        }
    }
}

/// The part of a TokenRequest's answer pullgate reads: the token, wrapped at once.
#[derive(Deserialize)]
struct Answer {
    status: Option<AnswerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerStatus {
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default)]
    expiration_timestamp: Option<String>,
}

/// ServiceAccount, UID, audience.
type Key = (ObjectKey, String, String);

struct Held {
    token: SecretString,
    /// When a fresh one is asked for instead (80% of its lifetime).
    refresh_at: Instant,
}

struct Failing {
    retry: Retry,
    last: String,
}

#[derive(Default)]
struct State {
    tokens: HashMap<Key, Held>,
    failures: HashMap<Key, Failing>,
}

/// TokenRequests through one client, with the tokens they gave.
pub struct TokenRequests {
    client: kube::Client,
    state: Mutex<State>,
}

impl TokenRequests {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            state: Mutex::default(),
        }
    }

    /// The service the resolver takes.
    pub fn shared(client: kube::Client) -> Arc<dyn ServiceAccountTokens> {
        Arc::new(Self::new(client))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A held token still fresh, or the failure still backing off.
    fn held(&self, key: &Key, now: Instant) -> Option<Result<SecretString, TokenRequestError>> {
        let state = self.state();
        if let Some(held) = state.tokens.get(key).filter(|h| now < h.refresh_at) {
            return Some(Ok(held.token.clone()));
        }
        let failing = state.failures.get(key)?;
        let until = failing.retry.not_before().filter(|t| now < *t)?;
        Some(Err(TokenRequestError::Backoff {
            last: failing.last.clone(),
            retry_in: until.saturating_duration_since(now),
        }))
    }

    /// A token of `account` for `audience`: held, or asked for.
    pub async fn token(
        &self,
        account: &ObjectKey,
        uid: &str,
        audience: &str,
    ) -> Result<SecretString, TokenRequestError> {
        let key = (account.clone(), uid.to_string(), audience.to_string());
        if let Some(done) = self.held(&key, Instant::now()) {
            return done;
        }
        let asked = Instant::now();
        let answer =
            match tokio::time::timeout(REQUEST_TIMEOUT, self.request(account, uid, audience)).await
            {
                Ok(answer) => answer,
                Err(_) => Err(TokenRequestError::Timeout {
                    account: account.clone(),
                    after: REQUEST_TIMEOUT,
                }),
            };
        let mut state = self.state();
        let now = Instant::now();
        match answer {
            Ok((token, lifetime)) => {
                state.failures.remove(&key);
                if state.tokens.len() >= MAX_TOKENS {
                    state.tokens.retain(|_, h| now < h.refresh_at);
                    if state.tokens.len() >= MAX_TOKENS {
                        state.tokens.clear();
                    }
                }
                state.tokens.insert(
                    key,
                    Held {
                        token: token.clone(),
                        refresh_at: asked + refresh_after(lifetime),
                    },
                );
                Ok(token)
            }
            Err(e) => {
                if state.failures.len() >= MAX_TOKENS {
                    state.failures.retain(|_, f| !f.retry.due(now));
                }
                let failing = state.failures.entry(key).or_insert_with(|| Failing {
                    retry: Retry::new(FAILURE_BACKOFF_MIN, FAILURE_BACKOFF_MAX),
                    last: String::new(),
                });
                failing.last = e.to_string();
                let retry_in = failing.retry.failed_with(e.kind(), now);
                tracing::debug!(%account, error = %e, ?retry_in, "TokenRequest failed");
                Err(e)
            }
        }
    }

    /// One TokenRequest: the token and how long it lives.
    async fn request(
        &self,
        account: &ObjectKey,
        uid: &str,
        audience: &str,
    ) -> Result<(SecretString, Duration), TokenRequestError> {
        let mut metadata = serde_json::json!({});
        if !uid.is_empty() {
            metadata["uid"] = serde_json::Value::from(uid);
        }
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": metadata,
            "spec": {"audiences": [audience], "expirationSeconds": EXPIRATION_SECONDS},
        });
        let params = PostParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), &account.namespace);
        let answer: Answer = api
            .create_subresource("token", &account.name, &params, &body)
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => TokenRequestError::Refused {
                    account: account.clone(),
                    kind: ApiErrorKind::from_status(status.code),
                    message: crate::model::printable::printable_line(&status.message),
                },
                other => TokenRequestError::Failed {
                    account: account.clone(),
                    kind: super::api_errors::kind(&other),
                },
            })?;
        let status = answer.status.ok_or_else(|| TokenRequestError::Empty {
            account: account.clone(),
        })?;
        let token = status
            .token
            .filter(|t| !secrecy::ExposeSecret::expose_secret(t).is_empty())
            .ok_or_else(|| TokenRequestError::Empty {
                account: account.clone(),
            })?;
        let requested = Duration::from_secs(EXPIRATION_SECONDS.unsigned_abs());
        let lifetime = status
            .expiration_timestamp
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| {
                let at = SystemTime::from(t.with_timezone(&chrono::Utc));
                at.duration_since(SystemTime::now()).ok()
            })
            .map_or(requested, |left| left.min(requested.saturating_mul(144)));
        Ok((token, lifetime))
    }
}

/// When a token is asked for again: at 80% of its lifetime, as the kubelet's token manager.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.saturating_mul(4) / 5
}

impl ServiceAccountTokens for TokenRequests {
    fn token<'a>(
        &'a self,
        account: &'a ObjectKey,
        uid: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<SecretString, String>> {
        Box::pin(async move {
            TokenRequests::token(self, account, uid, audience)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::client::Body;
    use secrecy::ExposeSecret as _;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A client whose server answers TokenRequests as told: `code` 201 with a numbered token
    /// (`tok-N`, expiring 600 s from now), another code as a `Status`; every request recorded.
    fn client(code: Arc<AtomicU32>, seen: Arc<Mutex<Vec<(String, String)>>>) -> kube::Client {
        let count = Arc::new(AtomicU32::new(0));
        let service = tower::service_fn(move |request: http::Request<Body>| {
            let (code, seen, count) = (code.clone(), seen.clone(), count.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                seen.lock().unwrap().push((
                    format!("{} {}", parts.method, parts.uri.path()),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                let status = code.load(Ordering::SeqCst) as u16;
                let text = if status == 201 {
                    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                    let expires = chrono::Utc::now() + chrono::Duration::seconds(600);
                    format!(
                        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{{"audiences":["a"]}},"status":{{"token":"tok-{n}","expirationTimestamp":"{}"}}}}"#,
                        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )
                } else {
                    format!(
                        r#"{{"apiVersion":"v1","kind":"Status","status":"Failure","message":"serviceaccounts \"builder\" is forbidden","reason":"Forbidden","code":{status}}}"#
                    )
                };
                let mut response = http::Response::new(Body::from(text.into_bytes()));
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }

    /// The request as the API server expects it; a token is reused until 80% of its lifetime,
    /// then asked for again; another audience or UID is another token.
    #[tokio::test(start_paused = true)]
    async fn tokens_are_requested_as_the_api_expects_and_reused_until_80_percent() {
        let code = Arc::new(AtomicU32::new(201));
        let seen = Arc::default();
        let tokens = TokenRequests::new(client(code, Arc::clone(&seen)));
        let sa = ObjectKey::new("team", "builder");
        let first = tokens
            .token(&sa, "uid-1", "registry.example")
            .await
            .unwrap();
        assert_eq!(first.expose_secret(), "tok-1");
        {
            let seen = seen.lock().unwrap();
            assert_eq!(
                seen[0].0,
                "POST /api/v1/namespaces/team/serviceaccounts/builder/token"
            );
            let body: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
            assert_eq!(body["kind"], "TokenRequest");
            assert_eq!(body["metadata"]["uid"], "uid-1");
            assert_eq!(
                body["spec"]["audiences"],
                serde_json::json!(["registry.example"])
            );
            assert_eq!(body["spec"]["expirationSeconds"], 600);
        }
        tokio::time::advance(Duration::from_secs(470)).await;
        let again = tokens
            .token(&sa, "uid-1", "registry.example")
            .await
            .unwrap();
        assert_eq!(again.expose_secret(), "tok-1", "reused before 80%");
        tokio::time::advance(Duration::from_secs(15)).await;
        let fresh = tokens
            .token(&sa, "uid-1", "registry.example")
            .await
            .unwrap();
        assert_eq!(fresh.expose_secret(), "tok-2", "renewed past 80% of 600 s");
        let other = tokens.token(&sa, "uid-1", "other").await.unwrap();
        assert_eq!(other.expose_secret(), "tok-3");
        let recreated = tokens
            .token(&sa, "uid-2", "registry.example")
            .await
            .unwrap();
        assert_eq!(recreated.expose_secret(), "tok-4");
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    /// A refusal names the ServiceAccount and the server's message, and is not asked again until
    /// its backoff (a 403: the cap) elapses.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_clear_and_backs_off() {
        let code = Arc::new(AtomicU32::new(403));
        let seen = Arc::default();
        let tokens = TokenRequests::new(client(code.clone(), Arc::clone(&seen)));
        let sa = ObjectKey::new("team", "builder");
        let err = tokens.token(&sa, "", "a").await.unwrap_err();
        assert!(
            matches!(
                err,
                TokenRequestError::Refused {
                    kind: ApiErrorKind::Forbidden,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("ServiceAccount team/builder (403)") && text.contains("is forbidden"),
            "{text}"
        );
        let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()[0].1).unwrap();
        assert!(
            body["metadata"].get("uid").is_none(),
            "no UID known, none sent: {body}"
        );
        let again = tokens.token(&sa, "", "a").await.unwrap_err();
        assert!(
            matches!(again, TokenRequestError::Backoff { .. }),
            "{again:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
        code.store(201, Ordering::SeqCst);
        tokio::time::advance(FAILURE_BACKOFF_MAX).await;
        assert_eq!(
            tokens.token(&sa, "", "a").await.unwrap().expose_secret(),
            "tok-1"
        );
    }

    /// A server that never answers: the request ends at its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_hung_server_times_out() {
        let service = tower::service_fn(|_request: http::Request<Body>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(http::Response::new(Body::empty()))
        });
        let tokens = TokenRequests::new(kube::Client::new(service, "default"));
        let err = tokens
            .token(&ObjectKey::new("team", "builder"), "", "a")
            .await
            .unwrap_err();
        assert!(matches!(err, TokenRequestError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("within 10s"), "{err}");
    }

    #[test]
    fn refresh_is_at_80_percent() {
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        assert_eq!(refresh_after(Duration::MAX), Duration::MAX / 5);
    }
}
