//! `demo`: a local containerd and registry, private images seeded, `pullgate run --once` over
//! examples/demo, then the rotation story told by the daemon.

use anyhow::{Context as _, Result, bail, ensure};
use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::images::{self, ImageSpec, PushedImage};
use pullgate_testenv::{Containerd, Registry, block_on};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::write_atomically;

/// The registry name used in examples/demo; containerd maps it to the demo registry's real port.
const DEMO_REGISTRY: &str = "registry.pullgate.demo:5000";
const DEMO_USER: &str = "demo";
/// Must match examples/demo/10-payments.yaml.
const DEMO_PASSWORD: &str = "demo-Passw0rd-not-for-production";

pub fn demo(manifests: &Path) -> Result<()> {
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
