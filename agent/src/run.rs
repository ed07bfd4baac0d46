//! `pullgate run`: wires sources → desired state → pre-pull → reporters, and owns the loop.

use crate::canary::runner::{CanaryOutcome, CanaryRunner};
use crate::canary::service::{CanarySink, ServiceConfig};
use crate::cli::RunArgs;
use crate::conditions::{Condition, Tracker};
use crate::credentials::{CredentialResolver, KubeletResolver};
use crate::cri::{CriClient, CriTimeouts};
use crate::desired::prepull_images;
use crate::inventory::ObjectKey;
use crate::node::NodeInfo;
use crate::node_status::NodeStatus;
use crate::outcome::{SourceProblem, now_rfc3339};
use crate::prepull::{PassSummary, PrePullConfig, PrePuller, RetryPolicy};
use crate::report::JsonLines;
use crate::source::manifests::Loaded;
use crate::source::watch::{WatchConfig, WatchError, watch_dir};
use crate::verdict::Verdict;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] crate::source::cluster::ClusterError),
    #[error("the cluster source did not sync within {0:?}")]
    NotSynced(Duration),
    #[error("no node name: pass --node-name or set PULLGATE_NODE_NAME")]
    NoNodeName,
    #[error(transparent)]
    Source(#[from] WatchError),
    #[error(transparent)]
    Credentials(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
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
        cri,
        prepull,
        credentials,
        registry,
        rotation_jitter,
    } = args;
    let node_name = node
        .node_name
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or(RunError::NoNodeName)?;
    let node = NodeInfo {
        name: node_name,
        labels: node.node_labels.0,
    };

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());

    let client = CriClient::new(
        cri.cri_endpoint.clone(),
        CriTimeouts {
            call: *cri.cri_timeout,
            pull: *cri.pull_timeout,
            reconnect_budget: *cri.cri_reconnect_budget,
        },
    );
    match client.version().await {
        Ok(v) => tracing::info!(
            endpoint = %client.endpoint(),
            runtime = %v.runtime_name,
            runtime_version = %v.runtime_version,
            cri_api = %v.runtime_api_version,
            "connected to container runtime"
        ),
        Err(e) => {
            tracing::error!(error = %e, "container runtime not reachable; pulls will be retried")
        }
    }

    let (mut sources, source_task, node_status) = match manifests {
        Some(dir) => {
            let (rx, task) = watch_dir(dir, WatchConfig::default(), cancel.clone())?;
            (rx, task, None)
        }
        None => {
            let client = crate::source::cluster::client(kubeconfig.as_deref()).await?;
            let node_status = NodeStatus::new(client.clone(), node.name.clone());
            let (mut rx, task) =
                crate::source::cluster::watch_cluster(client, node.name.clone(), cancel.clone());
            // Act on a complete picture: every PullSet, the Node, every referenced object.
            let limit = Duration::from_secs(60);
            let synced = tokio::time::timeout(limit, async {
                while !rx.borrow_and_update().synced {
                    if rx.changed().await.is_err() {
                        return false;
                    }
                }
                true
            })
            .await;
            if !matches!(synced, Ok(true)) {
                return Err(RunError::NotSynced(limit));
            }
            (rx, task, Some(node_status))
        }
    };
    let engine = PrePuller::new(
        Arc::new(client.clone()),
        PrePullConfig {
            max_parallel: usize::from(prepull.max_parallel_pulls),
            retry: RetryPolicy {
                attempts: prepull.pull_attempts,
                min_delay: *prepull.retry_min_delay,
                max_delay: *prepull.retry_max_delay,
            },
        },
        node.name.clone(),
    );
    let reporter = Arc::new(JsonLines::default());
    // Conditions: JSON lines always; on the Node too in cluster mode, written in order by one task.
    let (publisher, status_task) = ConditionPublisher::start(reporter.clone(), node_status);
    let resolver: Arc<KubeletResolver> = Arc::new(crate::auth::build_resolver(&credentials)?);
    let recheck: Duration = *prepull.recheck_interval;
    let mut images_ready = Tracker::new("CriticalImagesReady");

    // Canaries run beside the pre-pull loop (not in a one-shot bootstrap pass).
    let canary_task = if once {
        None
    } else {
        let runner = Arc::new(CanaryRunner {
            probe: crate::check::registry_client(&registry)?,
            node: node.name.clone(),
            expiry_warning: *registry.expiry_warning,
            runtime: Some(Arc::new(client.clone()) as Arc<dyn crate::canary::runner::RuntimePull>),
            runtime_config: registry.runtime_registry_config.clone(),
        });
        let sink: Arc<dyn CanarySink> = Arc::new(StdoutCanarySink {
            reporter: reporter.clone(),
            conditions: publisher.clone(),
            credentials_valid: Mutex::new(Tracker::new("PullCredentialsValid")),
        });
        let config = ServiceConfig {
            node: node.clone(),
            rotation_window: *rotation_jitter,
            ..ServiceConfig::default()
        };
        Some(tokio::spawn(crate::canary::service::run(
            runner,
            resolver.clone(),
            sources.clone(),
            sink,
            config,
            cancel.clone(),
        )))
    };

    let mut loaded = sources.borrow_and_update().clone();
    report_source(&reporter, &node, &loaded);
    let result = loop {
        let summary = pass(
            &engine,
            resolver.as_ref(),
            &node,
            &loaded,
            &cancel,
            &mut images_ready,
            &publisher,
        )
        .await;
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
        tokio::select! {
            () = cancel.cancelled() => break RunOutcome::Stopped,
            () = tokio::time::sleep(recheck) => {}
            changed = sources.changed() => {
                if changed.is_err() {
                    break RunOutcome::Stopped;
                }
                loaded = sources.borrow_and_update().clone();
                report_source(&reporter, &node, &loaded);
            }
        }
    };
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), source_task).await;
    if let Some(task) = canary_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // Let the last condition reach the Node before exiting.
    drop(publisher);
    let _ = tokio::time::timeout(Duration::from_secs(10), status_task).await;
    Ok(result)
}

/// Publishes condition transitions: a JSON line, and (cluster mode) a patch of the Node's status.
#[derive(Clone)]
struct ConditionPublisher {
    reporter: Arc<JsonLines>,
    node: Option<tokio::sync::mpsc::UnboundedSender<Condition>>,
}

impl ConditionPublisher {
    fn start(
        reporter: Arc<JsonLines>,
        node_status: Option<NodeStatus>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Condition>();
        let task = tokio::spawn(async move {
            let Some(node_status) = node_status else {
                return;
            };
            while let Some(condition) = rx.recv().await {
                // A lost API server is retried, a few times, with backoff.
                for delay in [0u64, 1, 2, 4] {
                    tokio::time::sleep(Duration::from_secs(delay)).await;
                    match node_status.publish(&condition).await {
                        Ok(()) => break,
                        Err(e) => tracing::warn!(error = %e, "condition not written; retrying"),
                    }
                }
            }
        });
        let publisher = Self {
            reporter,
            node: Some(tx),
        };
        (publisher, task)
    }

    fn publish(&self, condition: Condition) {
        self.reporter.emit(&condition);
        if let Some(tx) = &self.node {
            let _ = tx.send(condition);
        }
    }
}

/// Canary outcomes as JSON lines, and `PullCredentialsValid` transitions.
struct StdoutCanarySink {
    reporter: Arc<JsonLines>,
    conditions: ConditionPublisher,
    credentials_valid: Mutex<Tracker>,
}

impl CanarySink for StdoutCanarySink {
    fn outcome(&self, outcome: &CanaryOutcome) {
        self.reporter.emit(outcome);
    }

    fn verdicts(&self, verdicts: &BTreeMap<(ObjectKey, String), Verdict>) {
        let all: Vec<Verdict> = verdicts.values().copied().collect();
        let failing: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| !v.is_ok())
            .map(|((k, image), _)| format!("{k} {image}"))
            .collect();
        let mut tracker = self
            .credentials_valid
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(condition) = tracker.observe(&all, &failing) {
            tracing::info!(status = ?condition.status, reason = %condition.reason, "PullCredentialsValid changed");
            self.conditions.publish(condition);
        }
    }
}

async fn pass<R: crate::runtime::ImageRuntime>(
    engine: &PrePuller<R>,
    resolver: &dyn CredentialResolver,
    node: &NodeInfo,
    loaded: &Loaded,
    cancel: &CancellationToken,
    images_ready: &mut Tracker,
    publisher: &ConditionPublisher,
) -> PassSummary {
    let reporter = publisher.reporter.as_ref();
    let node = &loaded.node(node);
    let desired = prepull_images(&loaded.inventory, node, resolver).await;
    tracing::debug!(images = desired.len(), "pre-pull pass");
    let gated: Mutex<Vec<(Verdict, String)>> = Mutex::new(Vec::new());
    let summary = engine
        .pass(&desired, cancel, &|outcome| {
            let key = ObjectKey::new(outcome.namespace.clone(), outcome.pullset.clone());
            if loaded
                .inventory
                .pullsets
                .get(&key)
                .is_some_and(|s| s.spec.gate)
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
            reporter.emit(&outcome);
        })
        .await;
    let gated = gated
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let verdicts: Vec<Verdict> = gated.iter().map(|(v, _)| *v).collect();
    let failing: Vec<String> = gated
        .into_iter()
        .filter(|(v, _)| !v.is_ok())
        .map(|(_, l)| l)
        .collect();
    if let Some(condition) = images_ready.observe(&verdicts, &failing) {
        tracing::info!(status = ?condition.status, reason = %condition.reason, "CriticalImagesReady changed");
        publisher.publish(condition);
    }
    summary
}

fn report_source(reporter: &JsonLines, node: &NodeInfo, loaded: &Loaded) {
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
