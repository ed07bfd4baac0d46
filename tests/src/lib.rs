//! pullgate's real test environment: a real containerd and a real registry started per test on free
//! ports and temp dirs, OCI images built in code, and a runner for the `pullgate` binary.
//!
//! Used by the integration tests in `tests/tests/`, and by `cargo xtask demo` / `bench` / `soak`
//! through the `pullgate-env`, `pullgate-soak` and `pullgate-sim` binaries. Every process is owned
//! by a guard that stops it on drop. This is the one support module: a helper two test files (or a
//! test and a benchmark) need lives here, not in either of them.
//!
//! - [`agent`]: the `pullgate` binary, run once or as a daemon, its JSON lines, waits on them;
//! - [`agent_image`]: the agent's own OCI image (`cargo xtask image`), built and read back;
//! - [`containerd`], [`registry`], [`images`], [`manifests`]: the real runtime and registry, images
//!   built in code, the YAML the agent reads;
//! - [`apiserver`], [`cluster`]: the in-repo test API server, and cluster mode set up around it;
//! - [`kubelet_sim`]: a kubelet that keeps patching the Node's status (heartbeats, images);
//! - [`proxy`], [`cri_counter`]: a counting (and misbehaving) registry proxy, a counting CRI proxy;
//! - [`hostile_server`]: a scripted registry or token realm (HTTP or HTTPS) that never answers,
//!   answers too much, or points elsewhere;
//! - [`procfs`], [`http`]: a process seen from `/proc`, raw HTTP on loopback;
//! - [`prometheus`]: `promtool` and a real `prometheus` server, for `manifests/monitoring`;
//! - [`process`], [`server_thread`]: process guards, prerequisite checks, waits with deadlines,
//!   servers on a runtime of their own;
//! - [`tls`]: certificates made in code, a TLS endpoint nobody trusts;
//! - [`token_server`]: a registry token server (Basic password in, signed JWT out, scopes, expiry).

pub mod agent;
pub mod agent_image;
pub mod apiserver;
pub mod both_paths;
pub mod cluster;
pub mod containerd;
pub mod cri_counter;
pub mod helm;
pub mod hostile_server;
pub mod http;
pub mod images;
pub mod kubelet_sim;
pub mod kustomize;
pub mod manifests;
pub mod plugin;
pub mod process;
pub mod procfs;
pub mod prometheus;
pub mod proxy;
pub mod registry;
pub mod server_thread;
pub mod tls;
pub mod token_server;

pub use agent::{Agent, AgentRun, RunningAgent};
pub use containerd::Containerd;
pub use images::{ImageSpec, PushedImage};
pub use registry::Registry;

use anyhow::Result;

/// The registry user the tests push and pull as.
pub const USER: &str = "pullgate";
/// Its password. Distinctive so that a grep of all output finds any leak.
pub const PASSWORD: &str = "pg-Secret-Passw0rd-7f3a9c";
/// A wrong password, also never to be printed.
pub const WRONG_PASSWORD: &str = "pg-Wrong-Passw0rd-1b2c3d";

/// The workspace root (the test crate's parent directory).
pub fn workspace_root() -> std::path::PathBuf {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_path_buf()
}

/// A registry and a containerd that trusts it over plain HTTP.
pub struct TestEnv {
    pub registry: Registry,
    pub containerd: Containerd,
    /// Manifests for the agent.
    pub manifests: tempfile::TempDir,
}

impl TestEnv {
    /// Starts both, with the registry accepting [`USER`]/[`PASSWORD`].
    pub fn start() -> Result<Self> {
        let registry = Registry::start(&[(USER, PASSWORD)])?;
        let containerd = Containerd::start(&[registry.host()])?;
        let manifests = tempfile::Builder::new()
            .prefix("pullgate-manifests-")
            .tempdir()?;
        Ok(Self {
            registry,
            containerd,
            manifests,
        })
    }

    /// [`TestEnv::start`] for a test: a missing prerequisite panics with the command that
    /// installs it.
    pub fn started() -> Self {
        Self::start().unwrap_or_else(|e| panic!("test environment: {e:#}"))
    }

    /// Builds and pushes an image with the right credentials.
    pub fn push(&self, spec: &ImageSpec) -> Result<PushedImage> {
        block_on(images::push(&self.registry.host(), USER, PASSWORD, spec))
    }

    /// Writes a manifest file into the agent's directory.
    pub fn write_manifest(&self, name: &str, text: &str) -> Result<()> {
        let path = self.manifests.path().join(name);
        let tmp = self.manifests.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Writes `secret.yaml`: pull secret `NAMESPACE/regcred` for the test registry, right password.
    pub fn write_regcred(&self, namespace: &str) -> Result<()> {
        let secret =
            manifests::pull_secret(namespace, "regcred", &self.registry.host(), USER, PASSWORD);
        self.write_manifest("secret.yaml", &secret)
    }

    /// Writes `set.yaml`: one PullSet of `images` with these pull secrets.
    pub fn write_pullset(
        &self,
        namespace: &str,
        name: &str,
        images: &[&str],
        secrets: &[&str],
    ) -> Result<()> {
        let set = manifests::pullset(namespace, name, images, secrets);
        self.write_manifest("set.yaml", &set)
    }

    /// The start of a canary test: `team/app:v1` pushed, pull Secret `team/regcred`, and in
    /// `set.yaml` PullSet `team/critical` of that image with this `canary`
    /// ([`manifests::canaried_pullset`]).
    pub fn seed_canaried(&self, canary: &str) -> Result<PushedImage> {
        let image = self.push(&ImageSpec::new("team/app", "v1"))?;
        self.write_regcred("team")?;
        let set =
            manifests::canaried_pullset("team", "critical", &image.by_tag, &["regcred"], canary);
        self.write_manifest("set.yaml", &set)?;
        Ok(image)
    }

    /// An agent runner pointed at this environment.
    pub fn agent(&self) -> Agent {
        Agent::new(self.manifests.path(), &self.containerd.endpoint())
    }

    /// `pullgate run` as a daemon against this environment, with `args` (panics when it cannot
    /// be started).
    pub fn daemon(&self, args: &[&str]) -> RunningAgent {
        self.agent()
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn pullgate: {e:#}"))
    }

    /// Fails when any of `secrets` occurs in the given outputs or in containerd's or the
    /// registry's log, as written or as the `Authorization: Basic` value (and Docker config `auth`
    /// field) `base64(USER:secret)` carries it.
    pub fn assert_no_leak(&self, outputs: &[&str], secrets: &[&str]) {
        let (containerd, registry) = (self.containerd.log(), self.registry.log());
        let mut sources: Vec<(&str, &str)> = outputs.iter().map(|o| ("agent output", *o)).collect();
        sources.extend([
            ("containerd log", containerd.as_str()),
            ("registry log", registry.as_str()),
        ]);
        let forms: Vec<(&str, String)> = secrets
            .iter()
            .flat_map(|s| password_forms(USER, s))
            .collect();
        assert_nowhere(&sources, &forms);
    }
}

/// The forms a password takes in a log or an output: as written, and as the `Authorization:
/// Basic` value (and Docker config `auth` field) `base64(user:password)` carries it.
pub fn password_forms(user: &str, password: &str) -> [(&'static str, String); 2] {
    [
        ("password", password.to_string()),
        ("basic auth", basic_auth(user, password)),
    ]
}

/// Fails, naming the form and the place, when any of `secrets` (`(form, text)`) occurs in any of
/// `sources` (`(place, text)`).
pub fn assert_nowhere(sources: &[(&str, &str)], secrets: &[(&str, String)]) {
    for (place, text) in sources {
        for (form, secret) in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a {form} leaked into the {place}"
            );
        }
    }
}

/// `base64(user:password)`: an `Authorization: Basic` value, a Docker config `auth` field.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// Runs a future to completion on a private runtime in its own thread (callable from anywhere).
pub fn block_on<F: std::future::Future + Send>(future: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime can always be built")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
