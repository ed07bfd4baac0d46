//! `pullgate run`: wires sources → desired state → pre-pull → reporters, and owns the loop.

use crate::adapters::cri::{CriClient, CriTimeouts};
use crate::adapters::files::watch::{WatchConfig, WatchError, watch_dir};
use crate::adapters::serve::http::{Readiness, Refresh};
use crate::adapters::serve::json_lines::JsonLines;
use crate::adapters::serve::local_api::{ApiState, Canaries};
use crate::adapters::serve::metrics::Metrics;
use crate::cli::RunArgs;
use crate::daemon::canary_scheduler::{CanaryControl, CanarySink, ServiceConfig};
use crate::daemon::node_reporter::{Outputs, Reports};
use crate::daemon::watchdog::{Beat, Beating, EndGuard, Heartbeats, TaskPanicked};
use crate::decide::canary::runner::{CanaryOutcome, CanaryRunner};
use crate::decide::canary::transition::Transitions;
use crate::decide::conditions::Tracker;
use crate::decide::credentials::{CredentialResolver, KubeletResolver};
use crate::decide::desired::prepull_images;
use crate::decide::kubelet_access::KubeletView;
use crate::decide::node_report::NodeReportConfig;
use crate::decide::prepull::{PassSummary, PrePullConfig, PrePuller, RetryPolicy};
use crate::decide::watchdog::{Bounds, Task};
use crate::model::inventory::ObjectKey;
use crate::model::node::NodeInfo;
use crate::model::outcome::{SourceProblem, now_rfc3339};
use crate::model::snapshot::Snapshot;
use crate::model::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] crate::adapters::kube::source::ClusterError),
    #[error("cannot draw the /metrics token cache key from /dev/urandom: {0}")]
    MetricsKey(std::io::Error),
    #[error("the cluster source did not sync within {0:?}")]
    NotSynced(Duration),
    #[error("no node name: pass --node-name or set PULLGATE_NODE_NAME")]
    NoNodeName,
    #[error(transparent)]
    Source(#[from] WatchError),
    #[error(transparent)]
    Credentials(#[from] crate::adapters::credential_plugin::PluginError),
    #[error(transparent)]
    Registry(#[from] crate::adapters::registry::RegistryError),
    #[error(transparent)]
    Http(#[from] crate::adapters::serve::http::HttpError),
    #[error(transparent)]
    LocalApi(#[from] crate::adapters::serve::local_api::LocalApiError),
    #[error(transparent)]
    Panicked(#[from] TaskPanicked),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// `--once`: every outcome Ok and every object valid.
    AllOk,
    /// `--once`: something failed.
    SomeFailed,
    /// The daemon was asked to stop.
    Stopped,
}

/// Runs the agent until a signal (or, with `--once`, one pass).
pub async fn run(args: RunArgs) -> Result<RunOutcome, RunError> {
    let RunArgs {
        manifests,
        kubeconfig,
        once,
        node,
        kubelet,
        cri,
        prepull,
        credentials,
        registry,
        rotation_jitter,
        min_canary_interval,
        cluster,
        metrics_addr,
        http,
        api,
        watchdog_grace,
    } = args;
    let node_name = crate::model::node::node_name(node.node_name, |var| std::env::var(var).ok())
        .ok_or(RunError::NoNodeName)?;
    let node = NodeInfo {
        name: node_name,
        labels: node.node_labels.0,
    };

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    // Orphans of credential plugins come to the agent (PID 1 in its container) and are reaped.
    if let Err(e) = crate::adapters::credential_plugin::reaper::start(cancel.clone()) {
        tracing::warn!(error = %e, "what credential plugins leave behind may stay as zombies");
    }

    let client = CriClient::new(
        cri.cri_endpoint.clone(),
        CriTimeouts {
            call: *cri.cri_timeout,
            pull: *cri.pull_timeout,
            reconnect_budget: *cri.cri_reconnect_budget,
        },
    )
    .with_host_root(prepull.host_root.clone());
    let out = Outputs::default();
    let metrics = out.metrics.clone();
    let api_errors = Arc::new(crate::adapters::kube::api_errors::ApiErrors::default());
    let readiness = Readiness::default();
    let heartbeats = Heartbeats::default();
    let bounds = Bounds {
        grace: *watchdog_grace,
    };
    // What the agent's own pins hold, counted by the pinner, exported by the metrics refresh.
    let pin_totals = Arc::new(crate::daemon::pins::PinTotals::default());
    let http_task = match metrics_addr.0 {
        Some(addr) => {
            let mode = http.metrics_auth.unwrap_or(if manifests.is_none() {
                crate::cli::MetricsAuthMode::Kubernetes
            } else {
                crate::cli::MetricsAuthMode::None
            });
            let auth = match mode {
                crate::cli::MetricsAuthMode::None => None,
                crate::cli::MetricsAuthMode::Kubernetes => {
                    let client =
                        crate::adapters::kube::source::client(kubeconfig.as_deref()).await?;
                    let key = crate::adapters::serve::metrics_auth::draw_key()
                        .map_err(RunError::MetricsKey)?;
                    Some(Arc::new(
                        crate::adapters::serve::metrics_auth::MetricsAuth::new(
                            Box::new(crate::adapters::kube::review::KubeReviewer::new(client)),
                            key,
                            crate::adapters::serve::metrics_auth::ReviewLimits {
                                burst: http.metrics_review_burst,
                                refill: *http.metrics_review_refill,
                                ..Default::default()
                            },
                        ),
                    ))
                }
            };
            let limits = crate::adapters::serve::http::HttpLimits {
                header_timeout: *http.http_header_timeout,
                max_connections: usize::from(http.http_max_connections),
            };
            let (cri, api, pins) = (client.clone(), api_errors.clone(), pin_totals.clone());
            let refresh: Refresh = Arc::new(move |m: &Metrics| {
                m.sync_cri_reconnects(cri.reconnects());
                m.image_fs(cri.image_fs_reading().as_ref());
                m.pinned(pins.images(), pins.bytes());
                for (kind, total) in api.counts() {
                    m.sync_apiserver_errors(kind, total);
                }
            });
            Some(
                crate::adapters::serve::http::serve(
                    addr,
                    readiness.clone(),
                    metrics.clone(),
                    refresh,
                    {
                        let heartbeats = heartbeats.clone();
                        Arc::new(move || heartbeats.check())
                    },
                    auth,
                    limits,
                    cancel.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let runtime_version = match client.version().await {
        Ok(v) => {
            readiness.set_runtime_reachable(true);
            tracing::info!(
            endpoint = %client.endpoint(),
            runtime = %v.runtime_name,
            runtime_version = %v.runtime_version,
            cri_api = %v.runtime_api_version,
            "connected to container runtime"
            );
            Some(v)
        }
        Err(e) => {
            tracing::error!(error = %e, "container runtime not reachable; pulls will be retried");
            None
        }
    };

    // Standalone, the manifests directory is the node admin's: every namespace may gate.
    let gate_namespaces = if manifests.is_some() {
        crate::decide::gate::GateNamespaces::Any
    } else {
        crate::decide::gate::GateNamespaces::only(
            cluster.gate_namespaces.iter().map(String::as_str),
        )
    };
    // The canary scheduler runs a tainted node's gated start-up canaries at once.
    let gate_wait = crate::decide::gate::GateWait {
        namespaces: gate_namespaces.clone(),
        taint_key: cluster.taint_key.clone(),
    };
    // Pins: the same rule for who may (standalone: the node admin's directory, every namespace).
    let pinner = {
        let pin_namespaces = if manifests.is_some() {
            crate::decide::gate::GateNamespaces::Any
        } else {
            crate::decide::gate::GateNamespaces::only(
                cluster.pin_namespaces.iter().map(String::as_str),
            )
        };
        let support = runtime_version
            .as_ref()
            .map_or(crate::decide::pin::PinSupport::Supported, |v| {
                crate::decide::pin::support(&v.runtime_name, &v.runtime_version)
            });
        crate::daemon::pins::Pinner::new(
            Arc::new(crate::adapters::containerd::ContainerdPins::new(
                &cri.cri_endpoint,
                *cri.cri_timeout,
            )),
            Arc::new(client.clone()),
            support,
            pin_namespaces,
            prepull.min_free_disk,
            pin_totals,
        )
    };
    // ServiceAccount tokens for the credential providers in service-account token mode: cluster
    // mode only.
    let mut tokens: Option<Arc<dyn crate::decide::credentials::ServiceAccountTokens>> = None;
    let (mut sources, source_task, reports, reports_task) = match manifests {
        Some(dir) => {
            let (rx, task) = watch_dir(dir, WatchConfig::default(), cancel.clone())?;
            (rx, task, Reports::standalone(out.clone()), None)
        }
        None => {
            let client = crate::adapters::kube::source::client(kubeconfig.as_deref()).await?;
            // Service-account token providers need each PullSet's ServiceAccount, and tokens.
            let sa_tokens =
                crate::adapters::credential_plugin::uses_service_account_tokens(&credentials)?;
            if sa_tokens {
                tokens = Some(crate::adapters::kube::token_request::TokenRequests::shared(
                    client.clone(),
                ));
            }
            let (mut rx, task) = crate::adapters::kube::source::watch_cluster_with(
                client.clone(),
                node.name.clone(),
                api_errors.clone(),
                cancel.clone(),
                sa_tokens,
            );
            // Act on a complete picture: every PullSet, the Node, every referenced object. The
            // daemon waits as long as it takes (an API server that is away is retried, and a
            // restart would not help); `--once` gives up after a minute.
            let started = tokio::time::Instant::now();
            let limit = Duration::from_secs(60);
            loop {
                let wait = tokio::time::timeout(limit, async {
                    while !rx.borrow_and_update().synced {
                        if rx.changed().await.is_err() {
                            return false;
                        }
                    }
                    true
                });
                let synced = tokio::select! {
                    () = cancel.cancelled() => return Ok(RunOutcome::Stopped),
                    synced = wait => synced,
                };
                match synced {
                    Ok(true) => break,
                    Ok(false) => return Err(RunError::NotSynced(started.elapsed())),
                    Err(_) if once => return Err(RunError::NotSynced(limit)),
                    Err(_) => tracing::warn!(
                        waited = %humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                        "still waiting for the API server to list PullSets, this Node and the objects they reference"
                    ),
                }
            }
            // Conditions, Events and the gate: written in order by one task.
            let beat = heartbeats.watch(
                Task::NodeReporter,
                bounds.node_reporter(*cluster.condition_heartbeat),
            );
            let (reports, reports_task) = crate::daemon::node_reporter::run_cluster(
                out.clone(),
                api_errors.clone(),
                crate::adapters::kube::NodeWriters::new(client, &node.name),
                node.clone(),
                NodeReportConfig {
                    node: node.name.clone(),
                    taint_key: cluster.taint_key,
                    gate_timeout: *cluster.gate_timeout,
                    gate_timeout_action: cluster.gate_timeout_action.into(),
                    gate_namespaces: gate_namespaces.clone(),
                    heartbeat: *cluster.condition_heartbeat,
                    event_burst: cluster.event_burst,
                    event_refill: *cluster.event_refill,
                },
                rx.clone(),
                beat,
            );
            (rx, task, reports, Some(reports_task))
        }
    };
    let prepull_beat = heartbeats.watch(
        Task::Prepull,
        bounds.prepull(
            (*cri.pull_timeout).max(*cri.cri_timeout),
            *cri.cri_reconnect_budget,
            *prepull.retry_max_delay,
        ),
    );
    let engine = PrePuller::new(
        Arc::new(Beating {
            inner: client.clone(),
            beat: prepull_beat.clone(),
        }),
        PrePullConfig {
            max_parallel: usize::from(prepull.max_parallel_pulls),
            retry: RetryPolicy {
                attempts: prepull.pull_attempts,
                min_delay: *prepull.retry_min_delay,
                max_delay: *prepull.retry_max_delay,
            },
            min_free_disk: prepull.min_free_disk,
        },
        node.name.clone(),
    );
    // A failed plugin run is an Event on the Node (the resolver outlives the reporter's senders,
    // so it holds a weak handle: it never keeps the reporter from its last flush).
    let plugin_failures: crate::decide::credentials::PluginFailureSink = {
        let reports = reports.downgrade();
        let node = node.name.clone();
        Arc::new(move |failure| {
            reports.event(crate::decide::event_policy::for_plugin_failure(
                &node, &failure,
            ));
        })
    };
    let resolver: Arc<KubeletResolver> =
        Arc::new(crate::adapters::credential_plugin::kubelet_resolver_with(
            &credentials,
            cancel.clone(),
            Some(plugin_failures),
            tokens,
        )?);
    let recheck: Duration = *prepull.recheck_interval;
    let mut images_ready = ImagesReady {
        tracker: Tracker::new("CriticalImagesReady"),
        gate_namespaces: gate_namespaces.clone(),
        kubelet: kubelet_view(&kubelet),
        warned: BTreeSet::new(),
    };

    // Canaries run beside the pre-pull loop (not in a one-shot bootstrap pass).
    let mut canary_control = None;
    let mut canary_task = if once {
        None
    } else {
        let beat = heartbeats.watch(
            Task::CanaryScheduler,
            // A probe (one credential tried) beats when it ends: it may last its whole
            // `--canary-timeout` (a `full` canary downloading its budget).
            bounds.canary(
                (*registry.registry_timeout).max(*registry.canary_timeout),
                *cri.pull_timeout,
                *cri.cri_reconnect_budget,
            ),
        );
        // Each registry reached as the runtime reaches it: its hosts.toml under the
        // config_path `--runtime-registry-config` names, the runtime reports, or its
        // configuration file sets.
        let runtime_registry = crate::adapters::containerd_config::RuntimeRegistry::discover(
            &client,
            runtime_version.as_ref(),
            registry.runtime_registry_config.clone(),
            &registry.runtime_config_file,
        )
        .await;
        let mirrors = runtime_registry.mirrors();
        let runner = Arc::new(CanaryRunner {
            probe: Beating {
                inner: crate::adapters::registry::RegistryClient::from_args(&registry)?
                    .with_runtime_registry(runtime_registry),
                beat: beat.clone(),
            },
            node: node.name.clone(),
            expiry_warning: *registry.expiry_warning,
            runtime: Some(Arc::new(Beating {
                inner: client.clone(),
                beat: beat.clone(),
            })
                as Arc<dyn crate::decide::runtime::ImageRuntime>),
            mirrors,
        });
        let sink: Arc<dyn CanarySink> = Arc::new(ReportingCanarySink {
            reports: reports.clone(),
            state: Mutex::new((Tracker::new("PullCredentialsValid"), Transitions::default())),
        });
        let config = ServiceConfig {
            node: node.clone(),
            rotation_window: *rotation_jitter,
            min_interval: *min_canary_interval,
            gate: Some(gate_wait),
            ..ServiceConfig::default()
        };
        let (control, control_end) = CanaryControl::new();
        canary_control = Some(control);
        let scheduler = crate::daemon::canary_scheduler::run_watched(
            runner,
            Arc::new(Beating {
                inner: resolver.clone(),
                beat: beat.clone(),
            }),
            sources.clone(),
            sink,
            config,
            control_end,
            cancel.clone(),
            beat.clone(),
        );
        Some(tokio::spawn(async move {
            let _ended = EndGuard(beat);
            scheduler.await;
        }))
    };

    let api_task = match &api.path.0 {
        Some(path) => Some(crate::adapters::serve::local_api::serve(
            path,
            ApiState {
                board: out.board.clone(),
                sources: sources.clone(),
                node: node.clone(),
                canaries: canary_control.map(|c| Arc::new(c) as Arc<dyn Canaries>),
                json: out.json.clone(),
            },
            cancel.clone(),
        )?),
        None => None,
    };

    let mut loaded = sources.borrow_and_update().clone();
    report_source(reports.json(), &node, &loaded);
    let prepull_resolver = Beating {
        inner: resolver.clone(),
        beat: prepull_beat.clone(),
    };
    let mut source_task = Some(source_task);
    let mut reports_task = reports_task;
    let prepull_loop = crate::daemon::watchdog::catch_panic("prepull", async {
        loop {
            prepull_beat.beat();
            let summary = pass(
                &engine,
                &prepull_resolver,
                &node,
                &loaded,
                &cancel,
                &mut images_ready,
                &reports,
                &pinner,
            )
            .await;
            if summary.cancelled {
                break RunOutcome::Stopped;
            }
            readiness.set_runtime_reachable(client.version().await.is_ok());
            readiness.set_first_pass_done();
            prepull_beat.beat();
            if once {
                let ok = summary.failures == 0 && loaded.problems.is_empty();
                tracing::info!(
                    outcomes = summary.outcomes,
                    failures = summary.failures,
                    manifest_problems = loaded.problems.len(),
                    "pass complete"
                );
                break if ok {
                    RunOutcome::AllOk
                } else {
                    RunOutcome::SomeFailed
                };
            }
            match wait_for_next_pass(&prepull_beat, recheck, &cancel, &mut sources).await {
                Wake::Stop => break RunOutcome::Stopped,
                Wake::Due => {}
                Wake::Changed => {
                    loaded = sources.borrow_and_update().clone();
                    report_source(reports.json(), &node, &loaded);
                }
            }
        }
    });
    // The loop, beside the spawned tasks it needs: a panic in any ends the agent, loudly.
    let result = tokio::select! {
        result = prepull_loop => result,
        panicked = panicked("canary-scheduler", &mut canary_task) => Err(panicked),
        panicked = panicked("node-reporter", &mut reports_task) => Err(panicked),
        panicked = panicked("sources", &mut source_task) => Err(panicked),
    };
    cancel.cancel();
    let result = match result {
        Ok(outcome) => outcome,
        Err(panicked) => return Err(panicked.into()),
    };
    if let Some(task) = source_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    if let Some(task) = canary_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // Let the last conditions and Events reach the API server before exiting.
    drop(reports);
    if let Some(task) = reports_task {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    if let Some(task) = api_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    Ok(result)
}

/// Why the pre-pull loop woke.
enum Wake {
    Stop,
    Due,
    Changed,
}

/// Waits until the next pass is due (`recheck` from now) or the sources change, beating while it
/// waits.
async fn wait_for_next_pass(
    beat: &Beat,
    recheck: Duration,
    cancel: &CancellationToken,
    sources: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>,
) -> Wake {
    let due = tokio::time::sleep(recheck);
    tokio::pin!(due);
    let mut ticker = beat.ticker();
    loop {
        beat.beat();
        tokio::select! {
            () = cancel.cancelled() => return Wake::Stop,
            () = &mut due => return Wake::Due,
            changed = sources.changed() => {
                return if changed.is_err() { Wake::Stop } else { Wake::Changed };
            }
            _ = ticker.tick() => {}
        }
    }
}

/// Resolves when the spawned task `task` panics (logged, naming it); pending otherwise, and once it
/// has returned the handle is spent (`None`), never polled again.
async fn panicked(
    task: &'static str,
    handle: &mut Option<tokio::task::JoinHandle<()>>,
) -> TaskPanicked {
    if let Some(h) = handle.as_mut() {
        let result = crate::daemon::watchdog::supervise(task, h).await;
        *handle = None;
        if let Err(panicked) = result {
            return panicked;
        }
        tracing::debug!(task, "task returned");
    }
    std::future::pending().await
}

/// Canary outcomes as JSON lines and Events, and `PullCredentialsValid` transitions.
struct ReportingCanarySink {
    reports: Reports,
    state: Mutex<(Tracker, Transitions)>,
}

impl ReportingCanarySink {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Tracker, Transitions)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CanarySink for ReportingCanarySink {
    fn outcome(&self, outcome: &CanaryOutcome) {
        self.reports.canary(outcome);
        let transition = self.lock().1.observe(outcome);
        transition.log(outcome);
        for event in crate::decide::event_policy::for_canary(outcome, transition) {
            self.reports.event(event);
        }
    }

    fn verdicts(&self, verdicts: &BTreeMap<(ObjectKey, String), Verdict>) {
        self.reports.canary_verdicts(verdicts);
        let all: Vec<Verdict> = verdicts.values().copied().collect();
        let failing: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| !v.is_ok())
            .map(|((k, image), _)| format!("{k} {image}"))
            .collect();
        let mut state = self.lock();
        state.1.retain(|slot| verdicts.contains_key(slot));
        let changed = state.0.observe(&all, &failing);
        drop(state);
        if let Some(condition) = changed {
            tracing::info!(status = ?condition.status, reason = %condition.reason, "PullCredentialsValid changed");
            self.reports.condition(condition);
        }
    }
}

/// `CriticalImagesReady`: the images of the PullSets that count toward the gate.
struct ImagesReady {
    tracker: Tracker,
    gate_namespaces: crate::decide::gate::GateNamespaces,
    /// Who may start what was pre-pulled (`kubelet_access` of every record).
    kubelet: KubeletView,
    /// The private images any pod may start, warned about (again when one comes back).
    warned: BTreeSet<String>,
}

/// The kubelet's configuration file, read once (the kubelet reads it at its own start): a file
/// that cannot be used is a warning, and every record's `kubelet_access` is `Unknown`.
fn kubelet_view(args: &crate::cli::KubeletArgs) -> KubeletView {
    let policy =
        args.kubelet_config.as_deref().and_then(
            |path| match crate::adapters::kubelet_config::read(path) {
                Ok(p) => {
                    tracing::info!(
                        file = %path.display(),
                        policy = %p.policy,
                        gate = ?p.gate_in_file,
                        "kubelet configuration read"
                    );
                    Some(p)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet_access is Unknown for every pre-pull");
                    None
                }
            },
        );
    KubeletView {
        policy,
        flag_version: args.kubelet_version,
    }
}

#[allow(clippy::too_many_arguments)]
async fn pass<R: crate::decide::runtime::ImageRuntime>(
    engine: &PrePuller<R>,
    resolver: &dyn CredentialResolver,
    node: &NodeInfo,
    loaded: &Snapshot,
    cancel: &CancellationToken,
    images_ready: &mut ImagesReady,
    reports: &Reports,
    pinner: &crate::daemon::pins::Pinner,
) -> PassSummary {
    // Every pass (on each change of the sources and every recheck): what is gone is forgotten,
    // including a canary outcome that landed after its PullSet was deleted.
    reports.retain(&loaded.selected_images(node));
    let node = &loaded.node(node);
    let desired = prepull_images(&loaded.inventory, node, resolver).await;
    tracing::debug!(images = desired.len(), "pre-pull pass");
    let gated: Mutex<Vec<(Verdict, String)>> = Mutex::new(Vec::new());
    let exposed: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let kubelet = &images_ready.kubelet;
    let kubelet_version = loaded
        .node_facts
        .as_ref()
        .and_then(|f| f.kubelet_version.as_deref());
    // A `pin: true` PullSet's outcomes wait for the pins, to say whether the image is pinned.
    let held: Mutex<Vec<crate::model::outcome::Outcome>> = Mutex::new(Vec::new());
    let summary = engine
        .pass(&desired, cancel, &|mut outcome| {
            kubelet.annotate(&mut outcome, kubelet_version);
            if let Some(warning) = &outcome.kubelet_access_warning {
                exposed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(outcome.image.clone(), warning.clone());
            }
            let key = ObjectKey::new(outcome.namespace.clone(), outcome.pullset.clone());
            if loaded
                .inventory
                .pullsets
                .get(&key)
                .is_some_and(|s| images_ready.gate_namespaces.counts(s))
            {
                gated
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((outcome.verdict, format!("{key} {}", outcome.image)));
            }
            if !outcome.verdict.is_ok() {
                tracing::warn!(
                    pullset = %format!("{}/{}", outcome.namespace, outcome.pullset),
                    image = %outcome.image,
                    verdict = %outcome.verdict,
                    "pre-pull failed"
                );
            }
            if crate::daemon::pins::Pinner::holds(loaded, &outcome) {
                held.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(outcome);
            } else {
                reports.prepull(&outcome);
            }
        })
        .await;
    if !summary.cancelled {
        let pins = pinner.reconcile(loaded, node).await;
        for mut outcome in held
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            pinner.annotate(&mut outcome, &pins);
            reports.prepull(&outcome);
        }
    }
    let gated = gated
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let verdicts: Vec<Verdict> = gated.iter().map(|(v, _)| *v).collect();
    let failing: Vec<String> = gated
        .into_iter()
        .filter(|(v, _)| !v.is_ok())
        .map(|(_, l)| l)
        .collect();
    // The gating PullSets that do not count are said in the condition (the Node's readers).
    let allowed = &images_ready.gate_namespaces;
    let mut note = crate::decide::gate::not_counted_note(
        &crate::decide::gate::not_allowed(&loaded.inventory, node, allowed),
        allowed,
    );
    // Private images any pod may start: warned once each, and said in the condition.
    let exposed = exposed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (image, warning) in &exposed {
        if !images_ready.warned.contains(image) {
            tracing::warn!(%image, "{warning}");
        }
    }
    images_ready.warned = exposed.into_keys().collect();
    note.push_str(&crate::decide::kubelet_access::condition_note(
        &images_ready.warned,
        images_ready.kubelet.policy.as_ref(),
    ));
    if let Some(condition) = images_ready
        .tracker
        .observe_noting(&verdicts, &failing, &note)
    {
        tracing::info!(status = ?condition.status, reason = %condition.reason, "CriticalImagesReady changed");
        reports.condition(condition);
    }
    reports.images_ready(
        images_ready.tracker.current().status == crate::decide::conditions::Status::True,
    );
    summary
}

fn report_source(reporter: &JsonLines, node: &NodeInfo, loaded: &Snapshot) {
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    for p in &loaded.problems {
        tracing::warn!(problem = %p, "manifest problem; object skipped");
        reporter.emit(&SourceProblem {
            kind: "source",
            time: now_rfc3339(),
            node: node.name.clone(),
            file: Some(p.file.display().to_string()).filter(|f| !f.is_empty()),
            document: p.document,
            object: p.object.clone(),
            field: p.field.clone(),
            message: p.message.clone(),
        });
    }
}

/// SIGTERM and SIGINT cancel the one token everything listens to.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
}
