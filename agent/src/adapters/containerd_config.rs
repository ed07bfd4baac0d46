//! The container runtime's registry configuration (containerd's `hosts.toml` under its
//! `config_path`): which registries the node's real pull path routes through a mirror or a peer
//! cache. A mirror may serve cached content without checking credentials, so a runtime canary
//! through it proves less than a registry-direct one; outcomes say so. [`HostsDir`] is the
//! runtime canary's `RegistryMirrors`; the files are read on every look-up, so a changed
//! configuration counts from the next canary on.

use crate::decide::runtime::RegistryMirrors;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// containerd's registry `config_path` (`/etc/containerd/certs.d`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostsDir(pub PathBuf);

impl HostsDir {
    /// The mirrors of `dir`, for a canary runner; none without a directory.
    pub fn shared(dir: Option<PathBuf>) -> Option<Arc<dyn RegistryMirrors>> {
        dir.map(|d| Arc::new(Self(d)) as Arc<dyn RegistryMirrors>)
    }
}

impl RegistryMirrors for HostsDir {
    fn mirrors(&self, registry: &str) -> Vec<String> {
        mirrors(&self.0, registry)
    }
}

#[derive(Deserialize)]
struct HostsFile {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    host: BTreeMap<String, toml::Value>,
}

/// The hosts other than `registry` itself that the runtime tries for `registry`, from
/// `DIR/<registry>/hosts.toml` or else `DIR/_default/hosts.toml`. Unreadable files count as none.
pub fn mirrors(config_dir: &Path, registry: &str) -> Vec<String> {
    let file = [registry, "_default"]
        .iter()
        .map(|d| config_dir.join(d).join("hosts.toml"))
        .find(|p| p.is_file());
    let Some(text) = file.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Vec::new();
    };
    let Ok(hosts) = toml::from_str::<HostsFile>(&text) else {
        return Vec::new();
    };
    let server_host = hosts.server.as_deref().map(host_of);
    hosts
        .host
        .keys()
        .map(|url| host_of(url))
        .filter(|h| {
            h != registry && Some(h.as_str()) != server_host.as_deref().filter(|s| *s == registry)
        })
        .collect()
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_table() {
        let dir = tempfile::tempdir().unwrap();
        let write = |registry: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(registry)).unwrap();
            std::fs::write(dir.path().join(registry).join("hosts.toml"), text).unwrap();
        };
        write(
            "direct.io",
            "server = \"https://direct.io\"\n[host.\"https://direct.io\"]\n  capabilities = [\"pull\"]\n",
        );
        write(
            "mirrored.io:5000",
            "server = \"https://mirrored.io:5000\"\n[host.\"http://cache.local:5000/v2\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        write("_default", "[host.\"https://peer-cache.local\"]\n");
        assert!(mirrors(dir.path(), "direct.io").is_empty());
        assert_eq!(
            mirrors(dir.path(), "mirrored.io:5000"),
            ["cache.local:5000"]
        );
        assert_eq!(mirrors(dir.path(), "other.io"), ["peer-cache.local"]);
        write("broken.io", "not = [toml");
        assert!(mirrors(dir.path(), "broken.io").is_empty());
        assert!(mirrors(Path::new("/nonexistent"), "x.io").is_empty());
        let shared = HostsDir::shared(Some(dir.path().into())).unwrap();
        assert_eq!(shared.mirrors("other.io"), ["peer-cache.local"]);
        assert!(HostsDir::shared(None).is_none());
    }
}
