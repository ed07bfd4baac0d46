//! `bench-gate`: the scale-out figure. A node joins tainted (cluster mode, the test API server)
//! with N critical images; the time from the agent's process start to the removal of its start-up
//! taint, recorded inside the API server when the Node without the taint is stored
//! (`ApiServer::mark_when`), beside the raw concurrent CRI `PullImage` time of the same images, in
//! the same run, interleaved, medians.

use anyhow::{Context as _, Result, ensure};
use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::images::{self, ImageSpec, PushedImage};
use pullgate_testenv::process::{ChildGuard, wait_until};
use pullgate_testenv::{Containerd, Registry, block_on};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::bench::{median, ms};

const USER: &str = "bench";
const PASSWORD: &str = "bench-Passw0rd-6a5f4e";
const NODE: &str = "bench-node";
const TAINT: &str = "pullgate.io/not-ready";
/// The one namespace whose PullSets may hold the taint (`--gate-namespaces`).
const GATE_NS: &str = "critical";
/// A gate as a cluster would run it: the PullSet's registry canary on a schedule (default depth,
/// `manifest`), its start-up canary counted by the gate.
const CANARY: &str = "0 */6 * * *";

/// What one agent run measured, each from the agent's process start.
struct GateRun {
    /// The Node without the taint stored (inside the API server).
    untainted: Duration,
    /// The conditions with `CriticalImagesReady` True stored (inside the API server).
    images_ready: Duration,
    /// The first image's handling began (its `ImageStatus`, then `PullImage`), from the JSON lines.
    first_pull: Duration,
    /// The last image's outcome, from the JSON lines.
    last_pull: Duration,
    /// The gated start-up canary: began and ended, from its JSON lines.
    canary: (Duration, Duration),
}

pub fn bench_gate(count: usize, size_mib: usize, runs: usize, extra: &[String]) -> Result<()> {
    ensure!(
        count > 0 && runs > 0,
        "--images and --runs must be positive"
    );
    let binary = pullgate_binary()?;
    let registry = Registry::start(&[(USER, PASSWORD)])?;
    let containerd = Containerd::start(&[registry.host()])?;
    let half = size_mib * 1024 * 1024 / 2;
    eprintln!("bench gate: pushing {count} images of {size_mib} MiB (2 distinct layers each)…");
    let pushed: Vec<PushedImage> = (0..count)
        .map(|i| {
            block_on(images::push(
                &registry.host(),
                USER,
                PASSWORD,
                &ImageSpec::new(&format!("gate/img{i}"), "v1").with_layers(&[half, half]),
            ))
        })
        .collect::<Result<_>>()?;
    // Digest-pinned, as critical images should be.
    let refs: Vec<String> = pushed.iter().map(|i| i.by_digest.clone()).collect();
    let scratch = tempfile::tempdir()?;

    let clear = || -> Result<()> {
        block_on(async {
            let cri = containerd.cri();
            for r in &refs {
                let _ = cri.remove_image(r).await;
            }
            let left = cri.list_images().await?;
            ensure!(
                left.iter()
                    .all(|i| !refs.iter().any(|r| i.repo_digests.contains(r))),
                "images left after removal"
            );
            Ok(())
        })
    };
    let raw = || -> Result<Duration> {
        crate::bench::concurrent_pulls(&containerd, &refs, USER, PASSWORD)
    };
    let setup = Setup {
        binary: &binary,
        registry: &registry.host(),
        endpoint: &containerd.endpoint(),
        refs: &refs,
        extra,
    };

    let mut gate_runs = Vec::new();
    let mut raw_runs = Vec::new();
    for run in 0..runs {
        // Interleaved, so that drift on the machine affects both alike; the order alternates.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for agent in order {
            clear()?;
            if agent {
                let dir = scratch.path().join(format!("run{run}"));
                std::fs::create_dir_all(&dir)?;
                let g = setup.agent_run(&dir)?;
                eprintln!(
                    "  run {}/{runs} agent: taint removed {:>6.0} ms (first pull {:.0}, last pull {:.0}, CriticalImagesReady {:.0}, canary {:.0}-{:.0})",
                    run + 1,
                    ms(g.untainted),
                    ms(g.first_pull),
                    ms(g.last_pull),
                    ms(g.images_ready),
                    ms(g.canary.0),
                    ms(g.canary.1)
                );
                gate_runs.push(g);
            } else {
                let t = raw()?;
                eprintln!(
                    "  run {}/{runs} raw concurrent CRI PullImage {:>6.0} ms",
                    run + 1,
                    ms(t)
                );
                raw_runs.push(t);
            }
        }
    }
    ensure!(
        !registry.log().contains(PASSWORD) && !containerd.log().contains(PASSWORD),
        "the bench password leaked into a log"
    );

    let of = |f: fn(&GateRun) -> Duration| median(&gate_runs.iter().map(f).collect::<Vec<_>>());
    let untainted = of(|g| g.untainted);
    let raw = median(&raw_runs);
    let first_pull = of(|g| g.first_pull);
    let last_pull = of(|g| g.last_pull);
    let after_pulls = median(
        &gate_runs
            .iter()
            .map(|g| g.untainted.saturating_sub(g.last_pull))
            .collect::<Vec<_>>(),
    );
    let images_ready = of(|g| g.images_ready);
    let canary_start = of(|g| g.canary.0);
    let canary_end = of(|g| g.canary.1);
    let flags = if extra.is_empty() {
        "default flags otherwise".to_string()
    } else {
        extra.join(" ")
    };
    println!(
        "gate benchmark: containerd {} ({}), {count} images x {size_mib} MiB, digest-pinned, {runs} runs each, interleaved, medians",
        containerd.version(),
        if containerd.release().is_v2() {
            "CRI pulls through the transfer service"
        } else {
            "CRI pulls itself"
        }
    );
    println!(
        "agent: pullgate run, cluster mode (test API server), node registered with {TAINT}:NoSchedule, one gate: true PullSet in --gate-namespaces {GATE_NS}, canary schedule `{CANARY}` (manifest depth), --max-parallel-pulls {count}, {flags}"
    );
    println!();
    println!("| figure | median |");
    println!("|---|---|");
    println!(
        "| raw concurrent CRI `PullImage`, all {count} at once, no agent | {:.0} ms |",
        ms(raw)
    );
    println!(
        "| **agent process start → taint removed** (stored by the API server) | **{:.0} ms** |",
        ms(untainted)
    );
    println!(
        "| ratio | **{:.2}×** (goal ≤ 1.05×) |",
        ms(untainted) / ms(raw)
    );
    println!(
        "| · process start → first image handled (`ImageStatus`, then `PullImage`) | {:.0} ms |",
        ms(first_pull)
    );
    println!(
        "| · first image handled → last image's outcome (the agent's pulls) | {:.0} ms |",
        ms(last_pull.saturating_sub(first_pull))
    );
    println!(
        "| · last image's outcome → taint removed | {:.0} ms |",
        ms(after_pulls)
    );
    println!(
        "| · `CriticalImagesReady` True stored, from process start | {:.0} ms |",
        ms(images_ready)
    );
    println!(
        "| · gated start-up canary, from process start | {:.0} → {:.0} ms |",
        ms(canary_start),
        ms(canary_end)
    );
    Ok(())
}

/// What every agent run shares.
struct Setup<'a> {
    binary: &'a Path,
    registry: &'a str,
    endpoint: &'a str,
    refs: &'a [String],
    extra: &'a [String],
}

impl Setup<'_> {
    /// A fresh API server holding a node that just registered tainted and a gated PullSet of the
    /// images; the agent started; back once the API server stored the Node without the taint.
    fn agent_run(&self, dir: &Path) -> Result<GateRun> {
        let api = ApiServer::start()?;
        api.install_pullset_crd();
        api.apply(objects::node(NODE, &[(TAINT, "NoSchedule")]));
        api.apply(objects::pull_secret(
            GATE_NS,
            "regcred",
            self.registry,
            USER,
            PASSWORD,
        ));
        let refs: Vec<&str> = self.refs.iter().map(String::as_str).collect();
        api.apply(objects::pullset(
            GATE_NS,
            "critical-images",
            &refs,
            json!({"gate": true, "imagePullSecrets": [{"name": "regcred"}],
                   "canary": {"schedule": CANARY}}),
        ));
        let node = ("v1", "nodes");
        api.mark_when("untainted", node, ("", NODE), |n| {
            !n["spec"]["taints"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["key"] == TAINT))
        });
        api.mark_when("images-ready", node, ("", NODE), |n| {
            n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "CriticalImagesReady" && c["status"] == "True")
            })
        });
        let kubeconfig = api.kubeconfig_file()?;
        let log = dir.join("agent.log");
        let mut command = Command::new(self.binary);
        command
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig.path())
            .args(["--cri-endpoint", self.endpoint])
            .args(["--node-name", NODE])
            .args(["--metrics-addr", "127.0.0.1:0", "--api-socket", "off"])
            .args(["--insecure-registry", self.registry])
            .args(["--gate-namespaces", GATE_NS])
            .args(["--max-parallel-pulls", &self.refs.len().to_string()])
            // The bench machine's disk is not what is measured (the raw pulls check none either).
            .args(["--min-free-disk", "0"])
            .args(self.extra)
            .env_remove("RUST_LOG");
        let wall = SystemTime::now();
        let start = Instant::now();
        let mut agent = ChildGuard::spawn("pullgate", command, &log)?;
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until("the taint's removal", Duration::from_secs(120), || {
            api.marked_at("untainted").is_some()
        })
        .with_context(|| format!("agent output:\n{}", text()))?;
        // The conditions and the canary's line may come a moment after the taint.
        let canary_done = || lines(&text()).iter().any(|l| l["kind"] == "canary");
        wait_until("the canary's outcome", Duration::from_secs(30), canary_done)
            .with_context(|| format!("agent output:\n{}", text()))?;
        agent.stop(Duration::from_secs(10));
        let output = text();
        ensure!(
            !output.contains(PASSWORD) && !api.dump().contains(PASSWORD),
            "the bench password leaked"
        );
        let since = |at: Instant| at.saturating_duration_since(start);
        let untainted = since(api.marked_at("untainted").context("untainted")?);
        let images_ready = api.marked_at("images-ready").map_or(Duration::ZERO, since);
        let records = lines(&output);
        let prepulls: Vec<&Value> = records.iter().filter(|l| l["kind"] == "prepull").collect();
        ensure!(
            prepulls.len() == self.refs.len()
                && prepulls
                    .iter()
                    .all(|l| l["verdict"] == "Ok" && l["action"] == "pulled"),
            "expected {} pulled images, got:\n{output}",
            self.refs.len()
        );
        let (first_pull, last_pull) = span(&prepulls, wall)?;
        let canaries: Vec<&Value> = records.iter().filter(|l| l["kind"] == "canary").collect();
        ensure!(
            canaries
                .iter()
                .all(|l| l["verdict"] == "Ok" && l["trigger"] == "startup"),
            "expected Ok start-up canaries, got:\n{output}"
        );
        let canary = span(&canaries, wall)?;
        Ok(GateRun {
            untainted,
            images_ready,
            first_pull,
            last_pull,
            canary,
        })
    }
}

/// The JSON lines of the agent's output (its logs are text, on the same file).
fn lines(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter(|l| l.starts_with("{\"kind\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// From the wall-clock `start`: the earliest begin (`time` − `duration_ms`) and the latest end
/// (`time`) of these records.
fn span(records: &[&Value], start: SystemTime) -> Result<(Duration, Duration)> {
    let mut begin = None::<Duration>;
    let mut end = None::<Duration>;
    for record in records {
        let time = record["time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .with_context(|| format!("no time in {record}"))?;
        let at = SystemTime::from(time)
            .duration_since(start)
            .unwrap_or_default();
        let took = Duration::from_millis(record["duration_ms"].as_u64().unwrap_or(0));
        let from = at.saturating_sub(took);
        begin = Some(begin.map_or(from, |b| b.min(from)));
        end = Some(end.map_or(at, |e| e.max(at)));
    }
    Ok((begin.context("no records")?, end.context("no records")?))
}
