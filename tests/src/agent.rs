//! Runs the real `pullgate` binary against a test environment and collects its JSON lines.

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Builds (once per test binary) and returns the `pullgate` binary, so that tests always run the
/// current code.
pub fn pullgate_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let mut build = Command::new(cargo);
            build.current_dir(&workspace).args([
                "build",
                "--quiet",
                "-p",
                "pullgate",
                "--bin",
                "pullgate",
                "--message-format=json",
            ]);
            // Cargo sets these for the test process; a build script that watches one (ring's
            // watches CARGO_MANIFEST_DIR) would see it change and rebuild half the tree, twice
            // per test binary. Build in the environment `cargo test` itself built in.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_BIN_")
                    || matches!(
                        key.as_ref(),
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    )
                {
                    build.env_remove(key.as_ref());
                }
            }
            // Same profile as this binary: a release benchmark measures a release agent.
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            let out = build
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !out.status.success() {
                return Err("cargo build -p pullgate failed".into());
            }
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "pullgate")
                .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
                .next_back()
                .ok_or_else(|| "cargo build did not report the pullgate executable".to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The cap on the agent's peak resident memory (`VmHWM`, debug build) in the reliability tests:
/// generous (the agent idles around 35-55 MiB here; the DaemonSet's limit is 128 MiB), yet far
/// below what an unbounded read of an endless manifest or several copies of a 50 MiB Secret cost.
pub const MEMORY_CAP_KIB: u64 = 200 * 1024;

/// A `kind: condition` record of this type and status.
pub fn is_condition(line: &Value, type_: &str, status: &str) -> bool {
    line["kind"] == "condition" && line["type"] == type_ && line["status"] == status
}

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Standalone: the manifest directory; cluster mode: the kubeconfig file.
    source: Source,
    endpoint: String,
    args: Vec<String>,
}

#[derive(Clone, Debug)]
enum Source {
    Manifests(PathBuf),
    Kubeconfig(PathBuf),
}

/// A finished `pullgate run --once`.
#[derive(Debug)]
pub struct AgentRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub lines: Vec<Value>,
}

impl AgentRun {
    /// Records of `kind: prepull` for `image`.
    pub fn prepulls_of(&self, image: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["kind"] == "prepull" && l["image"] == image)
            .collect()
    }

    /// Panics, with the output, unless the run exited with `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The single pre-pull record for `image` (panics with the output otherwise).
    pub fn prepull(&self, image: &str) -> &Value {
        let found = self.prepulls_of(image);
        assert_eq!(
            found.len(),
            1,
            "expected one outcome for {image}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        found[0]
    }
}

impl Agent {
    pub fn new(manifests: &Path, endpoint: &str) -> Self {
        Self::with_source(Source::Manifests(manifests.to_path_buf()), endpoint)
    }

    /// Cluster mode: objects from the API server the kubeconfig points at.
    pub fn cluster(kubeconfig: &Path, endpoint: &str) -> Self {
        Self::with_source(Source::Kubeconfig(kubeconfig.to_path_buf()), endpoint)
    }

    fn with_source(source: Source, endpoint: &str) -> Self {
        Self {
            source,
            endpoint: endpoint.to_string(),
            args: vec![
                "--node-name".into(),
                "test-node".into(),
                "--retry-min-delay".into(),
                "200ms".into(),
                "--retry-max-delay".into(),
                "1s".into(),
                // Tests run side by side: a free port each (a test may name its own).
                "--metrics-addr".into(),
                "127.0.0.1:0".into(),
                // No shared socket under /run: a test that wants the local API names its own.
                "--api-socket".into(),
                "off".into(),
                // Tests canary every few seconds and rotate at will: no floor, unless a test
                // names its own (the flag overrides itself).
                "--min-canary-interval".into(),
                "0s".into(),
                // The test machine's disk is not the product's concern: no headroom unless a test
                // (tests/tests/prepull_disk.rs) names one.
                "--min-free-disk".into(),
                "0".into(),
            ],
        }
    }

    /// Adds flags.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The flags of a test about canaries: `registry` over plain HTTP, rotation canaries at once
    /// (no jitter), and one pre-pull pass an hour, so that no re-check pass runs meanwhile.
    pub fn canary_defaults(self, registry: &str) -> Self {
        self.args(&[
            "--insecure-registry",
            registry,
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
        ])
    }

    fn command(&self, once: bool) -> Result<Command> {
        let mut command = Command::new(pullgate_binary()?);
        command.arg("run");
        match &self.source {
            Source::Manifests(dir) => command.arg("--manifests").arg(dir),
            Source::Kubeconfig(file) => command.arg("--kubeconfig").arg(file),
        };
        command
            .arg("--cri-endpoint")
            .arg(&self.endpoint)
            .args(&self.args)
            .env(
                "RUST_LOG",
                "debug,h2=info,hyper=info,tower=info,hyper_util=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if once {
            command.arg("--once");
        }
        Ok(command)
    }

    /// `pullgate run --once`, waited for up to `timeout`.
    pub fn run_once(&self, timeout: Duration) -> Result<AgentRun> {
        let mut running = RunningAgent::spawn(self.command(true)?)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = running.child.try_wait()? {
                let (stdout, stderr) = running.finish();
                return Ok(AgentRun {
                    code: status.code(),
                    lines: parse_lines(&stdout),
                    stdout,
                    stderr,
                });
            }
            if Instant::now() > deadline {
                let (stdout, stderr) = running.finish();
                bail!(
                    "pullgate run --once did not finish in {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `pullgate run` as a daemon.
    pub fn spawn(&self) -> Result<RunningAgent> {
        RunningAgent::spawn(self.command(false)?)
    }

    /// `pullgate run --once`, not waited for.
    pub fn spawn_once(&self) -> Result<RunningAgent> {
        RunningAgent::spawn(self.command(true)?)
    }
}

/// A running agent; stopped (SIGTERM) on drop.
pub struct RunningAgent {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningAgent {
    /// The agent's process id (the `pullgate` binary itself, not a wrapper).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(mut command: Command) -> Result<Self> {
        let mut child = command.spawn().context("spawn pullgate")?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().context("stdout")?;
        let sink = stdout.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut s = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.push_str(&line);
                s.push('\n');
            }
        }));
        let mut err = child.stderr.take().context("stderr")?;
        let sink = stderr.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }));
        Ok(Self {
            child,
            stdout,
            stderr,
            readers,
        })
    }

    /// The JSON lines so far.
    pub fn lines(&self) -> Vec<Value> {
        parse_lines(
            &self
                .stdout
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `count` records satisfy `predicate`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        count: usize,
        predicate: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.lines().iter().filter(|l| predicate(l)).count() >= count {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// How many records so far satisfy `predicate`.
    pub fn count(&self, predicate: impl Fn(&Value) -> bool) -> usize {
        self.lines().iter().filter(|l| predicate(l)).count()
    }

    /// The first record that satisfies `predicate` (panics with the output when there is none).
    pub fn first(&self, predicate: impl Fn(&Value) -> bool) -> Value {
        self.lines()
            .into_iter()
            .find(|l| predicate(l))
            .unwrap_or_else(|| panic!("no such line\nstdout:\n{}", self.stdout()))
    }

    /// The latest record that satisfies `predicate` (panics with the output when there is none).
    pub fn last(&self, predicate: impl Fn(&Value) -> bool) -> Value {
        self.lines()
            .into_iter()
            .rev()
            .find(|l| predicate(l))
            .unwrap_or_else(|| panic!("no such line\nstdout:\n{}", self.stdout()))
    }

    /// Panics, with its stderr, unless the process is still up (not exited, not a zombie).
    pub fn assert_alive(&self, what: &str) {
        assert!(
            crate::procfs::alive(self.pid()),
            "{what}: the agent died\nstderr:\n{}",
            self.stderr()
        );
    }

    /// The agent is up and its peak resident memory (`VmHWM`) is under `cap_kib`: a resource
    /// bound, never a timing. Prints the peak for the record.
    pub fn assert_up_and_bounded(&self, cap_kib: u64, what: &str) {
        self.assert_alive(what);
        let peak = crate::procfs::peak_kib(self.pid()).unwrap_or_else(|e| panic!("{what}: {e}"));
        eprintln!("{what}: agent VmHWM {} MiB", peak / 1024);
        assert!(
            peak < cap_kib,
            "{what}: agent peak memory {peak} KiB over the {cap_kib} KiB cap"
        );
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "pullgate did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// SIGTERM, wait, and return (stdout, stderr).
    pub fn finish(mut self) -> (String, String) {
        self.terminate();
        (self.stdout(), self.stderr())
    }

    fn terminate(&mut self) {
        crate::process::terminate(&mut self.child, Duration::from_secs(10));
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn parse_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"))
        })
        .collect()
}
