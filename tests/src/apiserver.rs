//! An in-repo test API server that speaks the real Kubernetes HTTP wire protocol, so that kube-rs's
//! real client code (list, watch with resourceVersion, get, patch, create) runs end to end. No real
//! API server can be installed on these machines; this is the one stand-in the project allows.
//!
//! What it does, faithfully:
//! - one global, monotonically increasing `resourceVersion`, stamped on every write;
//! - list (`GET` a collection, cluster-wide or in a namespace) with `fieldSelector=metadata.name=X`
//!   and `metadata.namespace=Y`, returning a `*List` with the collection's `resourceVersion`;
//! - watch (`?watch=true&resourceVersion=RV`): the events after RV, then live ones, as JSON lines
//!   (`{"type":"ADDED|MODIFIED|DELETED","object":…}`), ended after `timeoutSeconds`; an RV older
//!   than the retained history gets an `ERROR` event with a `410 Gone` `Status`, as the real server
//!   does after compaction;
//! - get, create (`POST`, `201`, `409 AlreadyExists`), and patch: strategic merge (maps merged,
//!   `status.conditions` merged by `type`, other lists replaced), JSON merge patch, JSON patch
//!   (RFC 6902, `test` included, so a failed precondition is a `422`), on the object or its
//!   `/status` subresource;
//! - errors as `Status` objects: `404 NotFound`, `403 Forbidden` for the Secrets and
//!   ServiceAccounts of namespaces the test leaves without pullgate's RoleBinding, `500` injected
//!   for the next N requests;
//! - writes that hang: with [`ApiServer::hang_writes`], every write (anything but `GET`) is
//!   accepted and never answered, as an API server stuck behind a dead etcd;
//! - going away and coming back on the same port with the same objects (`stop`, `restart`);
//! - the one field validation pullgate's writes can trip: an `events.k8s.io/v1` Event whose `note`
//!   is over 1,024 bytes gets `422 Invalid`, on create and patch (`validate`, ported from the real
//!   server).
//!
//! What it does not do: authentication and RBAC beyond the injected 403s, admission, defaulting,
//! any other validation (schemas included), label selectors, pagination (`limit`/`continue` are
//! ignored: one page), server-side apply, `$patch` directives of strategic merge, bookmarks,
//! protobuf.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

use crate::server_thread::ServerThread;

/// How many past events a watch can resume from.
const HISTORY: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Collection {
    /// `v1` or `group/version`.
    api: String,
    plural: String,
}

#[derive(Clone)]
struct Event {
    rv: u64,
    collection: Collection,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Collection, BTreeMap<(String, String), Value>>,
    history: Vec<Event>,
    forbidden: BTreeSet<String>,
    fail_next: u32,
    hang_writes: bool,
    requests: Vec<String>,
}

/// Shared state of a running server.
#[derive(Clone)]
pub struct ApiState {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Event>,
}

/// A running test API server on 127.0.0.1; stopped when dropped.
pub struct ApiServer {
    pub state: ApiState,
    addr: std::net::SocketAddr,
    server: Option<ServerThread>,
}

/// A kubeconfig file pointing at an [`ApiServer`], in a temp dir removed on drop.
pub struct KubeconfigFile {
    dir: tempfile::TempDir,
}

impl KubeconfigFile {
    /// The file, for `pullgate run --kubeconfig`.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("kubeconfig")
    }
}

impl ApiServer {
    /// Starts the server on a free loopback port, in a thread with its own runtime.
    pub fn start() -> anyhow::Result<Self> {
        let (events, _) = broadcast::channel(4096);
        let state = ApiState {
            store: Arc::new(Mutex::new(Store::default())),
            events,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut server = Self {
            state,
            addr,
            server: None,
        };
        server.serve(listener)?;
        Ok(server)
    }

    fn serve(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let app_state = self.state.clone();
        self.server = Some(ServerThread::spawn(move |stop| async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let app = axum::Router::new().fallback(handle).with_state(app_state);
            // Not a graceful shutdown: open watches end with the server (its runtime is dropped),
            // as when an API server goes away.
            tokio::select! {
                _ = axum::serve(listener, app) => {}
                _ = stop => {}
            }
        }));
        Ok(())
    }

    /// Stops serving (connections refused, open watches cut), keeping every object.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }

    /// Serves again on the same port, with the objects and history it had.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let listener = std::net::TcpListener::bind(self.addr)?;
        self.serve(listener)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file content pointing at this server (no auth).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to a file of its own.
    pub fn kubeconfig_file(&self) -> anyhow::Result<KubeconfigFile> {
        let dir = tempfile::Builder::new()
            .prefix("pullgate-kubeconfig-")
            .tempdir()?;
        std::fs::write(dir.path().join("kubeconfig"), self.kubeconfig())?;
        Ok(KubeconfigFile { dir })
    }

    /// Creates or replaces an object (its `apiVersion` and `kind` pick the collection).
    pub fn apply(&self, object: Value) {
        self.state.put(object);
    }

    /// Deletes an object.
    pub fn delete(&self, api: &str, plural: &str, namespace: &str, name: &str) {
        self.state.delete(api, plural, namespace, name);
    }

    /// Gets an object.
    pub fn get(&self, api: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.state.lock();
        store
            .objects
            .get(&Collection {
                api: api.into(),
                plural: plural.into(),
            })
            .and_then(|c| c.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Every object of a collection.
    pub fn list(&self, api: &str, plural: &str) -> Vec<Value> {
        let store = self.state.lock();
        store
            .objects
            .get(&Collection {
                api: api.into(),
                plural: plural.into(),
            })
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Models a namespace without pullgate's opt-in RoleBinding: requests for Secrets and
    /// ServiceAccounts there get `403 Forbidden` from now on (Events and PullSets, granted by the
    /// ClusterRole, still work).
    pub fn forbid_namespace(&self, namespace: &str) {
        self.state.lock().forbidden.insert(namespace.to_string());
    }

    /// The next `n` requests get `500`.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().fail_next = n;
    }

    /// From now on (`true`), every write is accepted and never answered; reads still are.
    pub fn hang_writes(&self, on: bool) {
        self.state.lock().hang_writes = on;
    }

    /// How many of the injected `500`s are still to be answered.
    pub fn pending_failures(&self) -> u32 {
        self.state.lock().fail_next
    }

    /// Forgets the watch history: resuming from an old resourceVersion then gets `410 Gone`.
    pub fn compact(&self) {
        self.state.lock().history.clear();
    }

    /// `METHOD path?query` of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl ApiState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, store: &mut Store, collection: Collection, kind: &'static str, object: Value) {
        let event = Event {
            rv: store.rv,
            collection,
            kind,
            object,
        };
        store.history.push(event.clone());
        if store.history.len() > HISTORY {
            store.history.remove(0);
        }
        let _ = self.events.send(event);
    }

    fn put(&self, mut object: Value) -> Value {
        let api = object["apiVersion"].as_str().unwrap_or("v1").to_string();
        let plural = plural_of(object["kind"].as_str().unwrap_or(""));
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut store = self.lock();
        store.rv += 1;
        object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        let collection = Collection { api, plural };
        if object["metadata"]["uid"].is_null() {
            // An update keeps the object's identity; a new object gets one.
            let existing = store
                .objects
                .get(&collection)
                .and_then(|c| c.get(&(namespace.clone(), name.clone())))
                .map(|o| o["metadata"]["uid"].clone());
            object["metadata"]["uid"] =
                existing.unwrap_or_else(|| json!(format!("uid-{}", store.rv)));
        }
        let existed = store
            .objects
            .entry(collection.clone())
            .or_default()
            .insert((namespace, name), object.clone())
            .is_some();
        self.record(
            &mut store,
            collection,
            if existed { "MODIFIED" } else { "ADDED" },
            object.clone(),
        );
        object
    }

    fn delete(&self, api: &str, plural: &str, namespace: &str, name: &str) {
        let collection = Collection {
            api: api.into(),
            plural: plural.into(),
        };
        let mut store = self.lock();
        let removed = store
            .objects
            .get_mut(&collection)
            .and_then(|c| c.remove(&(namespace.to_string(), name.to_string())));
        if let Some(mut object) = removed {
            store.rv += 1;
            object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
            self.record(&mut store, collection, "DELETED", object);
        }
    }
}

/// The plural the real API uses for the kinds pullgate touches (and a naive default).
fn plural_of(kind: &str) -> String {
    match kind {
        "PullSet" => "pullsets".into(),
        "Secret" => "secrets".into(),
        "ServiceAccount" => "serviceaccounts".into(),
        "Node" => "nodes".into(),
        "Event" => "events".into(),
        "Namespace" => "namespaces".into(),
        other => format!("{}s", other.to_ascii_lowercase()),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

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

fn matches(object: &Value, namespace: &Option<String>, name: &Option<String>) -> bool {
    let ns = object["metadata"]["namespace"].as_str().unwrap_or("");
    let n = object["metadata"]["name"].as_str().unwrap_or("");
    namespace.as_deref().is_none_or(|want| want == ns)
        && name.as_deref().is_none_or(|want| want == n)
}

async fn handle(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
    }
    let Some((api, namespace, plural, name, sub)) = route(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {}", uri.path()),
        );
    };
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
    let collection = Collection {
        api: api.clone(),
        plural: plural.clone(),
    };
    match (method, name) {
        (Method::GET, None) => {
            let (by_name, by_ns) = field_selector(&query);
            let namespace = namespace.or(by_ns);
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(state, collection, namespace, by_name, &query);
            }
            let store = state.lock();
            let items: Vec<Value> = store
                .objects
                .get(&collection)
                .map(|c| {
                    c.values()
                        .filter(|o| matches(o, &namespace, &by_name))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let kind = items
                .first()
                .and_then(|o| o["kind"].as_str())
                .map(|k| format!("{k}List"))
                .unwrap_or_else(|| "List".into());
            ok_json(
                StatusCode::OK,
                &json!({"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match lookup(&state, &collection, &namespace, &name) {
            Some(object) => ok_json(StatusCode::OK, &object),
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
            let stored = state.put(object);
            ok_json(StatusCode::CREATED, &stored)
        }
        (Method::PATCH, Some(name)) => {
            let Some(current) = lookup(&state, &collection, &namespace, &name) else {
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
                "application/strategic-merge-patch+json" => {
                    strategic_merge(&mut patched, &patch, "")
                }
                other => {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("content type {other}"),
                    );
                }
            }
            // The status subresource changes only status; the main resource never does.
            if scope_status {
                let new_status = patched["status"].clone();
                patched = current.clone();
                patched["status"] = new_status;
            } else if !current["status"].is_null() {
                patched["status"] = current["status"].clone();
            }
            if let Some(invalid) = validate(&api, &plural, &name, &patched) {
                return invalid;
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

/// The API server's limit on an Event's `note`, in bytes (Go's `len`): `NoteLengthLimit = 1024`
/// in Kubernetes' `pkg/apis/core/validation/events.go`, which `ValidateEventCreate` and
/// `ValidateEventUpdate` apply to events.k8s.io/v1 Events (`field.TooLong` on `note`).
pub const EVENT_NOTE_LIMIT_BYTES: usize = 1024;

/// The validation ported from the real API server, for what pullgate writes: `422 Invalid` in the
/// shape kube-rs reads, naming the object and the field.
fn validate(api: &str, plural: &str, name: &str, object: &Value) -> Option<Response> {
    if api != "events.k8s.io/v1" || plural != "events" {
        return None;
    }
    let note = object["note"].as_str().unwrap_or("");
    (note.len() > EVENT_NOTE_LIMIT_BYTES).then(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "Event.events.k8s.io \"{name}\" is invalid: note: Too long: may not be more than {EVENT_NOTE_LIMIT_BYTES} bytes"
            ),
        )
    })
}

fn lookup(
    state: &ApiState,
    collection: &Collection,
    namespace: &Option<String>,
    name: &str,
) -> Option<Value> {
    state
        .lock()
        .objects
        .get(collection)
        .and_then(|c| c.get(&(namespace.clone().unwrap_or_default(), name.to_string())))
        .cloned()
}

/// Strategic merge as the API server applies it to the objects pullgate patches: maps merge,
/// lists named `conditions` merge by `type`, other lists are replaced, `null` deletes.
fn strategic_merge(target: &mut Value, patch: &Value, key: &str) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v, k);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if key == "conditions" => {
            for item in p {
                let type_ = &item["type"];
                match t.iter_mut().find(|c| &c["type"] == type_) {
                    Some(existing) => strategic_merge(existing, item, ""),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn watch(
    state: ApiState,
    collection: Collection,
    namespace: Option<String>,
    name: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let mut live = state.events.subscribe();
    let (backlog, gone) = {
        let store = state.lock();
        let oldest = store.history.first().map_or(store.rv + 1, |e| e.rv);
        let gone = since != 0 && since + 1 < oldest && since < store.rv;
        let backlog: Vec<Event> = store
            .history
            .iter()
            .filter(|e| e.rv > since && e.collection == collection)
            .cloned()
            .collect();
        (backlog, gone)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let line = |kind: &str, object: &Value| {
            Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
        };
        if gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {since}"), "reason": "Expired", "code": 410});
            let _ = tx.send(Ok(line("ERROR", &status))).await;
            return;
        }
        let mut last = since;
        for e in backlog {
            if matches(&e.object, &namespace, &name)
                && tx.send(Ok(line(e.kind, &e.object))).await.is_err()
            {
                return;
            }
            last = last.max(e.rv);
        }
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                event = live.recv() => match event {
                    Ok(e) if e.rv > last && e.collection == collection && matches(&e.object, &namespace, &name) => {
                        last = e.rv;
                        if tx.send(Ok(line(e.kind, &e.object))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "stream".into(),
            )
        })
}

/// Objects for the test API server, as a cluster would hold them.
pub mod objects {
    use base64::Engine as _;
    use serde_json::{Value, json};

    /// A `kubernetes.io/dockerconfigjson` Secret for `host` with `user:password`.
    pub fn pull_secret(
        namespace: &str,
        name: &str,
        host: &str,
        user: &str,
        password: &str,
    ) -> Value {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let config =
            json!({"auths": {host: {"auth": b64(&format!("{user}:{password}"))}}}).to_string();
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
               "type": "kubernetes.io/dockerconfigjson",
               "data": {".dockerconfigjson": b64(&config)}})
    }

    /// A PullSet of `images` with the rest of its `spec`.
    pub fn pullset(namespace: &str, name: &str, images: &[&str], spec: Value) -> Value {
        let mut spec = spec;
        spec["images"] = images.iter().map(|i| json!({"image": i})).collect();
        json!({"apiVersion": "pullgate.io/v1alpha1", "kind": "PullSet",
               "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    }

    /// A Node as the kubelet registers it: `Ready`, with these taints (`key`, `effect`).
    pub fn node(name: &str, taints: &[(&str, &str)]) -> Value {
        let taints: Vec<Value> = taints
            .iter()
            .map(|(key, effect)| json!({"key": key, "effect": effect}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/hostname": name}},
               "spec": {"taints": taints},
               "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                          "message": "kubelet is posting ready status",
                                          "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                          "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    }
}

impl ApiServer {
    /// The Node's condition of this type.
    pub fn node_condition(&self, node: &str, type_: &str) -> Option<Value> {
        self.get("v1", "nodes", "", node)?["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// The Node's taint keys, in order.
    pub fn node_taints(&self, node: &str) -> Vec<String> {
        self.get("v1", "nodes", "", node)
            .and_then(|n| n["spec"]["taints"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["key"].as_str().map(String::from))
            .collect()
    }

    /// `events.k8s.io/v1` Events with this reason.
    pub fn events(&self, reason: &str) -> Vec<Value> {
        self.list("events.k8s.io/v1", "events")
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    /// Everything stored, as text (to check that no password is in it).
    pub fn dump(&self) -> String {
        let store = self.state.lock();
        serde_json::to_string(&store.objects.values().collect::<Vec<_>>()).unwrap_or_default()
    }

    /// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` naming `what`.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: std::time::Duration,
        mut check: impl FnMut(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return Ok(v);
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
