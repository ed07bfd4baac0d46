//! Reliability: the agent on a bad day, against a real containerd, a real registry and the test API
//! server. Each test breaks one thing on purpose and checks that the agent stays up, stays bounded in
//! memory (a generous cap on the process's `VmHWM`, a resource bound, never a timing), reports the
//! right verdict as a JSON line, recovers by itself, and loses no state:
//!
//! - containerd killed (SIGKILL) under a running daemon, then started again;
//! - the registry stopped while a `full` canary streams its blobs, then started again;
//! - the API server answering 500s, cutting every watch and compacting its history, in cycles;
//!   and a PullSet created with its Secret, which must not be judged before the Secret is read;
//! - 1,000 PullSets with a malformed one every tenth;
//! - a 50 MiB pull Secret;
//! - a 10,000-layer manifest, and manifests over the 4 MiB limit (announced and streamed);
//! - a registry that trickles its answers byte by byte, on the pre-pull and the canary paths.
//!
//! What is already covered elsewhere is not repeated: a containerd restart in the middle of a
//! `--once` pass and an unreachable runtime (`recovery.rs`), the API server away for 30 s
//! (`cluster_node.rs`), `pullgate check` against a trickling registry (`canary.rs`).

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use base64::Engine as _;
use pullgate::decide::runtime::ImageRuntime as _;
use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::proxy::{Mode, Proxy};
use pullgate_testenv::{
    Agent, Containerd, ImageSpec, PASSWORD, Registry, RunningAgent, TestEnv, USER, block_on,
};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const MIB: usize = 1024 * 1024;
/// The cap on the agent's peak resident memory (`VmHWM`, debug build): generous (the agent idles
/// around 35-55 MiB here; the DaemonSet's limit is 128 MiB), yet far below what an unbounded read
/// of an endless manifest or several copies of a 50 MiB Secret cost.
const MEMORY_CAP_KIB: u64 = 200 * 1024;
const NODE: &str = "test-node";

fn env() -> TestEnv {
    TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"))
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// The agent process, seen from /proc.

/// A field of `/proc/PID/status`, in kB for the memory ones.
fn status_field(pid: u32, field: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// True while the process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    status_field(pid, "State").is_some_and(|s| !s.starts_with('Z') && !s.starts_with('X'))
}

/// Peak resident memory of the process so far, in KiB.
fn peak_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM for pid {pid} (has it exited?)"))
}

/// The agent is up and its peak memory is under `cap_kib`; prints the peak for the record.
fn assert_up_and_bounded(pid: u32, cap_kib: u64, agent: &RunningAgent, what: &str) {
    assert!(
        alive(pid),
        "{what}: the agent died\nstderr:\n{}",
        agent.stderr()
    );
    let peak = peak_kib(pid);
    eprintln!("{what}: agent VmHWM {} MiB", peak / 1024);
    assert!(
        peak < cap_kib,
        "{what}: agent peak memory {peak} KiB over the {cap_kib} KiB cap"
    );
}

fn count(agent: &RunningAgent, predicate: impl Fn(&Value) -> bool) -> usize {
    agent.lines().iter().filter(|l| predicate(l)).count()
}

fn last(agent: &RunningAgent, predicate: impl Fn(&Value) -> bool) -> Value {
    agent
        .lines()
        .into_iter()
        .rev()
        .find(|l| predicate(l))
        .unwrap_or_else(|| panic!("no such line\nstdout:\n{}", agent.stdout()))
}

fn first_line(agent: &RunningAgent, predicate: impl Fn(&Value) -> bool) -> Value {
    agent
        .lines()
        .into_iter()
        .find(|l| predicate(l))
        .unwrap_or_else(|| panic!("no such line\nstdout:\n{}", agent.stdout()))
}

fn is_condition(l: &Value, type_: &str, status: &str) -> bool {
    l["kind"] == "condition" && l["type"] == type_ && l["status"] == status
}

// ---------------------------------------------------------------------------------------------
// 1. containerd killed under a running daemon.

#[test]
fn containerd_killed_under_the_daemon_is_reported_then_recovered_by_itself() {
    let mut env = env();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_regcred("team").unwrap();
    env.write_manifest(
        "set.yaml",
        &pullset("team", "critical", &[&image.by_tag], &["regcred"]),
    )
    .unwrap();
    let agent = env
        .agent()
        .args(&[
            "--recheck-interval",
            "2s",
            "--cri-reconnect-budget",
            "1s",
            "--cri-timeout",
            "3s",
            "--pull-attempts",
            "2",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    let of_image = |verdict: &'static str| {
        let image = image.by_tag.clone();
        move |l: &Value| {
            l["kind"] == "prepull" && l["image"] == image.as_str() && l["verdict"] == verdict
        }
    };
    agent
        .wait_for("the first pull", Duration::from_secs(60), 1, of_image("Ok"))
        .unwrap();
    agent
        .wait_for("images ready", Duration::from_secs(10), 1, |l| {
            is_condition(l, "CriticalImagesReady", "True")
        })
        .unwrap();

    // containerd crashes (SIGKILL: no clean shutdown, its socket file left behind).
    env.containerd.kill();
    agent
        .wait_for(
            "a RuntimeError while containerd is down",
            Duration::from_secs(60),
            1,
            of_image("RuntimeError"),
        )
        .unwrap();
    let down = last(&agent, of_image("RuntimeError"));
    assert_eq!(down["action"], "failed", "{down}");
    assert!(
        down["message"]
            .as_str()
            .unwrap()
            .contains(&format!("CRI at {}", env.containerd.endpoint())),
        "{down}"
    );
    agent
        .wait_for(
            "CriticalImagesReady False",
            Duration::from_secs(10),
            1,
            |l| is_condition(l, "CriticalImagesReady", "False") && l["reason"] == "RuntimeError",
        )
        .unwrap();
    // A few passes against the dead runtime: still up, nothing pulled behind anyone's back.
    let failures = count(&agent, of_image("RuntimeError"));
    agent
        .wait_for(
            "more passes against the dead runtime",
            Duration::from_secs(60),
            failures + 2,
            of_image("RuntimeError"),
        )
        .unwrap();
    assert!(alive(pid), "the agent died\nstderr:\n{}", agent.stderr());

    // containerd comes back with its state: the agent finds the image again without help.
    env.containerd.start_again().unwrap();
    let oks = count(&agent, of_image("Ok"));
    agent
        .wait_for(
            "the image Ok again after the restart",
            Duration::from_secs(60),
            oks + 1,
            of_image("Ok"),
        )
        .unwrap();
    agent
        .wait_for(
            "CriticalImagesReady True again",
            Duration::from_secs(10),
            2,
            |l| is_condition(l, "CriticalImagesReady", "True"),
        )
        .unwrap();
    let present = block_on(async { env.containerd.cri().list_images().await }).unwrap();
    assert!(
        present.iter().any(|p| p.repo_tags.contains(&image.by_tag)),
        "{present:?}"
    );
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "containerd killed");
    let (stdout, stderr) = agent.finish();
    assert!(!stderr.contains("panicked"), "{stderr}");
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

// ---------------------------------------------------------------------------------------------
// 2. The registry stopped in the middle of a `full` canary.

/// A TCP relay in front of the registry that passes everything through unchanged (keep-alive
/// included) but delivers the registry's bytes at a fixed rate, so that a `full` canary takes long
/// enough to be interrupted. A new connection while the registry is down is closed at once.
struct Throttle {
    port: u16,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    fn start(upstream: &str, bytes_per_second: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s, upstream) = (bytes.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (b, upstream) = (b.clone(), upstream.clone());
                        std::thread::spawn(move || relay(client, &upstream, bytes_per_second, &b));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, bytes, stop }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes delivered from the registry to clients so far.
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, upstream: &str, bytes_per_second: usize, delivered: &AtomicU64) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let (mut server, mut client) = (server, client);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
                delivered.fetch_add(n as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs_f64(n as f64 / bytes_per_second as f64));
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

#[test]
fn a_registry_stopped_mid_full_canary_is_network_and_the_retry_is_ok() {
    let mut env = env();
    // 3 × 16 MiB: more than the socket buffers between the registry and the agent can hold, so
    // stopping the registry really cuts the stream.
    let image = env
        .push(&ImageSpec::new("team/big", "v1").with_layers(&[16 * MIB, 16 * MIB, 16 * MIB]))
        .unwrap();
    let throttle = Throttle::start(&env.registry.host(), 8 * MIB);
    let via = format!("{}/team/big:v1", throttle.host());
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "regcred", &throttle.host(), USER, PASSWORD),
    )
    .unwrap();
    env.write_manifest(
        "set.yaml",
        &format!(
            "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: big, namespace: team}}\nspec:\n  prePull: false\n  gate: false\n  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{via}'}}]\n  canary: {{depth: full}}\n"
        ),
    )
    .unwrap();
    let agent = env
        .agent()
        .args(&[
            "--insecure-registry",
            &throttle.host(),
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();

    // The start-up canary streams the first layer…
    pullgate_testenv::process::wait_until(
        "the full canary streaming",
        Duration::from_secs(60),
        || throttle.bytes() > 4 * MIB as u64,
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    assert_eq!(
        count(&agent, |l| l["kind"] == "canary"),
        0,
        "the canary finished before the registry could be stopped"
    );
    // …when the registry goes away.
    env.registry.stop();
    let canary =
        |verdict: &'static str| move |l: &Value| l["kind"] == "canary" && l["verdict"] == verdict;
    agent
        .wait_for(
            "a Network verdict",
            Duration::from_secs(60),
            1,
            canary("Network"),
        )
        .unwrap();
    let cut = last(&agent, canary("Network"));
    assert_eq!(
        (cut["trigger"].as_str(), cut["depth"].as_str()),
        (Some("startup"), Some("full")),
        "{cut}"
    );
    assert!(
        cut["message"].as_str().unwrap().contains("blob sha256:"),
        "the failure names the blob it was streaming: {cut}"
    );
    assert_eq!(
        count(&agent, |l| l["kind"] == "canary"),
        1,
        "{}",
        agent.stdout()
    );
    agent
        .wait_for(
            "PullCredentialsValid False",
            Duration::from_secs(10),
            1,
            |l| is_condition(l, "PullCredentialsValid", "False") && l["reason"] == "Network",
        )
        .unwrap();
    assert!(alive(pid), "the agent died\nstderr:\n{}", agent.stderr());

    // Back on the same port with the same storage: the retry downloads and verifies everything.
    env.registry.restart().unwrap();
    agent
        .wait_for("the retry Ok", Duration::from_secs(90), 1, canary("Ok"))
        .unwrap();
    let ok = last(&agent, canary("Ok"));
    assert_eq!(ok["trigger"], "retry", "{ok}");
    assert_eq!(ok["manifest_digest"], image.digest.as_str(), "{ok}");
    assert!(
        ok["message"]
            .as_str()
            .unwrap()
            .starts_with("4 blob(s) downloaded and verified"),
        "{ok}"
    );
    assert!(ok["bytes"].as_u64().unwrap() > 48 * MIB as u64, "{ok}");
    agent
        .wait_for(
            "PullCredentialsValid True",
            Duration::from_secs(10),
            1,
            |l| is_condition(l, "PullCredentialsValid", "True"),
        )
        .unwrap();
    // Up, and within the cap after 100 MiB streamed through the hash.
    assert_up_and_bounded(
        pid,
        MEMORY_CAP_KIB,
        &agent,
        "registry stopped mid full canary",
    );
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

// ---------------------------------------------------------------------------------------------
// 3. The API server failing, cutting watches and compacting, in cycles.

#[test]
fn an_api_server_storm_of_500s_cut_watches_and_410s_is_ridden_out() {
    let env = env();
    let mut api = ApiServer::start().unwrap();
    api.apply(objects::node(NODE, &[]));
    let dir = tempfile::Builder::new()
        .prefix("pullgate-storm-")
        .tempdir()
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let host = env.registry.host();
    let first = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let late = env.push(&ImageSpec::new("team/late", "v1")).unwrap();
    api.apply(objects::pull_secret(
        "team", "regcred", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "critical",
        &[&first.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    let agent = Agent::cluster(&kubeconfig, &env.containerd.endpoint())
        .args(&[
            "--insecure-registry",
            &host,
            "--condition-heartbeat",
            "1s",
            "--recheck-interval",
            "5s",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    let condition = |api: &ApiServer| api.node_condition(NODE, "CriticalImagesReady");
    api.wait("CriticalImagesReady=True", Duration::from_secs(90), |api| {
        condition(api).filter(|c| c["status"] == "True")
    })
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));

    // The storm: bursts of 500s, the server going away (every watch cut) and coming back with
    // its history compacted after a change, so that resuming watches get `410 Gone`.
    for round in 0..4 {
        api.fail_next(30);
        std::thread::sleep(Duration::from_millis(1500));
        api.stop();
        api.apply(objects::node(&format!("noise-{round}"), &[]));
        api.compact();
        std::thread::sleep(Duration::from_millis(500));
        api.restart().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
    }
    api.fail_next(0);
    assert!(alive(pid), "the agent died\nstderr:\n{}", agent.stderr());
    let after_storm = condition(&api).unwrap();

    // An edit after the storm is seen: a new Secret and a new PullSet, pre-pulled with it.
    api.apply(objects::pull_secret(
        "team", "regcred2", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "late",
        &[&late.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred2"}]}),
    ));
    agent
        .wait_for(
            "the PullSet created after the storm pre-pulled",
            Duration::from_secs(120),
            1,
            |l| {
                l["kind"] == "prepull"
                    && l["pullset"] == "late"
                    && l["image"] == late.by_tag.as_str()
                    && l["verdict"] == "Ok"
                    && l["action"] == "pulled"
            },
        )
        .unwrap();
    // (Whether it is judged before its Secret is read is the business of the next test.)
    let pulled = first_line(&agent, |l| {
        l["kind"] == "prepull" && l["pullset"] == "late" && l["verdict"] == "Ok"
    });
    assert_eq!(
        pulled["credential"],
        format!("secret team/regcred2 key {host}"),
        "{pulled}"
    );
    // The Node is written again: its PrePulled Event, and conditions with fresh heartbeats.
    api.wait(
        "the PrePulled Event of the late image",
        Duration::from_secs(60),
        |api| {
            api.events("PrePulled")
                .into_iter()
                .find(|e| e["note"].as_str().is_some_and(|n| n.contains(&late.by_tag)))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    api.wait(
        "a heartbeat after the storm",
        Duration::from_secs(30),
        |api| {
            condition(api).filter(|c| {
                c["status"] == "True" && c["lastHeartbeatTime"] != after_storm["lastHeartbeatTime"]
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));

    // It was a storm (failed requests and broken watches were retried)…
    let stderr = agent.stderr();
    assert!(stderr.contains("watch failed; retrying"), "{stderr}");
    let requests = api.requests();
    let pullset_lists = requests
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/pullgate.io/v1alpha1/pullsets") && !r.contains("watch=true")
        })
        .count();
    assert!(
        pullset_lists > 1,
        "PullSets were never re-listed: {requests:#?}"
    );
    // …and least privilege held through every re-list: Secrets only by name, in their namespace.
    for r in requests.iter().filter(|r| r.contains("/secrets")) {
        assert!(
            r.contains("/namespaces/team/secrets") && r.contains("metadata.name"),
            "a Secret request that is not by name: {r}"
        );
    }
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "API server storm");
    let dump = api.dump();
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr, &dump], &[PASSWORD]);
}

/// Found by the storm test: an edit through the API is a PullSet and the Secret it names, created
/// together (`kubectl apply -f` of both). The agent must not judge the PullSet before it has read
/// the Secret: a `SecretNotFound` for a Secret that exists is a wrong verdict, with a Warning Event
/// on the PullSet, a `CanaryFailed`, an anonymous pull sent to the registry, and the Node's
/// conditions flipping to False and back.
#[test]
fn a_pullset_created_with_its_secret_is_not_judged_before_the_secret_is_read() {
    let env = env();
    let api = ApiServer::start().unwrap();
    api.apply(objects::node(NODE, &[]));
    let dir = tempfile::Builder::new()
        .prefix("pullgate-together-")
        .tempdir()
        .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let host = env.registry.host();
    let first = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let late = env.push(&ImageSpec::new("team/late", "v1")).unwrap();
    api.apply(objects::pull_secret(
        "team", "regcred", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "critical",
        &[&first.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred"}],
               "canary": {"depth": "manifest"}}),
    ));
    let agent = Agent::cluster(&kubeconfig, &env.containerd.endpoint())
        .args(&[
            "--insecure-registry",
            &host,
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    agent
        .wait_for("both conditions True", Duration::from_secs(90), 2, |l| {
            l["kind"] == "condition" && l["status"] == "True"
        })
        .unwrap();

    // The Secret first, then the PullSet naming it, as `kubectl apply` sends them.
    api.apply(objects::pull_secret(
        "team", "regcred2", &host, USER, PASSWORD,
    ));
    api.apply(objects::pullset(
        "team",
        "late",
        &[&late.by_tag],
        json!({"imagePullSecrets": [{"name": "regcred2"}],
               "canary": {"depth": "manifest"}}),
    ));
    let of_late = |kind: &'static str| move |l: &Value| l["kind"] == kind && l["pullset"] == "late";
    agent
        .wait_for("the late set pre-pulled", Duration::from_secs(60), 1, |l| {
            of_late("prepull")(l) && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for(
            "the late set canaried Ok",
            Duration::from_secs(60),
            1,
            |l| of_late("canary")(l) && l["verdict"] == "Ok",
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let lines = agent.lines();
    let wrong: Vec<&Value> = lines
        .iter()
        .filter(|l| (of_late("prepull")(l) || of_late("canary")(l)) && l["verdict"] != "Ok")
        .collect();
    let flips: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "condition" && l["status"] == "False")
        .collect();
    assert!(
        wrong.is_empty() && flips.is_empty(),
        "judged before its Secret was read:\n{wrong:#?}\nconditions:\n{flips:#?}"
    );
    let pulled = first_line(&agent, of_late("prepull"));
    assert_eq!(
        (pulled["action"].as_str(), pulled["credential"].as_str()),
        (
            Some("pulled"),
            Some(format!("secret team/regcred2 key {host}").as_str())
        ),
        "{pulled}"
    );
    assert!(
        api.events("PrePullFailed").is_empty(),
        "{:#?}",
        api.events("PrePullFailed")
    );
    assert!(
        api.events("CanaryFailed").is_empty(),
        "{:#?}",
        api.events("CanaryFailed")
    );
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "PullSet and Secret together");
    let dump = api.dump();
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr, &dump], &[PASSWORD]);
}

// ---------------------------------------------------------------------------------------------
// 4. 1,000 PullSets, a malformed one every tenth.

#[test]
fn a_thousand_pullsets_with_every_tenth_malformed() {
    let env = env();
    let images: Vec<_> = (0..3)
        .map(|i| {
            env.push(&ImageSpec::new(&format!("team/app{i}"), "v1"))
                .unwrap()
        })
        .collect();
    env.write_regcred("team").unwrap();
    let host = env.registry.host();
    // Each malformed set breaks exactly one field, five ways in turn.
    let broken = |i: usize| -> (String, &'static str) {
        let valid_image = format!("{host}/team/app0:v1");
        match (i / 10) % 5 {
            0 => (
                format!(
                    "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{host}/Team/App:bad tag'}}]\n"
                ),
                "spec.images[0].image",
            ),
            1 => (
                format!(
                    "  imagePullSecrets: [{{name: Not_A_Name}}]\n  images: [{{image: '{valid_image}'}}]\n"
                ),
                "spec.imagePullSecrets[0].name",
            ),
            2 => (
                format!(
                    "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{valid_image}'}}]\n  canary: {{schedule: 'every other tuesday'}}\n"
                ),
                "spec.canary.schedule",
            ),
            3 => (
                "  imagePullSecrets: [{name: regcred}]\n  images: []\n".to_string(),
                "spec.images",
            ),
            _ => (
                format!(
                    "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{valid_image}'}}]\n  prePul: true\n"
                ),
                "spec.prePul",
            ),
        }
    };
    let mut yaml = String::new();
    let mut expected_problems = Vec::new();
    for i in 0..1000 {
        let spec = if i % 10 == 9 {
            let (spec, field) = broken(i);
            expected_problems.push((i, format!("PullSet team/set-{i:04}"), field));
            spec
        } else {
            format!(
                "  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{}'}}]\n",
                images[i % 3].by_tag
            )
        };
        yaml.push_str(&format!(
            "---\napiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: set-{i:04}, namespace: team}}\nspec:\n{spec}"
        ));
    }
    env.write_manifest("sets.yaml", &yaml).unwrap();
    let agent = env
        .agent()
        .args(&["--recheck-interval", "1h"])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    let ok = |l: &Value| l["kind"] == "prepull" && l["verdict"] == "Ok";
    agent
        .wait_for("900 Ok outcomes", Duration::from_secs(120), 900, ok)
        .unwrap();

    let lines = agent.lines();
    // One outcome per valid set, all Ok; nothing for the broken ones.
    let mut sets: Vec<String> = lines
        .iter()
        .filter(|l| l["kind"] == "prepull")
        .map(|l| {
            assert_eq!(l["verdict"], "Ok", "{l}");
            l["pullset"].as_str().unwrap().to_string()
        })
        .collect();
    sets.sort();
    sets.dedup();
    assert_eq!(sets.len(), 900);
    assert!(
        sets.iter().all(|s| !s.ends_with('9')),
        "a broken set was acted on"
    );
    // Three images pulled, however many sets name them.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["kind"] == "prepull" && l["action"] == "pulled")
            .map(|l| l["image"].as_str().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    // Exactly one problem per broken set, naming the file, the document, the object and the field.
    let problems: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "source").collect();
    let mut reported = std::collections::BTreeSet::new();
    for p in &problems {
        assert!(p["file"].as_str().unwrap().ends_with("sets.yaml"), "{p}");
        reported.insert((
            p["document"].as_u64().unwrap() as usize,
            p["object"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(reported.len(), 100, "{problems:#?}");
    for (i, object, field) in &expected_problems {
        let found: Vec<&&Value> = problems
            .iter()
            .filter(|p| p["object"] == object.as_str())
            .collect();
        assert!(!found.is_empty(), "no problem reported for {object}");
        for p in found {
            assert_eq!(p["document"], *i, "{p}");
            let reported_field = p["field"]
                .as_str()
                .unwrap_or_else(|| panic!("no field: {p}"));
            assert_eq!(reported_field, *field, "{object}: {p}");
            assert!(!p["message"].as_str().unwrap().is_empty(), "{p}");
        }
    }
    // Still up, and still watching: one more valid set in another file is picked up.
    let extra = pullset("team", "one-more", &[&images[0].by_tag], &["regcred"]);
    env.write_manifest("more.yaml", &extra).unwrap();
    agent
        .wait_for("the added set", Duration::from_secs(60), 1, |l| {
            ok(l) && l["pullset"] == "one-more"
        })
        .unwrap();
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "1,000 PullSets");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

// ---------------------------------------------------------------------------------------------
// 5. A 50 MiB pull Secret.

#[test]
fn a_50_mib_pull_secret_file_is_refused_by_name_in_bounded_memory() {
    let env = env();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let host = env.registry.host();
    // A dockerconfigjson whose right key sits beside a 26 MiB junk entry (valid, so the kubelet
    // would parse it and use the right key), plus a 16 MiB opaque value under another data key:
    // over 50 MiB of Secret data, 67 MiB of base64 in the file.
    let junk = format!("junk:{}", "j".repeat(26 * MIB));
    let config = json!({"auths": {
        "junk.example.com": {"auth": b64(junk)},
        host.clone(): {"auth": b64(format!("{USER}:{PASSWORD}"))},
    }})
    .to_string();
    let padding = vec![b'p'; 16 * MIB];
    assert!(config.len() + padding.len() > 50 * MIB);
    env.write_manifest(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: huge, namespace: team}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n  padding: {}\n",
            b64(&config),
            b64(&padding)
        ),
    )
    .unwrap();
    drop((config, padding));
    env.write_manifest(
        "set.yaml",
        &pullset("team", "huge", &[&image.by_tag], &["huge"]),
    )
    .unwrap();
    let agent = env
        .agent()
        .args(&["--recheck-interval", "1h"])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    agent
        .wait_for("the pre-pull", Duration::from_secs(120), 1, |l| {
            l["kind"] == "prepull"
        })
        .unwrap();
    // The file is 45 times what one Kubernetes object may be: it is reported, naming the file and
    // the limit, and skipped before it is read; the PullSet then misses its Secret, and says so.
    let problem = last(&agent, |l| l["kind"] == "source");
    assert!(
        problem["file"].as_str().unwrap().ends_with("secret.yaml")
            && problem["message"]
                .as_str()
                .unwrap()
                .contains("over the 16 MiB limit for one file"),
        "{problem}"
    );
    let o = last(&agent, |l| l["kind"] == "prepull");
    assert_eq!(o["verdict"], "SecretNotFound", "{o}");
    assert!(o["message"].as_str().unwrap().contains("team/huge"), "{o}");
    // Bounded: the DaemonSet's limit is 128 MiB; a 50 MiB Secret must not cost four times its
    // size (the process would be OOM-killed in a loop on the node).
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "50 MiB Secret");
    let (stdout, stderr) = agent.finish();
    assert!(!stdout.contains("jjjjjjjj") && !stderr.contains("jjjjjjjj"));
    env.assert_no_leak(
        &[&stdout, &stderr],
        &[PASSWORD, &b64(format!("{USER}:{PASSWORD}"))],
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A 10,000-layer manifest, and manifests over the 4 MiB limit.

/// Pushes `tag` of `repository`: a manifest listing one tiny layer `layers` times (a registry
/// accepts repeated descriptors), with a config whose `diff_ids` match. Returns the manifest's
/// size and digest.
fn push_wide(env: &TestEnv, repository: &str, tag: &str, layers: usize) -> (usize, String) {
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference, RegistryOperation};
    use sha2::{Digest as _, Sha256};
    let digest_of = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    // One real layer (pushed with the test library's image builder).
    let spec = ImageSpec::new(repository, "base").with_layers(&[512]);
    env.push(&spec).unwrap();
    let built = pullgate_testenv::images::build(&spec).unwrap();
    let layer = &built.layers[0];
    let base_config: Value = serde_json::from_slice(&built.config.data).unwrap();
    let diff_id = base_config["rootfs"]["diff_ids"][0].clone();
    let config = json!({
        "architecture": base_config["architecture"], "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": vec![diff_id; layers]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let descriptor = json!({
        "mediaType": layer.media_type, "digest": digest_of(&layer.data), "size": layer.data.len(),
    });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(&config), "size": config.len()},
        "layers": vec![descriptor; layers],
    }))
    .unwrap();
    let (size, digest) = (manifest.len(), digest_of(&manifest));
    let reference: Reference = format!("{}/{repository}:{tag}", env.registry.host())
        .parse()
        .unwrap();
    block_on(async {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let auth = RegistryAuth::Basic(USER.into(), PASSWORD.into());
        client
            .auth(&reference, &auth, RegistryOperation::Push)
            .await
            .unwrap();
        client
            .push_blob(&reference, &config, &digest_of(&config))
            .await
            .unwrap();
        client
            .push_manifest_raw(
                &reference,
                manifest,
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("push a {size}-byte manifest: {e}"));
    });
    (size, digest)
}

fn canaried_set(name: &str, image: &str, depth: &str, secrets: bool) -> String {
    let secrets = if secrets {
        "  imagePullSecrets: [{name: regcred}]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  prePull: false\n  gate: false\n{secrets}  images: [{{image: '{image}'}}]\n  canary: {{depth: {depth}}}\n"
    )
}

#[test]
fn a_10000_layer_manifest_is_checked_blob_by_blob_in_bounded_memory() {
    let env = env();
    let (size, digest) = push_wide(&env, "team/wide", "v1", 10_000);
    assert!(size > MIB && size < 4 * MIB, "{size}");
    let image = format!("{}/team/wide:v1", env.registry.host());
    env.write_regcred("team").unwrap();
    env.write_manifest("set.yaml", &canaried_set("wide", &image, "blobs", true))
        .unwrap();
    let agent = env
        .agent()
        .args(&[
            "--insecure-registry",
            &env.registry.host(),
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    agent
        .wait_for("the canary", Duration::from_secs(150), 1, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let o = last(&agent, |l| l["kind"] == "canary");
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert_eq!(o["manifest_digest"], digest.as_str(), "{o}");
    assert_eq!(o["message"], "manifest and 10001 blob(s) reachable", "{o}");
    // The auth challenge, the manifest and one HEAD per blob.
    assert!(o["requests"].as_u64().unwrap() >= 10_002, "{o}");
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "10,000-layer manifest");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

/// A minimal anonymous registry that serves oversized manifests: `…/announced/manifests/…` a
/// 5 MiB manifest with its `Content-Length`, anything else an endless chunked stream (no length:
/// only the agent's own limit can stop the read). Counts the bytes it sent.
fn oversized_manifest_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let sent = Arc::new(AtomicU64::new(0));
    let total = sent.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let total = total.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                const TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
                let chunk = vec![b' '; 256 * 1024];
                if !path.contains("/manifests/") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                } else if path.contains("/announced/") {
                    let length = 5 * MIB;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: {TYPE}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
                    );
                    for _ in 0..length / chunk.len() {
                        if stream.write_all(&chunk).is_err() {
                            return;
                        }
                        total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                } else {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: {TYPE}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    );
                    // Up to 256 MiB, or until the client hangs up.
                    for _ in 0..1024 {
                        let ok = write!(stream, "{:x}\r\n", chunk.len()).is_ok()
                            && stream.write_all(&chunk).is_ok()
                            && stream.write_all(b"\r\n").is_ok();
                        if !ok {
                            return;
                        }
                        total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    let _ = stream.write_all(b"0\r\n\r\n");
                }
            });
        }
    });
    (host, sent)
}

#[test]
fn a_manifest_over_4_mib_is_a_clear_error_not_an_oom() {
    let env = env();
    // Just under the limit (the registry itself refuses a manifest over 4 MiB): fine.
    let (size, digest) = push_wide(&env, "team/wide", "v1", 26_500);
    assert!(size > 4 * MIB - 200 * 1024 && size < 4 * MIB, "{size}");
    let under = format!("{}/team/wide:v1", env.registry.host());
    // Over it, from a registry that does not refuse them: announced with a 5 MiB length, or
    // streamed with no length and no end in sight.
    let (bad_host, sent) = oversized_manifest_server();
    let announced = format!("{bad_host}/team/announced:v1");
    let endless = format!("{bad_host}/team/endless:v1");
    env.write_regcred("team").unwrap();
    env.write_manifest(
        "sets.yaml",
        &[
            canaried_set("under", &under, "manifest", true),
            canaried_set("announced", &announced, "manifest", false),
            canaried_set("endless", &endless, "manifest", false),
        ]
        .join("---\n"),
    )
    .unwrap();
    let agent = env
        .agent()
        .args(&[
            "--insecure-registry",
            &format!("{},{bad_host}", env.registry.host()),
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();
    agent
        .wait_for("three canaries", Duration::from_secs(90), 3, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let o = last(&agent, |l| l["kind"] == "canary" && l["pullset"] == "under");
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert_eq!(o["manifest_digest"], digest.as_str(), "{o}");
    for set in ["announced", "endless"] {
        let o = last(&agent, |l| l["kind"] == "canary" && l["pullset"] == set);
        assert_eq!(o["verdict"], "RuntimeError", "{set}: {o}");
        assert!(
            o["message"]
                .as_str()
                .unwrap()
                .contains("larger than the 4194304-byte limit"),
            "{set}: {o}"
        );
        assert!(o["hint"].as_str().is_some(), "{o}");
    }
    // The streams were cut near the limit, not read to their end.
    std::thread::sleep(Duration::from_millis(500));
    let streamed = sent.load(Ordering::Relaxed);
    assert!(streamed < 64 * MIB as u64, "{streamed} bytes were read");
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "manifests over 4 MiB");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

// ---------------------------------------------------------------------------------------------
// 7. A registry that trickles its answers byte by byte.

#[test]
fn a_trickling_registry_gets_verdicts_on_both_paths_and_recovery_when_it_heals() {
    // containerd is told about the proxy too, so that pre-pulls go through it.
    let registry = Registry::start(&[(USER, PASSWORD)]).unwrap();
    let proxy = Proxy::start(&registry.host()).unwrap();
    let containerd = Containerd::start(&[registry.host(), proxy.host()]).unwrap();
    let manifests = tempfile::Builder::new()
        .prefix("pullgate-manifests-")
        .tempdir()
        .unwrap();
    let env = TestEnv {
        registry,
        containerd,
        manifests,
    };
    env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let via = format!("{}/team/app:v1", proxy.host());
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "regcred", &proxy.host(), USER, PASSWORD),
    )
    .unwrap();
    env.write_manifest(
        "set.yaml",
        &format!(
            "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: slow, namespace: team}}\nspec:\n  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{via}'}}]\n  canary: {{depth: manifest}}\n"
        ),
    )
    .unwrap();
    proxy.set_mode(Mode::Trickle);
    let agent = env
        .agent()
        .args(&[
            "--insecure-registry",
            &proxy.host(),
            "--registry-timeout",
            "3s",
            "--pull-timeout",
            "8s",
            "--pull-attempts",
            "1",
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "2s",
        ])
        .spawn()
        .unwrap();
    let pid = agent.pid();

    // The canary: the manifest request is cut at --registry-timeout, a Network verdict.
    agent
        .wait_for("the canary verdict", Duration::from_secs(60), 1, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let canary = last(&agent, |l| l["kind"] == "canary");
    assert_eq!(canary["verdict"], "Network", "{canary}");
    assert!(
        canary["message"]
            .as_str()
            .unwrap()
            .contains("timed out after 3s"),
        "{canary}"
    );
    // The pre-pull: containerd waits on the trickle; the PullImage deadline ends it with a verdict
    // that says so (the runtime cannot tell a slow registry from a slow unpack).
    agent
        .wait_for("the pre-pull verdict", Duration::from_secs(60), 1, |l| {
            l["kind"] == "prepull"
        })
        .unwrap();
    let prepull = last(&agent, |l| l["kind"] == "prepull");
    assert_eq!(
        (prepull["verdict"].as_str(), prepull["action"].as_str()),
        (Some("RuntimeError"), Some("failed")),
        "{prepull}"
    );
    assert!(
        prepull["message"]
            .as_str()
            .unwrap()
            .contains("PullImage did not finish within 8s"),
        "{prepull}"
    );
    assert!(alive(pid), "the agent died\nstderr:\n{}", agent.stderr());

    // The registry heals: the next pass pulls, the canary's retry is Ok.
    proxy.set_mode(Mode::Pass);
    agent
        .wait_for("the pre-pull Ok", Duration::from_secs(60), 1, |l| {
            l["kind"] == "prepull" && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for("the canary retry Ok", Duration::from_secs(60), 1, |l| {
            l["kind"] == "canary" && l["verdict"] == "Ok" && l["trigger"] == "retry"
        })
        .unwrap();
    agent
        .wait_for("both conditions True", Duration::from_secs(10), 2, |l| {
            l["kind"] == "condition" && l["status"] == "True"
        })
        .unwrap();
    assert_up_and_bounded(pid, MEMORY_CAP_KIB, &agent, "trickling registry");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
