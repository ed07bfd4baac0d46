//! A real containerd (Debian package), run as root with the `native` snapshotter, its root, state
//! and socket in a temp dir, and a `hosts.toml` per test registry that points it at plain HTTP.
//!
//! Which release line runs is [`Release::from_env`]'s: `PULLGATE_TEST_CONTAINERD=1.6|1.7|2.1`,
//! default the system's (Debian bookworm's 1.6). 1.7 (trixie) and 2.1 (sid) are the Debian builds
//! `cargo xtask deps` unpacks into [`CACHE`]. Each gets the configuration a node of that line runs:
//! version 2 for 1.x, version 3 for 2.x (the CRI split into `cri.v1.images` / `cri.v1.runtime`,
//! and the transfer service, which pulls for the CRI since 2.1, told to unpack into `native`).

use crate::process::{ChildGuard, require_binary, require_root, wait_until};
use crate::workspace_root;
use anyhow::{Context as _, Result};
use pullgate::adapters::cri::{CriClient, CriTimeouts};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// The variable that picks the release line.
pub const ENV: &str = "PULLGATE_TEST_CONTAINERD";
/// Where `cargo xtask deps` unpacks the Debian packages of 1.7 and 2.1, relative to the
/// workspace root: `CACHE/<line>/usr/bin/containerd`. Keep in step with `xtask/src/containerd.rs`.
pub const CACHE: &str = "target/tools/containerd";

/// A containerd release line the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Release {
    /// Debian bookworm's 1.6.20, the system's.
    V1_6,
    /// Debian trixie's 1.7.24.
    V1_7,
    /// Debian sid's 2.1.9: version-3 configuration, the transfer service pulls.
    V2_1,
}

impl Release {
    /// `$PULLGATE_TEST_CONTAINERD`, default 1.6. Panics on any other value, naming the valid ones:
    /// a typo must not quietly test the default.
    pub fn from_env() -> Self {
        match std::env::var(ENV) {
            Err(std::env::VarError::NotPresent) => Self::V1_6,
            Ok(value) => Self::parse(&value).unwrap_or_else(|| {
                panic!("{ENV}={value:?}: expected one of 1.6, 1.7, 2.1 (unset: the system's 1.6)")
            }),
            Err(e) => panic!("{ENV}: {e}"),
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "1.6" => Some(Self::V1_6),
            "1.7" => Some(Self::V1_7),
            "2.1" => Some(Self::V2_1),
            _ => None,
        }
    }

    /// `1.6`, `1.7`, `2.1`.
    pub fn line(self) -> &'static str {
        match self {
            Self::V1_6 => "1.6",
            Self::V1_7 => "1.7",
            Self::V2_1 => "2.1",
        }
    }

    /// 2.x: version-3 configuration, CRI pulls through the transfer service.
    pub fn is_v2(self) -> bool {
        self >= Self::V2_1
    }

    /// The binary: the system's for 1.6, the cache's for the others; a missing one is an error
    /// naming the command that installs it.
    pub fn binary(self) -> Result<PathBuf> {
        if self == Self::V1_6 {
            return require_binary("containerd", "containerd");
        }
        let binary = workspace_root()
            .join(CACHE)
            .join(self.line())
            .join("usr/bin/containerd");
        if !binary.is_file() {
            anyhow::bail!(
                "prerequisite missing: containerd {} is not at {}. Run `cargo xtask deps` (it fetches \
                 the Debian package with `apt-get download` and unpacks it there), then re-run the \
                 tests.",
                self.line(),
                binary.display()
            );
        }
        Ok(binary)
    }
}

/// What `containerd --version` says, e.g. `1.7.24`; checked against the release line asked for.
fn version_of(binary: &Path, release: Release) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `containerd github.com/containerd/containerd 1.6.20~ds1 ` or `containerd <module> v2.1.9 …`
    let version = text
        .split_whitespace()
        .nth(2)
        .map(|v| v.trim_start_matches('v'))
        .map(|v| v.split(['~', '+', '-']).next().unwrap_or(v).to_string())
        .with_context(|| format!("{} --version printed {text:?}", binary.display()))?;
    if !version.starts_with(&format!("{}.", release.line())) {
        anyhow::bail!(
            "{ENV}={} asks for containerd {}, but {} is {version}",
            release.line(),
            release.line(),
            binary.display()
        );
    }
    Ok(version)
}

/// More of a node's configuration than plain-HTTP registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `host:port` reached over TLS, trusting only the system's CAs.
    pub https: Vec<String>,
    /// The pause image (`sandbox_image` in 1.x, `pinned_images.sandbox` in 2.x): the image the
    /// CRI pins, in 1.7 and later.
    pub sandbox_image: Option<String>,
    /// Registry names routed elsewhere: `(name, server URL, extra settings)` written as
    /// `certs.d/<name>/hosts.toml` with `server = URL` and a `[host."URL"]` table holding the
    /// extra TOML lines (`ca = "…"`, `client = …`); files the settings name relative to the
    /// directory go in [`Options::host_files`].
    pub routes: Vec<(String, String, String)>,
    /// Files written into a registry's `certs.d/<name>/` directory: `(name, file name, contents)`.
    pub host_files: Vec<(String, String, String)>,
}

/// A running containerd. Stopped and its directories removed on drop.
pub struct Containerd {
    dir: TempDir,
    child: Option<ChildGuard>,
    binary: PathBuf,
    release: Release,
    version: String,
}

impl Containerd {
    /// Starts containerd; `registries` are `host:port` of plain-HTTP registries it may pull from.
    pub fn start(registries: &[String]) -> Result<Self> {
        Self::start_release(Release::from_env(), registries, &Options::default())
    }

    /// [`start`](Self::start) with more of a node's configuration.
    pub fn start_with(registries: &[String], options: &Options) -> Result<Self> {
        Self::start_release(Release::from_env(), registries, options)
    }

    /// Starts the given release line (the tests use [`start`](Self::start)).
    pub fn start_release(
        release: Release,
        registries: &[String],
        options: &Options,
    ) -> Result<Self> {
        require_root()?;
        let binary = release.binary()?;
        let version = version_of(&binary, release)?;
        eprintln!(
            "testenv: containerd {version} ({ENV}={}, {})",
            release.line(),
            binary.display()
        );
        // Short prefix: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("pgctd-")
            .tempdir_in("/tmp")?;
        let root = dir.path();
        let schemes = registries
            .iter()
            .map(|r| ("http", r))
            .chain(options.https.iter().map(|r| ("https", r)));
        for (scheme, registry) in schemes {
            let hosts = root.join("certs.d").join(registry);
            std::fs::create_dir_all(&hosts)?;
            std::fs::write(
                hosts.join("hosts.toml"),
                format!(
                    "server = \"{scheme}://{registry}\"\n\n[host.\"{scheme}://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
            )?;
        }
        for (name, server, extra) in &options.routes {
            let hosts = root.join("certs.d").join(name);
            std::fs::create_dir_all(&hosts)?;
            std::fs::write(
                hosts.join("hosts.toml"),
                format!(
                    "server = \"{server}\"\n\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{extra}"
                ),
            )?;
        }
        for (name, file, contents) in &options.host_files {
            let hosts = root.join("certs.d").join(name);
            std::fs::create_dir_all(&hosts)?;
            std::fs::write(hosts.join(file), contents)?;
        }
        let config = if release.is_v2() {
            config_v3(root, options)
        } else {
            config_v2(root, options)
        };
        std::fs::write(root.join("config.toml"), config)?;
        let mut containerd = Self {
            dir,
            child: None,
            binary,
            release,
            version,
        };
        containerd.launch()?;
        Ok(containerd)
    }

    /// The release line running.
    pub fn release(&self) -> Release {
        self.release
    }

    /// Its version, e.g. `2.1.9`.
    pub fn version(&self) -> &str {
        &self.version
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

    /// The configuration file containerd runs with (`--config`): version 2 on 1.x, version 3
    /// (the images plugin's `registry.config_path`) on 2.x.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("config.toml")
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
        // Shims and `ctr` of the same build come first (they sit next to the binary).
        if let Some(bin) = self.binary.parent() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let paths = std::iter::once(bin.to_path_buf()).chain(std::env::split_paths(&path));
            if let Ok(joined) = std::env::join_paths(paths) {
                command.env("PATH", joined);
            }
        }
        self.child = Some(ChildGuard::spawn(
            "containerd",
            command,
            &root.join("containerd.log"),
        )?);
        let started = std::time::Instant::now();
        let socket = self.socket();
        wait_until("containerd socket", Duration::from_secs(30), || {
            socket.exists()
        })
        .map_err(|e| self.not_ready(e))?;
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
        ready.map_err(|e| self.not_ready(e))?;
        // A slow start is a clue when a later step times out: say so, with the log's end.
        let took = started.elapsed();
        if took > Duration::from_secs(10) {
            eprintln!(
                "testenv: containerd {} took {took:?} to serve CRI; its log ends:\n{}",
                self.version,
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// The last `n` lines of containerd's log.
    fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Why containerd did not come up, first, then the end of its log (the cause sits there, and
    /// a whole log would push the reason out of a truncated CI report).
    fn not_ready(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "containerd {} did not become ready: {e:#}\nits log ends:\n{}",
            self.version,
            self.log_tail(40)
        )
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

/// What every release line's configuration starts with: root, state and sockets under `root`,
/// every snapshotter but `native` disabled (with `more_disabled`, plugins only newer lines
/// have), no tracing, no debug or metrics listener.
fn common_config(root: &Path, more_disabled: &[&str]) -> String {
    let r = root.display();
    let disabled: String = [
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.overlayfs",
    ]
    .iter()
    .chain(more_disabled)
    .chain(&[
        "io.containerd.internal.v1.tracing",
        "io.containerd.tracing.processor.v1.otlp",
        // NRI listens on the machine-wide /var/run/nri/nri.sock (enabled by default from 2.0):
        // instances started side by side by parallel tests would race for it.
        "io.containerd.nri.v1.nri",
    ])
    .map(|plugin| format!("  \"{plugin}\",\n"))
    .collect();
    format!(
        r#"root = "{r}/root"
state = "{r}/state"
disabled_plugins = [
{disabled}]

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
"#
    )
}

/// Version 2, for 1.6 and 1.7: one CRI plugin holding images, runtime and registry.
fn config_v2(root: &Path, options: &Options) -> String {
    let r = root.display();
    let common = common_config(root, &[]);
    let sandbox = options
        .sandbox_image
        .as_ref()
        .map(|image| format!("  sandbox_image = \"{image}\"\n"))
        .unwrap_or_default();
    format!(
        r#"version = 2
{common}
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
{sandbox}  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{r}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{r}/cni/bin"
    conf_dir = "{r}/cni/conf"
"#
    )
}

/// Version 3, for 2.x: the CRI split into `io.containerd.cri.v1.images` (snapshotter, registry)
/// and `io.containerd.cri.v1.runtime`, and the transfer service (which pulls for the CRI since
/// 2.1) told to unpack into `native` — without `unpack_config` it defaults to overlayfs, and every
/// pull fails with `unable to initialize unpacker: no unpack platforms defined`.
fn config_v3(root: &Path, options: &Options) -> String {
    let r = root.display();
    let common = common_config(root, &["io.containerd.snapshotter.v1.erofs"]);
    let sandbox = options
        .sandbox_image
        .as_ref()
        .map(|image| {
            format!(
                "  [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n    sandbox = \"{image}\"\n"
            )
        })
        .unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        r#"version = 3
{common}
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{r}/certs.d"
{sandbox}
[plugins."io.containerd.cri.v1.runtime"]
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{r}/cni/bin"]
    conf_dir = "{r}/cni/conf"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.transfer.v1.local"]
  config_path = "{r}/certs.d"
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/{arch}"
    snapshotter = "native"
"#
    )
}
