//! Fleet simulation (`cargo xtask sim`): N simulated agents in one process, each running the real
//! canary service (`pullgate::daemon::canary_scheduler::run`) with its own node name, so each waits its own
//! deterministic jitter offset, and a real [`RegistryClient`] as its probe (one client, cloned: it
//! shares reqwest's pool; each probe still builds its own oci-client, as in the agent), against a
//! real `docker-registry` (htpasswd auth) behind the counting loopback proxy. It reports how hard
//! the fleet hits the registry: peak requests per second (any 1 s window), total requests, and the
//! spread from first to last request, for
//! - a scheduled canary without jitter and with `--jitter` (default 30s): the schedule is a 6-field
//!   cron with seconds naming one moment `--lead` ahead (`S M H * * *`, UTC), so the tick comes
//!   within seconds and fires once;
//! - a rotation (the pull secret's data changes to a second valid user) under each
//!   `--rotation-jitters` value (default `2s,10s`), one fleet start each;
//! - the fleet's start-up (every agent's start-up canary, spread over the rotation jitter);
//! - a baseline without pullgate code: one raw client per agent sending the same two requests,
//!   all at once, which shows what this machine's proxy and registry can serve at all.
//!
//! Sources, and why not one watcher per agent: the objects come from the test API server
//! (`pullgate_testenv::apiserver`) through a handful (`--cluster-sources`, default 8) of real
//! cluster sources (`pullgate::adapters::kube::source::watch_cluster`, kube's client and watchers, each for
//! a Node of its own); agent `i` subscribes to source `i mod K`'s `tokio::sync::watch` channel of
//! `Arc<Snapshot>`, the very channel an agent's canary service reads. Thousands of kube watchers in
//! one process would measure the test API server (one store lock, two worker threads) and kube's
//! client rather than pullgate's spreading of canaries; in a real cluster each node's watches go to
//! a scaled API server. Every change (a schedule, a jitter, the rotated Secret) is written to the
//! test API server and reaches the agents through the real watch path.
//!
//! Figures: each canary at depth `manifest` is 2 requests (the `/v2/` auth challenge, then the
//! manifest with basic auth). "planned" is the peak computed from the jitter offsets alone (what an
//! infinitely fast registry would see); "sent" is the same from the canaries' actual start times
//! (what the agents did); "served" is what the proxy counted, sampled every 100 ms (it only keeps a
//! total), the most in any ten consecutive samples. Served is bounded by this machine: the registry
//! spends a few ms of CPU on each bcrypt check, and the proxy's accept queue overflows under a
//! stampede (the kernel's `ListenOverflows` is reported).

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use pullgate::adapters::registry::{RegistryClient, RegistryConfig};
use pullgate::daemon::canary_scheduler::{CanaryControl, CanarySink, ServiceConfig};
use pullgate::decide::canary::jitter;
use pullgate::decide::canary::runner::{CanaryOutcome, CanaryRunner, Trigger};
use pullgate::decide::credentials::{CredentialResolver, KubeletResolver};
use pullgate::model::inventory::ObjectKey;
use pullgate::model::node::NodeInfo;
use pullgate::model::snapshot::Snapshot;
use pullgate::model::verdict::Verdict;
use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::images::{self, ImageSpec};
use pullgate_testenv::proxy::Proxy;
use pullgate_testenv::{PASSWORD, Registry, USER};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const NAMESPACE: &str = "fleet";
const PULLSET: &str = "critical";
/// The rotated-to credential (a second htpasswd user, so both sides of the rotation work).
const USER2: &str = "pullgate-rotated";
const PASSWORD2: &str = "pg-Rotated-Passw0rd-4e5f6a";
/// Requests per `manifest` canary against a basic-auth registry.
const REQUESTS_PER_CANARY: u64 = 2;
const SAMPLE: Duration = Duration::from_millis(100);

#[derive(Parser)]
#[command(about = "Fleet simulation: registry request rate of a fleet's canaries")]
struct Cli {
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 2000)]
    nodes: usize,
    /// `canary.jitter` of the jittered scheduled scenario.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    jitter: Duration,
    /// `--rotation-jitter` values to measure a rotation with (one fleet start each).
    #[arg(long, default_value = "2s,10s", value_delimiter = ',', value_parser = parse_duration)]
    rotation_jitters: Vec<Duration>,
    /// Real cluster sources (kube watchers) against the test API server, shared by the agents.
    #[arg(long, default_value_t = 8)]
    cluster_sources: usize,
    /// How far ahead a schedule is set (time for it to reach every agent).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lead: Duration,
    /// Also measure the machine's own limit first: raw clients, no pullgate code.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    baseline: bool,
    /// Longest wait for a scenario's canaries beyond its jitter window.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("`{s}`: a unit is needed (ms, s, m, h)"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(cli.nodes > 0, "--nodes must be at least 1");
    ensure!(
        (1..=cli.nodes).contains(&cli.cluster_sources),
        "--cluster-sources must be between 1 and --nodes"
    );
    ensure!(
        !cli.rotation_jitters.is_empty(),
        "--rotation-jitters needs a value"
    );
    let limit = raise_fd_limit();
    eprintln!("sim: open-file limit {limit}");
    // Started before the runtime (both block while waiting for their process to answer); the
    // registry inherits the raised file limit.
    let registry = Registry::start(&[(USER, PASSWORD), (USER2, PASSWORD2)])?;
    let proxy = Arc::new(Proxy::start(&registry.host())?);
    let api = ApiServer::start()?;
    api.install_pullset_crd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(simulate(&cli, &registry, proxy.clone(), &api));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Raises the soft open-file limit to the hard one; the limit in effect.
#[allow(unsafe_code)]
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// One canary outcome, as the sim needs it.
struct Record {
    trigger: Trigger,
    verdict: Verdict,
    requests: u32,
    /// When the canary's first request left (its report time less its duration).
    started: Instant,
}

/// The canaries of one scenario.
#[derive(Default)]
struct Seen {
    count: usize,
    ok: usize,
    requests: u64,
    starts: Vec<Instant>,
}

/// Keeps what the agents report; the real agent's sink writes JSON lines and Events instead.
#[derive(Default)]
struct CountingSink {
    records: Mutex<Vec<Record>>,
}

impl CountingSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// The records since `from` with this trigger.
    fn since(&self, from: usize, trigger: Trigger) -> Seen {
        let records = self.lock();
        let mut out = Seen::default();
        for r in records.iter().skip(from).filter(|r| r.trigger == trigger) {
            out.count += 1;
            out.ok += usize::from(r.verdict.is_ok());
            out.requests += u64::from(r.requests);
            out.starts.push(r.started);
        }
        out
    }
}

impl CanarySink for CountingSink {
    fn outcome(&self, outcome: &CanaryOutcome) {
        self.lock().push(Record {
            trigger: outcome.trigger,
            verdict: outcome.verdict,
            requests: outcome.requests,
            started: Instant::now()
                .checked_sub(Duration::from_millis(outcome.duration_ms))
                .unwrap_or_else(Instant::now),
        });
    }

    fn verdicts(&self, _verdicts: &BTreeMap<(ObjectKey, String), Verdict>) {}
}

/// The proxy's request count, every 100 ms, from a thread of its own.
struct Sampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(proxy: Arc<Proxy>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !st.load(Ordering::Relaxed) {
                let count = proxy.requests();
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((Instant::now(), count));
                next += SAMPLE;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Self { samples, stop }
    }

    fn between(&self, from: Instant, to: Instant) -> Vec<(Instant, u64)> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .copied()
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What a scenario showed.
struct Row {
    scenario: String,
    agents: usize,
    ok: usize,
    requests: u64,
    reported_requests: u64,
    planned_peak: u64,
    measured_peak: u64,
    /// First and last request, relative to the trigger (100 ms resolution).
    first: Option<f64>,
    last: Option<f64>,
    /// Requests in each whole second from the trigger.
    per_second: Vec<u64>,
    /// The most canary starts in any 1 s, times the requests of a canary: what the fleet sent.
    offered_peak: u64,
    /// CPU seconds this process (agents, proxy, sampler) used during the scenario.
    cpu: f64,
    /// CPU seconds the registry used meanwhile.
    registry_cpu: f64,
    /// Connections the kernel dropped at a full listen queue (proxy or registry) meanwhile.
    listen_overflows: u64,
    note: String,
}

/// Counters at the start of a scenario.
struct Usage {
    cpu: f64,
    registry_cpu: f64,
    overflows: u64,
}

impl Usage {
    fn now(registry: &str) -> Self {
        Self {
            cpu: cpu_seconds("self"),
            registry_cpu: cpu_seconds(registry),
            overflows: listen_overflows(),
        }
    }
}

/// One plain HTTP/1.1 `GET` (`Connection: close`); the response's status code.
async fn raw_get(host: &str, path: &str, basic: Option<&str>) -> Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    let auth = basic
        .map(|b| format!("Authorization: Basic {b}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n{auth}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")
}

/// CPU seconds (user + system) used by a process (`self`, or a PID) so far.
fn cpu_seconds(pid: &str) -> f64 {
    // utime and stime in 1/100 s.
    pullgate_testenv::procfs::cpu_ticks(pid) as f64 / 100.0
}

/// The PID of the registry this process started (a child named `docker-registry`).
fn registry_pid() -> Option<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().to_string();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?;
            (name == "docker-registry" && ppid == me).then_some(pid)
        })
}

/// The most starts within any 1 s, times the requests of a canary.
fn offered_peak(starts: &[Instant]) -> u64 {
    let mut starts = starts.to_vec();
    starts.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..starts.len() {
        while starts[i].duration_since(starts[j]) >= Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best as u64 * REQUESTS_PER_CANARY
}

/// `TcpExt: ListenOverflows` of /proc/net/netstat (SYNs dropped because an accept queue was full).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = rows[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Requests counted in each second `[t0 + s, t0 + s + 1)` (sample resolution).
fn per_second(samples: &[(Instant, u64)], t0: Instant) -> Vec<u64> {
    let Some(&(_, base)) = samples.first() else {
        return Vec::new();
    };
    let at = |t: Instant| {
        samples
            .iter()
            .take_while(|s| s.0 <= t)
            .last()
            .map_or(base, |s| s.1)
    };
    let end = samples.last().map_or(t0, |s| s.0);
    let mut out = Vec::new();
    let mut s = 0;
    while t0 + Duration::from_secs(s) <= end {
        let from = if s == 0 {
            base
        } else {
            at(t0 + Duration::from_secs(s))
        };
        out.push(at(t0 + Duration::from_secs(s + 1)) - from);
        s += 1;
    }
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

/// Peak, total, first and last request time (relative to `t0`) from the samples.
fn analyse(samples: &[(Instant, u64)], t0: Instant) -> (u64, u64, Option<f64>, Option<f64>) {
    let Some(&(_, base)) = samples.first() else {
        return (0, 0, None, None);
    };
    let total = samples.last().map_or(0, |s| s.1) - base;
    let window = (Duration::from_secs(1).as_millis() / SAMPLE.as_millis()) as usize;
    let peak = (0..samples.len())
        .map(|i| samples[(i + window).min(samples.len() - 1)].1 - samples[i].1)
        .max()
        .unwrap_or(0);
    let rel = |t: Instant| {
        if t >= t0 {
            t.duration_since(t0).as_secs_f64()
        } else {
            -t0.duration_since(t).as_secs_f64()
        }
    };
    // A request counted at sample i arrived after sample i-1.
    let first = samples
        .iter()
        .position(|s| s.1 > base)
        .map(|i| rel(samples[i.saturating_sub(1)].0));
    let end = samples.last().map_or(base, |s| s.1);
    let last = samples
        .iter()
        .find(|s| s.1 == end && end > base)
        .map(|s| rel(s.0));
    (peak, total, first, last)
}

/// The peak requests per second if every canary started exactly at its offset.
fn planned_peak(nodes: &[String], window: Duration) -> u64 {
    let key = ObjectKey::new(NAMESPACE, PULLSET);
    let mut offsets: Vec<Duration> = nodes
        .iter()
        .map(|n| jitter::offset(n, &key, window))
        .collect();
    offsets.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..offsets.len() {
        while offsets[i] - offsets[j] >= Duration::from_secs(1) {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best as u64 * REQUESTS_PER_CANARY
}

/// A fleet of simulated agents.
struct Fleet {
    /// Cancels every agent's token.
    cancel: Box<dyn Fn() + Send + Sync>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    controls: Vec<CanaryControl>,
}

impl Fleet {
    fn start(
        names: &[String],
        sources: &[watch::Receiver<Arc<Snapshot>>],
        probe: &RegistryClient,
        sink: &Arc<CountingSink>,
        rotation_window: Duration,
    ) -> Self {
        // tokio-util is not a dependency of this crate: the token's type is inferred from `run`.
        let cancel = Default::default();
        let resolver: Arc<dyn CredentialResolver> = Arc::new(KubeletResolver::default());
        let mut tasks = Vec::with_capacity(names.len());
        let mut controls = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let runner = Arc::new(CanaryRunner {
                probe: probe.clone(),
                node: name.clone(),
                expiry_warning: Duration::from_secs(7200),
                runtime: None,
                mirrors: None,
            });
            let config = ServiceConfig {
                node: NodeInfo {
                    name: name.clone(),
                    labels: BTreeMap::new(),
                },
                rotation_window,
                // The scenarios canary every few seconds on purpose: no floor.
                min_interval: std::time::Duration::ZERO,
                ..ServiceConfig::default()
            };
            let (control, control_end) = CanaryControl::new();
            controls.push(control);
            let sink: Arc<dyn CanarySink> = sink.clone();
            tasks.push(tokio::spawn(pullgate::daemon::canary_scheduler::run(
                runner,
                resolver.clone(),
                sources[i % sources.len()].clone(),
                sink,
                config,
                control_end,
                Clone::clone(&cancel),
            )));
        }
        Self {
            cancel: Box::new(move || cancel.cancel()),
            tasks,
            controls,
        }
    }

    /// Agents that know a next scheduled canary.
    fn scheduled(&self) -> usize {
        self.controls
            .iter()
            .filter(|c| !c.next_canaries().is_empty())
            .count()
    }

    async fn stop(self) {
        (self.cancel)();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

struct Sim<'a> {
    cli: &'a Cli,
    api: &'a ApiServer,
    sink: Arc<CountingSink>,
    sampler: Sampler,
    names: Vec<String>,
    image: String,
    proxy_host: String,
    rows: Vec<Row>,
    load_start: String,
    registry_pid: String,
}

async fn simulate(
    cli: &Cli,
    registry: &Registry,
    proxy: Arc<Proxy>,
    api: &ApiServer,
) -> Result<()> {
    let load_start = load_average();
    let pushed = images::push(
        &registry.host(),
        USER,
        PASSWORD,
        &ImageSpec::new("fleet/app", "1"),
    )
    .await?;
    let proxy_host = proxy.host();
    let image = format!("{proxy_host}/fleet/app@{}", pushed.digest);
    let names: Vec<String> = (0..cli.nodes).map(|i| format!("sim-node-{i:05}")).collect();

    // The cluster: K Nodes (one per real source), the pull secret, the PullSet.
    for name in names.iter().take(cli.cluster_sources) {
        api.apply(objects::node(name, &[]));
    }
    api.apply(objects::pull_secret(
        NAMESPACE,
        "regcred",
        &proxy_host,
        USER,
        PASSWORD,
    ));
    api.apply(pullset_object(&image, json!({"depth": "manifest"})));
    let dir = tempfile::Builder::new().prefix("pullgate-sim-").tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let client = pullgate::adapters::kube::source::client(Some(&kubeconfig)).await?;
    let cancel_sources = Default::default();
    let errors = Arc::new(pullgate::adapters::kube::api_errors::ApiErrors::default());
    let mut sources = Vec::new();
    let mut source_tasks = Vec::new();
    for name in names.iter().take(cli.cluster_sources) {
        let (rx, task) = pullgate::adapters::kube::source::watch_cluster(
            client.clone(),
            name.clone(),
            errors.clone(),
            Clone::clone(&cancel_sources),
        );
        sources.push(rx);
        source_tasks.push(task);
    }
    for rx in &mut sources {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                {
                    let loaded = rx.borrow_and_update();
                    if loaded.synced && loaded.inventory.pullsets.len() == 1 {
                        break Ok(());
                    }
                }
                if rx.changed().await.is_err() {
                    break Err(anyhow::anyhow!("a cluster source stopped"));
                }
            }
        })
        .await
        .context("the cluster sources did not sync with the test API server in 30 s")??;
    }
    eprintln!(
        "sim: {} agents, {} cluster source(s) synced with the test API server; registry {} behind the counting proxy {proxy_host}",
        cli.nodes,
        cli.cluster_sources,
        registry.host()
    );

    let probe = RegistryClient::new(RegistryConfig {
        plain_http: vec![proxy_host.clone()],
        ..RegistryConfig::default()
    })?;
    let mut sim = Sim {
        cli,
        api,
        sink: Arc::new(CountingSink::default()),
        sampler: Sampler::start(proxy.clone()),
        names,
        image,
        proxy_host,
        rows: Vec::new(),
        load_start,
        registry_pid: registry_pid().unwrap_or_else(|| {
            eprintln!("sim: the registry's PID was not found; its CPU is reported as 0");
            "0".into()
        }),
    };
    if cli.baseline {
        sim.baseline(&pushed.digest).await?;
    }
    let mut credential = 0usize;
    for (n, window) in cli.rotation_jitters.iter().copied().enumerate() {
        let mark = sim.sink.len();
        let t0 = Instant::now();
        let fleet = Fleet::start(&sim.names, &sources, &probe, &sim.sink, window);
        sim.measure(
            format!("start-up, rotation jitter {}", fmt_duration(window)),
            t0,
            mark,
            Trigger::Startup,
            window,
            "",
        )
        .await?;
        if n == 0 {
            sim.scheduled(&fleet, Duration::ZERO).await?;
            sim.scheduled(&fleet, cli.jitter).await?;
        }
        sim.rotation(&mut credential, window).await?;
        fleet.stop().await;
    }
    cancel_sources.cancel();
    for task in source_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    sim.print();
    Ok(())
}

fn pullset_object(image: &str, canary: serde_json::Value) -> serde_json::Value {
    objects::pullset(
        NAMESPACE,
        PULLSET,
        &[image],
        json!({"prePull": false, "gate": false, "imagePullSecrets": [{"name": "regcred"}], "canary": canary}),
    )
}

impl Sim<'_> {
    /// A cron schedule that fires once, `lead` from now (UTC, with seconds).
    async fn scheduled(&mut self, fleet: &Fleet, jitter_window: Duration) -> Result<()> {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let tick_unix = Duration::from_secs(unix.as_secs() + self.cli.lead.as_secs().max(3) + 1);
        let tick = Instant::now() + (tick_unix - unix);
        let secs = tick_unix.as_secs();
        let expression = format!(
            "{} {} {} * * *",
            secs % 60,
            (secs / 60) % 60,
            (secs / 3600) % 24
        );
        let applied = Instant::now();
        self.api.apply(pullset_object(
            &self.image,
            json!({"schedule": expression, "jitter": fmt_duration(jitter_window), "depth": "manifest"}),
        ));
        // Every agent must know the tick before it comes.
        loop {
            let known = fleet.scheduled();
            if known == self.names.len() {
                break;
            }
            if Instant::now() + Duration::from_millis(500) >= tick {
                bail!(
                    "only {known} of {} agents knew the schedule before its tick; raise --lead",
                    self.names.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "sim: schedule `{expression}` (UTC) with jitter {} reached all {} agents in {} ms",
            fmt_duration(jitter_window),
            self.names.len(),
            applied.elapsed().as_millis()
        );
        let mark = self.sink.len();
        tokio::time::sleep_until(tokio::time::Instant::from_std(tick)).await;
        self.measure(
            format!(
                "scheduled canary `{expression}`, jitter {}",
                fmt_duration(jitter_window)
            ),
            tick,
            mark,
            Trigger::Schedule,
            jitter_window,
            "the scheduler fires within its 500 ms tick",
        )
        .await?;
        // No schedule for what follows.
        self.api
            .apply(pullset_object(&self.image, json!({"depth": "manifest"})));
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet.scheduled() > 0 {
            if Instant::now() > deadline {
                bail!(
                    "{} agents still had a schedule 30 s after it was removed",
                    fleet.scheduled()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The pull secret's data changes (the other valid user).
    async fn rotation(&mut self, credential: &mut usize, window: Duration) -> Result<()> {
        *credential += 1;
        let (user, password) = if *credential % 2 == 1 {
            (USER2, PASSWORD2)
        } else {
            (USER, PASSWORD)
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mark = self.sink.len();
        let t0 = Instant::now();
        self.api.apply(objects::pull_secret(
            NAMESPACE,
            "regcred",
            &self.proxy_host,
            user,
            password,
        ));
        self.measure(
            format!(
                "rotation (Secret data changed), rotation jitter {}",
                fmt_duration(window)
            ),
            t0,
            mark,
            Trigger::Rotation,
            window,
            "from the Secret write at the API server",
        )
        .await
    }

    /// Waits for one canary per agent with `trigger` (and a quiet registry), then records a row.
    async fn measure(
        &mut self,
        scenario: String,
        t0: Instant,
        mark: usize,
        trigger: Trigger,
        window: Duration,
        note: &str,
    ) -> Result<()> {
        let n = self.names.len();
        let usage = Usage::now(&self.registry_pid);
        let deadline = t0 + window + self.cli.timeout;
        let mut timed_out = false;
        loop {
            if self.sink.since(mark, trigger).count >= n {
                break;
            }
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the last requests be sampled.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen = self.sink.since(mark, trigger);
        let mut note = note.to_string();
        if timed_out {
            note = format!("TIMED OUT: {} of {n} canaries reported; {note}", seen.count);
        }
        let planned = planned_peak(&self.names, window);
        self.record(scenario, t0, seen, planned, usage, note);
        Ok(())
    }

    /// The machine's own limit, without pullgate: one raw client per agent, all released at once,
    /// each sending the same two requests a `manifest` canary sends (challenge, then the manifest
    /// with basic auth), through the same proxy to the same registry.
    async fn baseline(&mut self, digest: &str) -> Result<()> {
        let n = self.names.len();
        let usage = Usage::now(&self.registry_pid);
        let auth = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{USER}:{PASSWORD}"),
        );
        let host = self.proxy_host.clone();
        let manifest = format!("/v2/fleet/app/manifests/{digest}");
        let start = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (host, manifest, auth, start) =
                (host.clone(), manifest.clone(), auth.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.notified().await;
                let started = Instant::now();
                let challenge = raw_get(&host, "/v2/", None).await;
                let fetched = raw_get(&host, &manifest, Some(&auth)).await;
                (
                    challenge.is_ok_and(|s| s == 401) && fetched.is_ok_and(|s| s == 200),
                    started,
                )
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        start.notify_waiters();
        let mut seen = Seen {
            count: n,
            requests: n as u64 * REQUESTS_PER_CANARY,
            ..Seen::default()
        };
        for task in tasks {
            if let Ok((ok, started)) = task.await {
                seen.ok += usize::from(ok);
                seen.starts.push(started);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.record(
            "baseline: one raw HTTP client per agent, all at once (no pullgate code)".into(),
            t0,
            seen,
            n as u64 * REQUESTS_PER_CANARY,
            usage,
            "what this machine's proxy and registry serve at most".into(),
        );
        Ok(())
    }

    /// Adds a row from the samples since `t0`.
    fn record(
        &mut self,
        scenario: String,
        t0: Instant,
        seen: Seen,
        planned: u64,
        usage: Usage,
        note: String,
    ) {
        // From a little before the trigger: a start-up or rotation offset of zero fires at once.
        let samples = self
            .sampler
            .between(t0 - SAMPLE.min(t0.elapsed()), Instant::now());
        let (peak, total, first, last) = analyse(&samples, t0);
        let row = Row {
            scenario,
            agents: seen.count,
            ok: seen.ok,
            requests: total,
            reported_requests: seen.requests,
            offered_peak: offered_peak(&seen.starts),
            planned_peak: planned,
            measured_peak: peak,
            first,
            last,
            per_second: per_second(&samples, t0),
            cpu: cpu_seconds("self") - usage.cpu,
            registry_cpu: cpu_seconds(&self.registry_pid) - usage.registry_cpu,
            listen_overflows: listen_overflows() - usage.overflows,
            note,
        };
        eprintln!(
            "sim: {}: {} canaries ({} Ok), {} requests at the registry, peak {}/s (planned {}/s, sent {}/s), {}",
            row.scenario,
            row.agents,
            row.ok,
            row.requests,
            row.measured_peak,
            row.planned_peak,
            row.offered_peak,
            spread(&row)
        );
        eprintln!(
            "sim:   requests per second from the trigger: {:?}; CPU s: {:.1} in this process, {:.1} in the registry; {} listen-queue overflows",
            row.per_second, row.cpu, row.registry_cpu, row.listen_overflows
        );
        self.rows.push(row);
    }

    fn print(&self) {
        println!(
            "Fleet simulation: {} agents in one process, each the real canary service with its own node name and a real registry client, fed by {} real cluster source(s) (kube watchers) against the test API server whose watch channels the agents share (thousands of kube watchers in one process would measure the test API server, not pullgate); a real docker-registry (htpasswd) behind a counting proxy; depth `manifest` = {REQUESTS_PER_CANARY} requests per canary. Schedules are 6-field cron naming one moment (UTC), so each fires once.",
            self.names.len(),
            self.cli.cluster_sources
        );
        println!();
        println!(
            "| scenario | canaries (Ok) | requests at the registry | planned peak req/s | sent peak req/s | served peak req/s | first .. last request | CPU s sim / registry | listen overflows | note |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let mut note = r.note.clone();
            if r.reported_requests != r.requests {
                let extra = format!(
                    "agents reported {} requests, the proxy counted {}",
                    r.reported_requests, r.requests
                );
                note = if note.is_empty() {
                    extra
                } else {
                    format!("{note}; {extra}")
                };
            }
            println!(
                "| {} | {} ({}) | {} | {} | {} | {} | {} | {:.1} / {:.1} | {} | {} |",
                r.scenario,
                r.agents,
                r.ok,
                r.requests,
                r.planned_peak,
                r.offered_peak,
                r.measured_peak,
                spread(r),
                r.cpu,
                r.registry_cpu,
                r.listen_overflows,
                note
            );
        }
        println!();
        println!("Requests at the registry in each second from the trigger:");
        println!();
        for r in &self.rows {
            let seconds: Vec<String> = r.per_second.iter().map(u64::to_string).collect();
            println!("- {}: {}", r.scenario, seconds.join(" "));
        }
        println!();
        println!(
            "planned: the peak over any 1 s window if every canary started exactly at its deterministic offset (`pullgate::decide::canary::jitter::offset`), times {REQUESTS_PER_CANARY} requests; sent: the same from the canaries' actual start times (what the agents sent); served: the most requests the proxy counted in any 1 s (sampled every 100 ms), bounded by what this machine's proxy and registry can serve (see the baseline). Times are relative to the cron tick or the Secret write (start-up: the fleet's spawn). CPU s: used by this process (the agents, the proxy's threads) and by the registry during the scenario; listen overflows: connections the kernel dropped at a full accept queue (the client retries after 1 s, 3 s, …), a limit of the loopback set-up, not of the agents."
        );
        println!();
        println!(
            "Machine: {} CPU(s); load average (1, 5, 15 min) {} at the start, {} at the end (other work on the machine slows the measured figures, not the planned ones).",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            self.load_start,
            load_average()
        );
    }
}

fn spread(r: &Row) -> String {
    match (r.first, r.last) {
        (Some(f), Some(l)) => format!("{f:+.1} s .. {l:+.1} s ({:.1} s)", l - f),
        _ => "none".into(),
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
