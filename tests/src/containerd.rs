//! A real containerd (Debian package), run as root with the `native` snapshotter, its root, state
//! and socket in a temp dir, and a `hosts.toml` per test registry that points it at plain HTTP.

use crate::process::{ChildGuard, require_binary, require_root, wait_until};
use anyhow::{Context as _, Result};
use pullgate::adapters::cri::{CriClient, CriTimeouts};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// A running containerd. Stopped and its directories removed on drop.
pub struct Containerd {
    dir: TempDir,
    child: Option<ChildGuard>,
    binary: PathBuf,
}

impl Containerd {
    /// Starts containerd; `registries` are `host:port` of plain-HTTP registries it may pull from.
    pub fn start(registries: &[String]) -> Result<Self> {
        require_root()?;
        let binary = require_binary("containerd", "containerd")?;
        // Short prefix: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("pgctd-")
            .tempdir_in("/tmp")?;
        let root = dir.path();
        for registry in registries {
            let hosts = root.join("certs.d").join(registry);
            std::fs::create_dir_all(&hosts)?;
            std::fs::write(
                hosts.join("hosts.toml"),
                format!(
                    "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        std::fs::write(root.join("config.toml"), config(root))?;
        let mut containerd = Self {
            dir,
            child: None,
            binary,
        };
        containerd.launch()?;
        Ok(containerd)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `unix:///…/containerd.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The directory holding `certs.d/<host>/hosts.toml`.
    pub fn registry_config_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// containerd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A CRI client for test assertions (short deadlines). Call it inside an async runtime.
    pub fn cri(&self) -> CriClient {
        CriClient::new(
            self.endpoint()
                .parse()
                .expect("the endpoint is built from an absolute path"),
            CriTimeouts {
                call: Duration::from_secs(10),
                pull: Duration::from_secs(120),
                reconnect_budget: Duration::from_secs(5),
            },
        )
    }

    /// Stops containerd gracefully (SIGTERM).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(10));
        }
    }

    /// Kills containerd (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts containerd again with the same state (after [`stop`](Self::stop) or [`kill`](Self::kill)).
    pub fn start_again(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<()> {
        let root = self.dir.path();
        let _ = std::fs::remove_file(self.socket());
        let mut command = Command::new(&self.binary);
        command.arg("--config").arg(root.join("config.toml"));
        self.child = Some(ChildGuard::spawn(
            "containerd",
            command,
            &root.join("containerd.log"),
        )?);
        let socket = self.socket();
        wait_until("containerd socket", Duration::from_secs(30), || {
            socket.exists()
        })
        .with_context(|| format!("containerd log:\n{}", self.log()))?;
        // The CRI plugin serves a little after the socket appears. Checked from a thread of its own
        // so that this works from inside or outside an async runtime.
        let ready = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let cri = runtime.block_on(async { self.cri() });
                    wait_until(
                        "containerd CRI to answer Version",
                        Duration::from_secs(30),
                        || runtime.block_on(cri.version()).is_ok(),
                    )
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("CRI readiness check panicked")))
        });
        ready.with_context(|| format!("containerd log:\n{}", self.log()))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        // Unpacking with the native snapshotter uses short-lived bind mounts; make sure none is left
        // before the temp dir is removed.
        unmount_below(self.dir.path());
    }
}

fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = Command::new("umount").arg("-l").arg(target).status();
    }
}

fn config(root: &Path) -> String {
    let r = root.display();
    format!(
        r#"version = 2
root = "{r}/root"
state = "{r}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{r}/containerd.sock"

[ttrpc]
  address = "{r}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{r}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{r}/cni/bin"
    conf_dir = "{r}/cni/conf"
"#
    )
}
