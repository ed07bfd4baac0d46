//! Watches the manifest directory and publishes a fresh [`Snapshot`] whenever its content changes.
//!
//! inotify (through `notify`) wakes the reload, debounced; a periodic rescan catches what inotify
//! cannot see (an exhausted watch limit, a directory mounted over). A reload whose fingerprint is
//! unchanged publishes nothing.

use super::manifests::{ManifestError, load_dir};
use crate::model::snapshot::Snapshot;
use notify::{RecursiveMode, Watcher as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Load(#[from] ManifestError),
    #[error("cannot watch {}: {source}", path.display())]
    Notify {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Settings of the watch loop.
#[derive(Clone, Copy, Debug)]
pub struct WatchConfig {
    pub debounce: Duration,
    pub rescan: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            rescan: Duration::from_secs(60),
        }
    }
}

/// Loads `dir` once and returns a receiver of every later change, and the task that feeds it.
pub fn watch_dir(
    dir: PathBuf,
    config: WatchConfig,
    cancel: CancellationToken,
) -> Result<(watch::Receiver<Arc<Snapshot>>, tokio::task::JoinHandle<()>), WatchError> {
    let first = load_dir(&dir)?;
    let (tx, rx) = watch::channel(Arc::new(first));
    let (event_tx, mut event_rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already means "reload pending".
            let _ = event_tx.try_send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError::Notify {
            path: dir.clone(),
            source,
        })?;

    let task = tokio::spawn(async move {
        let _watcher = watcher; // dropped (and unwatched) when the loop ends
        let mut rescan = tokio::time::interval(config.rescan);
        rescan.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                Some(()) = event_rx.recv() => {
                    // Let a burst of writes settle before reading.
                    tokio::time::sleep(config.debounce).await;
                    while event_rx.try_recv().is_ok() {}
                }
                _ = rescan.tick() => {}
            }
            let dir = dir.clone();
            match tokio::task::spawn_blocking(move || load_dir(&dir)).await {
                Ok(Ok(loaded)) => {
                    if loaded.fingerprint != tx.borrow().fingerprint {
                        tracing::info!(
                            pullsets = loaded.inventory.pullsets.len(),
                            secrets = loaded.inventory.secrets.len(),
                            problems = loaded.problems.len(),
                            "manifests changed; reloaded"
                        );
                        tx.send_replace(Arc::new(loaded));
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot reload manifests; keeping the last good state")
                }
                Err(e) => tracing::warn!(error = %e, "manifest reload task failed"),
            }
        }
    });
    Ok((rx, task))
}
