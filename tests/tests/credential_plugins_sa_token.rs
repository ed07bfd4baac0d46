//! Credential providers in service-account token mode (KEP-4412) through the real exec path, in
//! cluster mode: the agent asks the test API server for a token of the pod rule's ServiceAccount
//! (TokenRequest, `serviceaccounts/token`), and a plugin that answers only when the token it
//! received is one the server issued (it asks the server's TokenReview) and the annotations are
//! exactly the configured ones present on the ServiceAccount. A ServiceAccount without the
//! required annotation gets no plugin run and a verdict naming the key. No token in any output.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::apiserver::objects;
use pullgate_testenv::cluster::Cluster;
use pullgate_testenv::{Agent, ImageSpec, PASSWORD, USER};
use serde_json::json;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PROVIDER: &str = "sa-provider";
const AUDIENCE: &str = "registry.example";
const ANNOTATION: &str = "example.io/identity";

/// Logs each request to `$LOG`; answers `$KEY` → `$PLUGIN_USER`/`$PLUGIN_PASSWORD` only when the
/// request's `serviceAccountToken` is known to the API server at `$API_URL` (a TokenReview
/// authenticates it as `system:serviceaccount:team:payments`) and the annotation is there.
const SCRIPT: &str = r#"#!/bin/sh
request=$(cat)
echo "$request" >> "$LOG"
token=$(printf '%s' "$request" | sed -n 's/.*"serviceAccountToken":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || { echo "no serviceAccountToken in the request" >&2; exit 4; }
case "$request" in
  *'"serviceAccountAnnotations":{"example.io/identity":"payments"}'*) ;;
  *) echo "not the annotations expected" >&2; exit 5 ;;
esac
review=$(curl -s -X POST -H 'content-type: application/json' \
  --data "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{\"token\":\"$token\"}}" \
  "$API_URL/apis/authentication.k8s.io/v1/tokenreviews")
case "$review" in
  *'"authenticated":true'*) ;;
  *) echo "the API server does not know the token" >&2; exit 6 ;;
esac
case "$review" in
  *'system:serviceaccount:team:payments'*) ;;
  *) echo "a token of another ServiceAccount" >&2; exit 7 ;;
esac
printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderResponse","cacheKeyType":"Registry","cacheDuration":"0s","auth":{"%s":{"username":"%s","password":"%s"}}}' "$KEY" "$PLUGIN_USER" "$PLUGIN_PASSWORD"
"#;

/// The plugin's bin dir, its request log and its config (service-account token mode, the
/// annotation required, another optional one that the ServiceAccount lacks).
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    fn new(api_url: &str, host: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let path = bin.join(PROVIDER);
        std::fs::write(&path, SCRIPT).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = dir.path().join("requests.log");
        let yaml = format!(
            "apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: {PROVIDER}
    matchImages: ['{host}']
    defaultCacheDuration: 0s
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    tokenAttributes:
      serviceAccountTokenAudience: {AUDIENCE}
      cacheType: ServiceAccount
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: [{ANNOTATION}]
      optionalServiceAccountAnnotationKeys: [example.io/not-there]
    env:
      - {{name: LOG, value: '{}'}}
      - {{name: API_URL, value: '{api_url}'}}
      - {{name: KEY, value: '{host}'}}
      - {{name: PLUGIN_USER, value: '{USER}'}}
      - {{name: PLUGIN_PASSWORD, value: '{PASSWORD}'}}
",
            log.display()
        );
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn service_account(name: &str, annotations: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": "team", "annotations": annotations}})
}

fn agent(cluster: &Cluster, plugin: &Plugin, config: &Path) -> Agent {
    Agent::cluster(&cluster.kubeconfig(), &cluster.env.containerd.endpoint()).args(&[
        "--insecure-registry",
        &cluster.env.registry.host(),
        "--gate-namespaces",
        "team",
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        plugin.bin_dir().to_str().unwrap(),
    ])
}

/// A one-shot command (`args` first) reading the cluster as a pod with ServiceAccount
/// `team/payments`, with the plugin configured; its stdout and stderr.
fn one_shot(cluster: &Cluster, plugin: &Plugin, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(pullgate_testenv::agent::pullgate_binary().unwrap())
        .args(args)
        .args([
            "--json",
            "-n",
            "team",
            "--service-account",
            "payments",
            "--kubeconfig",
        ])
        .arg(cluster.kubeconfig())
        .arg("--image-credential-provider-config")
        .arg(plugin.config())
        .arg("--image-credential-provider-bin-dir")
        .arg(plugin.bin_dir())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_service_account_token_plugin_pre_pulls_with_the_token_the_api_server_issued() {
    let cluster = Cluster::start(&[]);
    let host = cluster.env.registry.host();
    let app = cluster
        .env
        .push(&ImageSpec::new("payments/app", "v1"))
        .unwrap();
    let other = cluster
        .env
        .push(&ImageSpec::new("other/app", "v1"))
        .unwrap();
    let plugin = Plugin::new(&cluster.api.url(), &host);
    cluster.api.apply(service_account(
        "payments",
        json!({ANNOTATION: "payments", "unrelated.io/key": "not passed"}),
    ));
    cluster
        .api
        .apply(service_account("other", json!({"unrelated.io/key": "x"})));
    cluster.api.apply(objects::pullset(
        "team",
        "payments",
        &[&app.by_tag],
        json!({"serviceAccountName": "payments"}),
    ));
    cluster.api.apply(objects::pullset(
        "team",
        "unannotated",
        &[&other.by_tag],
        json!({"serviceAccountName": "other"}),
    ));
    let run = agent(&cluster, &plugin, &plugin.config())
        .run_once(Duration::from_secs(120))
        .unwrap();

    // Pulled with the plugin's answer, which it gave only for an issued token.
    let o = run.prepull(&app.by_tag);
    assert_eq!(
        o["verdict"], "Ok",
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(o["credential"], format!("plugin {PROVIDER} key {host}"));
    let issued = cluster.api.issued_tokens();
    assert!(!issued.is_empty(), "no TokenRequest reached the API server");
    for t in &issued {
        assert_eq!(
            (t.namespace.as_str(), t.service_account.as_str()),
            ("team", "payments"),
            "a token of another ServiceAccount: {t:?}"
        );
        assert_eq!(t.audiences, [AUDIENCE]);
        assert_eq!(t.expiration_seconds, 600);
    }
    // The requests as the kubelet's v1 request: the token, exactly the configured annotations
    // present on the ServiceAccount.
    let requests = plugin.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        let token = r["serviceAccountToken"].as_str().unwrap();
        assert!(
            issued.iter().any(|t| t.token == token),
            "the plugin got a token the server did not issue"
        );
        assert_eq!(
            r["serviceAccountAnnotations"],
            json!({ANNOTATION: "payments"})
        );
        assert_eq!(r["image"], format!("{host}/payments/app"));
        assert_eq!(r["apiVersion"], "credentialprovider.kubelet.k8s.io/v1");
    }
    // By name: the TokenRequest of one ServiceAccount, nothing else.
    let token_requests: Vec<String> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.contains("/token"))
        .collect();
    assert!(
        token_requests
            .iter()
            .all(|r| r.starts_with("POST /api/v1/namespaces/team/serviceaccounts/payments/token")),
        "{token_requests:#?}"
    );

    // The ServiceAccount without the required annotation: the plugin is not run for it, and the
    // verdict names the key.
    let o = run.prepull(&other.by_tag);
    assert_ne!(o["verdict"], "Ok", "{o}");
    let message = o["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "ServiceAccount team/other has no annotation `{ANNOTATION}`"
        )),
        "{o}"
    );

    let tokens: Vec<&str> = issued.iter().map(|t| t.token.as_str()).collect();
    let mut secrets = vec![PASSWORD];
    secrets.extend(&tokens);
    cluster.assert_no_leak(&[&run.stdout, &run.stderr], &secrets);
}

#[test]
fn both_canaries_auth_resolve_and_diagnose_get_the_service_account_token_credential() {
    let cluster = Cluster::start(&[]);
    let host = cluster.env.registry.host();
    let app = cluster
        .env
        .push(&ImageSpec::new("payments/app", "v1"))
        .unwrap();
    let plugin = Plugin::new(&cluster.api.url(), &host);
    cluster
        .api
        .apply(service_account("payments", json!({ANNOTATION: "payments"})));
    cluster.api.apply(objects::pullset(
        "team",
        "payments",
        &[&app.by_tag],
        json!({"serviceAccountName": "payments",
               "canary": {"depth": "manifest", "runtime": true}}),
    ));
    let agent = agent(&cluster, &plugin, &plugin.config())
        .args(&["--rotation-jitter", "0s", "--recheck-interval", "1h"])
        .spawn()
        .unwrap();
    // The start-up canaries, registry-direct and through the CRI: both with the plugin's answer,
    // which it gives only for a token the API server issued.
    for path in ["registry", "runtime"] {
        agent
            .wait_for(
                &format!("the {path} canary Ok"),
                Duration::from_secs(120),
                1,
                |l| {
                    l["kind"] == "canary"
                        && l["image"] == app.by_tag.as_str()
                        && l["path"] == path
                        && l["verdict"] == "Ok"
                        && l["credential"] == format!("plugin {PROVIDER} key {host}").as_str()
                },
            )
            .unwrap();
    }
    let (stdout, stderr) = agent.finish();

    // auth resolve against the cluster, as a pod with that ServiceAccount: the plugin's
    // candidate, got with a token of it.
    let (resolve_out, resolve_err) = one_shot(&cluster, &plugin, &["auth", "resolve", &app.by_tag]);
    let report: serde_json::Value = serde_json::from_str(&resolve_out)
        .unwrap_or_else(|e| panic!("{e}: {resolve_out}\n{resolve_err}"));
    let sources: Vec<&str> = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["source"].as_str())
        .collect();
    assert!(
        sources.iter().any(|s| s.contains(PROVIDER)),
        "{resolve_out}\n{resolve_err}"
    );

    // diagnose against the cluster, the same pod: the ladder ends Ok with the plugin's answer.
    let endpoint = cluster.env.containerd.endpoint();
    let (diagnose_out, diagnose_err) = one_shot(
        &cluster,
        &plugin,
        &[
            "diagnose",
            &app.by_tag,
            "--insecure-registry",
            &host,
            "--cri-endpoint",
            &endpoint,
        ],
    );
    let diagnosis: serde_json::Value = serde_json::from_str(&diagnose_out)
        .unwrap_or_else(|e| panic!("{e}: {diagnose_out}\n{diagnose_err}"));
    assert_eq!(
        diagnosis["conclusion"]["verdict"], "Ok",
        "{diagnose_out}\n{diagnose_err}"
    );
    assert!(diagnose_out.contains(PROVIDER), "{diagnose_out}");

    let issued = cluster.api.issued_tokens();
    let requests = plugin.requests();
    assert!(requests.len() >= 3, "{requests:?}");
    for r in &requests {
        let token = r["serviceAccountToken"].as_str().unwrap();
        assert!(issued.iter().any(|t| t.token == token));
    }
    let mut secrets = vec![PASSWORD];
    secrets.extend(issued.iter().map(|t| t.token.as_str()));
    cluster.assert_no_leak(
        &[
            &stdout,
            &stderr,
            &resolve_out,
            &resolve_err,
            &diagnose_out,
            &diagnose_err,
        ],
        &secrets,
    );
}
