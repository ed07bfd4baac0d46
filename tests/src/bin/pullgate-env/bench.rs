//! What the benchmarks share: the bench registry user, tiny images pushed in bulk, a timed
//! `pullgate run --once`, the daemon under measurement, medians.

use anyhow::{Context as _, Result, bail};
use pullgate_testenv::images::{self, ImageSpec, PushedImage};
use pullgate_testenv::{Registry, block_on};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Writes a manifest file the way a config-management tool would: a temp file, then a rename.
pub fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join(name))?;
    Ok(())
}

pub const BENCH_USER: &str = "bench";
pub const BENCH_PASSWORD: &str = "bench-Passw0rd-9e8d7c";

/// Pushes `count` tiny images `PREFIX/imgNNNNN:v1` (one 256-byte layer each, distinct content),
/// 16 at a time.
pub fn push_tiny(registry: &Registry, prefix: &str, count: usize) -> Result<Vec<PushedImage>> {
    use futures::StreamExt as _;
    let host = registry.host();
    let started = Instant::now();
    eprintln!("bench: pushing {count} tiny images (one 256-byte layer each), 16 at a time…");
    let mut pushed: Vec<(usize, PushedImage)> = block_on(async {
        let mut pushes = futures::stream::iter(0..count)
            .map(|i| {
                let host = &host;
                async move {
                    let spec =
                        ImageSpec::new(&format!("{prefix}/img{i:05}"), "v1").with_layers(&[256]);
                    images::push(host, BENCH_USER, BENCH_PASSWORD, &spec)
                        .await
                        .map(|p| (i, p))
                }
            })
            .buffer_unordered(16);
        let mut done = Vec::with_capacity(count);
        while let Some(result) = pushes.next().await {
            done.push(result?);
            if done.len() % 500 == 0 {
                eprintln!("  {} pushed", done.len());
            }
        }
        Ok::<_, anyhow::Error>(done)
    })?;
    pushed.sort_by_key(|(i, _)| *i);
    eprintln!(
        "bench: {count} images pushed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(pushed.into_iter().map(|(_, p)| p).collect())
}

/// A finished `pullgate run --once` (default log level, JSON lines parsed).
pub struct OnceRun {
    pub wall: Duration,
    pub code: Option<i32>,
    pub lines: Vec<serde_json::Value>,
    pub stderr: String,
}

impl OnceRun {
    pub fn prepulls(&self) -> impl Iterator<Item = &serde_json::Value> {
        self.lines.iter().filter(|l| l["kind"] == "prepull")
    }
}

pub fn run_once(
    binary: &Path,
    manifests: &Path,
    endpoint: &str,
    extra: &[&str],
) -> Result<OnceRun> {
    let start = Instant::now();
    let out = Command::new(binary)
        .args([
            "run",
            "--once",
            "--metrics-addr",
            "127.0.0.1:0",
            "--api-socket",
            "off",
            "--node-name",
            "bench",
        ])
        .args(extra)
        .arg("--manifests")
        .arg(manifests)
        .arg("--cri-endpoint")
        .arg(endpoint)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .context("run pullgate --once")?;
    let wall = start.elapsed();
    Ok(OnceRun {
        wall,
        code: out.status.code(),
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

pub fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The daemon under measurement: its own process (default log level), stdout JSON lines counted
/// by a reader thread, stderr to a file; SIGTERM on drop.
pub struct Daemon {
    child: std::process::Child,
    prepulls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    canaries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(mut command: Command, log: PathBuf) -> Result<Self> {
        use std::io::BufRead as _;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn pullgate")?;
        let stdout = child.stdout.take().context("stdout")?;
        let prepulls = std::sync::Arc::new(AtomicUsize::new(0));
        let canaries = std::sync::Arc::new(AtomicUsize::new(0));
        let (p, c) = (prepulls.clone(), canaries.clone());
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with(r#"{"kind":"prepull""#) {
                    p.fetch_add(1, Ordering::Relaxed);
                } else if line.starts_with(r#"{"kind":"canary""#) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            child,
            prepulls,
            canaries,
            reader: Some(reader),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn prepulls(&self) -> usize {
        self.prepulls.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn canaries(&self) -> usize {
        self.canaries.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}\nstderr:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        pullgate_testenv::process::terminate(&mut self.child, Duration::from_secs(10));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Every image pulled through the CRI at once (the raw figure benchmarks compare the agent with),
/// with the registry's user and password; the wall time of the whole batch.
pub fn concurrent_pulls(
    containerd: &pullgate_testenv::Containerd,
    refs: &[String],
    user: &str,
    password: &str,
) -> Result<Duration> {
    use pullgate::decide::runtime::{ImageRuntime as _, PullAuth};
    block_on(async {
        let cri = containerd.cri();
        let password = secrecy::SecretString::from(password);
        let start = Instant::now();
        let pulls = refs.iter().map(|r| {
            let cri = cri.clone();
            let password = &password;
            async move {
                cri.pull_image(
                    r,
                    Some(PullAuth {
                        username: user,
                        password,
                    }),
                )
                .await
            }
        });
        for result in futures::future::join_all(pulls).await {
            result.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(start.elapsed())
    })
}
