//! Cluster source: the same objects as the manifest directory, from the API server. The only
//! module that knows kube's client and runtime types.
//!
//! Least privilege: PullSets in all namespaces; this node only (`metadata.name` field selector);
//! and only the Secrets and ServiceAccounts that the PullSets selecting this node reference, each
//! watched by name in its namespace — never a cluster-wide Secret list or watch, nothing of a
//! PullSet aimed at another node pool, nothing before the Node is read. kube's watchers resume
//! from the last resourceVersion and re-list on `410 Gone`; a relist replaces what is held
//! (`InitDone`), so an object deleted while a watch was down is forgotten. PullSets are watched
//! as `DynamicObject`s and decoded one by one: a bad one is a problem naming its field, the rest
//! are kept. A Node event counts only when its labels or taints changed. A `403` is reported as a
//! problem naming the namespace and the permission it lacks, and its by-name watch is retried at
//! the capped pace of [`WATCH_RETRY`]; every other namespace keeps working.

use crate::adapters::kube::api_errors::ApiErrors;
use crate::decide::credentials::pull_secret_names;
use crate::decide::retry::{ApiErrorKind, Retry};
use crate::model::inventory::{Inventory, ObjectKey, ServiceAccountObject};
use crate::model::inventory::{secret_object, service_account_object};
use crate::model::node::{NodeFacts, NodeInfo, NodeTaint};
use crate::model::pullset::{self, PullSet, PullSetSpec};
use crate::model::snapshot::{Snapshot, SnapshotProblem};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
use kube::api::DynamicObject;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Kubeconfig(#[from] super::kubeconfig::KubeconfigError),
    #[error("cannot read pod {pod}: {source}")]
    Pod { pod: ObjectKey, source: kube::Error },
}

/// A Kubernetes client from `--kubeconfig`, else as kubectl finds one, else the in-cluster
/// configuration ([`super::kubeconfig`]).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ClusterError> {
    let flags = crate::cli::KubeArgs {
        kubeconfig: kubeconfig.map(std::path::Path::to_path_buf),
        ..Default::default()
    };
    Ok(super::kubeconfig::connect(&flags).await?.client)
}

#[derive(Default)]
struct State {
    pullsets: BTreeMap<ObjectKey, PullSet>,
    /// PullSets that could not be decoded, each with why.
    pullset_problems: BTreeMap<ObjectKey, SnapshotProblem>,
    secrets: BTreeMap<ObjectKey, crate::model::inventory::SecretObject>,
    service_accounts: BTreeMap<ObjectKey, ServiceAccountObject>,
    node_labels: Option<BTreeMap<String, String>>,
    node_facts: Option<NodeFacts>,
    pullsets_synced: bool,
    node_synced: bool,
    /// Referenced objects read (or found unreadable) at least once.
    objects_synced: BTreeSet<(char, ObjectKey)>,
    /// Per watched object: why it cannot be read.
    problems: BTreeMap<String, SnapshotProblem>,
    generation: u64,
}

impl State {
    /// Takes what pullgate reads from the Node (its labels and taints); `false` when they are
    /// what it already holds, so a heartbeat, `status.images`, a new `resourceVersion` or our own
    /// condition patch changes nothing and starts no pass.
    fn set_node(&mut self, labels: BTreeMap<String, String>, facts: NodeFacts) -> bool {
        if self.node_labels.as_ref() == Some(&labels) && self.node_facts.as_ref() == Some(&facts) {
            return false;
        }
        self.node_labels = Some(labels);
        self.node_facts = Some(facts);
        true
    }
}

/// The state, its change signal, and the count of failed requests and broken watches.
type Shared = Arc<(Mutex<State>, Notify, Arc<ApiErrors>)>;

fn with_state(shared: &Shared, f: impl FnOnce(&mut State)) {
    with_state_if(shared, |s| {
        f(s);
        true
    });
}

/// Like [`with_state`], but a change is signalled (and a new snapshot published) only when `f`
/// says it changed something.
fn with_state_if(shared: &Shared, f: impl FnOnce(&mut State) -> bool) {
    let (lock, notify, _) = &**shared;
    let mut state = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if f(&mut state) {
        state.generation += 1;
        notify.notify_one();
    }
}

/// How long a change waits for the objects it newly references before it is published anyway.
const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// Starts the watches; publishes a fresh [`Snapshot`] (with the node's labels) on every change.
pub fn watch_cluster(
    client: Client,
    node_name: String,
    errors: Arc<ApiErrors>,
    cancel: CancellationToken,
) -> (watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>) {
    watch_cluster_with(client, node_name, errors, cancel, false)
}

/// [`watch_cluster`]; with `every_service_account`, the ServiceAccount of each selecting PullSet
/// is watched (by name) even when its own `imagePullSecrets` make the pod rule not read it: what
/// a credential provider in service-account token mode needs (its UID and annotations).
pub fn watch_cluster_with(
    client: Client,
    node_name: String,
    errors: Arc<ApiErrors>,
    cancel: CancellationToken,
    every_service_account: bool,
) -> (watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let shared: Shared = Arc::new((Mutex::new(State::default()), Notify::new(), errors));
    let task = tokio::spawn(async move {
        let tasks = vec![
            tokio::spawn(watch_pullsets(client.clone(), shared.clone())),
            tokio::spawn(watch_node(client.clone(), node_name, shared.clone())),
        ];
        let mut referenced: HashMap<(char, ObjectKey), tokio::task::JoinHandle<()>> =
            HashMap::new();
        let mut published = u64::MAX;
        // After the first complete picture, a change that references objects not read yet (a new
        // PullSet and its Secret, created together) is held back until they are read — judging
        // the set before would report its Secret missing — for at most HOLD_LIMIT.
        let mut ever_synced = false;
        let mut holding_since: Option<tokio::time::Instant> = None;
        loop {
            let hold_deadline = holding_since.map(|t| t + HOLD_LIMIT);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = shared.1.notified() => {}
                () = async {
                    match hold_deadline {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            // After the first complete picture, let a burst of events settle. Before it, nothing
            // is acted on until every piece is read (`synced`), and each list arrives whole
            // (buffered to `InitDone`), so the first picture is published as soon as it is complete:
            // a gated node's start-up waits for no timer.
            if ever_synced {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (loaded, wanted, generation) = {
                let state = shared
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut loaded = build(&state);
                let wanted = references(
                    &loaded.inventory,
                    loaded.node_labels.as_ref(),
                    every_service_account,
                );
                loaded.synced = state.pullsets_synced
                    && state.node_synced
                    && wanted.is_subset(&state.objects_synced);
                (loaded, wanted, state.generation)
            };
            for key in &wanted {
                referenced.entry(key.clone()).or_insert_with(|| {
                    tokio::spawn(watch_one(
                        client.clone(),
                        key.0,
                        key.1.clone(),
                        shared.clone(),
                    ))
                });
            }
            referenced.retain(|key, task| {
                let keep = wanted.contains(key);
                if !keep {
                    task.abort();
                    with_state(&shared, |s| {
                        s.problems.remove(&problem_key(key.0, &key.1));
                        s.objects_synced.remove(key);
                        if key.0 == 's' {
                            s.secrets.remove(&key.1);
                        } else {
                            s.service_accounts.remove(&key.1);
                        }
                    });
                }
                keep
            });
            if generation != published {
                if loaded.synced {
                    ever_synced = true;
                    holding_since = None;
                } else if ever_synced {
                    let since = *holding_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() < HOLD_LIMIT {
                        continue;
                    }
                    tracing::warn!(
                        "objects referenced by PullSets were not read within {HOLD_LIMIT:?}; acting without them"
                    );
                    holding_since = None;
                }
                published = generation;
                tx.send_replace(Arc::new(loaded));
            }
        }
        for task in tasks.into_iter().chain(referenced.into_values()) {
            task.abort();
        }
    });
    (rx, task)
}

/// Secrets (`s`) and ServiceAccounts (`a`) the valid PullSets selecting this node reference: the
/// ServiceAccount a set falls back to, and the secrets the pod rule picks (the same rule credential
/// resolution uses). A PullSet aimed at another node pool references nothing here, so this node
/// neither watches nor holds its Secrets; until the Node is read (`node_labels` `None`) nothing is
/// referenced. With `every_service_account`, each set's ServiceAccount is referenced whatever
/// its own `imagePullSecrets` (for service-account token credential providers).
fn references(
    inventory: &Inventory,
    node_labels: Option<&BTreeMap<String, String>>,
    every_service_account: bool,
) -> BTreeSet<(char, ObjectKey)> {
    let mut out = BTreeSet::new();
    let Some(labels) = node_labels else {
        return out;
    };
    // The one selection rule (`model::node`); the name plays no part in it.
    let node = NodeInfo {
        name: String::new(),
        labels: labels.clone(),
    };
    for set in inventory
        .pullsets
        .values()
        .filter(|set| node.matches(&set.spec.node_selector))
    {
        let ns = &set.key.namespace;
        if every_service_account || set.spec.image_pull_secrets.is_empty() {
            out.insert((
                'a',
                ObjectKey::new(ns.clone(), set.service_account().to_string()),
            ));
        }
        for name in pull_secret_names(inventory, set, &mut Vec::new()) {
            out.insert(('s', ObjectKey::new(ns.clone(), name)));
        }
    }
    out
}

fn build(state: &State) -> Snapshot {
    let mut loaded = Snapshot::default();
    for (key, set) in &state.pullsets {
        match pullset::validate(key.clone(), set.spec.clone()) {
            Ok(mut valid) => {
                valid.uid = set.metadata.uid.clone();
                loaded
                    .warnings
                    .extend(valid.warnings.iter().map(|w| format!("PullSet {key}: {w}")));
                loaded.inventory.pullsets.insert(key.clone(), valid);
            }
            Err(errors) => loaded
                .problems
                .extend(errors.into_iter().map(|e| SnapshotProblem {
                    file: PathBuf::new(),
                    document: None,
                    object: Some(format!("PullSet {key}")),
                    field: Some(e.field),
                    message: e.message,
                })),
        }
    }
    loaded
        .problems
        .extend(state.pullset_problems.values().cloned());
    loaded.inventory.secrets = state.secrets.clone();
    for (key, problem) in &state.problems {
        if let Some(object) = key.strip_prefix("s/").and_then(|k| k.split_once('/')) {
            loaded
                .inventory
                .forbidden
                .insert(ObjectKey::new(object.0, object.1), problem.message.clone());
        }
    }
    loaded.inventory.service_accounts = state.service_accounts.clone();
    loaded.problems.extend(state.problems.values().cloned());
    loaded.node_labels = state.node_labels.clone();
    loaded.node_facts = state.node_facts.clone();
    loaded.fingerprint = format!("cluster-{}", state.generation);
    loaded
}

fn object_key(meta: &kube::api::ObjectMeta) -> Option<ObjectKey> {
    Some(ObjectKey::new(meta.namespace.clone()?, meta.name.clone()?))
}

/// A PullSet as the API server sent it, decoded on its own: a bad object (a field from a newer
/// CRD during a rollout, a type the schema let through) is a problem naming the object and the
/// field (serde's path), and every other PullSet is kept. Watching the typed `PullSet` would fail
/// the whole list on one such object, and every node would lose every PullSet.
fn decode_pullset(object: DynamicObject) -> Option<(ObjectKey, Result<PullSet, SnapshotProblem>)> {
    let key = object_key(&object.metadata)?;
    let problem = |field: Option<String>, message: String| SnapshotProblem {
        file: PathBuf::new(),
        document: None,
        object: Some(format!("PullSet {key}")),
        field,
        message,
    };
    let Some(spec) = object.data.get("spec").cloned() else {
        return Some((
            key.clone(),
            Err(problem(Some("spec".into()), "missing".into())),
        ));
    };
    let decoded = match serde_path_to_error::deserialize::<_, PullSetSpec>(spec) {
        Ok(spec) => Ok(PullSet {
            metadata: object.metadata,
            spec,
        }),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            Err(problem(Some(field), e.into_inner().to_string()))
        }
    };
    Some((key, decoded))
}

/// Takes one decoded PullSet: kept, or its problem recorded (and an older good copy dropped: the
/// object as it is now is the one that counts).
fn put_pullset(s: &mut State, key: ObjectKey, decoded: Result<PullSet, SnapshotProblem>) {
    match decoded {
        Ok(set) => {
            s.pullset_problems.remove(&key);
            s.pullsets.insert(key, set);
        }
        Err(problem) => {
            s.pullsets.remove(&key);
            s.pullset_problems.insert(key, problem);
        }
    }
}

async fn watch_pullsets(client: Client, shared: Shared) {
    let resource = kube::api::ApiResource::erase::<PullSet>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let mut buffer: Option<State> = None;
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer = Some(State::default()),
            Ok(Event::InitApply(object)) => {
                if let (Some(b), Some((key, decoded))) = (buffer.as_mut(), decode_pullset(object)) {
                    put_pullset(b, key, decoded);
                }
            }
            Ok(Event::InitDone) => {
                let listed = buffer.take().unwrap_or_default();
                with_state(&shared, |s| {
                    s.pullsets = listed.pullsets;
                    s.pullset_problems = listed.pullset_problems;
                    s.pullsets_synced = true;
                });
            }
            Ok(Event::Apply(object)) => {
                if let Some((key, decoded)) = decode_pullset(object) {
                    with_state(&shared, |s| put_pullset(s, key, decoded));
                }
            }
            Ok(Event::Delete(object)) => {
                if let Some(key) = object_key(&object.metadata) {
                    with_state(&shared, |s| {
                        s.pullsets.remove(&key);
                        s.pullset_problems.remove(&key);
                    });
                }
            }
            Err(e) => {
                shared.2.record_watch(&e);
                tracing::warn!(error = %e, "PullSet watch failed; retrying");
            }
        }
    }
}

async fn watch_node(client: Client, node_name: String, shared: Shared) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(node) | Event::InitApply(node)) => {
                let kubelet_version = node
                    .status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|i| i.kubelet_version.clone())
                    .filter(|v| !v.is_empty());
                let facts = NodeFacts {
                    kubelet_version,
                    taints: node
                        .spec
                        .and_then(|spec| spec.taints)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|t| NodeTaint {
                            key: t.key,
                            value: t.value,
                            effect: t.effect,
                        })
                        .collect(),
                };
                let labels = node.metadata.labels.unwrap_or_default();
                with_state_if(&shared, |s| s.set_node(labels, facts));
            }
            Ok(Event::InitDone) => with_state(&shared, |s| s.node_synced = true),
            Ok(_) => {}
            Err(e) => {
                shared.2.record_watch(&e);
                tracing::warn!(node = %node_name, error = %e, "Node watch failed; retrying");
            }
        }
    }
}

fn problem_key(kind: char, key: &ObjectKey) -> String {
    format!("{kind}/{key}")
}

/// The pacing of a by-name watch after it breaks: the first retry after [`WATCH_RETRY`]`.0`,
/// doubling to `.1`; a 403 (a namespace that did not opt in) or a 404 waits the cap straight away
/// (`decide::retry`, the one home of pacing): a cluster admin has to act, and a fleet of nodes
/// re-asking every second would only load the API server. Two minutes keeps an opt-in noticed
/// within a few minutes while a denied namespace costs each node about one request a minute.
pub const WATCH_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(120));

/// Waits out the pacing after each result of a watch stream: an error waits its [`Retry`]
/// delay before the stream is polled again (kube's watcher retries on the next poll), an event
/// resets it.
struct Pacer {
    retry: Retry,
}

impl Pacer {
    fn new() -> Self {
        Self {
            retry: Retry::new(WATCH_RETRY.0, WATCH_RETRY.1),
        }
    }

    async fn after(&mut self, failure: Option<ApiErrorKind>) {
        match failure {
            None => self.retry.succeeded(),
            Some(kind) => {
                let delay = self.retry.failed_with(kind, tokio::time::Instant::now());
                tracing::debug!(kind = kind.label(), ?delay, "watch paused before retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One Secret (`s`) or ServiceAccount (`a`), watched by name in its namespace. A relist (after a
/// restart of the watch, or a 410 once the server compacted) replaces what is held: an object
/// deleted while the watch was down is forgotten at `InitDone`, as the PullSet watch does.
async fn watch_one(client: Client, kind: char, key: ObjectKey, shared: Shared) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let (resource, verb_hint) = if kind == 's' {
        ("secrets", "get, list and watch on secrets")
    } else {
        ("serviceaccounts", "get, list and watch on serviceaccounts")
    };
    macro_rules! run {
        ($ty:ty, $apply:expr, $delete:expr) => {{
            let api: Api<$ty> = Api::namespaced(client, &key.namespace);
            let mut stream = watcher::watcher(api, config).boxed();
            let mut pacer = Pacer::new();
            // During a relist: the object when the list held it.
            let mut relist: Option<Option<$ty>> = None;
            while let Some(event) = stream.next().await {
                let failure = match event {
                    Ok(Event::Init) => {
                        relist = Some(None);
                        None
                    }
                    Ok(Event::InitApply(o)) => {
                        if let Some(held) = relist.as_mut() {
                            *held = Some(o);
                        }
                        None
                    }
                    Ok(Event::InitDone) => {
                        let listed = relist.take().flatten();
                        let (apply, delete) = ($apply, $delete);
                        with_state(&shared, |s| {
                            s.problems.remove(&problem_key(kind, &key));
                            match listed {
                                Some(o) => apply(s, o),
                                None => delete(s),
                            }
                            s.objects_synced.insert((kind, key.clone()));
                        });
                        None
                    }
                    Ok(Event::Apply(o)) => {
                        let apply = $apply;
                        with_state(&shared, |s| {
                            s.problems.remove(&problem_key(kind, &key));
                            apply(s, o);
                        });
                        None
                    }
                    Ok(Event::Delete(_)) => {
                        let delete = $delete;
                        with_state(&shared, |s| delete(s));
                        None
                    }
                    Err(e) => {
                        // By the status code only: a 410's message may hold a resource
                        // version such as `14031234`.
                        let error_kind = crate::adapters::kube::api_errors::watch_kind(&e);
                        if error_kind == ApiErrorKind::Forbidden {
                            let message = format!(
                                "Forbidden: pullgate may not read {resource} in namespace {}: grant it {verb_hint} (manifests/namespace-access, applied in that namespace)",
                                key.namespace
                            );
                            with_state(&shared, |s| {
                                s.objects_synced.insert((kind, key.clone()));
                                s.problems.insert(
                                    problem_key(kind, &key),
                                    SnapshotProblem {
                                        file: PathBuf::new(),
                                        document: None,
                                        object: Some(format!("{} {key}", if kind == 's' { "Secret" } else { "ServiceAccount" })),
                                        field: None,
                                        message,
                                    },
                                );
                            });
                        } else {
                            shared.2.record_watch(&e);
                            tracing::warn!(object = %key, error = %e, "watch failed; retrying");
                        }
                        Some(error_kind)
                    }
                };
                pacer.after(failure).await;
            }
        }};
    }
    let k = key.clone();
    if kind == 's' {
        run!(
            Secret,
            |s: &mut State, o: Secret| {
                s.secrets.insert(k.clone(), secret_object(k.clone(), o));
            },
            |s: &mut State| {
                s.secrets.remove(&k);
            }
        )
    } else {
        run!(
            ServiceAccount,
            |s: &mut State, o: ServiceAccount| {
                s.service_accounts
                    .insert(k.clone(), service_account_object(k.clone(), o));
            },
            |s: &mut State| {
                s.service_accounts.remove(&k);
            }
        )
    }
}

/// A pod's own `imagePullSecrets`, its ServiceAccount (`default` when unset) and the images it
/// pulls with them (containers and image volumes), for `diagnose`.
pub async fn get_pod_pull_spec(
    client: &Client,
    key: &ObjectKey,
) -> Result<
    (
        Vec<String>,
        String,
        Vec<crate::model::pod_images::PodImageUse>,
    ),
    ClusterError,
> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &key.namespace);
    let pod = api
        .get(&key.name)
        .await
        .map_err(|source| ClusterError::Pod {
            pod: key.clone(),
            source,
        })?;
    let spec = pod.spec.unwrap_or_default();
    let images = crate::model::pod_images::of_pod_spec(&spec);
    Ok((
        spec.image_pull_secrets
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect(),
        spec.service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        images,
    ))
}

/// One-shot reads for `diagnose`: the ServiceAccount and the Secrets the pod rule would use, each
/// by name (`get`, never a list). What cannot be read is recorded as forbidden or left missing.
pub async fn read_pull_objects(
    client: &Client,
    namespace: &str,
    service_account: &str,
    pod_secrets: &[String],
) -> Inventory {
    let mut inventory = Inventory::default();
    let sa_key = ObjectKey::new(namespace, service_account);
    let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match sa_api.get(service_account).await {
        Ok(sa) => {
            let object = service_account_object(sa_key.clone(), sa);
            inventory.service_accounts.insert(sa_key, object);
        }
        Err(e) if is_forbidden(&e) => {
            inventory.forbidden.insert(sa_key, e.to_string());
        }
        Err(_) => {}
    }
    let names: Vec<String> = if pod_secrets.is_empty() {
        inventory
            .service_accounts
            .values()
            .flat_map(|sa| sa.image_pull_secrets.clone())
            .collect()
    } else {
        pod_secrets.to_vec()
    };
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in names {
        let key = ObjectKey::new(namespace, &name);
        match secret_api.get(&name).await {
            Ok(secret) => {
                let object = secret_object(key.clone(), secret);
                inventory.secrets.insert(key, object);
            }
            Err(e) if is_forbidden(&e) => {
                inventory.forbidden.insert(
                    key,
                    format!("pullgate may not read secrets in namespace {namespace}: {e}"),
                );
            }
            Err(_) => {}
        }
    }
    inventory
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 403)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pullset::{ImageEntry, LocalObjectReference, PullSetSpec};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn inventory() -> Inventory {
        let mut inventory = Inventory::default();
        for (ns, selector, secret) in [
            ("general", labels(&[]), Some("general-cred")),
            ("gpu", labels(&[("pool", "gpu")]), Some("gpu-cred")),
            ("gpu-sa", labels(&[("pool", "gpu")]), None),
        ] {
            let key = ObjectKey::new(ns, "set");
            let spec = PullSetSpec {
                service_account_name: None,
                image_pull_secrets: secret
                    .map(|name| LocalObjectReference { name: name.into() })
                    .into_iter()
                    .collect(),
                node_selector: selector,
                images: vec![ImageEntry {
                    image: "registry.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
                }],
                pre_pull: true,
                gate: true,
                pin: false,
                canary: None,
            };
            let valid = pullset::validate(key.clone(), spec).unwrap();
            inventory.pullsets.insert(key, valid);
        }
        inventory
    }

    #[test]
    fn only_pullsets_selecting_this_node_reference_objects() {
        let key = |kind, ns, name| (kind, ObjectKey::new(ns, name));
        for (node, expected) in [
            (None, vec![]),
            (
                Some(labels(&[("pool", "general")])),
                vec![key('s', "general", "general-cred")],
            ),
            (
                Some(labels(&[("pool", "gpu"), ("zone", "a")])),
                vec![
                    key('s', "general", "general-cred"),
                    key('s', "gpu", "gpu-cred"),
                    key('a', "gpu-sa", "default"),
                ],
            ),
        ] {
            let wanted: Vec<_> = references(&inventory(), node.as_ref(), false)
                .into_iter()
                .collect();
            let mut expected = expected;
            expected.sort();
            assert_eq!(wanted, expected, "node labels {node:?}");
        }
        // For service-account token providers: the ServiceAccount of a set with its own
        // imagePullSecrets too, still only of the sets selecting this node.
        let node = labels(&[("pool", "general")]);
        let wanted: Vec<_> = references(&inventory(), Some(&node), true)
            .into_iter()
            .collect();
        assert_eq!(
            wanted,
            [
                key('a', "general", "default"),
                key('s', "general", "general-cred")
            ]
        );
    }

    fn dynamic(name: &str, spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "pullgate.io/v1alpha1", "kind": "PullSet",
            "metadata": {"name": name, "namespace": "team", "uid": format!("uid-{name}")},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn pullsets_are_decoded_one_by_one_and_a_bad_one_names_its_field() {
        let image = serde_json::json!([{"image": "reg.io/a:1"}]);
        let mut state = State::default();
        for (name, spec) in [
            ("good", serde_json::json!({"images": image})),
            (
                "newer",
                serde_json::json!({"images": image, "priority": "high"}),
            ),
            (
                "typo",
                serde_json::json!({"images": [{"image": "reg.io/a:1", "pullPolicy": "Always"}]}),
            ),
            (
                "wrong-type",
                serde_json::json!({"images": image, "gate": "yes"}),
            ),
        ] {
            let (key, decoded) = decode_pullset(dynamic(name, spec)).unwrap();
            put_pullset(&mut state, key, decoded);
        }
        let snapshot = build(&state);
        assert_eq!(
            snapshot.inventory.pullsets.keys().collect::<Vec<_>>(),
            [&ObjectKey::new("team", "good")]
        );
        assert_eq!(
            snapshot.inventory.pullsets[&ObjectKey::new("team", "good")]
                .uid
                .as_deref(),
            Some("uid-good")
        );
        let problems: Vec<(String, String)> = snapshot
            .problems
            .iter()
            .map(|p| (p.object.clone().unwrap(), p.field.clone().unwrap()))
            .collect();
        assert_eq!(
            problems,
            [
                (
                    "PullSet team/newer".to_string(),
                    "spec.priority".to_string()
                ),
                (
                    "PullSet team/typo".to_string(),
                    "spec.images[0].pullPolicy".to_string()
                ),
                (
                    "PullSet team/wrong-type".to_string(),
                    "spec.gate".to_string()
                ),
            ],
            "{:#?}",
            snapshot.problems
        );
        assert!(
            snapshot.problems[0]
                .message
                .contains("unknown field `priority`"),
            "{}",
            snapshot.problems[0]
        );
        // Fixed in place: the good copy replaces the problem.
        let (key, decoded) =
            decode_pullset(dynamic("newer", serde_json::json!({"images": image}))).unwrap();
        put_pullset(&mut state, key, decoded);
        let snapshot = build(&state);
        assert_eq!(snapshot.inventory.pullsets.len(), 2);
        assert_eq!(snapshot.problems.len(), 2);
    }

    #[test]
    fn only_labels_and_taints_change_the_node() {
        let taint = |key: &str| NodeFacts {
            kubelet_version: None,
            taints: vec![NodeTaint {
                key: key.into(),
                value: None,
                effect: "NoSchedule".into(),
            }],
        };
        let mut state = State::default();
        assert!(state.set_node(labels(&[("pool", "a")]), taint("pullgate")));
        // The same labels and taints again (a heartbeat, status.images, our own patch).
        assert!(!state.set_node(labels(&[("pool", "a")]), taint("pullgate")));
        assert!(state.set_node(labels(&[("pool", "b")]), taint("pullgate")));
        assert!(state.set_node(labels(&[("pool", "b")]), taint("other")));
        assert!(state.set_node(labels(&[("pool", "b")]), NodeFacts::default()));
        assert!(!state.set_node(labels(&[("pool", "b")]), NodeFacts::default()));
    }

    /// A watch that keeps failing with `kind`, polled as `watch_one` polls it for `window` of
    /// paused time: how many requests it makes.
    async fn requests_in(kind: ApiErrorKind, window: Duration) -> u32 {
        let end = tokio::time::Instant::now() + window;
        let mut pacer = Pacer::new();
        let mut requests = 0;
        while tokio::time::Instant::now() < end {
            requests += 1;
            pacer.after(Some(kind)).await;
        }
        requests
    }

    #[tokio::test(start_paused = true)]
    async fn a_forbidden_watch_is_retried_at_the_cap_not_at_full_rate() {
        let hour = Duration::from_secs(3600);
        let forbidden = requests_in(ApiErrorKind::Forbidden, hour).await;
        // Every delay is in [cap/2, cap): at most one request a minute, at least one every two.
        assert!(
            (30..=61).contains(&forbidden),
            "{forbidden} requests an hour"
        );
        // From the very first failure: within the first half cap only the first request.
        assert_eq!(
            requests_in(ApiErrorKind::Forbidden, WATCH_RETRY.1 / 2).await,
            1
        );
        // A transient failure starts fast and doubles up to the same cap.
        let transient = requests_in(ApiErrorKind::Server, WATCH_RETRY.1 / 2).await;
        assert!(transient > 2, "{transient}");
        let server = requests_in(ApiErrorKind::Server, hour).await;
        assert!(server <= 61 + 8, "{server} requests an hour");
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_resets_the_pacing() {
        let mut pacer = Pacer::new();
        pacer.after(Some(ApiErrorKind::Forbidden)).await;
        pacer.after(None).await;
        let start = tokio::time::Instant::now();
        pacer.after(Some(ApiErrorKind::Server)).await;
        assert!(start.elapsed() < WATCH_RETRY.0, "{:?}", start.elapsed());
    }
}
