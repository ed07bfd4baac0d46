//! `bench-canary`: Secret edit to canary report latency, and registry requests per depth.

use anyhow::{Result, ensure};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::images::{self, ImageSpec};
use pullgate_testenv::{Containerd, Registry, block_on};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench::write_atomically;

pub fn bench_canary(rotations: usize) -> Result<()> {
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
