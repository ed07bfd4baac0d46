//! `pullgate run`: wires sources → desired state → pre-pull → reporters, and owns the loop.

use crate::cli::RunArgs;
use crate::credentials::{CredentialResolver, KubeletResolver};
use crate::cri::{CriClient, CriTimeouts};
use crate::desired::prepull_images;
use crate::node::NodeInfo;
use crate::outcome::{SourceProblem, now_rfc3339};
use crate::prepull::{PassSummary, PrePullConfig, PrePuller, RetryPolicy};
use crate::report::JsonLines;
use crate::source::manifests::Loaded;
use crate::source::watch::{WatchConfig, WatchError, watch_dir};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cluster mode (reading PullSets from the API server) is not available yet: pass --manifests DIR to run standalone"
    )]
    ClusterModeUnavailable,
    #[error("no node name: pass --node-name or set PULLGATE_NODE_NAME")]
    NoNodeName,
    #[error(transparent)]
    Source(#[from] WatchError),
    #[error(transparent)]
    Credentials(#[from] crate::auth::AuthError),
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
        once,
        node,
        cri,
        prepull,
        credentials,
    } = args;
    let Some(dir) = manifests else {
        return Err(RunError::ClusterModeUnavailable);
    };
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
        cri.cri_endpoint,
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

    let (mut sources, source_task) = watch_dir(dir, WatchConfig::default(), cancel.clone())?;
    let engine = PrePuller::new(
        Arc::new(client),
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
    let reporter = JsonLines::default();
    let resolver: KubeletResolver = crate::auth::build_resolver(&credentials)?;
    let recheck: Duration = *prepull.recheck_interval;

    let mut loaded = sources.borrow_and_update().clone();
    report_source(&reporter, &node, &loaded);
    let result = loop {
        let summary = pass(&engine, &resolver, &reporter, &node, &loaded, &cancel).await;
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
    Ok(result)
}

async fn pass<R: crate::runtime::ImageRuntime>(
    engine: &PrePuller<R>,
    resolver: &dyn CredentialResolver,
    reporter: &JsonLines,
    node: &NodeInfo,
    loaded: &Loaded,
    cancel: &CancellationToken,
) -> PassSummary {
    let desired = prepull_images(&loaded.inventory, node, resolver).await;
    tracing::debug!(images = desired.len(), "pre-pull pass");
    engine
        .pass(&desired, cancel, &|outcome| {
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
        .await
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
            file: Some(p.file.display().to_string()),
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
