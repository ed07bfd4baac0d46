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
