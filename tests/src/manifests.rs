//! YAML for the agent's manifest directory.

use base64::Engine as _;

/// A `kubernetes.io/dockerconfigjson` Secret with one registry key.
pub fn pull_secret(namespace: &str, name: &str, key: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { key: { "auth": auth } } }).to_string();
    let data = base64::engine::general_purpose::STANDARD.encode(config);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n"
    )
}

/// A PullSet with the given images and pull secrets.
pub fn pullset(namespace: &str, name: &str, images: &[&str], secrets: &[&str]) -> String {
    let mut yaml = format!(
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n"
    );
    if !secrets.is_empty() {
        yaml.push_str("  imagePullSecrets:\n");
        for s in secrets {
            yaml.push_str(&format!("    - name: {s}\n"));
        }
    }
    yaml.push_str("  images:\n");
    for i in images {
        yaml.push_str(&format!("    - image: \"{i}\"\n"));
    }
    yaml
}

/// A PullSet of one image with a canary: `canary` is the YAML flow map's content
/// (`schedule: '0 0 * * *', jitter: 0s, depth: manifest`).
pub fn canaried_pullset(
    namespace: &str,
    name: &str,
    image: &str,
    secrets: &[&str],
    canary: &str,
) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("{{name: {s}}}")).collect();
    format!(
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  imagePullSecrets: [{}]\n  images: [{{image: '{image}'}}]\n  canary: {{{canary}}}\n",
        secrets.join(", ")
    )
}
