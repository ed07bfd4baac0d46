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

/// The hosts other than `registry` itself that the runtime tries for `registry`, from the
/// directory containerd picks (the same in 1.6, 1.7 and 2.x, `remotes/docker/config`'s
/// `hostPaths`): the first of `DIR/<host>_<port>_`, `DIR/<host>:<port>` and `DIR/_default` that
/// exists, whether or not it holds a `hosts.toml` (a directory of certificates only routes
/// nothing). Unreadable or malformed files count as none, as containerd falls back to plain
/// certificates then.
pub fn mirrors(config_dir: &Path, registry: &str) -> Vec<String> {
    let Some(dir) = host_paths(registry)
        .into_iter()
        .map(|name| config_dir.join(name))
        .find(|dir| dir.exists())
    else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(dir.join("hosts.toml")) else {
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

/// containerd's candidate directory names for `host`, in its order: `:port` spelled `_port_`
/// first, then the host as given, then `_default`.
fn host_paths(host: &str) -> Vec<String> {
    let mut paths = Vec::with_capacity(3);
    if let Some(idx) = host.rfind(':').filter(|&i| i > 0) {
        paths.push(format!("{}_{}_", &host[..idx], &host[idx + 1..]));
    }
    paths.push(host.to_string());
    paths.push("_default".to_string());
    paths
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
        // containerd's `_port_` spelling comes first; a directory without hosts.toml (only
        // certificates) is still the one picked, and routes nothing.
        write(
            "spelled.io_5000_",
            "[host.\"https://spelled-mirror.local\"]\n",
        );
        write("spelled.io:5000", "[host.\"https://colon-mirror.local\"]\n");
        assert_eq!(
            mirrors(dir.path(), "spelled.io:5000"),
            ["spelled-mirror.local"]
        );
        std::fs::create_dir_all(dir.path().join("certs-only.io")).unwrap();
        std::fs::write(dir.path().join("certs-only.io/ca.crt"), "").unwrap();
        assert!(mirrors(dir.path(), "certs-only.io").is_empty());
        assert_eq!(
            host_paths("[::1]:5000"),
            ["[::1]_5000_", "[::1]:5000", "_default"]
        );
        let shared = HostsDir::shared(Some(dir.path().into())).unwrap();
        assert_eq!(shared.mirrors("other.io"), ["peer-cache.local"]);
        assert!(HostsDir::shared(None).is_none());
    }
}
