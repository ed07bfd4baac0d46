//! Soak (`cargo xtask soak`, not in CI): the real `pullgate run` daemon against a real registry and
//! a real containerd for `--minutes`, kept busy the whole time, while its resident memory and open
//! file descriptors are sampled; it fails when either grows.
//!
//! What keeps the agent busy:
//! - two PullSets: three images pre-pulled and canaried at depth `blobs` every 5 s
//!   (`*/5 * * * * *`), and one canaried through the runtime (CRI `PullImage`) every 15 s;
//! - `--recheck-interval 10s`: a presence pass every 10 s;
//! - a rotation every `--rotate-every`: the registry's password changes first (the canaries turn
//!   `Unauthorized`, a removed image cannot be pulled back), then, `--secret-lag` later, the Secret's
//!   manifest file is edited to match (a rotation canary turns them `Ok`);
//! - every `--remove-every`, one image is removed through CRI `RemoveImage`, so the next pass pulls
//!   it again;
//! - every sample, a `GET /metrics` and a `pullgate status` through the local API socket.
//!
//! Every `--sample-seconds` it reads the agent's `VmRSS` (`/proc/PID/status`) and counts
//! `/proc/PID/fd`. Verdict, after `--warmup` (default: a minute, at most a sixth of the run), with
//! the rest split in thirds: memory is flat when the last third's highest RSS is within +10% (or
//! +2 MiB, whichever is more) of the first third's highest; descriptors do not grow when the last
//! third's most is at most the first third's most + 2. Exit status 0 when both hold, 1 when one
//! fails or the agent died, 2 when the environment could not be set up.

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::images::ImageSpec;
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::process::free_port;
use pullgate_testenv::procfs::{self, mib};
use pullgate_testenv::{PASSWORD, TestEnv, USER, http};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Soak: the agent's memory and file descriptors over a long busy run")]
struct Cli {
    /// How long to run.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seconds between samples of RSS and open descriptors.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Seconds between rotations (registry password first, the Secret `--secret-lag` later).
    #[arg(long, default_value_t = 60)]
    rotate_every: u64,
    /// Seconds the Secret lags behind the registry's new password (canaries `Unauthorized`).
    #[arg(long, default_value_t = 20)]
    secret_lag: u64,
    /// Seconds between removals of an image through CRI `RemoveImage` (then re-pulled).
    #[arg(long, default_value_t = 45)]
    remove_every: u64,
    /// Seconds excluded from the verdict at the start (default: 60, at most a sixth of the run).
    #[arg(long)]
    warmup: Option<u64>,
    /// Keep the agent's stdout and stderr (always kept when the soak fails).
    #[arg(long)]
    keep_logs: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match soak(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}

const NAMESPACE: &str = "soak";
const IMAGES: usize = 3;

/// One sample of the agent process.
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

/// What the agent reported so far (its JSON lines).
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, usize>,
    offset: u64,
}

impl Tally {
    /// Reads the new lines of the agent's stdout.
    fn update(&mut self, path: &Path) {
        let Ok(mut file) = std::fs::File::open(path) else {
            return;
        };
        let mut text = String::new();
        if std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(self.offset)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return;
        }
        // Only whole lines; a partial last line is read again next time.
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        self.offset += whole as u64;
        for line in text[..whole].lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let key = match v["kind"].as_str() {
                Some("canary") => format!(
                    "canary {} {}",
                    v["path"].as_str().unwrap_or("?"),
                    v["verdict"].as_str().unwrap_or("?")
                ),
                Some("prepull") => format!(
                    "prepull {} {}",
                    v["action"].as_str().unwrap_or("?"),
                    v["verdict"].as_str().unwrap_or("?")
                ),
                Some("condition") => format!(
                    "condition {}={}",
                    v["type"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?")
                ),
                Some(kind) => kind.to_string(),
                None => continue,
            };
            *self.counts.entry(key).or_default() += 1;
        }
    }

    fn get(&self, key: &str) -> usize {
        self.counts.get(key).copied().unwrap_or(0)
    }

    fn summary(&self) -> String {
        self.counts
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The agent process; SIGTERM on drop.
struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self) {
        pullgate_testenv::process::terminate(&mut self.child, Duration::from_secs(15));
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn soak(cli: &Cli) -> Result<bool> {
    ensure!(cli.minutes > 0.0, "--minutes must be positive");
    ensure!(cli.sample_seconds > 0, "--sample-seconds must be positive");
    ensure!(
        cli.secret_lag < cli.rotate_every,
        "--secret-lag must be shorter than --rotate-every"
    );
    let duration = Duration::from_secs_f64(cli.minutes * 60.0);
    let warmup = Duration::from_secs(cli.warmup.unwrap_or_else(|| 60.min(duration.as_secs() / 6)));
    ensure!(
        duration > warmup + Duration::from_secs(3 * cli.sample_seconds),
        "the run is too short for its warm-up and three thirds of samples"
    );

    let binary = pullgate_binary()?;
    eprintln!("soak: starting a registry (htpasswd) and containerd…");
    let mut env = TestEnv::start()?;
    let host = env.registry.host();
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let pushed = env.push(
            &ImageSpec::new(&format!("soak/app-{i}"), "1").with_layers(&[64 << 10, 256 << 10]),
        )?;
        images.push(pushed.by_tag);
    }
    env.write_manifest(
        "secret.yaml",
        &pull_secret(NAMESPACE, "regcred", &host, USER, PASSWORD),
    )?;
    let image_refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let sets = format!(
        "{}---\n{}",
        pullset(NAMESPACE, "critical", &image_refs, &["regcred"]).replace(
            "spec:\n",
            "spec:\n  canary: {schedule: '*/5 * * * * *', jitter: 1s, depth: blobs}\n",
        ),
        pullset(NAMESPACE, "runtime-path", &image_refs[..1], &["regcred"]).replace(
            "spec:\n",
            "spec:\n  prePull: false\n  canary: {schedule: '*/15 * * * * *', depth: manifest, runtime: true}\n",
        ),
    );
    env.write_manifest("pullsets.yaml", &sets)?;

    let logs = tempfile::Builder::new()
        .prefix("pullgate-soak-")
        .tempdir()?;
    let stdout_path = logs.path().join("agent.stdout");
    let stderr_path = logs.path().join("agent.stderr");
    let socket = logs.path().join("agent.sock");
    let metrics_port = free_port()?;
    let mut command = Command::new(&binary);
    command
        .arg("run")
        .arg("--manifests")
        .arg(env.manifests.path())
        .args(["--cri-endpoint", &env.containerd.endpoint()])
        .args(["--node-name", "soak-node"])
        .args(["--recheck-interval", "10s"])
        .args(["--rotation-jitter", "1s"])
        // Its PullSets canary every few seconds on purpose: no floor.
        .args(["--min-canary-interval", "0s"])
        .args(["--insecure-registry", &host])
        .args(["--retry-min-delay", "200ms", "--retry-max-delay", "2s"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .arg("--api-socket")
        .arg(&socket)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?);
    let mut agent = AgentProcess {
        child: command.spawn().context("spawn pullgate run")?,
    };
    let pid = agent.pid();
    eprintln!(
        "soak: agent pid {pid}, {} min, a sample every {} s, warm-up {} s; rotation every {} s (Secret {} s later), an image removed every {} s; logs in {}",
        cli.minutes,
        cli.sample_seconds,
        warmup.as_secs(),
        cli.rotate_every,
        cli.secret_lag,
        cli.remove_every,
        logs.path().display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cri = runtime.block_on(async { env.containerd.cri() });
    let mut tally = Tally::default();
    let mut samples: Vec<Sample> = Vec::new();
    let mut rotations = 0u64;
    let mut removals = 0u64;
    let mut api_failures = 0u64;
    let mut password = PASSWORD.to_string();
    let start = Instant::now();
    // The first sample once the agent is up (its start-up is part of the warm-up anyway).
    let mut next_sample = Duration::from_secs(cli.sample_seconds);
    let mut died = None;
    while start.elapsed() < duration {
        if let Some(status) = agent.exited() {
            died = Some(status);
            break;
        }
        let now = start.elapsed();
        let secs = now.as_secs();
        // Rotation, first half: the registry's password changes (it restarts to read htpasswd).
        if secs >= cli.rotate_every * (rotations + 1) {
            rotations += 1;
            password = format!("pg-Soak-{rotations}-Passw0rd-5d6e");
            env.registry
                .set_password(USER, &password)
                .context("rotate the registry's password")?;
            eprintln!(
                "soak: {:>6.0} s  rotation {rotations}: registry password changed",
                now.as_secs_f64()
            );
        }
        // Second half: the Secret follows.
        if rotations > 0
            && secs >= cli.rotate_every * rotations + cli.secret_lag
            && !secret_matches(&env, &host, &password)?
        {
            env.write_manifest(
                "secret.yaml",
                &pull_secret(NAMESPACE, "regcred", &host, USER, &password),
            )?;
            eprintln!(
                "soak: {:>6.0} s  rotation {rotations}: Secret updated",
                now.as_secs_f64()
            );
        }
        if secs >= cli.remove_every * (removals + 1) {
            removals += 1;
            let image = &images[(removals as usize - 1) % IMAGES];
            match runtime.block_on(cri.remove_image(image)) {
                Ok(()) => eprintln!(
                    "soak: {:>6.0} s  removed {image} through CRI RemoveImage",
                    now.as_secs_f64()
                ),
                Err(e) => eprintln!("soak: RemoveImage {image} failed: {e}"),
            }
        }
        if now >= next_sample {
            next_sample += Duration::from_secs(cli.sample_seconds);
            api_failures += u64::from(!exercise_endpoints(&binary, &socket, metrics_port));
            let sample = sample(pid, now)?;
            tally.update(&stdout_path);
            eprintln!(
                "soak: {:>6.0} s  RSS {:>6.1} MiB  fds {:>3}  threads {:>2}  | {}",
                now.as_secs_f64(),
                mib(sample.rss_kib),
                sample.fds,
                sample.threads,
                tally.summary()
            );
            samples.push(sample);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if died.is_none() {
        // The last sample at the very end.
        samples.push(sample(pid, start.elapsed())?);
    }
    tally.update(&stdout_path);
    agent.stop();

    let verdict = judge(&samples, warmup);
    print_report(
        cli,
        &samples,
        &verdict,
        &tally,
        rotations,
        removals,
        api_failures,
    );
    let mut ok = verdict.memory_flat && verdict.fds_flat;
    if let Some(status) = died {
        println!("FAIL: the agent exited during the soak ({status}); see its stderr");
        ok = false;
    }
    if !ok || cli.keep_logs {
        let kept = logs.keep();
        println!("agent logs kept in {}", kept.display());
    }
    Ok(ok)
}

/// True when the Secret file already holds `password` (compared through the YAML we write).
fn secret_matches(env: &TestEnv, host: &str, password: &str) -> Result<bool> {
    let current = std::fs::read_to_string(env.manifests.path().join("secret.yaml"))?;
    Ok(current == pull_secret(NAMESPACE, "regcred", host, USER, password))
}

/// `GET /metrics`, and `pullgate status --json` through the local API; true when both answered
/// (`status` exits 1 when something is not `Ok`, which is an answer; 2 when it could not ask).
fn exercise_endpoints(binary: &Path, socket: &Path, port: u16) -> bool {
    let metrics = http::status(port, "/metrics") == Some(200);
    let status = Command::new(binary)
        .arg("status")
        .arg("--api-socket")
        .arg(socket)
        .arg("--json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| matches!(s.code(), Some(0 | 1)));
    metrics && status
}

fn sample(pid: u32, at: Duration) -> Result<Sample> {
    let s = procfs::sample(pid)?;
    Ok(Sample {
        at,
        rss_kib: s.rss_kib,
        fds: s.fds,
        threads: s.threads,
    })
}

struct Verdict {
    first_rss_max: u64,
    last_rss_max: u64,
    rss_allowed: u64,
    first_fd_max: usize,
    last_fd_max: usize,
    memory_flat: bool,
    fds_flat: bool,
    /// RSS trend over the judged samples, KiB per minute (least squares).
    slope_kib_per_min: f64,
    thirds: [Duration; 2],
}

fn judge(samples: &[Sample], warmup: Duration) -> Verdict {
    let judged: Vec<&Sample> = samples.iter().filter(|s| s.at >= warmup).collect();
    let end = judged.last().map_or(warmup, |s| s.at);
    let third = (end.saturating_sub(warmup)) / 3;
    let (a, b) = (warmup + third, end.saturating_sub(third));
    let first: Vec<&&Sample> = judged.iter().filter(|s| s.at <= a).collect();
    let last: Vec<&&Sample> = judged.iter().filter(|s| s.at >= b).collect();
    let first_rss_max = first.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let last_rss_max = last.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let rss_allowed = first_rss_max + (first_rss_max / 10).max(2048);
    let first_fd_max = first.iter().map(|s| s.fds).max().unwrap_or(0);
    let last_fd_max = last.iter().map(|s| s.fds).max().unwrap_or(0);
    let n = judged.len() as f64;
    let xs: Vec<f64> = judged.iter().map(|s| s.at.as_secs_f64() / 60.0).collect();
    let ys: Vec<f64> = judged.iter().map(|s| s.rss_kib as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    Verdict {
        first_rss_max,
        last_rss_max,
        rss_allowed,
        first_fd_max,
        last_fd_max,
        memory_flat: !first.is_empty() && !last.is_empty() && last_rss_max <= rss_allowed,
        fds_flat: !first.is_empty() && !last.is_empty() && last_fd_max <= first_fd_max + 2,
        slope_kib_per_min: if sxx > 0.0 { sxy / sxx } else { 0.0 },
        thirds: [a, b],
    }
}

fn print_report(
    cli: &Cli,
    samples: &[Sample],
    v: &Verdict,
    tally: &Tally,
    rotations: u64,
    removals: u64,
    api_failures: u64,
) {
    println!(
        "Soak: `pullgate run` (release) for {} min against a real registry and containerd; canaries every 5 s (blobs) and 15 s (runtime), --recheck-interval 10s, {rotations} rotation(s) (registry password, then the Secret {} s later), {removals} image removal(s) through CRI, `GET /metrics` and `pullgate status` every sample ({api_failures} failed).",
        cli.minutes, cli.secret_lag
    );
    println!();
    println!("| time | RSS MiB | fds | threads |");
    println!("|---|---|---|---|");
    for s in samples {
        println!(
            "| {} | {:.1} | {} | {} |",
            clock(s.at),
            mib(s.rss_kib),
            s.fds,
            s.threads
        );
    }
    println!();
    println!("What the agent reported: {}", tally.summary());
    let unauthorized = tally.get("canary registry Unauthorized");
    let repulled = tally.get("prepull pulled Ok");
    if unauthorized == 0 && rotations > 0 {
        println!("warning: no canary reported Unauthorized after a registry rotation");
    }
    if repulled <= IMAGES && removals > 0 {
        println!("warning: no image was pulled again after a removal");
    }
    println!();
    println!(
        "Judged: after the warm-up, first third up to {}, last third from {}.",
        clock(v.thirds[0]),
        clock(v.thirds[1])
    );
    println!(
        "- memory: last third max {:.1} MiB, first third max {:.1} MiB, allowed {:.1} MiB (+10% or +2 MiB); trend {:+.0} KiB/min: {}",
        mib(v.last_rss_max),
        mib(v.first_rss_max),
        mib(v.rss_allowed),
        v.slope_kib_per_min,
        if v.memory_flat {
            "FLAT"
        } else {
            "GROWING (FAIL)"
        }
    );
    println!(
        "- file descriptors: last third max {}, first third max {} (allowed +2): {}",
        v.last_fd_max,
        v.first_fd_max,
        if v.fds_flat {
            "NOT GROWING"
        } else {
            "GROWING (FAIL)"
        }
    );
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}
