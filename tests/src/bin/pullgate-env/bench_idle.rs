//! `bench-idle`: RSS and CPU of the daemon at steady state (everything present), from `/proc`.

use anyhow::{Result, ensure};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::{Containerd, Registry};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench::{BENCH_PASSWORD, BENCH_USER, Daemon, median, push_tiny, run_once};
use pullgate_testenv::procfs::{ProcSample, clock_ticks, mib, sample as proc_sample};

pub fn bench_idle(
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
