//! `kubectl pullgate …`: the real kubectl finding the real binary, installed as a plugin (a
//! `kubectl-pullgate` symlink on PATH), against the test API server, with kubeconfigs picked as
//! kubectl picks them: `--kubeconfig`, `KUBECONFIG=a:b` merged (first file wins), `--context`
//! (a missing one named), `-n` over the context's namespace; flags before or after the command.
//! Commands: `diagnose`, `auth resolve`, `check`, `audit`, and `status`'s fleet view of the
//! Nodes' pullgate conditions (read with `get`/`list` of nodes only).

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::kustomize::kubectl;
use pullgate_testenv::process::output_within;
use pullgate_testenv::{assert_nowhere, password_forms};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// No registry answers here (connection refused): the ladder stops at the registry, after the
/// namespace, the pod, its Secret and the credential were read from the API server.
const REGISTRY: &str = "127.0.0.1:9";
const IMAGE: &str = "127.0.0.1:9/team/app:v1";
const TEAM_PASSWORD: &str = "pg-kplugin-Team-Passw0rd-51c2";
const OTHER_PASSWORD: &str = "pg-kplugin-Other-Passw0rd-a7e9";
const DEADLINE: Duration = Duration::from_secs(120);

/// The plugin directory, a HOME without a kubeconfig, the API server and kubeconfig files.
struct Plugin {
    bin: tempfile::TempDir,
    home: tempfile::TempDir,
    api: ApiServer,
    files: tempfile::TempDir,
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn pod(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": namespace},
           "spec": {"imagePullSecrets": [{"name": "regcred"}],
                    "containers": [{"name": "web", "image": IMAGE}]}})
}

/// A Node carrying pullgate's two conditions (`None`: not written).
fn node(name: &str, images: Option<(&str, &str)>, credentials: Option<(&str, &str)>) -> Value {
    let mut node = objects::node(name, &[]);
    let conditions = node["status"]["conditions"].as_array_mut().unwrap();
    for (type_, c, at) in [
        ("CriticalImagesReady", images, "2026-03-01T10:00:00Z"),
        ("PullCredentialsValid", credentials, "2026-03-02T11:00:00Z"),
    ] {
        if let Some((status, reason)) = c {
            conditions.push(json!({"type": type_, "status": status, "reason": reason,
                                   "message": format!("{reason} on {name}"),
                                   "lastHeartbeatTime": at, "lastTransitionTime": at}));
        }
    }
    node
}

impl Plugin {
    fn start() -> Self {
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            pullgate_binary().unwrap(),
            bin.path().join("kubectl-pullgate"),
        )
        .unwrap();
        let api = ApiServer::start().unwrap_or_else(|e| panic!("test API server: {e:#}"));
        for (namespace, user, password) in [
            ("team", "team-user", TEAM_PASSWORD),
            ("other", "other-user", OTHER_PASSWORD),
        ] {
            api.apply(objects::pull_secret(
                namespace, "regcred", REGISTRY, user, password,
            ));
            api.apply(pod(namespace));
        }
        // The conditions the agents wrote, before anyone asks.
        api.apply(node("node-a", Some(("True", "Ok")), Some(("True", "Ok"))));
        api.apply(node(
            "node-b",
            Some(("True", "Ok")),
            Some(("False", "Unauthorized")),
        ));
        api.apply(node("node-c", None, None));
        let files = tempfile::tempdir().unwrap();
        let plugin = Self {
            bin,
            home: tempfile::tempdir().unwrap(),
            api,
            files,
        };
        // Two contexts: `good` (namespace team) and `dead` (nothing listens; namespace nowhere),
        // the current one.
        plugin.write(
            "two-contexts",
            &format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: dead\nclusters:\n- name: live\n  cluster: {{server: '{}'}}\n- name: dead\n  cluster: {{server: 'http://127.0.0.1:9'}}\ncontexts:\n- name: good\n  context: {{cluster: live, user: me, namespace: team}}\n- name: dead\n  context: {{cluster: dead, user: me, namespace: nowhere}}\nusers:\n- name: me\n  user: {{}}\n",
                plugin.api.url()
            ),
        );
        plugin
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.files.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn file(&self, name: &str) -> String {
        self.files.path().join(name).display().to_string()
    }

    /// `kubectl ARGS` with PATH = the plugin directory + kubectl's, HOME without a kubeconfig,
    /// and `KUBECONFIG` as given (else unset).
    fn kubectl(&self, args: &[&str], kubeconfig_env: Option<&str>) -> Out {
        let kubectl = kubectl();
        let path = std::env::join_paths([self.bin.path(), kubectl.parent().unwrap()]).unwrap();
        let mut command = Command::new(&kubectl);
        command
            .args(args)
            .env("PATH", path)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .env_remove("PULLGATE_API_SOCKET");
        if let Some(list) = kubeconfig_env {
            command.env("KUBECONFIG", list);
        }
        let out = output_within(command, DEADLINE).unwrap_or_else(|e| panic!("{e:#}"));
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `kubectl pullgate diagnose IMAGE --pod web-0 … --json` (no runtime here).
    fn diagnose(&self, args: &[&str], kubeconfig_env: Option<&str>) -> (Out, Value) {
        let mut all = vec!["pullgate"];
        all.extend_from_slice(args);
        let out = self.kubectl(&all, kubeconfig_env);
        let value = out.json();
        (out, value)
    }
}

fn step<'a>(d: &'a Value, name: &str) -> &'a str {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_else(|| panic!("no step {name} in {d}"))
}

fn secrets() -> Vec<(&'static str, String)> {
    let mut all = password_forms("team-user", TEAM_PASSWORD).to_vec();
    all.extend(password_forms("other-user", OTHER_PASSWORD));
    all
}

#[test]
fn kubectl_finds_the_plugin_and_hands_it_every_argument_after_its_name() {
    let p = Plugin::start();
    let list = p.kubectl(&["plugin", "list"], None);
    let installed = p.bin.path().join("kubectl-pullgate");
    assert!(
        list.stdout.contains(&installed.display().to_string()),
        "{list}"
    );
    // Usage as kubectl shows it: argv[0] is the plugin's file name.
    let help = p.kubectl(&["pullgate", "diagnose", "--help"], None);
    assert_eq!(help.code, Some(0), "{help}");
    assert!(
        help.stdout.contains("Usage: kubectl pullgate diagnose"),
        "{help}"
    );
    assert!(help.stdout.contains("--context <NAME>"), "{help}");
    // kubectl's own flags placed before the plugin's name are refused by kubectl itself: the
    // plugin never runs.
    let before = p.kubectl(
        &["--context", "good", "pullgate", "status"],
        Some(&p.file("two-contexts")),
    );
    assert_ne!(before.code, Some(0), "{before}");
    assert!(
        before
            .stderr
            .contains("flags cannot be placed before plugin name"),
        "{before}"
    );
    assert!(p.api.requests().is_empty(), "{:?}", p.api.requests());
}

#[test]
fn diagnose_takes_the_contexts_namespace_and_n_overrides_it() {
    let p = Plugin::start();
    let kc = p.file("two-contexts");
    let args = |extra: &[&str]| {
        let mut all = vec![
            "diagnose",
            IMAGE,
            "--pod",
            "web-0",
            "--cri-endpoint",
            "off",
            "--json",
        ];
        all.extend_from_slice(extra);
        all.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], env: Option<&str>| {
        let owned = args(extra);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        p.diagnose(&refs, env)
    };
    let mut outputs = Vec::new();

    // --kubeconfig and --context after the command: the context's namespace.
    let (out, d) = run(&["--kubeconfig", &kc, "--context", "good"], None);
    assert_eq!(out.code, Some(1), "the registry is down: {out}");
    assert_eq!(d["namespace"], "team", "{out}");
    assert!(
        step(&d, "imagePullSecrets").contains("pod team/web-0's own: regcred"),
        "{out}"
    );
    assert!(step(&d, "credential").contains("team/regcred"), "{out}");
    assert!(step(&d, "credential").contains("team-user"), "{out}");
    outputs.push(out);

    // -n overrides the context's namespace; flags placed before the command count the same.
    let (out, d) = p.diagnose(
        &[
            "--context",
            "good",
            "-n",
            "other",
            "--kubeconfig",
            &kc,
            "diagnose",
            IMAGE,
            "--pod",
            "web-0",
            "--cri-endpoint",
            "off",
            "--json",
        ],
        None,
    );
    assert_eq!(d["namespace"], "other", "{out}");
    assert!(
        step(&d, "imagePullSecrets").contains("pod other/web-0's own: regcred"),
        "{out}"
    );
    assert!(step(&d, "credential").contains("other-user"), "{out}");
    outputs.push(out);

    // KUBECONFIG instead of --kubeconfig: the same file picks the same objects.
    let (out, d) = run(&["--context", "good"], Some(&kc));
    assert_eq!(d["namespace"], "team", "{out}");
    outputs.push(out);

    // The current context (`dead`) is used without --context: its server, its namespace.
    let owned = args(&[]);
    let mut all = vec!["pullgate"];
    all.extend(owned.iter().map(String::as_str));
    let out = p.kubectl(&all, Some(&kc));
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("cannot read pod nowhere/web-0"),
        "{out}"
    );
    outputs.push(out);

    // A context the kubeconfig lacks: an error naming it and the ones it has.
    let out = p.kubectl(
        &[
            &["pullgate"][..],
            &args(&["--context", "nope"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ]
        .concat(),
        Some(&kc),
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("context \"nope\" is not in the kubeconfig")
            && out.stderr.contains("it has: good, dead"),
        "{out}"
    );
    outputs.push(out);

    let texts: Vec<(&str, &str)> = outputs
        .iter()
        .flat_map(|o| [("stdout", o.stdout.as_str()), ("stderr", o.stderr.as_str())])
        .collect();
    assert_nowhere(&texts, &secrets());
}

#[test]
fn kubeconfig_lists_merge_as_kubectl_merges_them() {
    let p = Plugin::start();
    // The first file sets the current context and `good` (namespace other, no cluster of its
    // own); the second defines the cluster and user, and a `good` of its own that loses.
    let first = p.write(
        "first",
        "apiVersion: v1\nkind: Config\ncurrent-context: good\ncontexts:\n- name: good\n  context: {cluster: live, user: me, namespace: other}\n",
    );
    let second = p.write(
        "second",
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: theirs\nclusters:\n- name: live\n  cluster: {{server: '{}'}}\ncontexts:\n- name: good\n  context: {{cluster: live, user: me, namespace: team}}\n- name: theirs\n  context: {{cluster: live, user: me, namespace: team}}\nusers:\n- name: me\n  user: {{}}\n",
            p.api.url()
        ),
    );
    let missing = p.files.path().join("not-there");
    let list = std::env::join_paths([missing.as_path(), &first, &second]).unwrap();
    let list = list.to_str().unwrap();
    let (out, d) = p.diagnose(
        &[
            "diagnose",
            IMAGE,
            "--pod",
            "web-0",
            "--cri-endpoint",
            "off",
            "--json",
        ],
        Some(list),
    );
    assert_eq!(
        d["namespace"], "other",
        "the first file's context wins: {out}"
    );
    assert!(step(&d, "credential").contains("other-user"), "{out}");
    // The other order: the second file's current context and its `good`.
    let reversed = std::env::join_paths([&second, &first]).unwrap();
    let (out, d) = p.diagnose(
        &[
            "diagnose",
            IMAGE,
            "--pod",
            "web-0",
            "--cri-endpoint",
            "off",
            "--json",
            "--context",
            "good",
        ],
        Some(reversed.to_str().unwrap()),
    );
    assert_eq!(d["namespace"], "team", "{out}");
    // --kubeconfig wins over KUBECONFIG: the first file alone has no cluster `live`.
    let out = p.kubectl(
        &[
            "pullgate",
            "diagnose",
            IMAGE,
            "--kubeconfig",
            first.to_str().unwrap(),
            "--cri-endpoint",
            "off",
        ],
        Some(list),
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("live"), "{out}");
}

#[test]
fn auth_resolve_check_and_audit_read_the_cluster_the_flags_pick() {
    let p = Plugin::start();
    let kc = p.file("two-contexts");
    let mut outputs = Vec::new();

    let resolve = |extra: &[&str]| {
        let mut all = vec![
            "pullgate", "auth", "resolve", IMAGE, "--pod", "web-0", "--json",
        ];
        all.extend_from_slice(extra);
        p.kubectl(&all, Some(&kc))
    };
    let out = resolve(&["--context", "good"]);
    assert_eq!(out.code, Some(0), "{out}");
    let r = out.json();
    assert_eq!(r["candidates"][0]["source"], "secret team/regcred", "{out}");
    assert_eq!(r["candidates"][0]["username"], "team-user", "{out}");
    assert_eq!(r["candidates"].as_array().unwrap().len(), 1, "{out}");
    outputs.push(out);
    let out = resolve(&["--context", "good", "-n", "other"]);
    assert_eq!(
        out.json()["candidates"][0]["username"],
        "other-user",
        "{out}"
    );
    outputs.push(out);
    // As a pod with a ServiceAccount that does not exist in the namespace: no credential.
    let out = p.kubectl(
        &[
            "pullgate",
            "--context",
            "good",
            "auth",
            "resolve",
            IMAGE,
            "--service-account",
            "ghost",
            "--json",
        ],
        Some(&kc),
    );
    assert_eq!(out.code, Some(1), "{out}");
    let verdicts = out.json()["verdicts"].to_string();
    assert!(verdicts.contains("ServiceAccountNotFound"), "{out}");
    outputs.push(out);

    // check: the canary of the pod's credential, in the context's namespace.
    let out = p.kubectl(
        &[
            "pullgate",
            "check",
            IMAGE,
            "--pod",
            "web-0",
            "--context",
            "good",
            "--json",
            "--registry-timeout",
            "5s",
        ],
        Some(&kc),
    );
    assert_eq!(out.code, Some(1), "the registry is down: {out}");
    let outcome: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(outcome["namespace"], "team", "{out}");
    assert_eq!(outcome["verdict"], "Network", "{out}");
    outputs.push(out);

    // audit: cluster-wide whatever -n says.
    let out = p.kubectl(
        &[
            "pullgate",
            "audit",
            "--context",
            "good",
            "-n",
            "team",
            "--json",
        ],
        Some(&kc),
    );
    let report = out.json();
    let namespaces: Vec<&str> = report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    assert!(
        namespaces.contains(&"team") && namespaces.contains(&"other"),
        "{out}"
    );
    outputs.push(out);
    // The dead context's server: an error, no report.
    let out = p.kubectl(&["pullgate", "audit"], Some(&kc));
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    outputs.push(out);

    let texts: Vec<(&str, &str)> = outputs
        .iter()
        .flat_map(|o| [("stdout", o.stdout.as_str()), ("stderr", o.stderr.as_str())])
        .collect();
    assert_nowhere(&texts, &secrets());
}

#[test]
fn status_shows_the_fleet_from_the_nodes_conditions() {
    let p = Plugin::start();
    let kc = p.file("two-contexts");
    assert!(
        !Path::new("/run/pullgate/agent.sock").exists(),
        "an agent's socket is at /run/pullgate/agent.sock: this test needs a machine without one"
    );
    // Off a node (no agent socket here), with a context: every Node.
    let out = p.kubectl(&["pullgate", "status", "--context", "good"], Some(&kc));
    assert_eq!(
        out.code,
        Some(1),
        "node-b's credentials are not valid: {out}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "NODE    IMAGES READY  CREDENTIALS VALID  REASON                  SINCE",
            "node-a  True          True               -                       2026-03-02T11:00:00Z",
            "node-b  True          False              Unauthorized            2026-03-02T11:00:00Z",
            "node-c  -             -                  no pullgate conditions  -",
        ],
        "{out}"
    );
    assert!(
        out.stdout
            .contains("node-b PullCredentialsValid False: Unauthorized: Unauthorized on node-b"),
        "{out}"
    );
    // One Node, by name, as JSON; healthy.
    let out = p.kubectl(
        &[
            "pullgate",
            "--context",
            "good",
            "status",
            "--node",
            "node-a",
            "--json",
        ],
        Some(&kc),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let rows = out.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(rows[0]["node"], "node-a");
    assert_eq!(rows[0]["critical_images_ready"]["status"], "True");
    assert_eq!(
        rows[0]["pull_credentials_valid"]["since"],
        "2026-03-02T11:00:00Z"
    );
    // No flag at all and no agent socket: the current context's API server — here the dead one.
    let out = p.kubectl(&["pullgate", "status"], Some(&kc));
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("cannot list nodes"), "{out}");
    // A Node that does not exist is named.
    let out = p.kubectl(
        &["pullgate", "status", "--context", "good", "--node", "ghost"],
        Some(&kc),
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("cannot read node ghost"), "{out}");
    // Least privilege: only nodes were read, by get or list.
    for r in p.api.requests() {
        assert!(
            r.starts_with("GET /api/v1/nodes"),
            "status asked for more than nodes: {r}"
        );
    }
}
