//! Cluster source: the same objects as the manifest directory, from the API server. The only
//! module that knows kube's client and runtime types.
//!
//! Least privilege: PullSets in all namespaces; this node only (`metadata.name` field selector);
//! and only the Secrets and ServiceAccounts that PullSets reference, each watched by name in its
//! namespace — never a cluster-wide Secret list or watch. kube's watchers resume from the last
//! resourceVersion and re-list on `410 Gone`, with backoff on errors. A `403` is reported as a
//! problem naming the namespace and the permission it lacks; every other namespace keeps working.

use crate::adapters::kube::api_errors::ApiErrors;
use crate::decide::credentials::pull_secret_names;
use crate::model::inventory::{Inventory, ObjectKey, ServiceAccountObject};
use crate::model::inventory::{secret_object, service_account_object};
use crate::model::node::{NodeFacts, NodeTaint};
use crate::model::pullset::{self, PullSet};
use crate::model::snapshot::{Snapshot, SnapshotProblem};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Secret, ServiceAccount};
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
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    #[error("cannot read pod {pod}: {source}")]
    Pod { pod: ObjectKey, source: kube::Error },
}

/// A Kubernetes client from `--kubeconfig`, else in-cluster configuration, else `KUBECONFIG`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ClusterError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ClusterError::Config(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    super::identify(&mut config);
    Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))
}

#[derive(Default)]
struct State {
    pullsets: BTreeMap<ObjectKey, PullSet>,
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

/// The state, its change signal, and the count of failed requests and broken watches.
type Shared = Arc<(Mutex<State>, Notify, Arc<ApiErrors>)>;

fn with_state(shared: &Shared, f: impl FnOnce(&mut State)) {
    let (lock, notify, _) = &**shared;
    let mut state = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut state);
    state.generation += 1;
    notify.notify_one();
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
            // Let a burst of events settle.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (loaded, wanted, generation) = {
                let state = shared
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut loaded = build(&state);
                let wanted = references(&loaded.inventory);
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

/// Secrets (`s`) and ServiceAccounts (`a`) the valid PullSets reference: the ServiceAccount a set
/// falls back to, and the secrets the pod rule picks (the same rule credential resolution uses).
fn references(inventory: &Inventory) -> BTreeSet<(char, ObjectKey)> {
    let mut out = BTreeSet::new();
    for set in inventory.pullsets.values() {
        let ns = &set.key.namespace;
        if set.spec.image_pull_secrets.is_empty() {
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

async fn watch_pullsets(client: Client, shared: Shared) {
    let api: Api<PullSet> = Api::all(client);
    let mut buffer: Option<BTreeMap<ObjectKey, PullSet>> = None;
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => buffer = Some(BTreeMap::new()),
            Ok(Event::InitApply(set)) => {
                if let (Some(b), Some(key)) = (buffer.as_mut(), object_key(&set.metadata)) {
                    b.insert(key, set);
                }
            }
            Ok(Event::InitDone) => {
                let sets = buffer.take().unwrap_or_default();
                with_state(&shared, |s| {
                    s.pullsets = sets;
                    s.pullsets_synced = true;
                });
            }
            Ok(Event::Apply(set)) => {
                if let Some(key) = object_key(&set.metadata) {
                    with_state(&shared, |s| {
                        s.pullsets.insert(key, set);
                    });
                }
            }
            Ok(Event::Delete(set)) => {
                if let Some(key) = object_key(&set.metadata) {
                    with_state(&shared, |s| {
                        s.pullsets.remove(&key);
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
                let facts = NodeFacts {
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
                with_state(&shared, |s| {
                    s.node_labels = Some(labels);
                    s.node_facts = Some(facts);
                });
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

/// One Secret (`s`) or ServiceAccount (`a`), watched by name in its namespace.
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
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::Apply(o) | Event::InitApply(o)) => {
                        let apply = $apply;
                        with_state(&shared, |s| {
                            s.problems.remove(&problem_key(kind, &key));
                            apply(s, o);
                        });
                    }
                    Ok(Event::Delete(_)) => {
                        let delete = $delete;
                        with_state(&shared, |s| delete(s));
                    }
                    Ok(Event::InitDone) => with_state(&shared, |s| {
                        s.objects_synced.insert((kind, key.clone()));
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        // By the status code only: a 410's message may hold a resource
                        // version such as `14031234`.
                        let forbidden = crate::adapters::kube::api_errors::watch_kind(&e)
                            == crate::decide::retry::ApiErrorKind::Forbidden;
                        if forbidden {
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
                    }
                }
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

/// A pod's own `imagePullSecrets` and its ServiceAccount (`default` when unset), for `diagnose`.
pub async fn get_pod_pull_spec(
    client: &Client,
    key: &ObjectKey,
) -> Result<(Vec<String>, String), ClusterError> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &key.namespace);
    let pod = api
        .get(&key.name)
        .await
        .map_err(|source| ClusterError::Pod {
            pod: key.clone(),
            source,
        })?;
    let spec = pod.spec.unwrap_or_default();
    Ok((
        spec.image_pull_secrets
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .collect(),
        spec.service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
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
