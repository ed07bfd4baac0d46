//! Docker config files on the node, read for the resolver: `--node-docker-config` (re-read when
//! its modification time changes) and the files `pullgate auth resolve --docker-config` names.
//! The parsing is the kubelet's rule ([`parse_docker_config_file`]); this module only reads.

use crate::decide::credentials::dockerconfig::DockerConfigEntry;
use crate::decide::credentials::{NodeDockerConfig, ParsedFile, parse_docker_config_file};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A Docker config file on the node, re-read when it changes.
pub struct NodeDockerConfigFile {
    path: PathBuf,
    cache: Mutex<Option<(Option<SystemTime>, ParsedFile)>>,
}

impl NodeDockerConfigFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new(None),
        }
    }
}

impl NodeDockerConfig for NodeDockerConfigFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> ParsedFile {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, entries)) = cache.as_ref()
            && *seen == mtime
            && mtime.is_some()
        {
            return entries.clone();
        }
        let entries = Arc::new(read(&self.path));
        *cache = Some((mtime, entries.clone()));
        entries
    }
}

/// Reads and parses one Docker config file; a missing or broken file is an error naming it.
pub fn read(path: &Path) -> Result<Vec<DockerConfigEntry>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_docker_config_file(path, &bytes)
}

/// Each file with what reading it gave, in order.
pub fn read_all(paths: &[PathBuf]) -> Vec<(PathBuf, Result<Vec<DockerConfigEntry>, String>)> {
    paths.iter().map(|p| (p.clone(), read(p))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_file_is_re_read_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let file = NodeDockerConfigFile::new(path.clone());
        assert!(
            file.entries().as_ref().as_ref().is_err(),
            "missing: an error"
        );
        std::fs::write(
            &path,
            br#"{"auths":{"reg.io":{"username":"a","password":"p"}}}"#,
        )
        .unwrap();
        let keys = |f: &NodeDockerConfigFile| -> Vec<String> {
            f.entries()
                .as_ref()
                .as_ref()
                .map(|e| e.iter().map(|e| e.key.clone()).collect())
                .unwrap()
        };
        assert_eq!(keys(&file), ["reg.io"]);
        // A legacy bare map, with a later modification time.
        std::fs::write(&path, br#"{"other.io":{"username":"b","password":"q"}}"#).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(keys(&file), ["other.io"]);
        std::fs::remove_file(&path).unwrap();
        assert!(file.entries().as_ref().as_ref().is_err());
    }
}
