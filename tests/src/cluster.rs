//! Cluster mode end to end: a [`TestEnv`] (real containerd and registry), the test API server
//! holding the PullSet CRD (`manifests/base/crd.yaml`) and this node's Node object, and a
//! kubeconfig for the agent.

use crate::apiserver::{ApiServer, KubeconfigFile, objects};
use crate::{Agent, RunningAgent, TestEnv, USER};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The node the agent runs as (`--node-name`, see [`Agent`]).
pub const NODE: &str = "test-node";

/// A test environment and an API server; every process stopped on drop.
pub struct Cluster {
    pub env: TestEnv,
    pub api: ApiServer,
    kubeconfig: KubeconfigFile,
}

impl Cluster {
    /// Starts both; the API server holds [`NODE`] with these taints (`key`, `effect`). A missing
    /// prerequisite panics with the command that installs it.
    pub fn start(taints: &[(&str, &str)]) -> Self {
        let env = TestEnv::started();
        let api = ApiServer::start().unwrap_or_else(|e| panic!("test API server: {e:#}"));
        // As on a real cluster: PullSets are pruned and defaulted by the shipped CRD's schema.
        api.install_pullset_crd();
        api.apply(objects::node(NODE, taints));
        let kubeconfig = api
            .kubeconfig_file()
            .unwrap_or_else(|e| panic!("kubeconfig: {e:#}"));
        Self {
            env,
            api,
            kubeconfig,
        }
    }

    /// The kubeconfig file the agent is given.
    pub fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.path()
    }

    /// The pull Secret `team/regcred` for the test registry, with this password.
    pub fn secret(&self, password: &str) -> Value {
        objects::pull_secret("team", "regcred", &self.env.registry.host(), USER, password)
    }

    /// `pullgate run` in cluster mode, the test registry over plain HTTP, with `args`. The
    /// namespace of the tests' PullSets, `team`, may gate unless `args` name `--gate-namespaces`.
    pub fn agent(&self, args: &[&str]) -> RunningAgent {
        let gate: &[&str] = if args.contains(&"--gate-namespaces") {
            &[]
        } else {
            &["--gate-namespaces", "team"]
        };
        Agent::cluster(&self.kubeconfig(), &self.env.containerd.endpoint())
            .args(&["--insecure-registry", &self.env.registry.host()])
            .args(gate)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn pullgate: {e:#}"))
    }

    /// The Node's condition of this type: (status, reason).
    pub fn condition(&self, type_: &str) -> Option<(String, String)> {
        let c = self.api.node_condition(NODE, type_)?;
        Some((c["status"].as_str()?.into(), c["reason"].as_str()?.into()))
    }

    /// Waits until the Node's condition `type_` has `status`; panics with the Node and the
    /// agent's stderr otherwise.
    pub fn wait_condition(
        &self,
        type_: &str,
        status: &str,
        timeout: Duration,
        agent: &RunningAgent,
    ) {
        self.api
            .wait(&format!("{type_}={status}"), timeout, |_| {
                self.condition(type_).filter(|(s, _)| s == status)
            })
            .unwrap_or_else(|e| {
                panic!(
                    "{e}\nnode: {:?}\nstderr:\n{}",
                    self.api.get("v1", "nodes", "", NODE),
                    agent.stderr()
                )
            });
    }

    /// Waits for the first Event with this reason; panics with the agent's stderr otherwise.
    pub fn wait_event(&self, reason: &str, timeout: Duration, agent: &RunningAgent) -> Value {
        self.api
            .wait(&format!("a {reason} Event"), timeout, |api| {
                api.events(reason).into_iter().next()
            })
            .unwrap_or_else(|e| panic!("{e}\nstderr:\n{}", agent.stderr()))
    }

    /// None of `secrets` in the outputs, in what the API server holds, or in containerd's or the
    /// registry's log.
    pub fn assert_no_leak(&self, outputs: &[&str], secrets: &[&str]) {
        let dump = self.api.dump();
        let mut all = outputs.to_vec();
        all.push(&dump);
        self.env.assert_no_leak(&all, secrets);
    }
}
