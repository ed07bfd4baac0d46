//! The containerd release lines the suite runs against besides the system's own (Debian bookworm's
//! 1.6): trixie's 1.7 and sid's 2.1, fetched as Debian packages with `apt-get download` through a
//! private source list and state directory (the machine's own apt sources, lists and cache stay
//! untouched), unpacked with `dpkg-deb -x` into [`CACHE`], never installed over the system's.
//! Keep in step with `tests/src/containerd.rs`, which looks for them there.

use crate::run;
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the unpacked packages live, relative to the workspace root: `CACHE/<line>/usr/bin/…`.
pub const CACHE: &str = "target/tools/containerd";

/// A release line fetched from Debian: the suite that carries it and the exact package version.
pub struct Release {
    /// What `PULLGATE_TEST_CONTAINERD` names it by.
    pub line: &'static str,
    pub suite: &'static str,
    pub package_version: &'static str,
    /// What `containerd --version` prints for it.
    pub upstream_version: &'static str,
}

pub const RELEASES: &[Release] = &[
    Release {
        line: "1.7",
        suite: "trixie",
        package_version: "1.7.24~ds1-6+deb13u1",
        upstream_version: "1.7.24",
    },
    Release {
        line: "2.1",
        suite: "sid",
        package_version: "2.1.9+ds1-5",
        upstream_version: "2.1.9",
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Fetches and unpacks every release line not already in the cache. Idempotent.
pub fn ensure() -> Result<()> {
    let missing: Vec<&Release> = RELEASES.iter().filter(|r| !runs(r)).collect();
    if missing.is_empty() {
        let lines: Vec<&str> = RELEASES.iter().map(|r| r.line).collect();
        eprintln!(
            "xtask deps: containerd {} are in {CACHE}",
            lines.join(" and ")
        );
        return Ok(());
    }
    if !Path::new(KEYRING).is_file() {
        bail!(
            "{KEYRING} is missing (it verifies the Debian packages): apt-get install -y debian-archive-keyring"
        );
    }
    let apt = Path::new("target/tools/apt");
    let sources = apt.join("sources.list.d");
    for dir in [
        sources.clone(),
        apt.join("lists/partial"),
        apt.join("cache/archives/partial"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir -p {}", dir.display()))?;
    }
    let suites: Vec<&str> = missing.iter().map(|r| r.suite).collect();
    std::fs::write(
        sources.join("pullgate-containerd.sources"),
        format!(
            "Types: deb\nURIs: {MIRROR}\nSuites: {}\nComponents: main\nSigned-By: {KEYRING}\n",
            suites.join(" ")
        ),
    )?;
    eprintln!(
        "xtask deps: fetching containerd {} from Debian {} (apt-get download, private state in {})",
        missing
            .iter()
            .map(|r| r.package_version)
            .collect::<Vec<_>>()
            .join(" and "),
        suites.join(" and "),
        apt.display()
    );
    run(apt_get(apt).args(["update", "-qq"]))?;
    let downloads = apt.join("downloads");
    std::fs::create_dir_all(&downloads)?;
    for release in &missing {
        let wanted = format!("containerd={}", release.package_version);
        let status = apt_get(apt)
            .current_dir(&downloads)
            .args(["download", "-qq", &wanted])
            .status()
            .context("cannot run apt-get download")?;
        if !status.success() {
            let madison = Command::new("apt-cache")
                .args(private_options(apt))
                .args(["madison", "containerd"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            bail!(
                "Debian {} no longer offers {wanted}; the versions on offer:\n{madison}\nupdate RELEASES in xtask/src/containerd.rs",
                release.suite
            );
        }
        let deb = find_deb(&downloads, release.package_version)?;
        let dest = Path::new(CACHE).join(release.line);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).with_context(|| format!("rm -r {}", dest.display()))?;
        }
        std::fs::create_dir_all(&dest)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dest))?;
        std::fs::remove_file(&deb).with_context(|| format!("rm {}", deb.display()))?;
        if !runs(release) {
            bail!(
                "{} does not run `containerd --version` or is not {}",
                binary(release).display(),
                release.upstream_version
            );
        }
        eprintln!(
            "xtask deps: containerd {} unpacked into {}",
            release.upstream_version,
            dest.display()
        );
    }
    Ok(())
}

/// `CACHE/<line>/usr/bin/containerd`.
fn binary(release: &Release) -> PathBuf {
    Path::new(CACHE)
        .join(release.line)
        .join("usr/bin/containerd")
}

fn runs(release: &Release) -> bool {
    Command::new(binary(release))
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(release.upstream_version)
        })
}

/// Options that point apt at the private source list and state: no system source, list, cache
/// or lock is read or written (only dpkg's status, read to know the architecture's packages).
fn private_options(apt: &Path) -> Vec<String> {
    let abs = std::fs::canonicalize(apt).unwrap_or_else(|_| apt.to_path_buf());
    let a = abs.display();
    vec![
        "-o".into(),
        "Dir::Etc::SourceList=/dev/null".into(),
        "-o".into(),
        format!("Dir::Etc::SourceParts={a}/sources.list.d"),
        "-o".into(),
        format!("Dir::State::Lists={a}/lists"),
        "-o".into(),
        format!("Dir::Cache={a}/cache"),
        "-o".into(),
        "Dir::State::status=/var/lib/dpkg/status".into(),
        // Downloads land in a directory of ours; apt's `_apt` sandbox user need not write there.
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

fn apt_get(apt: &Path) -> Command {
    let mut command = Command::new("apt-get");
    command.args(private_options(apt));
    command
}

fn find_deb(dir: &Path, package_version: &str) -> Result<PathBuf> {
    // apt names the file with the version's `:` and `~` kept, `+` kept; match on the prefix.
    let upstream = package_version
        .split(['~', '+', '-'])
        .next()
        .unwrap_or(package_version);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("containerd_") && name.contains(upstream) && name.ends_with(".deb") {
            return Ok(path);
        }
    }
    bail!(
        "apt-get download left no containerd_{package_version}*.deb in {}",
        dir.display()
    )
}
