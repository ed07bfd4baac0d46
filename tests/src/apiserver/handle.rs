//! Routing and the request handler: list, get, create, patch, delete, and the injected failures.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::HashMap;

use super::crds::{self, CrdError};
use super::list;
use super::patch::strategic_merge;
use super::schema::coerce;
use super::validate::{validate, validate_update};
use super::watch::watch;
use super::{ApiState, Collection, lookup, ok_json, status};

/// `/api/v1/...` or `/apis/group/version/...` → (api, namespace, plural, name, subresource).
fn route(
    path: &str,
) -> Option<(
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => (version.to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] => Some((api, namespace, plural.to_string(), None, None)),
        [plural, name] => Some((
            api,
            namespace,
            plural.to_string(),
            Some(name.to_string()),
            None,
        )),
        [plural, name, sub] => Some((
            api,
            namespace,
            plural.to_string(),
            Some(name.to_string()),
            Some(sub.to_string()),
        )),
        _ => None,
    }
}

fn field_selector(query: &HashMap<String, String>) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut namespace = None;
    for term in query
        .get("fieldSelector")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
    {
        if let Some(v) = term.strip_prefix("metadata.name=") {
            name = Some(v.to_string());
        } else if let Some(v) = term.strip_prefix("metadata.namespace=") {
            namespace = Some(v.to_string());
        }
    }
    (name, namespace)
}

pub(super) fn matches(object: &Value, namespace: &Option<String>, name: &Option<String>) -> bool {
    let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
    let n = object["metadata"]["name"].as_str().unwrap_or("");
    namespace.as_deref().is_none_or(|want| want == ns)
        && name.as_deref().is_none_or(|want| want == n)
}

/// The patch types the real server accepts for a custom resource (apiextensions-apiserver
/// `pkg/apiserver/customresource_handler.go`: no strategic merge, which needs Go struct tags).
const CUSTOM_RESOURCE_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];

/// The patch types the real server accepts for a built-in resource.
const BUILT_IN_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// A CRD is checked before it is stored (`crds::validate`).
fn validate_crd(api: &str, plural: &str, object: &Value) -> Result<(), CrdError> {
    if api == crds::CRD_API && plural == crds::CRD_PLURAL {
        crds::validate(object)
    } else {
        Ok(())
    }
}

/// Custom resources are those of a group served by a CRD: here, pullgate's own.
fn is_custom_resource(api: &str) -> bool {
    api.starts_with("pullgate.io/")
}

/// `415`, as the real server's `negotiation.NewUnsupportedMediaTypeError`
/// (k8s.io/apiserver pkg/endpoints/handlers/negotiation/errors.go), which the patch handler
/// (`handlers/patch.go`) returns for a content type the resource does not accept.
fn unsupported_media_type(accepted: &[&str]) -> Response {
    status(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
    )
}

pub(super) async fn handle(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Reviews and request headers (`reviews.rs`): the one hook, before everything else.
    if let Some(answer) = super::reviews::hook(&state, &method, &uri, &headers, &body) {
        return answer;
    }
    let hang = {
        let store = state.lock();
        store.hang_writes && method != Method::GET
    };
    if hang {
        state
            .lock()
            .requests
            .push(format!("{method} {uri} (never answered)"));
        // Held until the server stops (its runtime is dropped with the connection).
        std::future::pending::<()>().await;
    }
    {
        let mut store = state.lock();
        store.requests.push(format!("{method} {uri}"));
        if store.fail_next > 0 {
            store.fail_next -= 1;
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "injected failure".into(),
            );
        }
        if let Some(throttle) = store.throttle.as_mut()
            && throttle.remaining > 0
        {
            throttle.remaining -= 1;
            return throttle.response();
        }
    }
    let Some((api, namespace, plural, name, sub)) = route(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {}", uri.path()),
        );
    };
    // RBAC, when enforced (`rbac.rs`).
    let attributes = super::rbac::Attributes::of(
        &method,
        &api,
        namespace.as_deref(),
        &plural,
        name.as_deref(),
        sub.as_deref(),
        &query,
    );
    if let Some(denied) = super::rbac::hook(&mut state.lock(), &attributes) {
        return denied;
    }
    if let Some(ns) = &namespace
        && matches!(plural.as_str(), "secrets" | "serviceaccounts")
        && state.lock().forbidden.contains(ns)
    {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{plural} is forbidden: User \"system:serviceaccount:pullgate:pullgate\" cannot {} resource \"{plural}\" in API group \"\" in the namespace \"{ns}\"",
                method.as_str().to_lowercase()
            ),
        );
    }
    // The TokenRequest API (`tokens.rs`), a subresource of ServiceAccounts.
    if method == Method::POST
        && api == "v1"
        && plural == "serviceaccounts"
        && sub.as_deref() == Some("token")
        && let (Some(ns), Some(name)) = (&namespace, &name)
    {
        return super::tokens::create(&state, ns, name, &body);
    }
    let collection = Collection {
        api: api.clone(),
        plural: plural.clone(),
    };
    // The schema of a custom resource's CRD (`crds`); a version no CRD serves is not found.
    let schema = match crds::schema_for(&state.lock(), &collection) {
        Ok(schema) => schema,
        Err(refused) => return refused.response(),
    };
    // As the real server decodes a custom resource read from storage: pruned and defaulted.
    let served = |mut object: Value| {
        if let Some(schema) = &schema {
            coerce(&mut object, schema);
        }
        object
    };
    match (method, name) {
        (Method::GET, None) => {
            let (by_name, by_ns) = field_selector(&query);
            let namespace = namespace.or(by_ns);
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(state, collection, schema, namespace, by_name, &query);
            }
            let mut store = state.lock();
            let resume = match list::decode(&query, &mut store.expire_continue) {
                Ok(resume) => resume,
                Err(refused) => return refused.response(),
            };
            let page = match (list::limit(&query), store.page_cap) {
                (Some(l), Some(cap)) => Some(l.min(cap)),
                (l, cap) => l.or(cap),
            };
            let start = resume.as_ref().map(|r| {
                let (ns, n) = r.start.split_once('/').unwrap_or(("", &r.start));
                (ns.to_string(), n.to_string())
            });
            let mut selected = store
                .objects
                .get(&collection)
                .into_iter()
                .flat_map(|c| c.iter())
                .filter(|(key, _)| start.as_ref().is_none_or(|s| *key >= s))
                .filter(|(_, o)| matches(o, &namespace, &by_name));
            let items: Vec<Value> = selected
                .by_ref()
                .take(page.unwrap_or(usize::MAX))
                .map(|(_, o)| served(o.clone()))
                .collect();
            let list_rv = resume.as_ref().map_or(store.rv, |r| r.rv);
            let next = selected
                .next()
                .map(|((ns, n), _)| list::encode(list_rv, &format!("{ns}/{n}")));
            let mut metadata = json!({"resourceVersion": list_rv.to_string()});
            if let Some(token) = next {
                metadata["continue"] = json!(token);
            }
            let kind = items
                .first()
                .and_then(|o| o["kind"].as_str())
                .map(|k| format!("{k}List"))
                .unwrap_or_else(|| "List".into());
            ok_json(
                StatusCode::OK,
                &json!({"apiVersion": api, "kind": kind, "metadata": metadata, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match lookup(&state, &collection, &namespace, &name) {
            Some(object) => ok_json(StatusCode::OK, &served(object)),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{plural} \"{name}\" not found"),
            ),
        },
        (Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "body is not JSON".into(),
                );
            };
            if let Some(ns) = &namespace {
                object["metadata"]["namespace"] = json!(ns);
            }
            if object["metadata"]["name"].is_null() {
                let prefix = object["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or("obj-")
                    .to_string();
                let n = state.lock().rv + 1;
                object["metadata"]["name"] = json!(format!("{prefix}{n:05x}"));
            }
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if lookup(&state, &collection, &namespace, &name).is_some() {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{plural} \"{name}\" already exists"),
                );
            }
            object["apiVersion"] = json!(api);
            if let Some(invalid) = validate(&api, &plural, &name, &object) {
                return invalid;
            }
            if let Err(refused) = validate_crd(&api, &plural, &object) {
                return refused.response();
            }
            let stored = state.put(object);
            ok_json(StatusCode::CREATED, &stored)
        }
        (Method::PATCH, Some(name)) => {
            let Some(stored) = lookup(&state, &collection, &namespace, &name) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{plural} \"{name}\" not found"),
                );
            };
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "patch is not JSON".into(),
                );
            };
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // The patch applies to the object as read from storage (pruned and defaulted).
            let current = served(stored.clone());
            let mut patched = current.clone();
            let scope_status = sub.as_deref() == Some("status");
            match content_type {
                "application/json-patch+json" => {
                    let Ok(ops) = serde_json::from_value::<json_patch::Patch>(patch) else {
                        return status(
                            StatusCode::BAD_REQUEST,
                            "BadRequest",
                            "invalid JSON patch".into(),
                        );
                    };
                    if let Err(e) = json_patch::patch(&mut patched, &ops) {
                        return status(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            format!("the JSON patch failed: {e}"),
                        );
                    }
                }
                "application/merge-patch+json" => json_patch::merge(&mut patched, &patch),
                "application/strategic-merge-patch+json" if is_custom_resource(&api) => {
                    return unsupported_media_type(CUSTOM_RESOURCE_PATCH_TYPES);
                }
                "application/strategic-merge-patch+json" => strategic_merge(&mut patched, &patch),
                _ if is_custom_resource(&api) => {
                    return unsupported_media_type(CUSTOM_RESOURCE_PATCH_TYPES);
                }
                _ => return unsupported_media_type(BUILT_IN_PATCH_TYPES),
            }
            // The status subresource changes only status; the main resource never does.
            if scope_status {
                let new_status = patched["status"].clone();
                patched = current.clone();
                patched["status"] = new_status;
            } else if !current["status"].is_null() {
                patched["status"] = current["status"].clone();
            }
            if let Some(invalid) = validate_update(&api, &plural, &name, &patched, &current) {
                return invalid;
            }
            if let Err(refused) = validate_crd(&api, &plural, &patched) {
                return refused.response();
            }
            // The patch's result is decoded as a request body: pruned and defaulted.
            let patched = served(patched);
            // As the real server's `GuaranteedUpdate` (k8s.io/apiserver pkg/storage/etcd3/store.go):
            // an update that leaves the object as stored (after the server's own normalisation of
            // times) is not written, keeps its resourceVersion and sends no watch event.
            if super::times::normalised(patched.clone()) == stored {
                return ok_json(StatusCode::OK, &stored);
            }
            let stored = state.put(patched);
            ok_json(StatusCode::OK, &stored)
        }
        (Method::DELETE, Some(name)) => {
            state.delete(&api, &plural, namespace.as_deref().unwrap_or(""), &name);
            ok_json(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
        }
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} not supported here"),
        ),
    }
}
