//! An in-repo test API server that speaks the real Kubernetes HTTP wire protocol, so that kube-rs's
//! real client code (list, watch with resourceVersion, get, patch, create) runs end to end. No real
//! API server can be installed on these machines; this is the one stand-in the project allows.
//!
//! What it does, faithfully:
//! - one global, monotonically increasing `resourceVersion`, stamped on every write;
//! - list (`GET` a collection, cluster-wide or in a namespace) with `fieldSelector=metadata.name=X`
//!   and `metadata.namespace=Y`, returning a `*List` with the collection's `resourceVersion`;
//! - list pagination (`list`): `limit` and an opaque `continue` token that encodes the list's
//!   resourceVersion and the next key, as the real one (k8s.io/apiserver pkg/storage/continue.go);
//!   later pages report the first page's resourceVersion; a garbled token is a `400`; a cap on
//!   the page size whatever the `limit` ([`ApiServer::cap_list_pages`]: the real server may return
//!   fewer items than asked); injected expiry of the next N tokens
//!   ([`ApiServer::expire_continue_tokens`]): `410 Gone`, reason `Expired`, with the real message;
//! - watch (`?watch=true&resourceVersion=RV`): the events after RV, then live ones, as JSON lines
//!   (`{"type":"ADDED|MODIFIED|DELETED","object":…}`), ended after `timeoutSeconds`; an RV older
//!   than the retained history gets an `ERROR` event with a `410 Gone` `Status`, as the real server
//!   does after compaction; with `allowWatchBookmarks=true`, `BOOKMARK` events (an object of the
//!   watched kind with only `metadata.resourceVersion`, the current one) every
//!   [`ApiServer::bookmark_every`] (default 1 s) and once shortly before the timeout, as the real
//!   watch cache (`watch`), so a client resumes past compaction without a relist;
//! - get, create (`POST`, `201`, `409 AlreadyExists`, `metadata.creationTimestamp` stamped), and
//!   patch: strategic merge with the real merge keys of the types pullgate touches
//!   (`status.conditions` and `status.addresses` by `type`, `metadata.ownerReferences` by `uid`,
//!   `metadata.finalizers` as a set, every other list, `spec.taints` and `status.images` included,
//!   replaced) and the `$patch: delete` / `$patch: replace` directives (`patch`), JSON merge patch,
//!   JSON patch (RFC 6902, `test` included, so a failed precondition is a `422`), on the object or
//!   its `/status` subresource; a strategic merge patch of a custom resource (`pullgate.io`) is a
//!   `415 UnsupportedMediaType` with the real message naming the accepted types;
//! - a no-op patch (the result equals the stored object) is not written: no new resourceVersion,
//!   no watch event, the stored object answered, as the real `GuaranteedUpdate`;
//! - times stored as the real server serialises them (`times`): `metav1.Time` fields
//!   (`metadata.creationTimestamp`, Node conditions' `lastHeartbeatTime`/`lastTransitionTime`)
//!   truncated to seconds, `MicroTime` (an Event's `eventTime`, `series.lastObservedTime`) to
//!   microseconds, both in UTC with `Z`;
//! - injected `429 Too Many Requests` / `503 Service Unavailable` with `Retry-After` and
//!   `details.retryAfterSeconds` for the next N requests ([`ApiServer::throttle_next`], `throttle`);
//! - errors as `Status` objects: `404 NotFound`, `403 Forbidden` for the Secrets and
//!   ServiceAccounts of namespaces the test leaves without pullgate's RoleBinding
//!   ([`ApiServer::forbid_namespace`]), `500` injected for the next N requests;
//! - RBAC, opt-in ([`ApiServer::enforce_rbac`]): every request made as pullgate's ServiceAccount
//!   and authorized by the stored Roles, ClusterRoles and their bindings by verb, API group,
//!   resource and subresource and `resourceNames` (a `metadata.name=` field selector names a
//!   list or watch), a denial a `403` with the real message, recorded (`rbac`, ported from
//!   kubernetes' RBAC authorizer and k8s.io/apiserver's request info);
//! - writes that hang: with [`ApiServer::hang_writes`], every write (anything but `GET`) is
//!   accepted and never answered, as an API server stuck behind a dead etcd;
//! - going away and coming back on the same port with the same objects (`stop`, `restart`);
//! - the real server's validation of `events.k8s.io/v1` Events, on create and on update (a patch
//!   is validated as the update it makes): name, `reportingController`, `reportingInstance`,
//!   `action`, `reason`, `note`, `eventTime`, `type`, `series`, the immutable fields
//!   (`validate`, ported from `pkg/apis/core/validation/events.go`);
//! - TokenReview and SubjectAccessReview (`reviews`: tokens and `/metrics` readers the test
//!   registers), and every request's `User-Agent`;
//! - the TokenRequest API (`tokens`: `POST …/serviceaccounts/NAME/token`, validated as the real
//!   server: `expirationSeconds` at least 600, a `404` for a missing ServiceAccount, a `409` for a
//!   UID that is not its own; every issued token recorded, [`ApiServer::issued_tokens`], and
//!   known to TokenReviews);
//! - `apiextensions.k8s.io/v1` CustomResourceDefinitions (create, get, list, patch, delete), checked
//!   before they are stored (`crds`: name `<plural>.<group>`, group, plural, versions, one storage
//!   version, `preserveUnknownFields: false`, each version's `openAPIV3Schema` present and
//!   structural — no `items` array, no `$ref`, `patternProperties`, `definitions`…; a refusal is a
//!   `422` naming the field), given the status the real controllers give an accepted CRD at once
//!   (`acceptedNames`, `NamesAccepted` and `Established` true, `storedVersions`), and custom resources decoded by the schema of the stored CRD version
//!   that serves them, as apiextensions-apiserver does (`schema`, ported from its
//!   `schema/pruning`, `schema/defaulting` and `schema/objectmeta` and their order in
//!   `customresource_handler.go`): every write (create, patch result, [`ApiServer::apply`]) and
//!   every read (get, list, watch events) prunes the fields the schema does not name (the root's
//!   and each `x-kubernetes-embedded-resource`'s `apiVersion`/`kind`/`metadata` kept, everything
//!   below `x-kubernetes-preserve-unknown-fields` kept but what its own schema names, `properties`,
//!   `additionalProperties`, `items`), removes `null`s where the schema is not `nullable` and has
//!   no default, keeps of `metadata` only `ObjectMeta`'s fields, then defaults (an absent field, or a
//!   non-nullable `null`; the defaults below an object only when it is there; each default itself
//!   pruned once per schema, as `PruneDefaults`); a patch that prunes to the stored object is a
//!   no-op; a version the CRD does not serve is a `404`. [`ApiServer::install_pullset_crd`] installs
//!   the shipped `manifests/base/crd.yaml`, and the cluster harness (`cluster::Cluster::start`)
//!   always does, so cluster tests run against a pruning, defaulting server. [`ApiServer::get`] and
//!   [`ApiServer::list`] show storage (what was written, defaulted by the CRD of that time); the
//!   HTTP reads show what the server serves (defaulted by the current CRD).
//!
//! Test-only instrumentation, which changes no answer: `marks`, the server-side instant a write
//! stored an object that satisfies a test's predicate ([`ApiServer::mark_when`], read by
//! `bench gate` for the moment the start-up taint was removed).
//!
//! What it does not do: authentication of its own callers (with RBAC enforced, every caller is
//! pullgate's ServiceAccount), aggregated ClusterRoles, authorization of the reviews, admission,
//! defaulting of built-in kinds, any other validation (a custom resource's values are not checked
//! against its schema: types, `enum`, `required`, `maxItems`, `x-kubernetes-validations` are not
//! enforced; wrong-typed `metadata` fields are kept, not refused), the real server's `404` for a
//! custom resource whose CRD is not stored (it is stored as sent, so tests that start an
//! [`ApiServer`] without [`ApiServer::install_pullset_crd`] work as before), deleting a CRD's
//! objects with it, the unknown-field `Warning` headers and `fieldValidation=Strict`, name
//! conflicts between CRDs (every CRD is accepted at once), conversion between a CRD's versions (each
//! version is its own collection), `metadata.generation`, `x-kubernetes-int-or-string` and list-type semantics, label
//! selectors, snapshot reads for later list pages (they show the objects as they are now, not as of
//! the token's resourceVersion), token expiry by compaction (only the injected one),
//! `resourceVersionMatch`, server-side apply, `sendInitialEvents` (and its
//! `k8s.io/initial-events-end` bookmark), strategic-merge
//! `$retainKeys`/`$setElementOrder`/`$deleteFromPrimitiveList`, merge keys of types pullgate does
//! not touch, time truncation of fields other than those listed, protobuf.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

use crate::server_thread::ServerThread;

mod crds;
mod handle;
mod list;
mod marks;
pub mod objects;
mod patch;
mod rbac;
mod reviews;
mod schema;
mod throttle;
mod times;
mod tokens;
mod validate;
mod watch;

pub use rbac::AGENT_USER;
pub use tokens::{DEFAULT_AUDIENCE, IssuedToken};
pub use validate::EVENT_NOTE_LIMIT_BYTES;

/// How many past events a watch can resume from.
const HISTORY: usize = 1000;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Collection {
    /// `v1` or `group/version`.
    api: String,
    plural: String,
}

#[derive(Clone)]
pub(crate) struct Event {
    rv: u64,
    collection: Collection,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Collection, BTreeMap<(String, String), Value>>,
    history: Vec<Event>,
    forbidden: BTreeSet<String>,
    fail_next: u32,
    hang_writes: bool,
    requests: Vec<String>,
    /// The most items one list page holds, whatever the request's `limit` (`None`: the limit).
    page_cap: Option<usize>,
    /// How many of the next requests carrying a `continue` token get `410 Expired`.
    expire_continue: u32,
    /// RBAC, when enforced, and its denials (`rbac`).
    rbac: rbac::Rbac,
    /// The injected `429`/`503` answers still to be given.
    throttle: Option<throttle::Throttle>,
    /// How often a watch asking for bookmarks gets one (`None`: [`watch::BOOKMARK_INTERVAL`]).
    bookmark_interval: Option<std::time::Duration>,
    /// Test-only instrumentation: when a write first stored an object a test waits for (`marks`).
    marks: marks::Marks,
    /// Every token the TokenRequest API issued (`tokens`), in order.
    issued_tokens: Vec<tokens::IssuedToken>,
}

/// Shared state of a running server.
#[derive(Clone)]
pub struct ApiState {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Event>,
    /// Tokens, allowed users and request headers (`reviews`).
    reviews: Arc<Mutex<reviews::Reviews>>,
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
            reviews: Arc::default(),
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
            let app = axum::Router::new()
                .fallback(handle::handle)
                .with_state(app_state);
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

    /// Creates or replaces an object (its `apiVersion` and `kind` pick the collection), as the
    /// server would store it: a custom resource pruned and defaulted by its CRD's schema. A CRD the
    /// real server would refuse panics with the reason (a fixture's mistake).
    pub fn apply(&self, object: Value) {
        if object["apiVersion"] == crds::CRD_API
            && object["kind"] == "CustomResourceDefinition"
            && let Err(refused) = crds::validate(&object)
        {
            panic!("the API server refuses this CRD: {refused}");
        }
        self.state.put(object);
    }

    /// Installs the PullSet CRD as shipped (`manifests/base/crd.yaml`, [`objects::pullset_crd`]),
    /// as `kubectl apply -f` would: from now on PullSets are pruned and defaulted by its schema.
    pub fn install_pullset_crd(&self) {
        self.apply(objects::pullset_crd());
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

    /// Every list page holds at most `n` items, whatever the request's `limit` (the real server may
    /// return fewer items than asked for; the client must follow `continue`).
    pub fn cap_list_pages(&self, n: usize) {
        self.state.lock().page_cap = Some(n.max(1));
    }

    /// The next `n` list requests carrying a `continue` token get `410 Gone`, reason `Expired`,
    /// as the real server answers a token whose resourceVersion has been compacted.
    pub fn expire_continue_tokens(&self, n: u32) {
        self.state.lock().expire_continue = n;
    }

    /// The next `n` requests get `code` (`429 Too Many Requests` or `503 Service Unavailable`)
    /// with `Retry-After: retry_after_secs`, as the real server's max-in-flight and
    /// priority-and-fairness filters answer (see `throttle`).
    pub fn throttle_next(&self, n: u32, code: u16, retry_after_secs: u64) {
        self.state.lock().throttle = Some(throttle::Throttle {
            remaining: n,
            code,
            retry_after_secs,
        });
    }

    /// How many of the injected `429`/`503`s are still to be answered.
    pub fn pending_throttles(&self) -> u32 {
        self.state
            .lock()
            .throttle
            .as_ref()
            .map_or(0, |t| t.remaining)
    }

    /// Watches that ask for bookmarks (`allowWatchBookmarks=true`) get one this often.
    pub fn bookmark_every(&self, interval: std::time::Duration) {
        self.state.lock().bookmark_interval = Some(interval);
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

    /// Registers a bearer token: a TokenReview of it authenticates `user`.
    pub fn add_token(&self, token: &str, user: &str) {
        let mut reviews = self.state.reviews();
        reviews.tokens.insert(token.into(), user.into());
    }

    /// A SubjectAccessReview of `user` for `get` on `/metrics` is allowed.
    pub fn allow_metrics(&self, user: &str) {
        self.state.reviews().metrics_readers.insert(user.into());
    }

    /// The `User-Agent` of every request so far (empty when none was sent).
    pub fn user_agents(&self) -> Vec<String> {
        self.state.reviews().user_agents.clone()
    }

    /// How many TokenReviews and SubjectAccessReviews were created.
    pub fn review_counts(&self) -> (usize, usize) {
        let reviews = self.state.reviews();
        (reviews.token_reviews, reviews.access_reviews)
    }

    /// Every ServiceAccount token issued so far through the TokenRequest API (`tokens`).
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.state.lock().issued_tokens.clone()
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
    pub(crate) fn reviews(&self) -> std::sync::MutexGuard<'_, reviews::Reviews> {
        self.reviews
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
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

    pub(crate) fn put(&self, object: Value) -> Value {
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
        let mut object = times::normalised(object);
        let mut store = self.lock();
        let collection = Collection { api, plural };
        // A custom resource is stored as its CRD's schema decodes it (`crds`, `schema`).
        if let Ok(Some(schema)) = crds::schema_for(&store, &collection) {
            schema::coerce(&mut object, &schema);
        }
        if collection.api == crds::CRD_API && collection.plural == crds::CRD_PLURAL {
            let previous = store
                .objects
                .get(&collection)
                .and_then(|c| c.get(&(namespace.clone(), name.clone())));
            object = crds::with_status(object, previous);
        }
        let stored = store
            .objects
            .get(&collection)
            .and_then(|c| c.get(&(namespace.clone(), name.clone())));
        if object["metadata"]["creationTimestamp"].is_null() {
            // A new object is stamped now; an update keeps the stored stamp.
            object["metadata"]["creationTimestamp"] = stored
                .map(|o| o["metadata"]["creationTimestamp"].clone())
                .filter(|t| !t.is_null())
                .unwrap_or_else(|| json!(times::now_seconds()));
        }
        store.rv += 1;
        object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
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
            .insert((namespace.clone(), name.clone()), object.clone())
            .is_some();
        store.marks.observe(
            &collection,
            &(namespace, name),
            &object,
            std::time::Instant::now(),
        );
        self.record(
            &mut store,
            collection,
            if existed { "MODIFIED" } else { "ADDED" },
            object.clone(),
        );
        object
    }

    pub(crate) fn delete(&self, api: &str, plural: &str, namespace: &str, name: &str) {
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
        "CustomResourceDefinition" => crds::CRD_PLURAL.into(),
        other => format!("{}s", other.to_ascii_lowercase()),
    }
}

/// The kind of a collection's objects (the inverse of [`plural_of`]).
fn kind_of(plural: &str) -> String {
    match plural {
        "pullsets" => "PullSet".into(),
        "secrets" => "Secret".into(),
        "serviceaccounts" => "ServiceAccount".into(),
        "nodes" => "Node".into(),
        "events" => "Event".into(),
        "namespaces" => "Namespace".into(),
        crds::CRD_PLURAL => "CustomResourceDefinition".into(),
        other => {
            let singular = other.strip_suffix('s').unwrap_or(other);
            let mut chars = singular.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

pub(crate) fn status(code: StatusCode, reason: &str, message: String) -> Response {
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

pub(crate) fn ok_json(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        value.to_string(),
    )
        .into_response()
}

pub(crate) fn lookup(
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
        // The collections are keyed by (namespace, name) tuples, which JSON cannot key a map by:
        // dump the objects themselves, so the text holds every stored byte.
        let objects: Vec<&Value> = store.objects.values().flat_map(|c| c.values()).collect();
        serde_json::to_string(&objects).expect("stored objects are JSON values")
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
