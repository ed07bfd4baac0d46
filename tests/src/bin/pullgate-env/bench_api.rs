//! `bench-api`: API-server requests per node per hour at steady state, in cluster mode.

use anyhow::{Result, ensure};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::{Containerd, Registry};
use std::time::{Duration, Instant};

use crate::bench::{BENCH_PASSWORD, BENCH_USER, median, push_tiny};

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

pub fn bench_api(minutes: f64, pullsets: usize, other_pool_pullsets: usize) -> Result<()> {
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
    api.install_pullset_crd();
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

    // PullSets aimed at another node pool, each in its own namespace with its own Secret: this
    // node must neither watch nor read anything of theirs.
    for i in 0..other_pool_pullsets {
        let ns = format!("elsewhere{i}");
        api.apply(objects::pull_secret(
            &ns,
            "other-pool-cred",
            &host,
            BENCH_USER,
            BENCH_PASSWORD,
        ));
        let refs = [pool[i % pool.len()].by_tag.as_str()];
        let spec = json!({"nodeSelector": {"pool": "other"},
            "imagePullSecrets": [{"name": "other-pool-cred"}],
            "canary": {"schedule": "0 3 * * *", "depth": "manifest"}});
        api.apply(objects::pullset(&ns, &format!("other-{i:02}"), &refs, spec));
    }

    eprintln!(
        "bench api: `pullgate run` in cluster mode (default heartbeat 10m, recheck 5m), {pullsets} PullSets in {} namespaces, {other_pool_pullsets} aimed at another node pool",
        namespaces.len()
    );
    pullgate_binary()?;
    let started = Instant::now();
    let agent = pullgate_testenv::Agent::cluster(&kubeconfig, &containerd.endpoint())
        .args(&["--insecure-registry", &host, "--gate-namespaces", "team0"])
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

    let other_pool_requests = timeline
        .iter()
        .filter(|r| r.line.contains("elsewhere") || r.line.contains("other-pool-cred"))
        .count();
    ensure!(
        other_pool_requests == 0,
        "{other_pool_requests} requests named the other pool's namespaces or Secrets"
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
    println!(
        "({other_pool_pullsets} PullSets aimed at another node pool, each with its own Secret: {other_pool_requests} requests named them, over the whole run)"
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
