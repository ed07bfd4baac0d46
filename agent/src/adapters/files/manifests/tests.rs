use super::*;
use secrecy::ExposeSecret;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn reads_all_kinds_across_documents_and_files() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "sets.yaml",
        &format!(
            r#"
apiVersion: pullgate.io/v1alpha1
kind: PullSet
metadata: {{name: critical, namespace: payments}}
spec:
  serviceAccountName: api
  images:
    - image: reg.io:5000/payments/api@{DIGEST}
    - image: reg.io:5000/payments/worker:v1
---
# a comment-only document is skipped
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: ignored}}
"#
        ),
    );
    write(
        dir.path(),
        "nested/creds.yml",
        r#"
apiVersion: v1
kind: Secret
metadata: {name: regcred, namespace: payments}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: eyJhdXRocyI6e319
---
apiVersion: v1
kind: Secret
metadata: {name: plain, namespace: payments}
type: kubernetes.io/dockercfg
stringData:
  .dockercfg: '{}'
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: payments}
imagePullSecrets: [{name: regcred}]
"#,
    );
    write(dir.path(), "notes.txt", "not yaml: [");
    let loaded = load_dir(dir.path()).unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let inv = &loaded.inventory;
    let set = &inv.pullsets[&ObjectKey::new("payments", "critical")];
    assert_eq!(set.images.len(), 2);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("spec.images[1].image"));
    let secret = &inv.secrets[&ObjectKey::new("payments", "regcred")];
    assert_eq!(
        secret.data[".dockerconfigjson"].expose_secret(),
        br#"{"auths":{}}"#
    );
    assert_eq!(
        inv.secrets[&ObjectKey::new("payments", "plain")].data[".dockercfg"].expose_secret(),
        b"{}"
    );
    assert_eq!(
        inv.service_accounts[&ObjectKey::new("payments", "api")].image_pull_secrets,
        ["regcred"]
    );
}

#[test]
fn problems_name_file_document_and_field_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        r#"
apiVersion: pullgate.io/v1alpha1
kind: PullSet
metadata: {name: good}
spec:
  images: [{image: reg.io/app:1}]
---
apiVersion: pullgate.io/v1alpha1
kind: PullSet
metadata: {name: typo}
spec:
  images: [{image: reg.io/app:1}]
  prepull: true
---
apiVersion: pullgate.io/v1alpha1
kind: PullSet
metadata: {name: bad-image}
spec:
  images: [{image: reg.io/app:1}, {image: 'Bad Image'}]
---
apiVersion: v1
kind: Secret
metadata: {name: opaque}
type: Opaque
stringData: {password: hunter2-do-not-print}
---
apiVersion: v1
kind: Secret
metadata: {name: bad-b64}
type: kubernetes.io/dockerconfigjson
data: {.dockerconfigjson: "hunter2!!notbase64"}
---
kind: PullSet
metadata: {name: no-version}
"#,
    );
    write(
        dir.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: x\n  broken: [",
    );
    let loaded = load_dir(dir.path()).unwrap();
    let got: Vec<(String, Option<usize>, Option<String>, Option<String>)> = loaded
        .problems
        .iter()
        .map(|p| {
            (
                p.file.file_name().unwrap().to_string_lossy().into_owned(),
                p.document,
                p.object.clone(),
                p.field.clone(),
            )
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            (
                "a.yaml".into(),
                Some(1),
                s("PullSet default/typo"),
                s("spec.prepull")
            ),
            (
                "a.yaml".into(),
                Some(2),
                s("PullSet default/bad-image"),
                s("spec.images[1].image")
            ),
            (
                "a.yaml".into(),
                Some(3),
                s("Secret default/opaque"),
                s("type")
            ),
            (
                "a.yaml".into(),
                Some(4),
                s("Secret default/bad-b64"),
                s("data..dockerconfigjson")
            ),
            ("a.yaml".into(), Some(5), None, s("apiVersion")),
            ("b.yaml".into(), Some(0), None, None),
        ]
    );
    assert!(
        loaded.problems[0]
            .message
            .contains("unknown field `prepull`"),
        "{}",
        loaded.problems[0].message
    );
    // The valid set is loaded; the Opaque secret is kept so that a reference to it is diagnosed.
    assert!(
        loaded
            .inventory
            .pullsets
            .contains_key(&ObjectKey::new("default", "good"))
    );
    assert_eq!(loaded.inventory.pullsets.len(), 1);
    assert_eq!(
        loaded.inventory.secrets[&ObjectKey::new("default", "opaque")].type_,
        "Opaque"
    );
    let all = format!(
        "{:?} {}",
        loaded,
        loaded
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn duplicates_keep_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let set = "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {name: s}\nspec: {images: [{image: 'r.io/a:IMG'}]}\n";
    write(dir.path(), "1.yaml", &set.replace("IMG", "1"));
    write(dir.path(), "2.yaml", &set.replace("IMG", "2"));
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.problems.len(), 1);
    assert!(loaded.problems[0].message.contains("1.yaml"));
    assert_eq!(
        loaded.inventory.pullsets[&ObjectKey::new("default", "s")].images[0]
            .tag
            .as_deref(),
        Some("1")
    );
}

#[test]
fn fingerprint_follows_content() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n",
    );
    let one = load_dir(dir.path()).unwrap().fingerprint;
    assert_eq!(one, load_dir(dir.path()).unwrap().fingerprint);
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b}\n",
    );
    assert_ne!(one, load_dir(dir.path()).unwrap().fingerprint);
}

#[test]
fn a_missing_directory_is_an_error() {
    assert!(load_dir(Path::new("/nonexistent/pullgate")).is_err());
}

/// One document: a `len`-byte anchored scalar referenced `refs` times.
fn alias_bomb(name: &str, len: usize, refs: usize) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  big: &big \"{}\"\n  refs: [{}]\n",
        "x".repeat(len),
        vec!["*big"; refs].join(", ")
    )
}

#[test]
fn an_alias_bomb_is_refused_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "good.yaml",
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {name: good}\nspec:\n  images: [{image: reg.io/app:1}]\n",
    );
    // 1 MiB referenced 1,000 times: about 1 GiB if expanded, from a 1 MiB file.
    let bomb = alias_bomb("bomb", 1024 * 1024, 1000);
    write(
        dir.path(),
        "bomb.yaml",
        &format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: before}}\n---\n{bomb}---\napiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: after}}\nspec:\n  images: [{{image: reg.io/app:2}}]\n"
        ),
    );
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
    let p = &loaded.problems[0];
    assert_eq!(p.file, dir.path().join("bomb.yaml"));
    assert_eq!(p.document, Some(1));
    assert!(
        p.message.contains("expands to more than 16 MiB"),
        "{}",
        p.message
    );
    // The good file, and the bomb file's other documents, still load.
    assert!(
        loaded
            .inventory
            .pullsets
            .contains_key(&ObjectKey::new("default", "good"))
    );
    assert!(
        loaded
            .inventory
            .pullsets
            .contains_key(&ObjectKey::new("default", "after"))
    );
    assert!(
        loaded
            .inventory
            .service_accounts
            .contains_key(&ObjectKey::new("default", "before"))
    );
}

#[test]
fn many_documents_under_the_document_bound_are_refused_past_the_file_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Each document expands to about 14 MiB: under the document bound; the fifth passes the
    // file's 64 MiB.
    let documents: Vec<String> = (0..6)
        .map(|i| alias_bomb(&format!("m{i}"), 64 * 1024, 220))
        .collect();
    write(dir.path(), "many.yaml", &documents.join("---\n"));
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
    let p = &loaded.problems[0];
    assert_eq!(p.file, dir.path().join("many.yaml"));
    assert_eq!(p.document, Some(4));
    assert!(
        p.message
            .contains("more than 64 MiB in memory (YAML aliases repeat what they name); this document and the rest of the file are skipped"),
        "{}",
        p.message
    );
}

#[test]
fn small_aliases_and_tags_still_work() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {name: &n app, labels: {app: *n}}\nspec:\n  images: [{image: &img reg.io/app:1}, {image: reg.io/other:1}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/dockerconfigjson\ndata: {.dockerconfigjson: !!str e30=}\n---\nkey: dup\nkey: dup\n",
    );
    let loaded = load_dir(dir.path()).unwrap();
    let set = &loaded.inventory.pullsets[&ObjectKey::new("default", "app")];
    assert_eq!(set.images.len(), 2);
    assert!(
        loaded
            .inventory
            .secrets
            .contains_key(&ObjectKey::new("default", "s"))
    );
    // Duplicate keys are still refused, as serde_yaml's own `Value` refuses them.
    assert_eq!(loaded.problems.len(), 1, "{:?}", loaded.problems);
    assert_eq!(loaded.problems[0].document, Some(2));
    assert!(
        loaded.problems[0]
            .message
            .contains("duplicate entry with key \"key\""),
        "{}",
        loaded.problems[0].message
    );
}
