//! List pages: `limit` and `continue`, as the real server's storage layer pages a list.
//!
//! The token is opaque to clients and, as the real one (k8s.io/apiserver
//! pkg/storage/continue.go, `EncodeContinue`), the base64 of
//! `{"v":"meta.k8s.io/v1","rv":<list RV>,"start":"<key after the last one>"}`. Unlike the real
//! server, later pages show the objects as they are now, not as of the token's RV (no snapshot
//! reads), and a token expires only when the test says so ([`super::ApiServer::expire_continue_tokens`]).

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::HashMap;

use super::status;

/// The position a continue token resumes from.
pub(super) struct Resume {
    /// The list resourceVersion the first page had.
    pub rv: u64,
    /// The first key (`namespace/name`) of the next page.
    pub start: String,
}

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

pub(super) fn encode(rv: u64, start: &str) -> String {
    let token = json!({"v": TOKEN_VERSION, "rv": rv, "start": start});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// Why a `continue` token is refused.
pub(super) enum TokenError {
    /// Not one this server issued: `400`.
    Invalid,
    /// Injected expiry: `410 Gone`, reason `Expired`.
    Expired,
}

impl TokenError {
    pub(super) fn response(&self) -> Response {
        match self {
            Self::Invalid => status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
            ),
            // The real message, from k8s.io/apiserver pkg/storage/etcd3 (a compacted continue RV).
            Self::Expired => status(
                StatusCode::GONE,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
            ),
        }
    }
}

/// The `continue` parameter, decoded; `expire` counts the injected expiries still to answer.
pub(super) fn decode(
    query: &HashMap<String, String>,
    expire: &mut u32,
) -> Result<Option<Resume>, TokenError> {
    let Some(token) = query.get("continue").filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::Invalid)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid)?;
    let (Some(TOKEN_VERSION), Some(rv), Some(start)) = (
        value["v"].as_str(),
        value["rv"].as_u64(),
        value["start"].as_str(),
    ) else {
        return Err(TokenError::Invalid);
    };
    if *expire > 0 {
        *expire -= 1;
        return Err(TokenError::Expired);
    }
    Ok(Some(Resume {
        rv,
        start: start.to_string(),
    }))
}

/// `limit`, if given and positive.
pub(super) fn limit(query: &HashMap<String, String>) -> Option<usize> {
    query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
}
