//! Prometheus's own tools for the tests of `manifests/monitoring`: `promtool` (check and unit-test
//! rule files) and a real `prometheus` server on loopback with a data directory of its own, owned
//! by a guard; its HTTP API read as JSON; and the plain rule groups of a `PrometheusRule`.
//!
//! Both come from the Debian package `prometheus` (`cargo xtask deps` installs it).

use crate::process::{ChildGuard, free_port, output_within, require_binary, wait_until};
use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Debian package that ships both binaries.
const PACKAGE: &str = "prometheus";

/// `promtool`, or a loud error naming `cargo xtask deps`.
pub fn promtool() -> Result<PathBuf> {
    require_binary("promtool", PACKAGE)
}

/// `promtool ARGS` in `dir`: its combined output, or an error with it when it fails.
pub fn run_promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let mut command = Command::new(promtool()?);
    command.args(args).current_dir(dir);
    let out = output_within(command, Duration::from_secs(120))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {} failed:\n{text}", args.join(" "));
    }
    Ok(text)
}

/// The `spec` of the `PrometheusRule` in `yaml`: plain rule groups, as `promtool` and
/// `prometheus --config.file`'s `rule_files` read them.
pub fn rule_groups(yaml: &str) -> Result<serde_yaml::Value> {
    let rule: serde_yaml::Value = serde_yaml::from_str(yaml).context("PrometheusRule: YAML")?;
    let kind = (rule["apiVersion"].as_str(), rule["kind"].as_str());
    if kind != (Some("monitoring.coreos.com/v1"), Some("PrometheusRule")) {
        bail!("not a monitoring.coreos.com/v1 PrometheusRule: {kind:?}");
    }
    let spec = rule.get("spec").context("PrometheusRule: no spec")?.clone();
    if spec["groups"].as_sequence().is_none_or(Vec::is_empty) {
        bail!("PrometheusRule: spec.groups is empty");
    }
    Ok(spec)
}

/// A `prometheus` server on `127.0.0.1`, stopped on drop.
pub struct Prometheus {
    child: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Writes `files` (name, text: the configuration refers to them by name) and `config` as
    /// `prometheus.yml` into a directory of its own, starts the server there and waits until it
    /// is ready.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Result<Self> {
        let binary = require_binary("prometheus", PACKAGE)?;
        let dir = tempfile::Builder::new()
            .prefix("pullgate-prometheus-")
            .tempdir()?;
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)?;
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path());
        let child = ChildGuard::spawn("prometheus", command, &dir.path().join("prometheus.log"))?;
        let mut prometheus = Self { child, port, dir };
        let ready = wait_until("prometheus ready", Duration::from_secs(60), || {
            prometheus
                .get("/-/ready")
                .is_ok_and(|(status, _)| status == 200)
                || !prometheus.child.is_running()
        });
        if ready.is_err() || !prometheus.child.is_running() {
            bail!(
                "prometheus did not become ready on port {port}:\n{}",
                prometheus.log()
            );
        }
        Ok(prometheus)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` (HTTP/1.0: the body ends with the connection, never chunked): status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("GET {path}: no status line in {response:?}"))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// `GET /api/v1/…`: its `data`, or an error naming what the API said.
    pub fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path)?;
        let value: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: {status}, not JSON: {body}"))?;
        if status != 200 || value["status"] != "success" {
            bail!("GET {path}: {status} {body}");
        }
        Ok(value["data"].clone())
    }

    /// The active alerts (`/api/v1/alerts`): each with `labels`, `state` (`pending`, `firing`).
    pub fn alerts(&self) -> Result<Vec<Value>> {
        Ok(self.api("/api/v1/alerts")?["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Every alerting and recording rule (`/api/v1/rules`, groups flattened): `name`, `state`,
    /// `health`, `lastEvaluation`.
    pub fn rules(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/rules")?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// An instant query: its result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encoded(promql)))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The scrape targets (`/api/v1/targets`, active ones): `health`, `lastError`, `labels`.
    pub fn targets(&self) -> Result<Vec<Value>> {
        Ok(self.api("/api/v1/targets")?["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// `text` percent-encoded for a query string (everything but the unreserved characters).
pub fn url_encoded(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
