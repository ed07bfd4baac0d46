//! One image through both canary paths: `pullgate check IMAGE --runtime --json`, run in a scratch
//! directory, and its registry-direct and runtime outcomes.

use crate::agent::pullgate_binary;
use crate::process::output_within;
use serde_json::Value;
use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

/// What one `pullgate check --runtime` printed: an outcome per path, and its output.
pub struct BothPaths {
    pub registry: Value,
    pub runtime: Value,
    pub stdout: String,
    pub stderr: String,
}

impl BothPaths {
    /// `pullgate check IMAGE --json --runtime` with `args` (the depth, the PullSet, the CRI
    /// endpoint, the manifests…); panics, naming the output, when a path has no outcome.
    pub fn check<S: AsRef<OsStr>>(image: &str, args: impl IntoIterator<Item = S>) -> Self {
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("scratch dir: {e}"));
        let binary = pullgate_binary().unwrap_or_else(|e| panic!("{e:#}"));
        let mut command = Command::new(binary);
        command
            .current_dir(scratch.path())
            .env("TMPDIR", scratch.path())
            .args(["check", image, "--json", "--runtime"])
            .args(args);
        let out =
            output_within(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let outcomes: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let path = |p: &str| {
            outcomes
                .iter()
                .find(|o| o["path"] == p)
                .cloned()
                .unwrap_or_else(|| panic!("no {p} outcome\nstdout:\n{stdout}\nstderr:\n{stderr}"))
        };
        Self {
            registry: path("registry"),
            runtime: path("runtime"),
            stdout: stdout.clone(),
            stderr,
        }
    }

    /// The registry-direct and the runtime verdicts.
    pub fn verdicts(&self) -> (String, String) {
        (
            self.registry["verdict"].as_str().unwrap_or("").to_string(),
            self.runtime["verdict"].as_str().unwrap_or("").to_string(),
        )
    }
}
