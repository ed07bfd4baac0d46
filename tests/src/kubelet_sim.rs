//! A kubelet simulator: a thread that keeps updating a Node's status on the test API server as a
//! kubelet does, so the churn a real Node sees is there in tests. Every `every` it sends a
//! strategic-merge patch of `/api/v1/nodes/NAME/status` (the kubelet's own request, over the wire)
//! renewing the `Ready` condition's `lastHeartbeatTime` and replacing `status.images` with a list
//! that changes each time. Each patch makes a new `resourceVersion` and a `MODIFIED` watch event.
//!
//! What it does not do: leases (`coordination.k8s.io`), `status.nodeInfo`, capacity, other
//! conditions; a kubelet's heartbeat every 10 s is much slower than this simulator's default.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The simulator; stops on drop.
pub struct KubeletSim {
    stop: Arc<AtomicBool>,
    patches: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl KubeletSim {
    /// Starts patching `node`'s status on the API server at `url` (`http://127.0.0.1:PORT`)
    /// every `every`.
    pub fn start(url: &str, node: &str, every: Duration) -> Self {
        let addr = url.trim_start_matches("http://").to_string();
        let path = format!("/api/v1/nodes/{node}/status");
        let stop = Arc::new(AtomicBool::new(false));
        let patches = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, patches) = (stop.clone(), patches.clone());
            std::thread::spawn(move || {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if patch(&addr, &path, &body(n)) == Some(200) {
                        patches.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            })
        };
        Self {
            stop,
            patches,
            thread: Some(thread),
        }
    }

    /// Status patches the API server accepted so far.
    pub fn patches(&self) -> u64 {
        self.patches.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` patches were accepted; panics after `timeout`.
    pub fn wait_patches(&self, n: u64, timeout: Duration) {
        crate::process::wait_until(&format!("{n} kubelet status patches"), timeout, || {
            self.patches() >= n
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for KubeletSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `n`th heartbeat: `Ready` renewed (a new `lastHeartbeatTime` each second of the
/// simulated clock), and `status.images` listing `n` images.
fn body(n: u64) -> String {
    let heartbeat = format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        (n / 3600) % 24,
        (n / 60) % 60,
        n % 60
    );
    let images: Vec<serde_json::Value> = (0..=n % 8)
        .map(|i| serde_json::json!({"names": [format!("registry.example/cached-{n}-{i}:v1")], "sizeBytes": 1000 + i}))
        .collect();
    serde_json::json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": heartbeat,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        "images": images,
    }})
    .to_string()
}

/// One `PATCH` (strategic merge) over a fresh connection: the status code, `None` when nothing
/// answers.
fn patch(addr: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/strategic-merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
