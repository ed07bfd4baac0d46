//! What a canary costs a registry that meters requests (Docker Hub counts manifest `GET`s against
//! its pull rate limit, not `HEAD`s), counted by kind at a loopback proxy in front of the real
//! registry: a steady-state canary — the agent's second, its manifest bodies cached from the
//! first — sends no manifest `GET` at `manifest` or `blobs` depth, for a plain image manifest and
//! for a multi-platform index alike, digest-pinned or by tag (the tag's `HEAD` names the digest
//! whose cached body is used), and a rotated password still fails it.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::{RunningAgent, pullgate_binary};
use pullgate_testenv::images::{self, ImageSpec};
use pullgate_testenv::manifests::{canaried_pullset, pull_secret};
use pullgate_testenv::process::output_within;
use pullgate_testenv::proxy::{Counts, Kind, Proxy};
use pullgate_testenv::{PASSWORD, TestEnv, USER, block_on};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
const ROTATED: &str = "pg-Rotated-Passw0rd-c41d";

/// `pullgate canary NS/NAME --json` on the agent's socket: its exit code and stdout.
fn run_now(pullset: &str, socket: &Path) -> (Option<i32>, String) {
    let mut command = Command::new(pullgate_binary().unwrap());
    command
        .args(["canary", pullset, "--json"])
        .arg("--api-socket")
        .arg(socket);
    let out = output_within(command, DEADLINE).unwrap_or_else(|e| panic!("{e:#}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn kinds(counts: &Counts) -> Vec<(&'static str, u64)> {
    Kind::ALL
        .iter()
        .map(|k| (k.label(), counts.of(*k)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn a_steady_state_canary_by_digest_or_by_tag_sends_no_manifest_get() {
    let mut env = TestEnv::started();
    let image = env
        .push(&ImageSpec::new("team/app", "v1").with_layers(&[1000, 2000]))
        .unwrap();
    let index = block_on(images::push_index(USER, PASSWORD, &image, "multi")).unwrap();
    let proxy = Proxy::start(&env.registry.host()).unwrap();
    let via = proxy.host();
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "regcred", &via, USER, PASSWORD),
    )
    .unwrap();
    // A PullSet per depth, for the image manifest and for the index, digest-pinned and by tag,
    // through the proxy. No schedule: the start-up canary is the first, a manual one the steady
    // state.
    let sets = [
        (
            "manifest",
            "plain-manifest",
            format!("{via}/team/app@{}", image.digest),
        ),
        (
            "blobs",
            "plain-blobs",
            format!("{via}/team/app@{}", image.digest),
        ),
        (
            "manifest",
            "index-manifest",
            format!("{via}/team/app@{index}"),
        ),
        ("blobs", "index-blobs", format!("{via}/team/app@{index}")),
        (
            "manifest",
            "plain-tag-manifest",
            format!("{via}/team/app:v1"),
        ),
        ("blobs", "plain-tag-blobs", format!("{via}/team/app:v1")),
        (
            "manifest",
            "index-tag-manifest",
            format!("{via}/team/app:multi"),
        ),
        ("blobs", "index-tag-blobs", format!("{via}/team/app:multi")),
    ];
    let yaml: Vec<String> = sets
        .iter()
        .map(|(depth, name, reference)| {
            canaried_pullset(
                "team",
                name,
                reference,
                &["regcred"],
                &format!("depth: {depth}"),
            )
            .replace("spec:\n", "spec:\n  prePull: false\n  gate: false\n")
        })
        .collect();
    env.write_manifest("sets.yaml", &yaml.join("---\n"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let agent: RunningAgent = env
        .agent()
        .canary_defaults(&via)
        .args(&["--api-socket", socket.to_str().unwrap()])
        .spawn()
        .unwrap();
    agent
        .wait_for("the start-up canaries", DEADLINE * 2, sets.len(), |l| {
            l["kind"] == "canary" && l["verdict"] == "Ok"
        })
        .unwrap();

    for (depth, name, _) in &sets {
        proxy.reset_count();
        let (code, stdout) = run_now(&format!("team/{name}"), &socket);
        assert_eq!(code, Some(0), "{name}: {stdout}");
        let result: serde_json::Value =
            serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        assert_eq!(result["result"]["verdict"], "Ok", "{name}: {result}");
        let line = agent.last(|l| l["kind"] == "canary" && l["pullset"] == *name);
        assert_eq!(
            line["manifest_digest"],
            image.digest.as_str(),
            "{name}: {line}"
        );
        let counts = proxy.counts();
        let seen = kinds(&counts);
        // No manifest GET; a HEAD per manifest used (the index — or the tag naming it — and the
        // platform's manifest).
        assert_eq!(counts.of(Kind::ManifestGet), 0, "{name}: {seen:?}");
        let manifests = if name.starts_with("index") { 2 } else { 1 };
        assert_eq!(counts.of(Kind::ManifestHead), manifests, "{name}: {seen:?}");
        let blobs = if *depth == "blobs" { 3 } else { 0 };
        assert_eq!(counts.of(Kind::BlobHead), blobs, "{name}: {seen:?}");
        assert_eq!(counts.of(Kind::BlobGet), 0, "{name}: {seen:?}");
    }

    // The cache never answers for the registry: after a rotation the steady-state canary fails.
    env.registry.set_password(USER, ROTATED).unwrap();
    for (_, name, _) in &sets {
        let (code, stdout) = run_now(&format!("team/{name}"), &socket);
        assert_eq!(code, Some(1), "{name}: {stdout}");
        let result: serde_json::Value =
            serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
        assert_eq!(
            result["result"]["verdict"], "Unauthorized",
            "{name}: {result}"
        );
    }
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD, ROTATED]);
}
