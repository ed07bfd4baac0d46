//! `pullgate diagnose`: the pull ladder against a real registry and a real containerd, from a
//! manifest directory and from the test API server (`--pod`). Each rung's ✓/✗ and the conclusion
//! are checked for a healthy pull, a key without its port, a stale password, a missing Secret.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::apiserver::{ApiServer, objects};
use pullgate_testenv::manifests::pull_secret;
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER};
use serde_json::{Value, json};
use std::process::Command;

fn diagnose(env: &TestEnv, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(pullgate_binary().unwrap())
        .arg("diagnose")
        .args(args)
        .args(["--insecure-registry", &env.registry.host()])
        .args(["--cri-endpoint", &env.containerd.endpoint(), "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), value, format!("{stdout}\n{stderr}"))
}

/// `(step, ok)` pairs: `Some(true)` ✓, `Some(false)` ✗, `None` –.
fn rungs(d: &Value) -> Vec<(String, Option<bool>)> {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap().to_string(), s["ok"].as_bool()))
        .collect()
}

fn rung<'a>(d: &'a Value, step: &str) -> &'a Value {
    d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {d}"))
}

#[test]
fn the_ladder_from_a_manifest_directory() {
    let env = TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"));
    let host = env.registry.host();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let bare_host = host.split(':').next().unwrap();
    for (name, text) in [
        (
            "good.yaml",
            pull_secret("good", "regcred", &host, USER, PASSWORD),
        ),
        (
            "portless.yaml",
            pull_secret("portless", "regcred", bare_host, USER, PASSWORD),
        ),
        (
            "stale.yaml",
            pull_secret("stale", "regcred", &host, USER, "an-old-password"),
        ),
    ] {
        env.write_manifest(name, &text).unwrap();
    }
    for ns in ["good", "portless", "stale", "missing"] {
        env.write_manifest(
            &format!("sa-{ns}.yaml"),
            &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: builder, namespace: {ns}}}\nimagePullSecrets: [{{name: regcred}}]\n"),
        )
        .unwrap();
    }
    let dir = env.manifests.path().to_str().unwrap().to_string();
    let args = |ns: &'static str| {
        vec![
            image.by_tag.clone(),
            "-n".into(),
            ns.to_string(),
            "--service-account".into(),
            "builder".into(),
            "--manifests".into(),
            dir.clone(),
        ]
    };
    let run = |ns: &'static str| {
        let a = args(ns);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        diagnose(&env, &a)
    };

    // Healthy: every rung holds, the runtime pulled it, exit 0.
    let (code, d, out) = run("good");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        rungs(&d),
        [
            ("image reference".to_string(), Some(true)),
            ("imagePullSecrets".into(), Some(true)),
            ("secret good/regcred".into(), Some(true)),
            ("credential".into(), Some(true)),
            ("registry: manifest".into(), Some(true)),
            ("registry: blobs".into(), Some(true)),
            ("node cache".into(), None),
            ("runtime: PullImage".into(), Some(true)),
        ],
        "{out}"
    );
    assert_eq!(d["conclusion"]["verdict"], "Ok");
    assert!(
        rung(&d, "credential")["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("secret good/regcred key {host}")),
        "{out}"
    );
    // Now cached on the node: the cache rung says so.
    let (_, d, out) = run("good");
    assert_eq!(rung(&d, "node cache")["ok"], true, "{out}");

    // A key without its port: the Secret rung fails naming the near miss; nothing is tried.
    let (code, d, out) = run("portless");
    assert_eq!(code, Some(1), "{out}");
    let secret = rung(&d, "secret portless/regcred");
    assert_eq!(secret["ok"], false);
    let detail = secret["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("HostMismatch") && detail.contains("near miss"),
        "{detail}"
    );
    assert_eq!(d["conclusion"]["verdict"], "HostMismatch", "{out}");

    // A stale password: the Secret is fine, the registry says no.
    let (code, d, out) = run("stale");
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(rung(&d, "secret stale/regcred")["ok"], true);
    assert_eq!(rung(&d, "registry: manifest")["ok"], false);
    assert_eq!(d["conclusion"]["verdict"], "Unauthorized", "{out}");
    assert!(d["conclusion"]["action"].as_str().unwrap().len() > 10);

    // The ServiceAccount names a Secret that does not exist.
    let (code, d, out) = run("missing");
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(d["conclusion"]["verdict"], "SecretNotFound", "{out}");
    assert!(!out.contains(PASSWORD) && !out.contains("an-old-password"));
}

#[test]
fn the_ladder_for_a_pod_from_the_api_server() {
    let env = TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"));
    let host = env.registry.host();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let api = ApiServer::start().unwrap();
    api.apply(objects::pull_secret(
        "team", "regcred", &host, USER, PASSWORD,
    ));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "team"},
                     "spec": {"imagePullSecrets": [{"name": "regcred"}],
                              "containers": [{"name": "web", "image": image.by_tag}]}}));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let (code, d, out) = diagnose(
        &env,
        &[
            &image.by_tag,
            "-n",
            "team",
            "--pod",
            "web-0",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let pulls = rung(&d, "imagePullSecrets")["detail"].as_str().unwrap();
    assert!(pulls.contains("pod team/web-0's own: regcred"), "{pulls}");
    assert_eq!(d["conclusion"]["verdict"], "Ok");
    // One object at a time, by name: no list of Secrets.
    for r in api.requests() {
        assert!(!(r.contains("/secrets?") || r.ends_with("/secrets")), "{r}");
    }
    assert!(!out.contains(PASSWORD));
}

/// An image volume (KEP-4639) is pulled with the pod's pull secrets like a container image:
/// `diagnose --pod` names it (`volume NAME image REF`) and walks the same ladder.
#[test]
fn the_ladder_for_an_image_volume_of_a_pod() {
    let env = TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"));
    let host = env.registry.host();
    let app = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let models = env.push(&ImageSpec::new("team/models", "v3")).unwrap();
    let api = ApiServer::start().unwrap();
    api.apply(objects::pull_secret(
        "team", "regcred", &host, USER, PASSWORD,
    ));
    api.apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "team"},
                     "spec": {"imagePullSecrets": [{"name": "regcred"}],
                              "containers": [{"name": "web", "image": app.by_tag,
                                              "volumeMounts": [{"name": "models", "mountPath": "/models"}]}],
                              "volumes": [{"name": "models", "image": {"reference": models.by_tag, "pullPolicy": "IfNotPresent"}}]}}));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let (code, d, out) = diagnose(
        &env,
        &[
            &models.by_tag,
            "-n",
            "team",
            "--pod",
            "web-0",
            "--kubeconfig",
            kubeconfig,
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let used = rung(&d, "pod image");
    assert_eq!(used["ok"], true, "{out}");
    assert_eq!(
        used["detail"],
        format!(
            "pod team/web-0: volume models image {} — pulled with the pod's pull secrets",
            models.by_tag
        )
    );
    let pulls = rung(&d, "imagePullSecrets")["detail"].as_str().unwrap();
    assert!(pulls.contains("pod team/web-0's own: regcred"), "{pulls}");
    assert_eq!(rung(&d, "registry: blobs")["ok"], true, "{out}");
    assert_eq!(d["conclusion"]["verdict"], "Ok");
    // An image the pod does not name is said, not hidden.
    let other = env.push(&ImageSpec::new("team/other", "v1")).unwrap();
    let (_, d, out) = diagnose(
        &env,
        &[
            &other.by_tag,
            "-n",
            "team",
            "--pod",
            "web-0",
            "--kubeconfig",
            kubeconfig,
        ],
    );
    let used = rung(&d, "pod image");
    assert_eq!(used["ok"], Value::Null, "{out}");
    let detail = used["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("volume models image {}", models.by_tag))
            && detail.contains(&format!("container web image {}", app.by_tag)),
        "{detail}"
    );
    assert!(!out.contains(PASSWORD));
}

/// Without `--service-account` a pod runs as `default`, which every real namespace has: a manifest
/// directory that defines no `default` ServiceAccount means "no pull secrets from the
/// ServiceAccount", never `ServiceAccountNotFound` — here the node's Docker config then pulls. And
/// `auth resolve` with the same inputs says the same (both use one synthetic PullSet).
#[test]
fn a_missing_default_service_account_is_not_a_failure() {
    use base64::Engine as _;
    let env = TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"));
    let host = env.registry.host();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    // The directory holds a ServiceAccount, but not `default`.
    env.write_manifest(
        "sa.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: builder, namespace: team}\n",
    )
    .unwrap();
    let node = tempfile::tempdir().unwrap();
    let config = node.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &config,
        json!({"auths": {&host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let (dir, config) = (
        env.manifests.path().to_str().unwrap(),
        config.to_str().unwrap(),
    );
    let inputs = [
        image.by_tag.as_str(),
        "-n",
        "team",
        "--manifests",
        dir,
        "--node-docker-config",
        config,
    ];

    let (code, d, out) = diagnose(&env, &inputs);
    assert!(!out.contains("ServiceAccountNotFound"), "{out}");
    let pulls = rung(&d, "imagePullSecrets");
    assert!(pulls["ok"].is_null(), "{out}");
    assert!(
        pulls["detail"]
            .as_str()
            .unwrap()
            .starts_with("ServiceAccount team/default: none"),
        "{out}"
    );
    assert!(
        rung(&d, "credential")["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("file {config} key {host}")),
        "{out}"
    );
    assert_eq!(d["conclusion"]["verdict"], "Ok", "{out}");
    assert_eq!(code, Some(0), "{out}");

    let resolved = Command::new(pullgate_binary().unwrap())
        .args(["auth", "resolve"])
        .args(inputs)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&resolved.stdout).into_owned();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{resolved:?}"));
    assert_eq!(resolved.status.code(), Some(0), "{report:#}");
    assert!(!stdout.contains("ServiceAccountNotFound"), "{report:#}");
    assert_eq!(report["candidates"][0]["source"], format!("file {config}"));
    env.assert_no_leak(&[&out, &stdout], &[PASSWORD]);
}
