//! Objects for the test API server, as a cluster would hold them.

use base64::Engine as _;
use serde_json::{Value, json};

/// A `kubernetes.io/dockerconfigjson` Secret for `host` with `user:password`.
pub fn pull_secret(namespace: &str, name: &str, host: &str, user: &str, password: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({"auths": {host: {"auth": b64(&format!("{user}:{password}"))}}}).to_string();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
           "type": "kubernetes.io/dockerconfigjson",
           "data": {".dockerconfigjson": b64(&config)}})
}

/// A PullSet of `images` with the rest of its `spec`.
pub fn pullset(namespace: &str, name: &str, images: &[&str], spec: Value) -> Value {
    let mut spec = spec;
    spec["images"] = images.iter().map(|i| json!({"image": i})).collect();
    json!({"apiVersion": "pullgate.io/v1alpha1", "kind": "PullSet",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// A Node as the kubelet registers it: `Ready`, with these taints (`key`, `effect`).
pub fn node(name: &str, taints: &[(&str, &str)]) -> Value {
    let taints: Vec<Value> = taints
        .iter()
        .map(|(key, effect)| json!({"key": key, "effect": effect}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/hostname": name}},
           "spec": {"taints": taints},
           "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                      "message": "kubelet is posting ready status",
                                      "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                      "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

/// The PullSet CRD as shipped: `manifests/base/crd.yaml`, generated from the Rust type.
pub fn pullset_crd() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/base/crd.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The shipped PullSet CRD with one more field in `spec`, as a newer CRD during a rollout.
pub fn pullset_crd_with_spec_field(field: &str, schema: Value) -> Value {
    let mut crd = pullset_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        [field] = schema;
    crd
}
