//! `bench-canary`: Secret edit to canary report latency, and registry requests per depth.

use anyhow::{Result, ensure};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::images::{self, ImageSpec};
use pullgate_testenv::proxy::{Counts, Kind};
use pullgate_testenv::{Containerd, Registry, block_on};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench::write_atomically;

/// The requests of a fresh agent's first canary of `reference` at `depth` (its start-up one),
/// and of its second (run now through the local API), counted by kind at `proxy`.
fn requests_of(
    proxy: &pullgate_testenv::proxy::Proxy,
    endpoint: &str,
    (user, password): (&str, &str),
    reference: &str,
    depth: &str,
) -> Result<[Counts; 2]> {
    use pullgate_testenv::manifests::{canaried_pullset, pull_secret};
    let dir = tempfile::tempdir()?;
    let host = proxy.host();
    write_atomically(
        dir.path(),
        "secret.yaml",
        &pull_secret("bench", "regcred", &host, user, password),
    )?;
    write_atomically(
        dir.path(),
        "set.yaml",
        &canaried_pullset(
            "bench",
            "cost",
            reference,
            &["regcred"],
            &format!("depth: {depth}"),
        )
        .replace("spec:\n", "spec:\n  prePull: false\n  gate: false\n"),
    )?;
    let socket = dir.path().join("agent.sock");
    proxy.reset_count();
    let agent = pullgate_testenv::Agent::new(dir.path(), endpoint)
        .canary_defaults(&host)
        .args(&["--api-socket", &socket.to_string_lossy()])
        .spawn()?;
    agent.wait_for("the start-up canary", Duration::from_secs(60), 1, |l| {
        l["kind"] == "canary"
    })?;
    let first = proxy.counts();
    proxy.reset_count();
    let mut command = Command::new(pullgate_binary()?);
    command
        .args(["canary", "bench/cost", "--json", "--api-socket"])
        .arg(&socket);
    let out = pullgate_testenv::process::output_within(command, Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "canary --depth {depth} of {reference} failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let steady = proxy.counts();
    drop(agent);
    Ok([first, steady])
}

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
    let pushed = block_on(images::push(
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

    // Requests each depth costs the registry, counted by kind at the proxy: a fresh agent's
    // start-up canary (the first) and its next, manual, one (the steady state).
    eprintln!("bench canary: registry requests per depth (counted at a loopback proxy)");
    let index = block_on(images::push_index(users[0].0, users[0].1, &pushed, "multi"))?;
    let references = [
        (
            "image by digest",
            format!("{host}/bench/app@{}", pushed.digest),
        ),
        ("image by tag", format!("{host}/bench/app:v1")),
        ("index by digest", format!("{host}/bench/app@{index}")),
        ("index by tag", format!("{host}/bench/app:multi")),
    ];
    let mut cost = Vec::new();
    for (what, reference) in &references {
        for depth in ["manifest", "blobs", "full"] {
            let [first, steady] =
                requests_of(&proxy, &containerd.endpoint(), users[0], reference, depth)?;
            cost.push((*what, depth, first, steady));
        }
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
    println!(
        "  registry requests per canary, by kind (image: config + 3 layers; index: one platform);"
    );
    println!(
        "  first = a fresh agent's start-up canary, steady = its next (manifest bodies cached):"
    );
    print!("    {:<16} {:<9} {:<7}", "reference", "depth", "canary");
    for kind in Kind::ALL {
        print!(" {:>13}", kind.label());
    }
    println!(" {:>6}", "total");
    for (what, depth, first, steady) in &cost {
        for (which, counts) in [("first", first), ("steady", steady)] {
            print!("    {what:<16} {depth:<9} {which:<7}");
            for kind in Kind::ALL {
                print!(" {:>13}", counts.of(kind));
            }
            println!(" {:>6}", counts.total());
        }
    }
    Ok(())
}
