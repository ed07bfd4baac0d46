//! `bench-reconcile`: `run --once` over N images that are all present; CRI calls per pass,
//! counted on the wire by the counting CRI proxy.

use anyhow::{Result, ensure};
use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::{Containerd, Registry, block_on};
use std::time::{Duration, Instant};

use crate::bench::{BENCH_PASSWORD, BENCH_USER, OnceRun, median, ms, push_tiny, run_once};
use pullgate_testenv::cri_counter::{CallTable, CriCounter, calls_between};

pub fn bench_reconcile(count: usize, runs: usize) -> Result<()> {
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
