//! The agent's local gRPC API on its Unix socket, end to end: `pullgate status` (table and JSON),
//! `pullgate canary` (one PullSet, streamed results, exit codes), `Watch`, the socket's mode —
//! against a real containerd and a real registry whose password really rotates.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::adapters::serve::local_api::{Client, pb};
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::process::output_within;
use pullgate_testenv::{PASSWORD, TestEnv, USER, block_on};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ROTATED: &str = "pg-Rotated-Passw0rd-91aa";

/// How long any one CLI call, or any wait on the local API, may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

fn cli(args: &[&str], socket: &Path) -> (Option<i32>, String, String) {
    let mut command = Command::new(pullgate_binary().unwrap());
    command.args(args).arg("--api-socket").arg(socket);
    let out = output_within(command, DEADLINE).unwrap_or_else(|e| panic!("{e:#}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `Watch` on the agent's socket, returned once the agent has answered it: its subscription to
/// the records is in place (it subscribes before it answers), so nothing after this is missed.
async fn watch(socket: &Path) -> tonic::Streaming<pb::Record> {
    let mut client = Client::connect(socket).await.unwrap();
    client.watch().await.unwrap()
}

#[test]
fn status_canary_and_watch_through_the_local_socket() {
    let mut env = TestEnv::started();
    let image = env
        .seed_canaried("schedule: '0 0 * * *', jitter: 0s, depth: manifest")
        .unwrap();
    let host = env.registry.host();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/pullgate/agent.sock");
    let agent = env
        .agent()
        .args(&["--insecure-registry", &host, "--rotation-jitter", "0s"])
        .args(&["--api-socket", socket.to_str().unwrap()])
        .spawn()
        .unwrap();
    agent
        .wait_for("start-up canary", Duration::from_secs(60), 1, |l| {
            l["kind"] == "canary" && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for("pre-pull", Duration::from_secs(60), 1, |l| {
            l["kind"] == "prepull" && l["verdict"] == "Ok"
        })
        .unwrap();

    // Root only: the socket is 0600.
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // `status`: the image present, both verdicts, the credential by name, the next canary.
    let (code, stdout, stderr) = cli(&["status", "--json"], &socket);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let set = &status["pullsets"][0];
    assert_eq!(
        (&set["namespace"], &set["name"]),
        (&"team".into(), &"critical".into())
    );
    let img = &set["images"][0];
    assert_eq!(img["image"], image.by_tag.as_str());
    assert_eq!(img["present"], true);
    assert_eq!(img["prepull"]["verdict"], "Ok");
    assert_eq!(img["canary"]["verdict"], "Ok");
    assert_eq!(
        img["canary"]["credential"],
        format!("secret team/regcred key {host}")
    );
    // The host whose answer the registry-direct canary's is (here the registry itself); a
    // pre-pull names none.
    assert_eq!(img["canary"]["host"], host.as_str(), "{img}");
    assert_eq!(img["prepull"]["host"], "", "{img}");
    let next = set["next_canary_time"].as_str().unwrap();
    assert!(
        next.ends_with("T00:00:00Z"),
        "daily at midnight, no jitter: {next}"
    );
    let (code, table, _) = cli(&["status"], &socket);
    assert_eq!(code, Some(0));
    assert!(table.contains("team/critical (gate)"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("team/critical (gate)"))
        .unwrap_or_else(|| panic!("no row for team/critical in\n{table}"));
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    // PULLSET IMAGE PRESENT PRE-PULL CANARY CANARY-HOST CREDENTIAL NEXT-CANARY
    assert!(table.contains("CANARY HOST"), "{table}");
    assert_eq!(cells.get(4..6), Some(&["Ok", host.as_str()][..]), "{table}");

    // `Watch` sees what happens next; `canary` runs now and streams the result. The watch is
    // established (answered) before the canary is triggered; every wait has a deadline.
    let kinds = block_on(async {
        let mut records = tokio::time::timeout(DEADLINE, watch(&socket))
            .await
            .expect("the agent did not answer Watch within the deadline");
        let trigger = {
            let socket = socket.clone();
            tokio::task::spawn_blocking(move || cli(&["canary", "team/critical"], &socket))
        };
        let (code, stdout, stderr) = trigger.await.unwrap();
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(stdout.starts_with("✓ team/critical"), "{stdout}");
        assert!(stdout.contains(&format!("credential: secret team/regcred key {host}")));
        assert!(stdout.contains(&format!("    host: {host}\n")), "{stdout}");
        let mut kinds = Vec::new();
        tokio::time::timeout(DEADLINE, async {
            while let Some(r) = records.message().await.unwrap() {
                let manual = r.kind == "canary" && r.json.contains("\"trigger\":\"manual\"");
                kinds.push(r.kind);
                if manual {
                    return;
                }
            }
            panic!("the Watch ended before the manual canary: {kinds:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("the Watch did not deliver the manual canary: {kinds:?}"));
        kinds
    });
    assert!(kinds.contains(&"canary".to_string()), "{kinds:?}");

    // The password rotates: the manual canary says so, and exits 1.
    env.registry.set_password(USER, ROTATED).unwrap();
    let (code, stdout, _) = cli(&["canary", "team/critical", "--json"], &socket);
    assert_eq!(code, Some(1), "{stdout}");
    let result: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(result["result"]["verdict"], "Unauthorized", "{result}");
    assert_eq!(result["result"]["host"], host.as_str(), "{result}");
    // Unknown PullSets and bad names are clear errors.
    let (code, _, stderr) = cli(&["canary", "team/nope"], &socket);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no valid PullSet team/nope"), "{stderr}");
    let (code, _, stderr) = cli(&["canary", "nope"], &socket);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not NAMESPACE/NAME"), "{stderr}");

    let (stdout, stderr) = agent.finish();
    assert!(!socket.exists(), "the socket is removed on exit");
    // No agent: a clear error naming the socket.
    let (code, _, stderr_after) = cli(&["status"], &socket);
    assert_eq!(code, Some(2));
    assert!(
        stderr_after.contains("cannot reach the agent's local API"),
        "{stderr_after}"
    );
    env.assert_no_leak(&[&stdout, &stderr, &table], &[PASSWORD, ROTATED]);
}
