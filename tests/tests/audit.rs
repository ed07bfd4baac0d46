//! `pullgate audit` against the test API server, through the real binary: the blast-radius report
//! as JSON and as tables, the findings the issue asks for, the exit codes, and not one credential
//! in any output.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use base64::Engine as _;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::apiserver::{ApiServer, objects};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

const REGISTRY: &str = "registry.team.example:5000";
const SHARED: &str = "pg-audit-Shared-Passw0rd-4e1d";
const OPAQUE: &str = "pg-audit-Opaque-Passw0rd-92ab";
const LEGACY: &str = "pg-audit-Legacy-Passw0rd-7c3f";
const SPARE: &str = "pg-audit-Spare-Passw0rd-15e8";
const ANCIENT: &str = "pg-audit-Ancient-Passw0rd-0b77";
const ROTATED: &str = "pg-audit-Rotated-Passw0rd-c4d2";
const DB: &str = "pg-audit-Db-Passw0rd-a6f0";
const CLEAN: &str = "pg-audit-Clean-Passw0rd-3b9e";
const DEPLOY: &str = "pg-audit-Deploy-Passw0rd-5f21";
const CRON: &str = "pg-audit-Cron-Passw0rd-8d40";
const POD: &str = "pg-audit-Pod-Passw0rd-e93c";
const MODELS: &str = "pg-audit-Models-Passw0rd-61af";
const TRAINER: &str = "pg-audit-Trainer-Passw0rd-d07b";
const IDLE: &str = "pg-audit-Idle-Passw0rd-2c58";
/// The image the workloads' container pulls, as a workload user lists it.
const APP_IMAGE: &str = "container c registry.team.example:5000/team/app:1";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn b64url(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// A JWT-looking token that expires in an hour (dummy signature).
fn jwt_expiring_in_an_hour() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    format!(
        "{}.{}.{}",
        b64url(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(&format!(r#"{{"exp":{exp}}}"#)),
        b64url("not-a-real-signature")
    )
}

fn secret(namespace: &str, name: &str, type_: &str, data: &[(&str, String)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
           "type": type_, "data": data})
}

fn docker_config(password: &str) -> String {
    json!({"auths": {REGISTRY: {"auth": b64(&format!("deployer:{password}"))}}}).to_string()
}

fn service_account(namespace: &str, name: &str, secrets: &[&str]) -> Value {
    let refs: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace},
           "imagePullSecrets": refs})
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }

    fn assert_no_leak(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(
                !self.stdout.contains(secret),
                "a credential leaked into stdout"
            );
            assert!(
                !self.stderr.contains(secret),
                "a credential leaked into stderr"
            );
        }
    }
}

fn audit(api: &ApiServer, extra: &[&str]) -> Run {
    let kubeconfig = api.kubeconfig_file().unwrap();
    let out = Command::new(pullgate_binary().unwrap())
        .arg("audit")
        .arg("--kubeconfig")
        .arg(kubeconfig.path())
        .args(extra)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

fn flagged(report: &Value, kind: &str, object: &str) -> bool {
    findings(report, kind)
        .iter()
        .any(|f| f["objects"].as_array().unwrap().iter().any(|o| o == object))
}

fn secret_row<'a>(report: &'a Value, namespace: &str, name: &str) -> &'a Value {
    report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == namespace)
        .and_then(|n| {
            n["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
        })
        .unwrap_or_else(|| panic!("no row for {namespace}/{name} in {report:#}"))
}

#[test]
fn audit_reports_the_blast_radius_of_pull_secrets() {
    let token = jwt_expiring_in_an_hour();
    let api = ApiServer::start().unwrap();
    // The same credential in two namespaces.
    api.apply(objects::pull_secret(
        "team", "regcred", REGISTRY, "deployer", SHARED,
    ));
    api.apply(objects::pull_secret(
        "ops", "regcred", REGISTRY, "deployer", SHARED,
    ));
    api.apply(service_account("team", "builder", &["regcred"]));
    api.apply(objects::pullset(
        "team",
        "critical",
        &["registry.team.example:5000/team/app:1"],
        json!({"serviceAccountName": "builder"}),
    ));
    api.apply(objects::pullset(
        "ops",
        "ops-critical",
        &["registry.team.example:5000/ops/tool:1"],
        json!({"imagePullSecrets": [{"name": "regcred"}]}),
    ));
    // A Docker config in an Opaque Secret; a legacy dockercfg; an unused pull secret.
    api.apply(secret(
        "team",
        "opaque-cred",
        "Opaque",
        &[(".dockerconfigjson", docker_config(OPAQUE))],
    ));
    let legacy = json!({REGISTRY: {"auth": b64(&format!("deployer:{LEGACY}"))}}).to_string();
    api.apply(secret(
        "team",
        "legacy-cred",
        "kubernetes.io/dockercfg",
        &[(".dockercfg", legacy)],
    ));
    api.apply(objects::pull_secret(
        "team", "spare", REGISTRY, "deployer", SPARE,
    ));
    // A token that expires in an hour, and a reference to nothing.
    api.apply(objects::pull_secret(
        "ci", "token", REGISTRY, "oauth2", &token,
    ));
    api.apply(service_account("ci", "runner", &["token", "gone"]));
    // Old data (by creation time); old creation but recently rotated data (by managedFields).
    let mut ancient = objects::pull_secret("ci", "ancient", REGISTRY, "deployer", ANCIENT);
    ancient["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    api.apply(ancient);
    let mut rotated = objects::pull_secret("ci", "rotated", REGISTRY, "deployer", ROTATED);
    rotated["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    let yesterday = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(24))
        .unwrap()
        .to_string();
    rotated["metadata"]["managedFields"] = json!([
        {"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
         "time": "2020-01-01T00:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:data": {".": {}, "f:.dockerconfigjson": {}}, "f:type": {}}},
        {"manager": "rotator", "operation": "Update", "apiVersion": "v1",
         "time": yesterday, "fieldsType": "FieldsV1",
         "fieldsV1": {"f:data": {"f:.dockerconfigjson": {}}}}
    ]);
    api.apply(rotated);
    api.apply(service_account("ci", "default", &["ancient", "rotated"]));
    // Secrets only workloads name: a Deployment's template, a CronJob's, and running pods (two
    // of one ReplicaSet, one bare). None is Unused; each names its users.
    for (name, password) in [
        ("deploy-cred", DEPLOY),
        ("cron-cred", CRON),
        ("pod-cred", POD),
    ] {
        api.apply(objects::pull_secret(
            "team", name, REGISTRY, "deployer", password,
        ));
    }
    let pod_spec = |secret: &str| json!({"imagePullSecrets": [{"name": secret}], "containers": [{"name": "c", "image": "registry.team.example:5000/team/app:1"}]});
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"template": {"spec": pod_spec("deploy-cred")}}}));
    api.apply(json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "team"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": pod_spec("cron-cred")}}}}}));
    for pod in ["web-5d9f7c-a", "web-5d9f7c-b"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": "team", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9f7c", "uid": "u1", "controller": true}]},
            "spec": pod_spec("deploy-cred")}));
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "debug", "namespace": "team"}, "spec": pod_spec("pod-cred")}));
    // Not a pull secret, not referenced: not in the report at all.
    api.apply(secret(
        "team",
        "db-password",
        "Opaque",
        &[("password", DB.to_string())],
    ));

    let all = [
        SHARED,
        OPAQUE,
        LEGACY,
        SPARE,
        ANCIENT,
        ROTATED,
        DB,
        DEPLOY,
        CRON,
        POD,
        token.as_str(),
    ];
    let run = audit(&api, &["--json"]);
    run.assert_no_leak(&all);
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let report = run.json();

    // Reused: one finding, both copies, one fingerprint that is neither the password nor its hash.
    let reused = findings(&report, "Reused");
    assert_eq!(reused.len(), 1, "{report:#}");
    let fingerprint = reused[0]["fingerprint"].as_str().unwrap();
    assert_eq!(reused[0]["namespaces"], json!(["ops", "team"]));
    assert_eq!(reused[0]["registry"], REGISTRY);
    for ns in ["team", "ops"] {
        let row = secret_row(&report, ns, "regcred");
        assert_eq!(row["registries"][0]["fingerprint"], fingerprint, "{row:#}");
        assert_eq!(row["registries"][0]["registry"], REGISTRY);
        assert_eq!(row["registries"][0]["username"], "deployer");
        assert!(
            row["findings"]
                .as_array()
                .unwrap()
                .contains(&json!("Reused"))
        );
    }
    assert!(!fingerprint.contains(SHARED));
    assert_ne!(fingerprint, hex::encode(Sha256::digest(SHARED.as_bytes())));
    assert_ne!(
        fingerprint,
        hex::encode(Sha256::digest(format!("deployer:{SHARED}").as_bytes()))
    );
    // Other credentials for the same registry and user: other fingerprints.
    assert_ne!(
        secret_row(&report, "team", "spare")["registries"][0]["fingerprint"],
        fingerprint
    );

    // Users: the ServiceAccount, the PullSet through it, and a PullSet's own reference.
    assert_eq!(
        secret_row(&report, "team", "regcred")["users"],
        json!([
            {"kind": "ServiceAccount", "name": "builder"},
            {"kind": "PullSet", "name": "critical", "via": "serviceAccount builder"}
        ])
    );
    assert_eq!(
        secret_row(&report, "ops", "regcred")["users"],
        json!([{"kind": "PullSet", "name": "ops-critical", "via": "imagePullSecrets"}])
    );

    // Mistyped, legacy, unused, missing, expiring, old.
    assert!(
        flagged(&report, "WrongType", "Secret team/opaque-cred"),
        "{report:#}"
    );
    assert!(
        flagged(&report, "WrongType", "Secret team/legacy-cred"),
        "{report:#}"
    );
    assert_eq!(
        secret_row(&report, "team", "opaque-cred")["registries"][0]["registry"],
        REGISTRY
    );
    assert!(
        flagged(&report, "Unused", "Secret team/spare"),
        "{report:#}"
    );
    assert!(!flagged(&report, "Unused", "Secret team/regcred"));
    for name in ["deploy-cred", "cron-cred", "pod-cred"] {
        assert!(
            !flagged(&report, "Unused", &format!("Secret team/{name}")),
            "{name}: {report:#}"
        );
    }
    assert_eq!(
        secret_row(&report, "team", "deploy-cred")["users"],
        json!([
            {"kind": "Workload", "name": "Deployment/web", "images": [APP_IMAGE]},
            {"kind": "Workload", "name": "ReplicaSet/web-5d9f7c", "via": "2 pods", "images": [APP_IMAGE]}
        ])
    );
    assert_eq!(
        secret_row(&report, "team", "cron-cred")["users"],
        json!([{"kind": "Workload", "name": "CronJob/nightly", "images": [APP_IMAGE]}])
    );
    assert_eq!(
        secret_row(&report, "team", "pod-cred")["users"],
        json!([{"kind": "Workload", "name": "Pod/debug", "via": "1 pod", "images": [APP_IMAGE]}])
    );
    assert!(flagged(&report, "Missing", "Secret ci/gone"), "{report:#}");
    assert!(
        flagged(&report, "ExpiresSoon", "Secret ci/token"),
        "{report:#}"
    );
    assert!(secret_row(&report, "ci", "token")["registries"][0]["expires_at"].is_string());
    assert!(flagged(&report, "Old", "Secret ci/ancient"), "{report:#}");
    assert_eq!(
        secret_row(&report, "ci", "ancient")["data_changed"]["basis"],
        "creationTimestamp"
    );
    assert!(!flagged(&report, "Old", "Secret ci/rotated"), "{report:#}");
    assert_eq!(
        secret_row(&report, "ci", "rotated")["data_changed"]["basis"],
        "managedFields"
    );
    // Every finding has a hint; a Secret that is no pull secret is not listed.
    for f in report["findings"].as_array().unwrap() {
        assert!(!f["hint"].as_str().unwrap().is_empty(), "{f:#}");
    }
    assert!(!run.stdout.contains("db-password"));

    // Pages are asked for (the test server ignores the limit; a real one honours it).
    let requests = api.requests();
    for path in [
        "/api/v1/secrets?",
        "/api/v1/serviceaccounts?",
        "/apis/pullgate.io/v1alpha1/pullsets?",
        "/api/v1/pods?",
        "/apis/apps/v1/deployments?",
        "/apis/batch/v1/cronjobs?",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with(&format!("GET {path}")) && r.contains("limit=500")),
            "{path} not listed in pages: {requests:#?}"
        );
    }

    // A second run draws another key: fingerprints are comparable within one report only.
    let again = audit(&api, &["--json"]);
    again.assert_no_leak(&all);
    let again = again.json();
    assert_ne!(findings(&again, "Reused")[0]["fingerprint"], fingerprint);

    // The tables.
    let table = audit(&api, &[]);
    table.assert_no_leak(&all);
    assert_eq!(table.code, Some(1), "{}\n{}", table.stdout, table.stderr);
    for text in [
        "NAMESPACE team",
        "NAMESPACE ops",
        "NAMESPACE ci",
        REGISTRY,
        "Reused",
        "WrongType",
        "hint: ",
    ] {
        assert!(
            table.stdout.contains(text),
            "`{text}` not in:\n{}",
            table.stdout
        );
    }
    // The table's fingerprints are this run's, not the JSON run's.
    assert!(!table.stdout.contains(&fingerprint[..12]));
}

/// KEP-4639: an image volume is pulled with the pod's pull secrets like a container image. A
/// Deployment whose only private image is an image volume uses the Secret it names (not
/// `Unused`), and the report says which of its images the Secret covers; a Deployment without
/// its own `imagePullSecrets` uses its ServiceAccount's (the pod rule) for its image volume.
#[test]
fn an_image_volume_is_a_use_of_its_pull_secret() {
    let api = ApiServer::start().unwrap();
    for (name, password) in [
        ("models-cred", MODELS),
        ("trainer-cred", TRAINER),
        ("idle", IDLE),
    ] {
        api.apply(objects::pull_secret(
            "ml", name, REGISTRY, "deployer", password,
        ));
    }
    api.apply(service_account("ml", "trainer", &["trainer-cred"]));
    // A public container image; the private one is the image volume's.
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "inference", "namespace": "ml"},
    "spec": {"template": {"spec": {
        "imagePullSecrets": [{"name": "models-cred"}],
        "containers": [{"name": "server", "image": "busybox:1.36",
                        "volumeMounts": [{"name": "weights", "mountPath": "/weights"}]}],
        "volumes": [{"name": "weights", "image": {
            "reference": "registry.team.example:5000/ml/weights:v3", "pullPolicy": "IfNotPresent"}}]
    }}}}));
    // No imagePullSecrets of its own: its ServiceAccount's serve its image volume.
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "train", "namespace": "ml"},
        "spec": {"template": {"spec": {
            "serviceAccountName": "trainer",
            "containers": [{"name": "job", "image": "busybox:1.36"}],
            "volumes": [{"name": "dataset", "image": {"reference": "registry.team.example:5000/ml/dataset:2026-12"}},
                        {"name": "scratch", "emptyDir": {}}]
        }}}}));

    let secrets = [MODELS, TRAINER, IDLE];
    let run = audit(&api, &["--json"]);
    run.assert_no_leak(&secrets);
    let report = run.json();
    assert!(
        !flagged(&report, "Unused", "Secret ml/models-cred"),
        "{report:#}"
    );
    let row = secret_row(&report, "ml", "models-cred");
    assert_eq!(
        row["users"],
        json!([{"kind": "Workload", "name": "Deployment/inference",
                "images": ["volume weights registry.team.example:5000/ml/weights:v3"]}])
    );
    // The registry the image volume pulls from is the one the Secret covers.
    assert_eq!(row["registries"][0]["registry"], REGISTRY, "{row:#}");
    assert_eq!(
        secret_row(&report, "ml", "trainer-cred")["users"],
        json!([
            {"kind": "ServiceAccount", "name": "trainer"},
            {"kind": "Workload", "name": "Deployment/train", "via": "serviceAccount trainer",
             "images": ["volume dataset registry.team.example:5000/ml/dataset:2026-12"]}
        ])
    );
    // Unused is still judged: the Secret nothing pulls with is flagged.
    assert!(flagged(&report, "Unused", "Secret ml/idle"), "{report:#}");
    assert_eq!(
        findings(&report, "Unused").len(),
        1,
        "{:#}",
        report["findings"]
    );

    let table = audit(&api, &[]);
    table.assert_no_leak(&secrets);
    assert!(
        table.stdout.contains("Deployment/inference"),
        "{}",
        table.stdout
    );
}

#[test]
fn a_clean_cluster_exits_zero() {
    let api = ApiServer::start().unwrap();
    api.apply(objects::pull_secret(
        "team", "regcred", REGISTRY, "deployer", CLEAN,
    ));
    api.apply(service_account("team", "default", &["regcred"]));
    api.apply(objects::pullset(
        "team",
        "critical",
        &["registry.team.example:5000/team/app:1"],
        json!({}),
    ));

    let run = audit(&api, &["--json"]);
    run.assert_no_leak(&[CLEAN]);
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let report = run.json();
    assert_eq!(report["findings"], json!([]));
    assert_eq!(
        secret_row(&report, "team", "regcred")["users"],
        json!([
            {"kind": "ServiceAccount", "name": "default"},
            {"kind": "PullSet", "name": "critical", "via": "serviceAccount default"}
        ])
    );

    let table = audit(&api, &[]);
    table.assert_no_leak(&[CLEAN]);
    assert_eq!(table.code, Some(0), "{}\n{}", table.stdout, table.stderr);
    assert!(table.stdout.contains("NAMESPACE team"), "{}", table.stdout);
    assert!(table.stdout.contains(REGISTRY), "{}", table.stdout);
    assert!(table.stdout.contains("no findings"), "{}", table.stdout);
}

#[test]
fn an_unreachable_api_server_exits_two() {
    let mut api = ApiServer::start().unwrap();
    api.stop();
    let run = audit(&api, &["--json"]);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("cannot list"), "{}", run.stderr);
}

/// Three namespaces, each with a ServiceAccount naming its pull Secret, listed one item a page.
fn paged_cluster() -> ApiServer {
    let api = ApiServer::start().unwrap();
    for ns in ["team-a", "team-b", "team-c"] {
        api.apply(objects::pull_secret(
            ns, "regcred", REGISTRY, "deployer", CLEAN,
        ));
        api.apply(service_account(ns, "default", &["regcred"]));
    }
    api.cap_list_pages(1);
    api
}

#[test]
fn an_expired_continue_token_restarts_the_list_once() {
    let api = paged_cluster();
    let args = ["--json", "--fingerprint-key", "the same key for both runs"];
    let baseline = audit(&api, &args);
    assert_ne!(
        baseline.code,
        Some(2),
        "{}\n{}",
        baseline.stdout,
        baseline.stderr
    );
    api.expire_continue_tokens(1);

    let run = audit(&api, &args);
    run.assert_no_leak(&[CLEAN]);
    // The same report as without the expiry: nothing missed, nothing counted twice.
    assert_eq!(run.code, baseline.code, "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for ns in ["team-a", "team-b", "team-c"] {
        assert_eq!(
            secret_row(&report, ns, "regcred")["users"],
            json!([{"kind": "ServiceAccount", "name": "default"}]),
            "{ns}: {report:#}"
        );
    }
    let without_time = |mut report: Value| {
        report.as_object_mut().unwrap().remove("generated_at");
        report
    };
    assert_eq!(without_time(report), without_time(baseline.json()));
    // The list was followed page by page and restarted: more than one request carried a token.
    let continued = api
        .requests()
        .iter()
        .filter(|r| r.contains("/serviceaccounts?") && r.contains("continue="))
        .count();
    assert!(continued >= 3, "{:#?}", api.requests());
}

#[test]
fn a_continue_token_expired_twice_is_an_error_naming_the_resource() {
    let api = paged_cluster();
    api.expire_continue_tokens(2);

    let run = audit(&api, &["--json"]);
    run.assert_no_leak(&[CLEAN]);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("cannot list serviceaccounts") && run.stderr.contains("expired again"),
        "{}",
        run.stderr
    );
}
