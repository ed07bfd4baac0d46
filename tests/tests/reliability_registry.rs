//! Reliability, the registry: stopped while a `full` canary streams its blobs, then started again;
//! and a registry that trickles its answers byte by byte, on the pre-pull and the canary paths.
//! The agent stays up, stays bounded in memory (a generous cap on the process's `VmHWM`, a
//! resource bound, never a timing), reports the right verdict as a JSON line and recovers by
//! itself.
//!
//! Covered elsewhere: `pullgate check` against a trickling registry (`canary.rs`).

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::{MEMORY_CAP_KIB, is_condition};
use pullgate_testenv::manifests::pull_secret;
use pullgate_testenv::proxy::{Mode, Proxy};
use pullgate_testenv::{Containerd, ImageSpec, PASSWORD, Registry, TestEnv, USER};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const MIB: usize = 1024 * 1024;

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
    let mut env = TestEnv::started();
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
        .canary_defaults(&throttle.host())
        .spawn()
        .unwrap();

    // The start-up canary streams the first layer…
    pullgate_testenv::process::wait_until(
        "the full canary streaming",
        Duration::from_secs(60),
        || throttle.bytes() > 4 * MIB as u64,
    )
    .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()));
    assert_eq!(
        agent.count(|l| l["kind"] == "canary"),
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
    let cut = agent.last(canary("Network"));
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
        agent.count(|l| l["kind"] == "canary"),
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
    agent.assert_alive("registry stopped mid full canary");

    // Back on the same port with the same storage: the retry downloads and verifies everything.
    env.registry.restart().unwrap();
    agent
        .wait_for("the retry Ok", Duration::from_secs(90), 1, canary("Ok"))
        .unwrap();
    let ok = agent.last(canary("Ok"));
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
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "registry stopped mid full canary");
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
    let agent = env.daemon(&[
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
    ]);

    // The canary: the manifest request is cut at --registry-timeout, a Network verdict.
    agent
        .wait_for("the canary verdict", Duration::from_secs(60), 1, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let canary = agent.last(|l| l["kind"] == "canary");
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
    let prepull = agent.last(|l| l["kind"] == "prepull");
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
    agent.assert_alive("trickling registry");

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
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "trickling registry");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}
