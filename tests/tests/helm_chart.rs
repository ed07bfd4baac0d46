#![allow(clippy::unwrap_used)]
//! The Helm chart `manifests/helm/pullgate`, rendered by a real helm (`pullgate_testenv::helm`):
//!
//! - `helm lint --strict` passes, with the default values and with every option set;
//! - Chart.yaml carries the crate's version, and `crds/` the base's CRD byte for byte;
//! - with the default values (release `pullgate` in `pullgate-system`), `helm template
//!   --include-crds` renders the same objects as `kubectl kustomize manifests/base`: the same
//!   (kind, namespace, name) set, and each object equal as a whole once helm's own labels
//!   ([`HELM_LABELS`]) are set aside; the CRD, which `crds/` cannot label, equal but for the
//!   base's `app.kubernetes.io/part-of` label;
//! - other values render what they say: the image, the gate's settings, extra args and env,
//!   metrics without auth (and then no review rights), another runtime, credential-provider
//!   mounts, another release name and namespace (every cross-reference follows), and
//!   `namespaceAccess` entries, each the Role and RoleBinding that `manifests/namespace-access`
//!   renders for that namespace with those names;
//! - values.schema.json refuses bad values with a message naming the field, and the templates
//!   refuse the combinations the schema cannot express.
//!
//! No helm: the tests fail, naming `cargo xtask deps`, which installs one.

use clap::CommandFactory as _;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use pullgate_testenv::helm::{Helm, NAMESPACE, RELEASE, chart_dir, template};
use pullgate_testenv::kustomize::{Obj, first_lost, manifests_dir, one_of, parse_documents};
use pullgate_testenv::kustomize::{render, render_with_components, typed};
use pullgate_testenv::workspace_root;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The labels helm's conventions add to every templated object, which the kustomize base does
/// not have: set aside when comparing, and checked to be there with these values.
const HELM_LABELS: [(&str, &str); 4] = [
    ("helm.sh/chart", "pullgate-0.1.0"),
    ("app.kubernetes.io/managed-by", "Helm"),
    ("app.kubernetes.io/instance", RELEASE),
    ("app.kubernetes.io/version", "0.1.0"),
];
/// The label the base's kustomization adds to every object, which the chart's CRD (a plain
/// file in `crds/`, never templated) cannot carry.
const PART_OF: &str = "app.kubernetes.io/part-of";

/// Every object is one of the base's kinds (or a namespace grant's), and parses as its type.
fn check_typed(obj: &Obj) {
    match (obj.api_version(), obj.kind()) {
        ("v1", "Namespace") => drop(typed::<Namespace>(obj)),
        ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(obj)),
        ("v1", "ConfigMap") => drop(typed::<ConfigMap>(obj)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(typed::<ClusterRole>(obj)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            drop(typed::<ClusterRoleBinding>(obj));
        }
        ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(obj)),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(obj)),
        ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(obj)),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            drop(typed::<ValidatingAdmissionPolicy>(obj));
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            drop(typed::<ValidatingAdmissionPolicyBinding>(obj));
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            drop(typed::<CustomResourceDefinition>(obj));
        }
        (api_version, kind) => panic!(
            "{}: {api_version} {kind} is not a kind the chart should render",
            obj.what()
        ),
    }
}

/// (kind, namespace, name) of every object.
fn identities(objs: &[Obj]) -> BTreeSet<(String, String, String)> {
    objs.iter()
        .map(|o| {
            (
                o.kind().to_owned(),
                o.namespace().unwrap_or("").to_owned(),
                o.name().to_owned(),
            )
        })
        .collect()
}

fn find<'a>(objs: &'a [Obj], kind: &str, name: &str) -> &'a Obj {
    objs.iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} among {:?}",
                identities(objs).into_iter().collect::<Vec<_>>()
            )
        })
}

/// `obj` without helm's labels (each checked to be there, with its value), and without an
/// emptied `metadata.labels`.
fn without_helm_labels(obj: &Obj, release: &str) -> Value {
    let mut value = obj.value.clone();
    let labels = value["metadata"]["labels"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{}: no labels", obj.what()));
    for (key, expected) in HELM_LABELS {
        let expected = if key == "app.kubernetes.io/instance" {
            release
        } else {
            expected
        };
        assert_eq!(
            labels.remove(key),
            Some(json!(expected)),
            "{}: label {key}",
            obj.what()
        );
    }
    value
}

/// [`without_helm_labels`], and without the `app.kubernetes.io/part-of` label the chart gives every
/// object (`manifests/namespace-access`, used apart from the base, adds none).
fn without_chart_labels(obj: &Obj, release: &str) -> Value {
    let mut value = without_helm_labels(obj, release);
    let labels = value["metadata"]["labels"].as_object_mut().unwrap();
    assert_eq!(
        labels.remove(PART_OF),
        Some(json!("pullgate")),
        "{}",
        obj.what()
    );
    value
}

/// Fails naming the first field where `helm` and `kustomize` differ (either way).
fn assert_same(helm: &Value, kustomize: &Value, what: &str) {
    if let Some(path) = first_lost(kustomize, helm, "") {
        panic!(
            "{what}: the chart renders {path} otherwise than manifests/base, or not at all\n\
             chart:     {}\nkustomize: {}",
            pointer_of(helm, &path),
            pointer_of(kustomize, &path)
        );
    }
    if let Some(path) = first_lost(helm, kustomize, "") {
        panic!(
            "{what}: the chart renders {path}, which manifests/base does not have\nchart: {}",
            pointer_of(helm, &path)
        );
    }
}

/// The value at a `first_lost` path (`.a.b[2].c`), for messages.
fn pointer_of(value: &Value, path: &str) -> String {
    let mut at = value;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = part.split_once('[').unwrap_or((part, ""));
        at = &at[key];
        for index in indices.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse::<usize>() {
                at = &at[i];
            }
        }
    }
    at.to_string()
}

fn the_container(objs: &[Obj]) -> (Obj, Container) {
    let (obj, ds) = one_of::<DaemonSet>(objs, "DaemonSet", "helm template");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers.len(), 1, "{}", obj.what());
    (obj, pod.containers.into_iter().next().unwrap())
}

/// The container's environment: name → literal value (`None` for a `valueFrom`).
fn env(c: &Container) -> BTreeMap<String, Option<String>> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

fn gate_config(objs: &[Obj], name: &str) -> BTreeMap<String, String> {
    typed::<ConfigMap>(find(objs, "ConfigMap", name))
        .data
        .unwrap()
}

fn cluster_rules(objs: &[Obj]) -> BTreeSet<(String, String)> {
    let (_, role) = one_of::<ClusterRole>(objs, "ClusterRole", "helm template");
    role.rules
        .unwrap()
        .into_iter()
        .flat_map(|r| {
            let groups = r.api_groups.unwrap_or_default();
            let resources = r.resources.unwrap_or_default();
            groups.into_iter().flat_map(move |g| {
                resources
                    .clone()
                    .into_iter()
                    .map(move |res| (g.clone(), res))
            })
        })
        .collect()
}

/// `pullgate run`'s flags by environment variable: (long flag, default).
fn agent_flags() -> BTreeMap<String, (String, Option<String>)> {
    let mut cli = pullgate::cli::Cli::command();
    cli.build();
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("pullgate has a `run` subcommand");
    run.get_arguments()
        .chain(cli.get_arguments())
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?.to_owned();
            let default = a
                .get_default_values()
                .first()
                .map(|d| d.to_string_lossy().into_owned());
            Some((env, (a.get_long().unwrap_or_default().to_owned(), default)))
        })
        .collect()
}

/// Values that set every option (each value distinct from its default).
const EVERY_OPTION: &str = r#"
image:
  repository: registry.example.com:5000/platform/pullgate
  tag: 1.2.3-rc.1
  pullPolicy: Always
imagePullSecrets:
  - name: platform-regcred
gate:
  taintKey: example.com/images-not-ready
  namespaces: [team-a, team-b]
  timeout: 15m
  timeoutAction: keep
pinNamespaces: [kube-system, platform]
metrics:
  address: "::"
  port: 9555
  auth: none
runtime:
  endpoint: unix:///var/run/crio/crio.sock
  socketDir: /var/run/crio
  configDir: ""
  root: /var/lib/containers/storage
credentialProviders:
  config: /etc/kubernetes/credential-providers
  configType: Directory
  binDir: /usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec
logFormat: text
extraArgs: ["--min-free-disk=10%", "--pull-timeout", "20m"]
extraEnv:
  - name: PULLGATE_REGISTRY_TIMEOUT
    value: 30s
extraVolumes:
  - name: docker-certs
    hostPath: { path: /etc/docker/certs.d, type: DirectoryOrCreate }
extraVolumeMounts:
  - name: docker-certs
    mountPath: /etc/docker/certs.d
    readOnly: true
resources:
  requests: { cpu: 50m, memory: 96Mi }
  limits: { memory: 256Mi }
tolerations:
  - key: node-role.kubernetes.io/control-plane
    operator: Exists
    effect: NoSchedule
nodeSelector:
  pool: workers
priorityClassName: ""
podAnnotations:
  example.com/scrape: "true"
podLabels:
  team: platform
namespaceAccess:
  - namespace: team-payments
    secrets: [regcred]
    serviceAccounts: [payment-api-sa]
    serviceAccountTokens: [payment-api-sa]
  - namespace: team-a
    secrets: [team-a-regcred, team-a-mirror]
    serviceAccounts: [default, builder]
"#;

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn chart_lints_strictly_with_default_and_every_value() {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    for (what, values) in [
        ("default values", None),
        ("every option", Some(EVERY_OPTION)),
    ] {
        let out = Helm::new().run(
            &["lint", "--strict", &chart, "--namespace", NAMESPACE],
            values,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm lint --strict ({what}) failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint ({what}) linted nothing?\n{stdout}"
        );
    }
}

#[test]
fn chart_version_is_the_crates_and_its_crd_is_the_base_crd() {
    let chart_yaml = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    let chart = &parse_documents("Chart.yaml", &chart_yaml)[0].value;
    let cargo = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    let crate_version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("Cargo.toml: [workspace.package] version");
    assert_eq!(chart["apiVersion"], "v2", "Chart.yaml: apiVersion");
    assert_eq!(chart["name"], "pullgate", "Chart.yaml: name");
    assert_eq!(
        chart["version"].as_str(),
        Some(crate_version.as_str()),
        "Chart.yaml: version is the crate's (Cargo.toml)"
    );
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(crate_version.as_str()),
        "Chart.yaml: appVersion is the crate's (Cargo.toml)"
    );
    assert_eq!(
        HELM_LABELS[0].1,
        format!("pullgate-{crate_version}"),
        "HELM_LABELS follows the crate's version"
    );

    let base = std::fs::read(manifests_dir().join("base/crd.yaml")).unwrap();
    let copied = std::fs::read(chart_dir().join("crds/pullset.yaml")).unwrap();
    assert!(
        base == copied,
        "manifests/helm/pullgate/crds/pullset.yaml differs from manifests/base/crd.yaml: copy it \
         again (`cp manifests/base/crd.yaml manifests/helm/pullgate/crds/pullset.yaml`) after \
         `cargo xtask manifests`"
    );
    let crds: Vec<_> = std::fs::read_dir(chart_dir().join("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(crds, ["pullset.yaml"], "crds/ holds the PullSet CRD only");
}

#[test]
fn default_values_render_the_base() {
    let chart = template(None);
    let base = render("base");
    chart.iter().for_each(check_typed);
    assert_eq!(
        identities(&chart),
        identities(&base),
        "helm template (default values) and kubectl kustomize manifests/base: (kind, namespace, name)"
    );
    assert_eq!(chart.len(), base.len(), "each object once");
    for b in &base {
        let c = chart
            .iter()
            .find(|c| c.kind() == b.kind() && c.name() == b.name())
            .unwrap();
        let what = c.what();
        if c.kind() == "CustomResourceDefinition" {
            // A plain file of crds/: helm adds no label, and the base's kustomization adds one.
            let mut b = b.value.clone();
            let labels = b["metadata"]["labels"].as_object_mut().unwrap();
            assert_eq!(labels.remove(PART_OF), Some(json!("pullgate")), "{what}");
            if labels.is_empty() {
                b["metadata"].as_object_mut().unwrap().remove("labels");
            }
            assert_same(&c.value, &b, &what);
        } else {
            assert_same(&without_helm_labels(c, RELEASE), &b.value, &what);
        }
    }
}

#[test]
fn default_values_are_the_agents_defaults_where_the_base_sets_none() {
    // The gate's timeout and action are left to the agent (empty values); what the chart does
    // set by default agrees with the agent's own defaults.
    let flags = agent_flags();
    let default = |env: &str| flags[env].1.clone().unwrap();
    let chart = template(None);
    let (_, c) = the_container(&chart);
    let env = env(&c);
    assert!(!env.contains_key("PULLGATE_GATE_TIMEOUT"), "{env:?}");
    assert!(!env.contains_key("PULLGATE_GATE_TIMEOUT_ACTION"), "{env:?}");
    assert_eq!(
        env["PULLGATE_CRI_ENDPOINT"].as_deref(),
        Some(default("PULLGATE_CRI_ENDPOINT").as_str())
    );
    assert_eq!(
        env["PULLGATE_METRICS_ADDR"].as_deref(),
        Some(default("PULLGATE_METRICS_ADDR").as_str())
    );
    assert_eq!(
        gate_config(&chart, "pullgate-gate")["taint-key"],
        default("PULLGATE_TAINT_KEY")
    );
    assert_eq!(
        gate_config(&chart, "pullgate-gate")["pin-namespaces"],
        default("PULLGATE_PIN_NAMESPACES")
    );
}

#[test]
fn every_option_renders_what_it_says() {
    let chart = Helm::new()
        .try_template(RELEASE, NAMESPACE, &[], Some(EVERY_OPTION))
        .unwrap();
    chart.iter().for_each(check_typed);
    let (obj, c) = the_container(&chart);
    let (_, ds) = one_of::<DaemonSet>(&chart, "DaemonSet", "every option");
    let spec = ds.spec.unwrap();
    let selector = spec.selector.match_labels.unwrap_or_default();
    let template = spec.template;
    let pod = template.spec.unwrap();

    // The image.
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example.com:5000/platform/pullgate:1.2.3-rc.1")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "platform-regcred");

    // Arguments and environment: every PULLGATE_* a flag of `pullgate run`.
    assert_eq!(
        c.args.as_deref().unwrap(),
        ["run", "--min-free-disk=10%", "--pull-timeout", "20m"]
    );
    let env = env(&c);
    let flags = agent_flags();
    for name in env.keys() {
        assert!(
            flags.contains_key(name),
            "{}: env {name} is no flag of `pullgate run`",
            obj.what()
        );
    }
    let literal = |name: &str| env[name].as_deref().unwrap_or("(valueFrom)").to_owned();
    assert_eq!(literal("PULLGATE_GATE_TIMEOUT"), "15m");
    assert_eq!(literal("PULLGATE_GATE_TIMEOUT_ACTION"), "keep");
    assert_eq!(literal("PULLGATE_METRICS_ADDR"), "[::]:9555");
    assert_eq!(literal("PULLGATE_METRICS_AUTH"), "none");
    assert_eq!(literal("PULLGATE_LOG_FORMAT"), "text");
    assert_eq!(
        literal("PULLGATE_CRI_ENDPOINT"),
        "unix:///var/run/crio/crio.sock"
    );
    assert_eq!(literal("PULLGATE_REGISTRY_TIMEOUT"), "30s");
    assert_eq!(
        literal("PULLGATE_IMAGE_CREDENTIAL_PROVIDER_CONFIG"),
        "/etc/kubernetes/credential-providers"
    );
    assert_eq!(
        literal("PULLGATE_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR"),
        "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec"
    );
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("metrics"), 9555)
    );

    // The gate's ConfigMap: the release namespace first, then the listed ones.
    let gate = gate_config(&chart, "pullgate-gate");
    assert_eq!(gate["taint-key"], "example.com/images-not-ready");
    assert_eq!(gate["gate-namespaces"], "pullgate-system,team-a,team-b");
    assert_eq!(gate["pin-namespaces"], "kube-system,platform");

    // Metrics without auth: no review rights.
    let rules = cluster_rules(&chart);
    for review in [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ] {
        assert!(
            !rules.contains(&(review.0.to_owned(), review.1.to_owned())),
            "metrics.auth none: the ClusterRole still grants {review:?}"
        );
    }
    assert!(
        rules.contains(&(String::new(), "nodes".to_owned())),
        "{rules:?}"
    );

    // Mounts: every host path read-only at its own path (the root below /host), but the API
    // socket's; CRI-O's socket directory, no containerd configuration.
    let mounts: BTreeMap<_, _> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.as_str(),
                (m.mount_path.as_str(), m.read_only == Some(true)),
            )
        })
        .collect();
    let volumes: BTreeMap<_, _> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let host = v.host_path.as_ref().unwrap();
            (v.name.as_str(), (host.path.as_str(), host.type_.as_deref()))
        })
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            ("containerd-run", ("/var/run/crio", true)),
            (
                "containerd-root",
                ("/host/var/lib/containers/storage", true)
            ),
            ("api-socket", ("/run/pullgate", false)),
            (
                "credential-provider-config",
                ("/etc/kubernetes/credential-providers", true)
            ),
            (
                "credential-provider-bin",
                (
                    "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec",
                    true
                )
            ),
            ("docker-certs", ("/etc/docker/certs.d", true)),
        ])
    );
    assert_eq!(
        volumes,
        BTreeMap::from([
            ("containerd-run", ("/var/run/crio", Some("Directory"))),
            (
                "containerd-root",
                ("/var/lib/containers/storage", Some("Directory"))
            ),
            ("api-socket", ("/run/pullgate", Some("DirectoryOrCreate"))),
            (
                "credential-provider-config",
                ("/etc/kubernetes/credential-providers", Some("Directory"))
            ),
            (
                "credential-provider-bin",
                (
                    "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec",
                    Some("Directory")
                )
            ),
            (
                "docker-certs",
                ("/etc/docker/certs.d", Some("DirectoryOrCreate"))
            ),
        ])
    );

    // Placement, resources, pod metadata.
    let resources = c.resources.unwrap();
    assert_eq!(resources.requests.unwrap()["memory"].0, "96Mi");
    let limits = resources.limits.unwrap();
    assert_eq!(limits["memory"].0, "256Mi");
    // helm merges maps with the defaults: the default CPU limit stays unless set to null.
    assert_eq!(limits["cpu"].0, "500m");
    let tolerations = pod.tolerations.unwrap();
    assert_eq!(tolerations.len(), 1);
    assert_eq!(
        tolerations[0].key.as_deref(),
        Some("node-role.kubernetes.io/control-plane")
    );
    assert_eq!(
        pod.node_selector.unwrap(),
        // Merged with the default (helm merges maps): kubernetes.io/os stays unless set to null.
        BTreeMap::from([
            ("kubernetes.io/os".into(), "linux".into()),
            ("pool".into(), "workers".into())
        ])
    );
    assert_eq!(
        pod.priority_class_name, None,
        "priorityClassName \"\": none"
    );
    let meta = template.metadata.unwrap();
    assert_eq!(meta.labels.unwrap()["team"], "platform");
    assert_eq!(meta.annotations.unwrap()["example.com/scrape"], "true");
    // The selector stays the base's (a DaemonSet's selector is immutable).
    assert_eq!(
        selector,
        BTreeMap::from([("app.kubernetes.io/name".into(), "pullgate".into())])
    );
}

#[test]
fn image_digest_pins_the_image() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let chart = template(Some(&format!("image:\n  digest: {digest}\n")));
    let (_, c) = the_container(&chart);
    assert_eq!(
        c.image.unwrap(),
        format!("ghcr.io/pullgate/pullgate@{digest}")
    );
    let chart = template(Some("image:\n  tag: 0.2.0\n"));
    assert_eq!(
        the_container(&chart).1.image.unwrap(),
        "ghcr.io/pullgate/pullgate:0.2.0"
    );
}

#[test]
fn namespace_access_renders_the_namespace_access_kustomization() {
    let chart = Helm::new()
        .try_template(RELEASE, NAMESPACE, &[], Some(EVERY_OPTION))
        .unwrap();
    let grants: Vec<&Obj> = chart
        .iter()
        .filter(|o| matches!(o.kind(), "Role" | "RoleBinding"))
        .collect();
    assert_eq!(grants.len(), 4, "a Role and a RoleBinding per namespace");

    // team-payments: exactly what overlays/example/team-payments renders.
    let team_payments = render("overlays/example/team-payments");
    for k in &team_payments {
        let c = chart
            .iter()
            .find(|c| {
                c.kind() == k.kind() && c.name() == k.name() && c.namespace() == k.namespace()
            })
            .unwrap_or_else(|| panic!("the chart renders no {}", k.what()));
        assert_same(&without_chart_labels(c, RELEASE), &k.value, &c.what());
    }

    // team-a: manifests/namespace-access, put in team-a with the names filled in.
    for k in render("namespace-access") {
        let mut expected = k.value.clone();
        expected["metadata"]["namespace"] = json!("team-a");
        if k.kind() == "Role" {
            expected["rules"][0]["resourceNames"] = json!(["team-a-regcred", "team-a-mirror"]);
            expected["rules"][1]["resourceNames"] = json!(["default", "builder"]);
        }
        let c = chart
            .iter()
            .find(|c| {
                c.kind() == k.kind() && c.name() == k.name() && c.namespace() == Some("team-a")
            })
            .unwrap_or_else(|| panic!("the chart renders no {} in team-a", k.kind()));
        assert_same(&without_chart_labels(c, RELEASE), &expected, &c.what());
    }

    // None by default: nothing readable anywhere.
    assert!(
        !template(None)
            .iter()
            .any(|o| matches!(o.kind(), "Role" | "RoleBinding")),
        "default values: no namespace opted in"
    );
}

#[test]
fn another_release_and_namespace_keep_every_reference_consistent() {
    let chart = Helm::new()
        .try_template("agents", "node-agents", &[], Some(
            "namespaceAccess:\n  - namespace: team-a\n    secrets: [s]\n    serviceAccounts: [default]\n",
        ))
        .unwrap();
    chart.iter().for_each(check_typed);
    let name = "agents-pullgate";
    for o in &chart {
        if o.kind() == "CustomResourceDefinition" {
            continue;
        }
        let expected_name = match o.kind() {
            "Namespace" => "node-agents".to_owned(),
            "ConfigMap" => format!("{name}-gate"),
            "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => {
                format!("{name}-own-node")
            }
            "Role" | "RoleBinding" => format!("{name}-pull-credentials"),
            _ => name.to_owned(),
        };
        assert_eq!(o.name(), expected_name, "{}", o.what());
        without_helm_labels(o, "agents");
        match o.kind() {
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" => {}
            "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => {}
            "Role" | "RoleBinding" => assert_eq!(o.namespace(), Some("team-a"), "{}", o.what()),
            _ => assert_eq!(o.namespace(), Some("node-agents"), "{}", o.what()),
        }
    }
    for (kind, binding) in [
        ("ClusterRoleBinding", name.to_owned()),
        ("RoleBinding", format!("{name}-pull-credentials")),
    ] {
        let o = find(&chart, kind, &binding);
        assert_eq!(
            o.value["subjects"],
            json!([{"kind": "ServiceAccount", "name": name, "namespace": "node-agents"}]),
            "{}",
            o.what()
        );
        assert_eq!(o.value["roleRef"]["name"], binding, "{}", o.what());
    }
    let ds = find(&chart, "DaemonSet", name);
    assert_eq!(
        ds.str_at("/spec/template/spec/serviceAccountName"),
        Some(name)
    );
    let (_, c) = the_container(&chart);
    for e in c.env.iter().flatten() {
        if let Some(from) = e
            .value_from
            .as_ref()
            .and_then(|f| f.config_map_key_ref.as_ref())
        {
            assert_eq!(from.name, format!("{name}-gate"), "env {}", e.name);
        }
    }
    let binding = find(
        &chart,
        "ValidatingAdmissionPolicyBinding",
        &format!("{name}-own-node"),
    );
    assert_eq!(
        binding.value["spec"]["policyName"],
        format!("{name}-own-node")
    );
    assert_eq!(
        binding.value["spec"]["paramRef"],
        json!({"name": format!("{name}-gate"), "namespace": "node-agents", "parameterNotFoundAction": "Deny"})
    );
    let policy = find(
        &chart,
        "ValidatingAdmissionPolicy",
        &format!("{name}-own-node"),
    );
    assert_eq!(
        policy.value["spec"]["matchConditions"][0]["expression"],
        format!("request.userInfo.username == 'system:serviceaccount:node-agents:{name}'")
    );
    assert_eq!(
        gate_config(&chart, &format!("{name}-gate"))["gate-namespaces"],
        "node-agents,kube-system"
    );

    // A namespace managed elsewhere: no Namespace object; only the listed gate namespaces.
    let chart = Helm::new()
        .try_template(
            "pullgate",
            "pullgate-system",
            &[],
            Some("namespace:\n  create: false\ngate:\n  releaseNamespace: false\n  namespaces: [ops]\n"),
        )
        .unwrap();
    assert!(!chart.iter().any(|o| o.kind() == "Namespace"));
    assert_eq!(
        gate_config(&chart, "pullgate-gate")["gate-namespaces"],
        "ops"
    );
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        ("metrics:\n  auth: basic\n", "/metrics/auth"),
        ("metrics:\n  port: 70000\n", "/metrics/port"),
        ("metrics:\n  port: \"9464\"\n", "/metrics/port"),
        ("gate:\n  timeoutAction: later\n", "/gate/timeoutAction"),
        ("gate:\n  timeout: soon\n", "/gate/timeout"),
        ("gate:\n  taintKey: \"not a key\"\n", "/gate/taintKey"),
        ("gate:\n  namespaces: [Team_A]\n", "/gate/namespaces/0"),
        ("gate:\n  taintkey: x\n", "taintkey"),
        ("image:\n  digest: latest\n", "/image/digest"),
        ("image:\n  pullPolicy: Sometimes\n", "/image/pullPolicy"),
        (
            "runtime:\n  socketDir: run/containerd\n",
            "/runtime/socketDir",
        ),
        (
            "credentialProviders:\n  configType: Socket\n",
            "/credentialProviders/configType",
        ),
        ("extraArgs: --once\n", "/extraArgs"),
        // An empty resourceNames grants every name: refused.
        (
            "namespaceAccess:\n  - namespace: team-a\n    secrets: []\n    serviceAccounts: [default]\n",
            "/namespaceAccess/0/secrets",
        ),
        (
            "namespaceAccess:\n  - namespace: team-a\n    secrets: [regcred]\n",
            "serviceAccounts",
        ),
        (
            "namespaceAccess:\n  - namespace: team-a\n    secrets: [regcred]\n    serviceAccounts: [default]\n    clusterWide: true\n",
            "clusterWide",
        ),
        // Not expressible in the schema: refused by the templates.
        (
            "credentialProviders:\n  config: /etc/kubernetes/credential-providers.yaml\n",
            "credentialProviders.binDir is required",
        ),
        (
            "runtime:\n  configDir: /run/containerd/\n",
            "runtime.configDir and runtime.socketDir must differ",
        ),
    ];
    for (values, field) in cases {
        let refused = Helm::new()
            .try_template(RELEASE, NAMESPACE, &[], Some(values))
            .expect_err(&format!("helm template accepted {values:?}"));
        assert!(
            refused.contains(field),
            "values {values:?}: the message does not name {field}:\n{refused}"
        );
    }
}

#[test]
fn notes_name_the_taint_and_the_namespace_grants() {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let out = Helm::new().run(
        &[
            "install",
            RELEASE,
            &chart,
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
        ],
        Some("gate:\n  taintKey: example.com/images-not-ready\nnamespaceAccess:\n  - namespace: team-a\n    secrets: [s]\n    serviceAccounts: [default]\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm install --dry-run=client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = stdout
        .split("NOTES:")
        .nth(1)
        .unwrap_or_else(|| panic!("no NOTES in:\n{stdout}"));
    for expected in [
        "example.com/images-not-ready:NoSchedule",
        "team-a",
        "pullgate-system/pullgate",
    ] {
        assert!(notes.contains(expected), "NOTES lack {expected}:\n{notes}");
    }
}

/// `kubeletConfig.enabled`: the DaemonSet the kustomize Component `components/kubelet-config`
/// renders on the base (the kubelet's configuration mounted read-only from its hostPath, type
/// File, at /host + its path, passed as `--kubelet-config`); another `path` moves all three; a
/// relative path is refused naming the field. The default render is the base (see
/// `default_values_render_the_base`), without any of it.
#[test]
fn kubelet_config_renders_the_kubelet_config_component() {
    let helm = Helm::new();
    let chart = helm
        .try_template(
            RELEASE,
            NAMESPACE,
            &["--set", "kubeletConfig.enabled=true"],
            None,
        )
        .unwrap();
    chart.iter().for_each(check_typed);
    let kustomized = render_with_components("base", &["components/kubelet-config"]);
    let c = find(&chart, "DaemonSet", "pullgate");
    let k = find(&kustomized, "DaemonSet", "pullgate");
    assert_same(&without_helm_labels(c, RELEASE), &k.value, &c.what());
    let (_, container) = the_container(&chart);
    assert_eq!(
        container.args.as_deref().unwrap_or_default(),
        ["run", "--kubelet-config=/host/var/lib/kubelet/config.yaml"]
    );

    // Off by default: no arg, no mount, no volume.
    let default = template(None);
    let (_, container) = the_container(&default);
    assert_eq!(container.args.as_deref().unwrap_or_default(), ["run"]);
    assert!(
        !serde_json::to_string(&find(&default, "DaemonSet", "pullgate").value)
            .unwrap()
            .contains("kubelet-config")
    );

    // Another path: the hostPath, the mount under /host and the arg follow it.
    let chart = helm
        .try_template(
            RELEASE,
            NAMESPACE,
            &[],
            Some("kubeletConfig:\n  enabled: true\n  path: /etc/kubernetes/kubelet.yaml\n"),
        )
        .unwrap();
    let (obj, ds) = one_of::<DaemonSet>(&chart, "DaemonSet", "kubeletConfig.path");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    assert_eq!(
        container.args.as_deref().unwrap_or_default(),
        ["run", "--kubelet-config=/host/etc/kubernetes/kubelet.yaml"],
        "{}",
        obj.what()
    );
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "kubelet-config")
        .unwrap();
    assert_eq!(mount.mount_path, "/host/etc/kubernetes/kubelet.yaml");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "kubelet-config")
        .unwrap();
    let host_path = volume.host_path.as_ref().unwrap();
    assert_eq!(host_path.path, "/etc/kubernetes/kubelet.yaml");
    assert_eq!(host_path.type_.as_deref(), Some("File"));

    let refused = helm
        .try_template(
            RELEASE,
            NAMESPACE,
            &[],
            Some("kubeletConfig:\n  enabled: true\n  path: kubelet.yaml\n"),
        )
        .unwrap_err();
    assert!(refused.contains("kubeletConfig"), "{refused}");
}
