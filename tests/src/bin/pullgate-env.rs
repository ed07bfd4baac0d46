//! Driver for `cargo xtask demo` and `cargo xtask bench`: starts the real environment, seeds it, runs
//! pullgate against it, and tears everything down (guards stop the processes even on error).

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};
use pullgate::runtime::{ImageRuntime as _, PullAuth};
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
    let pullgate = || -> Result<Duration> {
        let start = Instant::now();
        let status = Command::new(&binary)
            .args([
                "run",
                "--once",
                "--metrics-addr",
                "127.0.0.1:0",
                "--api-socket",
                "off",
                "--node-name",
                "bench",
                "--max-parallel-pulls",
            ])
            .arg(count.to_string())
            .arg("--manifests")
            .arg(manifests.path())
            .arg("--cri-endpoint")
            .arg(&endpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(status.success(), "pullgate run --once failed");
        Ok(start.elapsed())
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
