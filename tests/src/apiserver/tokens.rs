//! The TokenRequest API: `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`
//! (authentication.k8s.io/v1 `TokenRequest`), as the real server's
//! `pkg/registry/core/serviceaccount/storage/token.go` and `ValidateTokenRequest` answer it:
//!
//! - `spec.expirationSeconds` defaults to 3600; below 600 (10 minutes) or above 2³² is a `422`
//!   naming the field, with the real message;
//! - `spec.audiences` empty: the server's own audience (`https://kubernetes.default.svc`);
//! - a ServiceAccount that does not exist is a `404`; a `metadata.uid` that is not the
//!   ServiceAccount's is a `409 Conflict` with the real message;
//! - the answer is a `201` with the request's spec and `status.token` /
//!   `status.expirationTimestamp`; the token is a fresh random string, registered for
//!   TokenReviews as `system:serviceaccount:NS:NAME`, and recorded
//!   ([`super::ApiServer::issued_tokens`]) so a test can check what a plugin received.
//!
//! RBAC (when enforced) sees the request as `create` on `serviceaccounts/token` with the
//! ServiceAccount's name, as `requestinfo.go` builds it (`rbac`), before this runs.
//!
//! Not done: signing (the token is opaque, not a JWT), `boundObjectRef` checks, the
//! `service-account-max-token-expiration` cap and the legacy extension of expirations.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiState, Collection, lookup, ok_json, status};

/// The audience a token without `spec.audiences` gets (the API server's own).
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc";
const MIN_EXPIRATION_SECONDS: i64 = 600;
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// A token the server issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub token: String,
}

fn invalid(field: &str, value: &Value, detail: &str) -> Response {
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!(
            "TokenRequest.authentication.k8s.io \"\" is invalid: {field}: Invalid value: {value}: {detail}"
        ),
    )
}

/// Answers one TokenRequest for ServiceAccount `namespace/name`.
pub(super) fn create(state: &ApiState, namespace: &str, name: &str, body: &[u8]) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "body is not JSON".into(),
        );
    };
    let collection = Collection {
        api: "v1".into(),
        plural: "serviceaccounts".into(),
    };
    let Some(sa) = lookup(state, &collection, &Some(namespace.to_string()), name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("serviceaccounts \"{name}\" not found"),
        );
    };
    let spec = &request["spec"];
    let expiration = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION_SECONDS,
        v => match v.as_i64() {
            Some(n) if n < MIN_EXPIRATION_SECONDS => {
                return invalid(
                    "spec.expirationSeconds",
                    v,
                    "may not specify a duration less than 10 minutes",
                );
            }
            Some(n) if n > MAX_EXPIRATION_SECONDS => {
                return invalid(
                    "spec.expirationSeconds",
                    v,
                    "may not specify a duration larger than 2^32 seconds",
                );
            }
            Some(n) => n,
            None => return invalid("spec.expirationSeconds", v, "must be an integer"),
        },
    };
    let sa_uid = sa["metadata"]["uid"].as_str().unwrap_or("");
    if let Some(uid) = request["metadata"]["uid"].as_str()
        && !uid.is_empty()
        && uid != sa_uid
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on serviceaccounts \"{name}\": the UID in the token request ({uid}) does not match the UID of the service account ({sa_uid})"
            ),
        );
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    if audiences.is_empty() {
        audiences.push(DEFAULT_AUDIENCE.into());
    }
    let token = format!("sa-tok-{}", uuid_like());
    let expires = chrono::Utc::now() + chrono::Duration::seconds(expiration);
    state.reviews().tokens.insert(
        token.clone(),
        format!("system:serviceaccount:{namespace}:{name}"),
    );
    state.lock().issued_tokens.push(IssuedToken {
        namespace: namespace.into(),
        service_account: name.into(),
        audiences: audiences.clone(),
        expiration_seconds: expiration,
        token: token.clone(),
    });
    ok_json(
        StatusCode::CREATED,
        &json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": name, "namespace": namespace,
                "creationTimestamp": super::times::now_seconds()},
            "spec": {"audiences": audiences, "expirationSeconds": expiration,
                "boundObjectRef": spec["boundObjectRef"].clone()},
            "status": {"token": token,
                "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
        }),
    )
}

/// 32 random hex characters from the kernel's CSPRNG (a token nobody can guess or collide).
fn uuid_like() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
