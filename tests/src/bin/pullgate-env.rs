//! Driver for `cargo xtask demo` and `cargo xtask bench`: starts the real environment, seeds it, runs
//! pullgate against it, and tears everything down (guards stop the processes even on error).

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};
use pullgate::decide::runtime::{ImageRuntime as _, PullAuth};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::images::{self, ImageSpec, PushedImage};
use pullgate_testenv::{Containerd, Registry, block_on};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Seed a local registry and containerd, run `pullgate run --once --manifests DIR`.
    Demo {
        /// The demo manifests.
        #[arg(long, default_value = "examples/demo")]
        manifests: PathBuf,
    },
    /// Canary benchmark: Secret edit → canary report latency, and registry requests per depth.
    BenchCanary {
        /// Rotations to time.
        #[arg(long, default_value_t = 20)]
        rotations: usize,
    },
    /// Pre-pull benchmark: pullgate vs serial CRI pulls vs raw concurrent CRI pulls.
    BenchPrepull {
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// Size of each image in MiB (two layers of half that each).
        #[arg(long, default_value_t = 20)]
        size_mib: usize,
        /// Runs per method; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Reconcile benchmark: `run --once` over N images that are all present; CRI calls per pass.
    BenchReconcile {
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Timed passes per method; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Idle benchmark: RSS and CPU of the daemon at steady state (everything present).
    BenchIdle {
        #[arg(long, default_value_t = 100)]
        pullsets: usize,
        #[arg(long, default_value_t = 500)]
        images: usize,
        #[arg(long, default_value_t = 200)]
        secrets: usize,
        /// Sampling window after the first pass.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Give every PullSet a canary on this cron schedule (e.g. `0 3 * * *`); none by default.
        #[arg(long)]
        canary_schedule: Option<String>,
    },
    /// API-server benchmark: requests per node per hour at steady state, in cluster mode.
    BenchApi {
        /// Window counted after the initial sync and first pass.
        #[arg(long, default_value_t = 12.0)]
        minutes: f64,
        #[arg(long, default_value_t = 10)]
        pullsets: usize,
    },
}

/// The registry name used in examples/demo; containerd maps it to the demo registry's real port.
const DEMO_REGISTRY: &str = "registry.pullgate.demo:5000";
const DEMO_USER: &str = "demo";
/// Must match examples/demo/10-payments.yaml.
const DEMO_PASSWORD: &str = "demo-Passw0rd-not-for-production";

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo { manifests } => demo(&manifests),
        Cmd::BenchPrepull {
            images,
            size_mib,
            runs,
        } => bench_prepull(images, size_mib, runs),
        Cmd::BenchCanary { rotations } => bench_canary(rotations),
        Cmd::BenchReconcile { images, runs } => bench_reconcile(images, runs),
        Cmd::BenchIdle {
            pullsets,
            images,
            secrets,
            seconds,
            canary_schedule,
        } => bench_idle(
            pullsets,
            images,
            secrets,
            seconds,
            canary_schedule.as_deref(),
        ),
        Cmd::BenchApi { minutes, pullsets } => bench_api(minutes, pullsets),
    }
}

fn demo(manifests: &Path) -> Result<()> {
    ensure!(
        manifests.is_dir(),
        "{} is not a directory",
        manifests.display()
    );
    let binary = pullgate_binary()?;
    eprintln!(
        "demo: starting a registry (htpasswd auth) and containerd (native snapshotter) on loopback…"
    );
    let registry = Registry::start(&[(DEMO_USER, DEMO_PASSWORD)])?;
    let containerd = Containerd::start(&[registry.host()])?;
    // The demo manifests name `registry.pullgate.demo:5000`; containerd's hosts.toml sends it to
    // the local registry, the way a node's mirror configuration would.
    let alias = containerd.registry_config_dir().join(DEMO_REGISTRY);
    std::fs::create_dir_all(&alias)?;
    std::fs::write(
        alias.join("hosts.toml"),
        format!(
            "server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            host = registry.host()
        ),
    )?;

    eprintln!("demo: building and pushing private images…");
    let api = seed(&registry, "payments/api", "1.4.2", &[3 << 20, 1 << 20])?;
    seed(&registry, "payments/worker", "1.4.2", &[2 << 20])?;
    seed(&registry, "web/frontend", "2.0.0", &[1 << 20])?;
    check_demo_digest(manifests, &api)?;

    eprintln!(
        "demo: running `pullgate run --once --manifests {}` (JSON lines on stdout, logs on stderr)\n",
        manifests.display()
    );
    let output = Command::new(&binary)
        .args([
            "run",
            "--once",
            "--metrics-addr",
            "127.0.0.1:0",
            "--api-socket",
            "off",
            "--node-name",
            "demo-node",
            "--node-labels",
            "pool=general",
        ])
        .arg("--manifests")
        .arg(manifests)
        .arg("--cri-endpoint")
        .arg(containerd.endpoint())
        .args(["--retry-min-delay", "200ms", "--retry-max-delay", "1s"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run pullgate")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    ensure!(
        !stdout.contains(DEMO_PASSWORD) && !containerd.log().contains(DEMO_PASSWORD),
        "the demo password leaked into an output"
    );

    eprintln!("\ndemo: summary (verdict per PullSet and image)");
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v["kind"].as_str() {
            Some("prepull") => eprintln!(
                "  {:<28} {:<58} {:<16} {}",
                format!(
                    "{}/{}",
                    v["namespace"].as_str().unwrap_or(""),
                    v["pullset"].as_str().unwrap_or("")
                ),
                v["image"].as_str().unwrap_or(""),
                v["verdict"].as_str().unwrap_or(""),
                v["action"].as_str().unwrap_or("")
            ),
            Some("source") => eprintln!(
                "  {:<28} {:<58} {:<16} {}",
                "(manifest problem)",
                v["file"].as_str().unwrap_or(""),
                v["field"].as_str().unwrap_or("-"),
                v["object"].as_str().unwrap_or("")
            ),
            _ => {}
        }
    }
    eprintln!(
        "\ndemo: pullgate exited with {} (the demo includes broken objects on purpose: 1 is expected)",
        output
            .status
            .code()
            .map_or("a signal".into(), |c| c.to_string())
    );
    let present = block_on(async { containerd.cri().list_images().await })?;
    eprintln!("demo: the runtime now holds {} image(s).", present.len());
    rotation_story(registry, &containerd)?;
    eprintln!("\ndemo: stopping pullgate, containerd and the registry.");
    Ok(())
}

/// Act two: the password rotates at the registry while the Secret does not; the node cache hides
/// it from pre-pulls, the canary does not; the Secret is fixed; the next canary is Ok.
fn rotation_story(mut registry: Registry, containerd: &Containerd) -> Result<()> {
    const ROTATED: &str = "demo-Rotated-Passw0rd-2026";
    let host = registry.host();
    let dir = tempfile::Builder::new()
        .prefix("pullgate-demo-rotation-")
        .tempdir()?;
    let secret = |password: &str| {
        pullgate_testenv::manifests::pull_secret("payments", "regcred", &host, DEMO_USER, password)
    };
    let write = |name: &str, text: &str| write_atomically(dir.path(), name, text);
    write("secret.yaml", &secret(DEMO_PASSWORD))?;
    write(
        "pullset.yaml",
        &format!(
            "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: payments-canary, namespace: payments}}\nspec:\n  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{host}/payments/api:1.4.2'}}, {{image: '{host}/payments/worker:1.4.2'}}]\n  canary: {{schedule: '*/3 * * * * *', jitter: 0s, depth: blobs, runtime: true}}\n"
        ),
    )?;
    eprintln!(
        "\ndemo, act two: `pullgate run` as a daemon, canaries every 3 s (depth blobs, and through the runtime)"
    );
    let agent = pullgate_testenv::Agent::new(dir.path(), &containerd.endpoint())
        .args(&[
            "--insecure-registry",
            &host,
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
        ])
        .spawn()?;
    let shown = std::cell::Cell::new(0usize);
    let show_new = || {
        let lines = agent.lines();
        for l in lines.iter().skip(shown.get()) {
            match l["kind"].as_str() {
                Some("prepull") => eprintln!(
                    "  prepull   {:<48} {:<14} {}",
                    l["image"].as_str().unwrap_or(""),
                    l["verdict"].as_str().unwrap_or(""),
                    l["action"].as_str().unwrap_or("")
                ),
                Some("canary") => eprintln!(
                    "  canary    {:<48} {:<14} {} via {} ({})",
                    l["image"].as_str().unwrap_or(""),
                    l["verdict"].as_str().unwrap_or(""),
                    l["trigger"].as_str().unwrap_or(""),
                    l["path"].as_str().unwrap_or(""),
                    l["credential"].as_str().unwrap_or("")
                ),
                Some("condition") => eprintln!(
                    "  condition {:<48} {:<14} {}",
                    l["type"].as_str().unwrap_or(""),
                    l["status"].as_str().unwrap_or(""),
                    l["reason"].as_str().unwrap_or("")
                ),
                _ => {}
            }
        }
        shown.set(lines.len());
    };
    let is = |kind: &'static str, verdict: &'static str| {
        move |l: &serde_json::Value| l["kind"] == kind && l["verdict"] == verdict
    };
    agent.wait_for(
        "the start-up canaries",
        Duration::from_secs(60),
        4,
        is("canary", "Ok"),
    )?;
    show_new();

    eprintln!(
        "\ndemo: the registry password is rotated; the Secret still holds the old one; the images stay cached"
    );
    registry.set_password(DEMO_USER, ROTATED)?;
    let rotated_at = Instant::now();
    agent.wait_for(
        "the canary to notice",
        Duration::from_secs(30),
        1,
        is("canary", "Unauthorized"),
    )?;
    eprintln!(
        "  (noticed {:.1} s after the rotation)",
        rotated_at.elapsed().as_secs_f64()
    );
    agent.wait_for("the condition", Duration::from_secs(10), 1, |l| {
        l["kind"] == "condition" && l["status"] == "False"
    })?;
    show_new();

    eprintln!("\ndemo: the Secret file is updated with the new password");
    let oks = agent
        .lines()
        .iter()
        .filter(|l| is("canary", "Ok")(l))
        .count();
    let fixed_at = Instant::now();
    write("secret.yaml", &secret(ROTATED))?;
    agent.wait_for(
        "the canary to recover",
        Duration::from_secs(30),
        oks + 2,
        is("canary", "Ok"),
    )?;
    eprintln!(
        "  (validated {:.1} s after the edit)",
        fixed_at.elapsed().as_secs_f64()
    );
    agent.wait_for("the condition", Duration::from_secs(10), 2, |l| {
        l["kind"] == "condition" && l["type"] == "PullCredentialsValid" && l["status"] == "True"
    })?;
    show_new();
    let (stdout, stderr) = agent.finish();
    ensure!(
        ![DEMO_PASSWORD, ROTATED]
            .iter()
            .any(|p| stdout.contains(p) || stderr.contains(p)),
        "a demo password leaked into pullgate's output"
    );
    Ok(())
}

fn seed(registry: &Registry, repository: &str, tag: &str, layers: &[usize]) -> Result<PushedImage> {
    let spec = ImageSpec::new(repository, tag).with_layers(layers);
    let pushed = block_on(images::push(
        &registry.host(),
        DEMO_USER,
        DEMO_PASSWORD,
        &spec,
    ))?;
    eprintln!(
        "  pushed {DEMO_REGISTRY}/{repository}:{tag} ({})",
        pushed.digest
    );
    Ok(pushed)
}

/// examples/demo pins payments/api by digest: images are built deterministically, so the digest is
/// stable; a change to the image builder must update the example.
fn check_demo_digest(manifests: &Path, api: &PushedImage) -> Result<()> {
    let mut texts = String::new();
    for entry in std::fs::read_dir(manifests)? {
        texts.push_str(&std::fs::read_to_string(entry?.path()).unwrap_or_default());
    }
    if !texts.contains(&api.digest) {
        bail!(
            "examples/demo does not pin payments/api at {}; the image builder changed: update the digest in {}",
            api.digest,
            manifests.display()
        );
    }
    Ok(())
}

fn bench_prepull(count: usize, size_mib: usize, runs: usize) -> Result<()> {
    const USER: &str = "bench";
    const PASSWORD: &str = "bench-Passw0rd-3c2b1a";
    let binary = pullgate_binary()?;
    let registry = Registry::start(&[(USER, PASSWORD)])?;
    let containerd = Containerd::start(&[registry.host()])?;
    let half = size_mib * 1024 * 1024 / 2;
    eprintln!("bench: pushing {count} images of {size_mib} MiB (2 distinct layers each)…");
    let images: Vec<PushedImage> = (0..count)
        .map(|i| {
            block_on(images::push(
                &registry.host(),
                USER,
                PASSWORD,
                &ImageSpec::new(&format!("bench/img{i}"), "v1").with_layers(&[half, half]),
            ))
        })
        .collect::<Result<_>>()?;
    let refs: Vec<String> = images.iter().map(|i| i.by_tag.clone()).collect();

    let manifests = tempfile::tempdir()?;
    std::fs::write(
        manifests.path().join("bench.yaml"),
        format!(
            "{}---\n{}",
            pullgate_testenv::manifests::pull_secret(
                "bench",
                "regcred",
                &registry.host(),
                USER,
                PASSWORD
            ),
            pullgate_testenv::manifests::pullset(
                "bench",
                "all",
                &refs.iter().map(String::as_str).collect::<Vec<_>>(),
                &["regcred"]
            )
        ),
    )?;
    let endpoint = containerd.endpoint();
    let clear = || -> Result<()> {
        block_on(async {
            let cri = containerd.cri();
            for r in &refs {
                let _ = cri.remove_image(r).await;
            }
            let left = cri.list_images().await?;
            ensure!(
                left.iter()
                    .all(|i| !refs.iter().any(|r| i.repo_tags.contains(r))),
                "images left after removal"
            );
            Ok(())
        })
    };
    let parallel = count.to_string();
    let pullgate = || -> Result<Duration> {
        let run = run_once(
            &binary,
            manifests.path(),
            &endpoint,
            &["--max-parallel-pulls", &parallel],
        )?;
        ensure!(
            run.code == Some(0),
            "pullgate run --once failed ({:?}):\n{}",
            run.code,
            run.stderr
        );
        Ok(run.wall)
    };
    let serial = || -> Result<Duration> {
        block_on(async {
            let cri = containerd.cri();
            let password = SecretString::from(PASSWORD);
            let start = Instant::now();
            for r in &refs {
                cri.pull_image(
                    r,
                    Some(PullAuth {
                        username: USER,
                        password: &password,
                    }),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok(start.elapsed())
        })
    };
    let concurrent = || -> Result<Duration> {
        block_on(async {
            let cri = containerd.cri();
            let password = SecretString::from(PASSWORD);
            let start = Instant::now();
            let pulls = refs.iter().map(|r| {
                let cri = cri.clone();
                let password = &password;
                async move {
                    cri.pull_image(
                        r,
                        Some(PullAuth {
                            username: USER,
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
    };

    let mut times: [Vec<Duration>; 3] = Default::default();
    for run in 0..runs {
        // Interleaved, so that drift on the machine affects every method alike.
        for (slot, method) in [
            (0usize, "pullgate run --once"),
            (1, "serial CRI"),
            (2, "concurrent CRI"),
        ] {
            clear()?;
            let t = match slot {
                0 => pullgate()?,
                1 => serial()?,
                _ => concurrent()?,
            };
            eprintln!(
                "  run {}/{runs} {method:<20} {:>8.0} ms",
                run + 1,
                t.as_secs_f64() * 1000.0
            );
            times[slot].push(t);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let [mut p, mut s, mut c] = times;
    let (p, s, c) = (median(&mut p), median(&mut s), median(&mut c));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("prepull benchmark: {count} images x {size_mib} MiB, {runs} runs each, medians");
    println!(
        "  (a) serial CRI PullImage (kubelet default)   {:>8.0} ms",
        ms(s)
    );
    println!(
        "  (b) concurrent CRI PullImage (raw limit)     {:>8.0} ms",
        ms(c)
    );
    println!(
        "  pullgate run --once --max-parallel-pulls {count:<3} {:>8.0} ms",
        ms(p)
    );
    println!(
        "  pullgate / (b) = {:.2}x   (target <= 1.10x)",
        ms(p) / ms(c)
    );
    println!(
        "  pullgate / (a) = {:.2}x   (target < 1.00x)",
        ms(p) / ms(s)
    );
    Ok(())
}

fn bench_canary(rotations: usize) -> Result<()> {
    use pullgate_testenv::manifests::{pull_secret, pullset};
    use pullgate_testenv::proxy::Proxy;
    let users = [
        ("bench-a", "bench-A-Passw0rd-11"),
        ("bench-b", "bench-B-Passw0rd-22"),
    ];
    let registry = Registry::start(&users)?;
    let containerd = Containerd::start(&[registry.host()])?;
    let proxy = Proxy::start(&registry.host())?;
    let host = proxy.host();
    block_on(images::push(
        &registry.host(),
        users[0].0,
        users[0].1,
        &ImageSpec::new("bench/app", "v1").with_layers(&[4 << 20, 4 << 20, 1 << 20]),
    ))?;
    let image = format!("{host}/bench/app:v1");
    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| write_atomically(dir.path(), name, text);
    write(
        "secret.yaml",
        &pull_secret("bench", "regcred", &host, users[0].0, users[0].1),
    )?;
    write(
        "set.yaml",
        &pullset("bench", "canary", &[&image], &["regcred"]).replace(
            "spec:\n",
            "spec:\n  prePull: false\n  canary: {depth: manifest}\n",
        ),
    )?;

    // Requests each depth costs the registry, counted at the proxy.
    eprintln!("bench canary: registry requests per depth (counted at a loopback proxy)");
    let binary = pullgate_binary()?;
    let mut cost = Vec::new();
    for depth in ["manifest", "blobs", "full"] {
        proxy.reset_count();
        let out = Command::new(&binary)
            .args([
                "check",
                &image,
                "--json",
                "--depth",
                depth,
                "-n",
                "bench",
                "--pullset",
                "canary",
            ])
            .args(["--insecure-registry", &host, "--manifests"])
            .arg(dir.path())
            .output()?;
        ensure!(
            out.status.success(),
            "check --depth {depth} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cost.push((depth, proxy.requests()));
    }

    eprintln!("bench canary: {rotations} rotations of the Secret, rotation jitter 0");
    let agent = pullgate_testenv::Agent::new(dir.path(), &containerd.endpoint())
        .args(&[
            "--insecure-registry",
            &host,
            "--rotation-jitter",
            "0s",
            "--log-format",
            "json",
        ])
        .spawn()?;
    let canaries = |agent: &pullgate_testenv::agent::RunningAgent| {
        agent
            .lines()
            .iter()
            .filter(|l| l["kind"] == "canary" && l["verdict"] == "Ok")
            .count()
    };
    agent.wait_for("the start-up canary", Duration::from_secs(60), 1, |l| {
        l["kind"] == "canary" && l["verdict"] == "Ok"
    })?;
    let mut latencies = Vec::new();
    for i in 0..rotations {
        let (user, password) = users[(i + 1) % 2];
        let before = canaries(&agent);
        let start = Instant::now();
        write(
            "secret.yaml",
            &pull_secret("bench", "regcred", &host, user, password),
        )?;
        agent.wait_for(
            "the rotation canary",
            Duration::from_secs(30),
            before + 1,
            |l| l["kind"] == "canary" && l["verdict"] == "Ok",
        )?;
        latencies.push(start.elapsed());
    }
    drop(agent);
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = latencies[(latencies.len() * 95).div_ceil(100).saturating_sub(1)];
    println!("canary benchmark");
    println!("  Secret file edit → canary report, {rotations} rotations, rotation jitter 0:");
    println!(
        "    median {:>6.0} ms   p95 {:>6.0} ms   max {:>6.0} ms   (target: p95 < 2000 ms)",
        ms(latencies[latencies.len() / 2]),
        ms(p95),
        ms(latencies[latencies.len() - 1])
    );
    println!("  registry requests per canary (image: 1 manifest, config + 3 layers):");
    for (depth, requests) in cost {
        println!("    {depth:<9} {requests:>3}");
    }
    Ok(())
}

/// Writes a manifest file the way a config-management tool would: a temp file, then a rename.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<()> {
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join(name))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Fleet figures: reconcile pass over present images, idle footprint, API-server requests.
// ---------------------------------------------------------------------------------------------

const BENCH_USER: &str = "bench";
const BENCH_PASSWORD: &str = "bench-Passw0rd-9e8d7c";

/// Pushes `count` tiny images `PREFIX/imgNNNNN:v1` (one 256-byte layer each, distinct content),
/// 16 at a time.
fn push_tiny(registry: &Registry, prefix: &str, count: usize) -> Result<Vec<PushedImage>> {
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
struct OnceRun {
    wall: Duration,
    code: Option<i32>,
    lines: Vec<serde_json::Value>,
    stderr: String,
}

impl OnceRun {
    fn prepulls(&self) -> impl Iterator<Item = &serde_json::Value> {
        self.lines.iter().filter(|l| l["kind"] == "prepull")
    }
}

fn run_once(binary: &Path, manifests: &Path, endpoint: &str, extra: &[&str]) -> Result<OnceRun> {
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

fn median<T: Ord + Copy>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Calls per gRPC method seen by a [`CriCounter`], with the time to the response headers.
#[derive(Clone, Copy, Debug, Default)]
struct CallStats {
    calls: u64,
    answered_in: Duration,
}

type CallTable = std::collections::BTreeMap<String, CallStats>;

/// A counting CRI proxy: a gRPC server on a Unix socket of its own that forwards every request,
/// untouched (bodies and trailers streamed through), to the real runtime's socket, and counts
/// the calls per method. containerd logs CRI reads only at trace level, so the calls are counted
/// here, on the wire.
struct CriCounter {
    dir: tempfile::TempDir,
    calls: std::sync::Arc<std::sync::Mutex<CallTable>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CriCounter {
    fn start(upstream: &str) -> Result<Self> {
        use std::sync::{Arc, Mutex};
        let upstream: pullgate::adapters::cri::CriEndpoint = upstream
            .parse()
            .map_err(|e| anyhow::anyhow!("CRI endpoint `{upstream}`: {e}"))?;
        // Short prefix: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("pgcri-")
            .tempdir_in("/tmp")?;
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("cri.sock"))?;
        listener.set_nonblocking(true)?;
        let calls: Arc<Mutex<CallTable>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let table = calls.clone();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
                    return;
                };
                let channel = pullgate::adapters::cri::connect(&upstream, Duration::from_secs(5));
                let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
                    forward(channel.clone(), table.clone(), request)
                });
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_routes(app.into())
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Ok(Self {
            dir,
            calls,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("cri.sock").display())
    }

    fn snapshot(&self) -> CallTable {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for CriCounter {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Forwards one gRPC request to the runtime and counts it under its method (`ListImages`).
async fn forward(
    channel: tonic::transport::Channel,
    calls: std::sync::Arc<std::sync::Mutex<CallTable>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let method = request
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let request = axum::http::Request::from_parts(parts, tonic::body::Body::new(body));
    let response = tower::ServiceExt::oneshot(channel, request).await;
    {
        let mut table = calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = table.entry(method).or_default();
        entry.calls += 1;
        entry.answered_in += started.elapsed();
    }
    match response {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(e) => {
            let (parts, ()) = tonic::Status::unavailable(format!("proxy: {e}"))
                .into_http::<()>()
                .into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::empty())
        }
    }
}

/// Calls made between two snapshots, per method.
fn calls_between(before: &CallTable, after: &CallTable) -> CallTable {
    after
        .iter()
        .map(|(method, a)| {
            let b = before.get(method).copied().unwrap_or_default();
            (
                method.clone(),
                CallStats {
                    calls: a.calls - b.calls,
                    answered_in: a.answered_in.saturating_sub(b.answered_in),
                },
            )
        })
        .filter(|(_, s)| s.calls > 0)
        .collect()
}

fn bench_reconcile(count: usize, runs: usize) -> Result<()> {
    use pullgate_testenv::manifests::{pull_secret, pullset};
    ensure!(
        count > 0 && runs > 0,
        "--images and --runs must be positive"
    );
    let binary = pullgate_binary()?;
    let registry = Registry::start(&[(BENCH_USER, BENCH_PASSWORD)])?;
    let containerd = Containerd::start(&[registry.host()])?;
    let images = push_tiny(&registry, "reconcile", count)?;

    // PullSets of 100 images each, one Secret.
    let manifests = tempfile::tempdir()?;
    let mut yaml = pull_secret(
        "bench",
        "regcred",
        &registry.host(),
        BENCH_USER,
        BENCH_PASSWORD,
    );
    let sets = images.chunks(100).count();
    for (n, chunk) in images.chunks(100).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(|i| i.by_tag.as_str()).collect();
        yaml.push_str("---\n");
        yaml.push_str(&pullset(
            "bench",
            &format!("set{n:03}"),
            &refs,
            &["regcred"],
        ));
    }
    std::fs::write(manifests.path().join("bench.yaml"), yaml)?;
    let endpoint = containerd.endpoint();

    // The first pass pulls everything, through the counting proxy: it shows the proxy sees every
    // kind of call (ImageStatus before and after each pull, PullImage).
    let counter = CriCounter::start(&endpoint)?;
    let proxied_endpoint = counter.endpoint();
    eprintln!("bench: first pass pulls the {count} images (`run --once --max-parallel-pulls 16`)…");
    let warm = run_once(
        &binary,
        manifests.path(),
        &proxied_endpoint,
        &["--max-parallel-pulls", "16"],
    )?;
    let warm_calls = counter.snapshot();
    ensure!(
        warm.code == Some(0) && warm.prepulls().count() == count,
        "the first pass failed (exit {:?}, {} outcomes)\n{}",
        warm.code,
        warm.prepulls().count(),
        warm.stderr
    );
    let held = block_on(async { containerd.cri().list_images().await })?.len();
    eprintln!(
        "bench: pulled in {:.1} s; the runtime holds {held} images",
        warm.wall.as_secs_f64()
    );

    let check = |run: &OnceRun| -> Result<u64> {
        ensure!(
            run.code == Some(0),
            "pullgate run --once exited {:?}\n{}",
            run.code,
            run.stderr
        );
        let mut outcomes = 0;
        let mut attempts = 0;
        for l in run.prepulls() {
            ensure!(
                l["action"] == "present" && l["verdict"] == "Ok",
                "not present: {l}"
            );
            outcomes += 1;
            attempts += l["attempts"].as_u64().unwrap_or(0);
        }
        ensure!(outcomes == count, "{outcomes} outcomes, {count} expected");
        Ok(attempts)
    };

    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    let mut attempts = Vec::new();
    let mut passes: Vec<CallTable> = Vec::new();
    for run in 0..runs {
        // Interleaved: direct to containerd (the figure), then through the counting proxy.
        let r = run_once(&binary, manifests.path(), &endpoint, &[])?;
        attempts.push(check(&r)?);
        direct.push(r.wall);
        let before = counter.snapshot();
        let r = run_once(&binary, manifests.path(), &proxied_endpoint, &[])?;
        attempts.push(check(&r)?);
        proxied.push(r.wall);
        let calls = calls_between(&before, &counter.snapshot());
        eprintln!(
            "  run {}/{runs}: direct {:>6.0} ms, through the proxy {:>6.0} ms, CRI calls {}",
            run + 1,
            ms(direct[run]),
            ms(proxied[run]),
            calls
                .iter()
                .map(|(m, s)| format!("{m}×{}", s.calls))
                .collect::<Vec<_>>()
                .join(" ")
        );
        passes.push(calls);
    }
    drop(counter);

    // What checking image by image would cost instead: one ImageStatus per image, serially.
    let by_image = block_on(async {
        let cri = containerd.cri();
        let start = Instant::now();
        for image in &images {
            ensure!(
                cri.image_status(&image.by_tag).await?.is_some(),
                "{} absent",
                image.by_tag
            );
        }
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;

    let per_pass = |method: &str| -> String {
        let counts: Vec<u64> = passes
            .iter()
            .map(|p| p.get(method).map_or(0, |s| s.calls))
            .collect();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        if lo == hi {
            format!("{lo} (every run)")
        } else {
            format!("{lo}–{hi}")
        }
    };
    let list_answered: Vec<Duration> = passes
        .iter()
        .filter_map(|p| p.get("ListImages"))
        .map(|s| s.answered_in / u32::try_from(s.calls.max(1)).unwrap_or(1))
        .collect();
    let others: std::collections::BTreeSet<&String> = passes
        .iter()
        .flat_map(|p| p.keys())
        .filter(|m| !matches!(m.as_str(), "ListImages" | "ImageStatus" | "PullImage"))
        .collect();

    println!(
        "reconcile benchmark: {count} images already present ({sets} PullSet(s) of up to 100 images, one Secret), {runs} runs, medians"
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| `pullgate run --once` over {count} present images (process start to exit) | {:.0} ms |",
        ms(median(&direct))
    );
    println!(
        "| the same through the counting CRI proxy | {:.0} ms |",
        ms(median(&proxied))
    );
    println!(
        "| CRI `ListImages` calls per pass | {} |",
        per_pass("ListImages")
    );
    println!(
        "| CRI `ImageStatus` calls per pass | {} |",
        per_pass("ImageStatus")
    );
    println!(
        "| CRI `PullImage` calls per pass | {} |",
        per_pass("PullImage")
    );
    for method in others {
        println!("| CRI `{method}` calls per run | {} |", per_pass(method));
    }
    println!(
        "| `attempts` summed over the {count} outcomes of a pass | {} |",
        attempts.iter().max().copied().unwrap_or(0)
    );
    if !list_answered.is_empty() {
        println!(
            "| `ListImages` answered by containerd ({held} images) | {:.0} ms |",
            ms(median(&list_answered))
        );
    }
    println!(
        "| for comparison: {count} `ImageStatus` calls one after another | {:.0} ms |",
        ms(by_image)
    );
    println!(
        "| for comparison: the first pass, which pulled them (`--max-parallel-pulls 16`), CRI calls | {} |",
        warm_calls
            .iter()
            .map(|(m, s)| format!("{m} {}", s.calls))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The daemon under measurement: its own process (default log level), stdout JSON lines counted
/// by a reader thread, stderr to a file; SIGTERM on drop.
struct Daemon {
    child: std::process::Child,
    prepulls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    canaries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reader: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(mut command: Command, log: PathBuf) -> Result<Self> {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn prepulls(&self) -> usize {
        self.prepulls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn canaries(&self) -> usize {
        self.canaries.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&Self) -> bool) -> Result<()> {
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

/// One reading of `/proc/PID`: resident and peak memory (KiB), threads, CPU ticks (user+system).
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    ticks: u64,
}

fn proc_sample(pid: u32) -> Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did the agent exit?)"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> u64 { rest.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    Ok(ProcSample {
        at,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        ticks: tick(11) + tick(12),
    })
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn bench_idle(
    pullsets: usize,
    image_count: usize,
    secret_count: usize,
    seconds: u64,
    canary_schedule: Option<&str>,
) -> Result<()> {
    use pullgate_testenv::manifests::{pull_secret, pullset};
    ensure!(
        pullsets > 0 && image_count >= pullsets && secret_count >= pullsets,
        "every PullSet needs at least one image and one Secret"
    );
    let binary = pullgate_binary()?;
    let registry = Registry::start(&[(BENCH_USER, BENCH_PASSWORD)])?;
    let containerd = Containerd::start(&[registry.host()])?;
    let host = registry.host();
    let images = push_tiny(&registry, "idle", image_count)?;

    // PullSet i lives in namespace team(i % 10), lists images j with j % pullsets == i, and
    // references Secrets j with j % pullsets == i (in its namespace): the first for the bench
    // registry, the others for registries it does not pull from.
    let namespaces = pullsets.min(10);
    let manifests = tempfile::tempdir()?;
    let mut files = vec![String::new(); namespaces];
    for j in 0..secret_count {
        let owner = j % pullsets;
        let key = if j < pullsets {
            host.clone()
        } else {
            format!("registry-{j}.example.invalid:5000")
        };
        let doc = &mut files[owner % namespaces];
        doc.push_str(&pull_secret(
            &format!("team{}", owner % namespaces),
            &format!("pull-{j:04}"),
            &key,
            BENCH_USER,
            BENCH_PASSWORD,
        ));
        doc.push_str("---\n");
    }
    for i in 0..pullsets {
        let refs: Vec<&str> = images
            .iter()
            .enumerate()
            .filter(|(j, _)| j % pullsets == i)
            .map(|(_, p)| p.by_tag.as_str())
            .collect();
        let secrets: Vec<String> = (0..secret_count)
            .filter(|j| j % pullsets == i)
            .map(|j| format!("pull-{j:04}"))
            .collect();
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let mut set = pullset(
            &format!("team{}", i % namespaces),
            &format!("set-{i:03}"),
            &refs,
            &secrets,
        );
        if let Some(schedule) = canary_schedule {
            set = set.replace(
                "spec:\n",
                &format!("spec:\n  canary: {{schedule: '{schedule}', depth: manifest}}\n"),
            );
        }
        let doc = &mut files[i % namespaces];
        doc.push_str(&set);
        doc.push_str("---\n");
    }
    for (n, text) in files.iter().enumerate() {
        std::fs::write(manifests.path().join(format!("team{n}.yaml")), text)?;
    }
    let endpoint = containerd.endpoint();

    eprintln!("bench: first pass pulls the {image_count} images…");
    let warm = run_once(
        &binary,
        manifests.path(),
        &endpoint,
        &["--max-parallel-pulls", "16"],
    )?;
    ensure!(
        warm.code == Some(0) && warm.prepulls().count() == image_count,
        "the first pass failed (exit {:?}, {} outcomes)\n{}",
        warm.code,
        warm.prepulls().count(),
        warm.stderr
    );

    eprintln!(
        "bench: starting `pullgate run` (daemon, default flags and log level, canaries {})…",
        canary_schedule.map_or("off".to_string(), |s| format!("on `{s}`"))
    );
    let scratch = tempfile::Builder::new()
        .prefix("pgidle-")
        .tempdir_in("/tmp")?;
    let mut command = Command::new(&binary);
    command
        .args([
            "run",
            "--node-name",
            "bench",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--api-socket")
        .arg(scratch.path().join("agent.sock"))
        .arg("--manifests")
        .arg(manifests.path())
        .arg("--cri-endpoint")
        .arg(&endpoint)
        .args(["--insecure-registry", &host])
        .env_remove("RUST_LOG");
    let started = Instant::now();
    let daemon = Daemon::spawn(command, scratch.path().join("agent.log"))?;
    let pid = daemon.pid();
    daemon.wait_for("the first pass", Duration::from_secs(300), |d| {
        d.prepulls() >= image_count
    })?;
    if canary_schedule.is_some() {
        daemon.wait_for("the start-up canaries", Duration::from_secs(300), |d| {
            d.canaries() >= image_count
        })?;
    }
    let first_pass = started.elapsed();
    let after_first = proc_sample(pid)?;
    // Let the tail of start-up (tasks that finish after the last report) settle.
    std::thread::sleep(Duration::from_secs(5));

    eprintln!("bench: sampling /proc/{pid} every second for {seconds} s…");
    let clk = clock_ticks();
    let prepulls_before = daemon.prepulls();
    let mut samples = vec![proc_sample(pid)?];
    let end = samples[0].at + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(proc_sample(pid)?);
    }
    let passes = (daemon.prepulls() - prepulls_before) as f64 / image_count as f64;
    drop(daemon);

    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let cpu_pct = |a: &ProcSample, b: &ProcSample| {
        (b.ticks - a.ticks) as f64 / clk as f64 / (b.at - a.at).as_secs_f64() * 100.0
    };
    let average = cpu_pct(&first, &last);
    let busiest_10s = samples
        .windows(11)
        .map(|w| cpu_pct(&w[0], &w[10]))
        .fold(0.0_f64, f64::max);
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let rss_median = median(&rss);
    let rss_max = rss.iter().max().copied().unwrap_or(0);

    println!(
        "idle benchmark: {pullsets} PullSets, {image_count} images (all present), {secret_count} Secrets (dockerconfigjson), canaries {}, release build",
        canary_schedule.map_or("off".to_string(), |s| format!("on `{s}` (depth manifest)"))
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| start-up to end of first pass{} | {:.1} s, {:.2} CPU-s, peak RSS {:.1} MiB |",
        if canary_schedule.is_some() {
            " and start-up canaries"
        } else {
            ""
        },
        first_pass.as_secs_f64(),
        after_first.ticks as f64 / clk as f64,
        mib(after_first.hwm_kib)
    );
    println!(
        "| RSS at idle, median over {seconds} s (max) | {:.1} MiB ({:.1} MiB) (target < 30 MiB) |",
        mib(rss_median),
        mib(rss_max)
    );
    println!(
        "| peak RSS since start (`VmHWM`) | {:.1} MiB |",
        mib(last.hwm_kib)
    );
    println!(
        "| CPU at idle, average over {seconds} s | {average:.2} % of one core (target < 1 %) |"
    );
    println!("| CPU, busiest 10 s of the window | {busiest_10s:.2} % of one core |");
    println!("| recheck passes in the window (`--recheck-interval` 5m) | {passes:.1} |");
    println!("| threads | {} |", last.threads);
    Ok(())
}

/// One request the test API server saw, as `METHOD path?query`, classified.
struct ApiRequest {
    at: Instant,
    line: String,
}

impl ApiRequest {
    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or_default()
    }

    fn path(&self) -> &str {
        let target = self.line.split(' ').nth(1).unwrap_or_default();
        target.split('?').next().unwrap_or_default()
    }

    fn query(&self, key: &str) -> Option<&str> {
        let target = self.line.split(' ').nth(1)?;
        target
            .split_once('?')?
            .1
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    fn is_watch(&self) -> bool {
        self.method() == "GET" && matches!(self.query("watch"), Some("true" | "1"))
    }

    /// What a watch watches: the collection and its field selector.
    fn watch_key(&self) -> String {
        format!(
            "{} {}",
            self.path(),
            self.query("fieldSelector").unwrap_or_default()
        )
    }

    fn category(&self) -> &'static str {
        let path = self.path();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let is_collection = |s: &[&str]| match s {
            ["api", _, plural] | ["apis", _, _, plural] => !plural.is_empty(),
            ["api", _, "namespaces", _, _] | ["apis", _, _, "namespaces", _, _] => true,
            _ => false,
        };
        match self.method() {
            "GET" if self.is_watch() => "watch (re-)established",
            "GET" if is_collection(&segments) => "list",
            "GET" => "get",
            "PATCH" if path.contains("/nodes/") && path.ends_with("/status") => {
                "patch Node status (conditions)"
            }
            "PATCH" if path.contains("/nodes/") => "patch Node (taint)",
            "POST" | "PATCH" if path.contains("/events") => "Events",
            _ => "other",
        }
    }
}

fn bench_api(minutes: f64, pullsets: usize) -> Result<()> {
    use pullgate_testenv::apiserver::{ApiServer, objects};
    use serde_json::json;
    const NODE: &str = "test-node";
    const TAINT: &str = "pullgate.io/not-ready";
    const IMAGES_PER_SET: usize = 3;
    ensure!(
        minutes > 0.0 && pullsets > 0,
        "--minutes and --pullsets must be positive"
    );
    let registry = Registry::start(&[(BENCH_USER, BENCH_PASSWORD)])?;
    let containerd = Containerd::start(&[registry.host()])?;
    let host = registry.host();
    let pool = push_tiny(&registry, "api", 2 * pullsets)?;
    let api = ApiServer::start()?;
    let scratch = tempfile::tempdir()?;
    let kubeconfig = scratch.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;

    // A node that registered with the start-up taint; two PullSets per namespace, one naming its
    // two Secrets, the other its ServiceAccount (which lists one of them); overlapping images; a
    // daily registry canary; the first PullSet gated.
    api.apply(objects::node(NODE, &[(TAINT, "NoSchedule")]));
    let mut namespaces = std::collections::BTreeSet::new();
    for i in 0..pullsets {
        let ns = format!("team{}", i / 2);
        if namespaces.insert(ns.clone()) {
            for secret in ["regcred-a", "regcred-b"] {
                api.apply(objects::pull_secret(
                    &ns,
                    secret,
                    &host,
                    BENCH_USER,
                    BENCH_PASSWORD,
                ));
            }
            api.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "puller", "namespace": ns},
                "imagePullSecrets": [{"name": "regcred-b"}]}));
        }
        let refs: Vec<&str> = (0..IMAGES_PER_SET)
            .map(|k| pool[(2 * i + k) % pool.len()].by_tag.as_str())
            .collect();
        let mut spec = json!({"gate": i == 0,
            "canary": {"schedule": "0 3 * * *", "depth": "manifest"}});
        if i % 2 == 0 {
            spec["imagePullSecrets"] = json!([{"name": "regcred-a"}, {"name": "regcred-b"}]);
        } else {
            spec["serviceAccountName"] = json!("puller");
        }
        api.apply(objects::pullset(&ns, &format!("set-{i:02}"), &refs, spec));
    }

    eprintln!(
        "bench api: `pullgate run` in cluster mode (default heartbeat 10m, recheck 5m), {pullsets} PullSets in {} namespaces",
        namespaces.len()
    );
    pullgate_binary()?;
    let started = Instant::now();
    let agent = pullgate_testenv::Agent::cluster(&kubeconfig, &containerd.endpoint())
        .args(&["--insecure-registry", &host])
        .spawn()?;
    let mut timeline: Vec<ApiRequest> = Vec::new();
    let poll = |timeline: &mut Vec<ApiRequest>| {
        let all = api.requests();
        let now = Instant::now();
        for line in all.into_iter().skip(timeline.len()) {
            timeline.push(ApiRequest { at: now, line });
        }
    };
    // Initial sync and first pass: every outcome reported, the taint lifted, then quiet.
    let expected = pullsets * IMAGES_PER_SET;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut quiet_since = Instant::now();
    loop {
        let before = timeline.len();
        poll(&mut timeline);
        if timeline.len() != before {
            quiet_since = Instant::now();
        }
        let outcomes = agent
            .lines()
            .iter()
            .filter(|l| l["kind"] == "prepull" && l["verdict"] == "Ok")
            .count();
        let untainted = !api.node_taints(NODE).iter().any(|t| t == TAINT);
        if outcomes >= expected && untainted && quiet_since.elapsed() >= Duration::from_secs(10) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no steady state after 180 s ({outcomes}/{expected} outcomes, taint removed: {untainted})\nstderr:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let initial = timeline.len();
    let settled = started.elapsed();
    let window = Duration::from_secs_f64(minutes * 60.0);
    eprintln!(
        "bench api: steady state after {:.0} s ({initial} requests so far); counting for {minutes} min…",
        settled.as_secs_f64()
    );
    let window_start = Instant::now();
    let mut next_report = window_start + Duration::from_secs(60);
    while window_start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250));
        poll(&mut timeline);
        if Instant::now() >= next_report {
            eprintln!(
                "  {:>4.0} s: {} requests in the window",
                window_start.elapsed().as_secs_f64(),
                timeline.len() - initial
            );
            next_report += Duration::from_secs(60);
        }
    }
    let elapsed = window_start.elapsed();
    let total_run = started.elapsed();
    let (_stdout, stderr) = agent.finish();
    ensure!(
        !stderr.contains(BENCH_PASSWORD) && !api.dump().contains(BENCH_PASSWORD),
        "the bench password leaked"
    );

    let in_window = &timeline[initial..];
    let per_hour = |n: usize| n as f64 * 3600.0 / elapsed.as_secs_f64();
    let mut by_category: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in in_window {
        *by_category.entry(r.category()).or_default() += 1;
    }
    // Watches: one per watched target; the interval between its re-establishments. Intervals
    // count only when they end in the window (start-up's quick succession is not steady state).
    let mut watches: std::collections::BTreeMap<String, Vec<(usize, Instant)>> = Default::default();
    for (n, r) in timeline.iter().enumerate().filter(|(_, r)| r.is_watch()) {
        watches.entry(r.watch_key()).or_default().push((n, r.at));
    }
    let kinds = |plural: &str| {
        watches
            .keys()
            .filter(|k| {
                k.split(' ')
                    .next()
                    .is_some_and(|p| p.ends_with(&format!("/{plural}")))
            })
            .count()
    };
    let intervals = |times: &[(usize, Instant)]| -> Vec<Duration> {
        times
            .windows(2)
            .filter(|w| w[1].0 >= initial)
            .map(|w| w[1].1 - w[0].1)
            .collect()
    };
    let watch_intervals: Vec<Duration> = watches.values().flat_map(|t| intervals(t)).collect();
    let heartbeats: Vec<(usize, Instant)> = timeline
        .iter()
        .enumerate()
        .filter(|(_, r)| r.category() == "patch Node status (conditions)")
        .map(|(n, r)| (n, r.at))
        .collect();
    let heartbeat_intervals = intervals(&heartbeats);

    println!(
        "API-server benchmark: one node, {pullsets} PullSets in {} namespaces ({} Secrets, {} ServiceAccounts), everything present, default flags",
        namespaces.len(),
        2 * namespaces.len(),
        namespaces.len()
    );
    println!(
        "(initial sync, first pass and taint removal: {initial} requests in {:.0} s, not counted; window: {:.1} min; run: {:.1} min)",
        settled.as_secs_f64(),
        elapsed.as_secs_f64() / 60.0,
        total_run.as_secs_f64() / 60.0
    );
    println!();
    println!("| requests at steady state | in the window | per hour (extrapolated) |");
    println!("|---|---|---|");
    for (category, n) in &by_category {
        println!("| {category} | {n} | {:.0} |", per_hour(*n));
    }
    println!(
        "| **total** | **{}** | **{:.0}** |",
        in_window.len(),
        per_hour(in_window.len())
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| long-lived watches held open | {} (PullSets {}, Node {}, Secrets {}, ServiceAccounts {}) |",
        watches.len(),
        kinds("pullsets"),
        kinds("nodes"),
        kinds("secrets"),
        kinds("serviceaccounts")
    );
    if !watch_intervals.is_empty() {
        let interval = median(&watch_intervals);
        println!(
            "| each watch re-established every (median) | {:.0} s (kube's `timeoutSeconds=290`) → {:.0} requests/h for {} watches |",
            interval.as_secs_f64(),
            watches.len() as f64 * 3600.0 / interval.as_secs_f64(),
            watches.len()
        );
    }
    if !heartbeat_intervals.is_empty() {
        let interval = median(&heartbeat_intervals);
        println!(
            "| Node conditions re-written every (median) | {:.0} s (`--condition-heartbeat` 10m) → {:.1} requests/h |",
            interval.as_secs_f64(),
            3600.0 / interval.as_secs_f64()
        );
    }
    Ok(())
}
