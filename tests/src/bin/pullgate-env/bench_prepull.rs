//! `bench-prepull`: pullgate vs serial CRI pulls vs raw concurrent CRI pulls.

use anyhow::{Result, ensure};
use pullgate::decide::runtime::{ImageRuntime as _, PullAuth};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::images::{self, ImageSpec, PushedImage};
use pullgate_testenv::{Containerd, Registry, block_on};
use secrecy::SecretString;
use std::time::{Duration, Instant};

use crate::bench::run_once;

pub fn bench_prepull(count: usize, size_mib: usize, runs: usize) -> Result<()> {
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
        crate::bench::concurrent_pulls(&containerd, &refs, USER, PASSWORD)
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
    println!(
        "prepull benchmark: containerd {} ({}), {count} images x {size_mib} MiB, {runs} runs each, medians",
        containerd.version(),
        if containerd.release().is_v2() {
            "CRI pulls through the transfer service"
        } else {
            "CRI pulls itself"
        }
    );
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
