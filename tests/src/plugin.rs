//! A fake kubelet credential-provider plugin: a shell script that logs each request to `$LOG`
//! (one JSON line per run: count them to count runs) and behaves as `$MODE` says, and its
//! `CredentialProviderConfig`.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::adapters::credential_plugin::{CredentialProviders, load_config};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The plugin API version the fixture's provider is configured with.
pub const API: &str = "credentialprovider.kubelet.k8s.io/v1";

/// The provider's name, hence its binary's.
pub const PROVIDER: &str = "fake-provider";

/// The script. Modes:
/// - `ok`: answers `$KEY` → `$PLUGIN_USER`/`$PLUGIN_PASSWORD`, `$CACHE_KEY_TYPE`, `$CACHE_DURATION`;
/// - `slow`: sleeps 30 s; `hang`: writes its pid to `$PIDFILE` and sleeps for ever;
/// - `badjson`, `wrongapi`, `badtype`, `fail` (exit 3, stderr): wrong answers;
/// - `flood`, `errflood`: 50 MiB to stdout or stderr, then hangs (pid in `$PIDFILE`);
/// - `orphan`: a grandchild holding its stdout (pid in `$PIDFILE`), and hangs;
/// - `orphan-exit`: a grandchild whose parent (a subshell) exits at once, so it is an orphan while
///   the plugin hangs (the grandchild's pid in `$PIDFILE`);
/// - `leftover`: a grandchild that outlives the plugin by 5 s (pid in `$PIDFILE`), then answers
///   as `ok`.
const SCRIPT: &str = r#"#!/bin/sh
request=$(cat)
echo "$request" >> "$LOG"
answer() {
  printf '{"apiVersion":"%s","kind":"CredentialProviderResponse","cacheKeyType":"%s","cacheDuration":"%s","auth":{"%s":{"username":"%s","password":"%s"}}}' "$API" "$CACHE_KEY_TYPE" "$CACHE_DURATION" "$KEY" "$PLUGIN_USER" "$PLUGIN_PASSWORD"
}
case "$MODE" in
  ok)       answer ;;
  slow)     sleep 30 ;;
  hang)     echo $$ > "$PIDFILE"; sleep 100000 ;;
  badjson)  echo 'this is not json' ;;
  wrongapi) printf '{"apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","kind":"CredentialProviderResponse","cacheKeyType":"Image","auth":{}}' ;;
  badtype)  printf '{"apiVersion":"%s","kind":"CredentialProviderResponse","cacheKeyType":"Forever","auth":{}}' "$API" ;;
  fail)     echo "token service unavailable" >&2; exit 3 ;;
  flood)    echo $$ > "$PIDFILE"; echo "stderr-marker-7q" >&2; head -c 52428800 /dev/zero; sleep 1000 ;;
  errflood) echo $$ > "$PIDFILE"; head -c 52428800 /dev/zero >&2; sleep 1000 ;;
  orphan)   sleep 1000 & echo $! > "$PIDFILE"; sleep 1000 ;;
  orphan-exit) ( sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE" ); sleep 100000 ;;
  leftover) ( sleep 5 </dev/null >/dev/null 2>&1 & echo $! > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE" ); answer ;;
esac
"#;

/// Installs the script as `bin_dir/name`.
pub fn install_plugin(bin_dir: &Path, name: &str) {
    let path = bin_dir.join(name);
    std::fs::write(&path, SCRIPT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory with `bin/fake-provider`, its request log, its pid file and its config.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        install_plugin(&dir.path().join("bin"), PROVIDER);
        Self { dir }
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    pub fn pid_file(&self) -> String {
        self.dir.path().join("plugin.pid").display().to_string()
    }

    /// The pid the plugin wrote to $PIDFILE, once it has.
    pub fn pid_if_written(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid the plugin wrote to $PIDFILE.
    pub fn written_pid(&self) -> u32 {
        let text = std::fs::read_to_string(self.pid_file())
            .unwrap_or_else(|e| panic!("the plugin wrote no pid file: {e}"));
        text.trim().parse().unwrap()
    }

    pub fn log(&self) -> String {
        self.dir.path().join("requests.log").display().to_string()
    }

    /// The requests the plugin received, one per run.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Writes a CredentialProviderConfig with the given env and returns its path.
    pub fn config(&self, match_images: &str, default_cache: &str, env: &[(&str, &str)]) -> PathBuf {
        let mut env_yaml = format!(
            "      - {{name: LOG, value: '{}'}}\n      - {{name: API, value: '{API}'}}\n",
            self.log()
        );
        for (k, v) in env {
            env_yaml.push_str(&format!("      - {{name: {k}, value: '{v}'}}\n"));
        }
        let yaml = format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: {PROVIDER}\n    matchImages: [{match_images}]\n    defaultCacheDuration: {default_cache}\n    apiVersion: {API}\n    args: [get-credentials]\n    env:\n{env_yaml}"
        );
        let path = self.dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// The providers of `config`, in process (no agent).
    pub fn providers(&self, config: &Path, timeout: Duration) -> CredentialProviders {
        CredentialProviders::new(load_config(config).unwrap(), &self.bin_dir(), timeout).unwrap()
    }

    /// The agent flags that use `config` and this bin dir.
    pub fn agent_args(&self, config: &Path) -> Vec<String> {
        vec![
            "--image-credential-provider-config".into(),
            config.display().to_string(),
            "--image-credential-provider-bin-dir".into(),
            self.bin_dir().display().to_string(),
        ]
    }
}

/// The env of a plugin that answers `key` → `user`/`password`.
pub fn ok_env<'a>(
    cache_key_type: &'a str,
    cache_duration: &'a str,
    key: &'a str,
    user: &'a str,
    password: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MODE", "ok"),
        ("CACHE_KEY_TYPE", cache_key_type),
        ("CACHE_DURATION", cache_duration),
        ("KEY", key),
        ("PLUGIN_USER", user),
        ("PLUGIN_PASSWORD", password),
    ]
}
