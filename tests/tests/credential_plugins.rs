//! Kubelet credential-provider plugins through the real exec path: a fake plugin script that
//! answers as the configured environment tells it, and an end-to-end pull with its credentials.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::adapters::credential_plugin::{CredentialProviders, PluginError, load_config};
use pullgate_testenv::agent::MEMORY_CAP_KIB;
use pullgate_testenv::manifests::pullset;
use pullgate_testenv::plugin::{API, Fixture};
use pullgate_testenv::process::wait_until;
use pullgate_testenv::{ImageSpec, PASSWORD, TestEnv, USER, block_on, procfs};
use std::time::Duration;

fn ok_env<'a>(cache_key_type: &'a str, cache_duration: &'a str) -> Vec<(&'a str, &'a str)> {
    pullgate_testenv::plugin::ok_env(
        cache_key_type,
        cache_duration,
        "*.example.com",
        "AWS",
        "plugin-Secret-77aa",
    )
}

#[test]
fn success_sends_the_request_and_caches_per_registry() {
    let f = Fixture::new();
    let providers = f.providers(
        &f.config("'*.example.com'", "0s", &ok_env("Registry", "1h")),
        Duration::from_secs(10),
    );
    let (creds, errors) = block_on(providers.provide("registry.example.com/team/app"));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(creds.len(), 1);
    assert_eq!(
        (
            creds[0].provider.as_str(),
            creds[0].key.as_str(),
            creds[0].username.as_str()
        ),
        ("fake-provider", "*.example.com", "AWS")
    );
    let requests = f.requests();
    assert_eq!(
        requests,
        [
            serde_json::json!({"kind": "CredentialProviderRequest", "apiVersion": API, "image": "registry.example.com/team/app"})
        ]
    );
    // Same registry, another repository: a cache hit (cacheKeyType Registry).
    let (creds, _) = block_on(providers.provide("registry.example.com/other/app"));
    assert_eq!(creds.len(), 1);
    assert_eq!(f.requests().len(), 1, "cache hit expected");
    // Another registry the plugin matches: a new exec.
    block_on(providers.provide("other.example.com/a"));
    assert_eq!(f.requests().len(), 2);
    // An image no matchImages entry covers: the plugin is not run at all.
    let (creds, errors) = block_on(providers.provide("quay.io/a/b"));
    assert!(creds.is_empty() && errors.is_empty());
    assert_eq!(f.requests().len(), 2);
    assert!(!format!("{creds:?}").contains("plugin-Secret-77aa"));
}

#[test]
fn cache_key_image_and_zero_duration() {
    let f = Fixture::new();
    // cacheKeyType Image: each repository is its own entry.
    let providers = f.providers(
        &f.config("'*.example.com'", "0s", &ok_env("Image", "1h")),
        Duration::from_secs(10),
    );
    for image in [
        "registry.example.com/a",
        "registry.example.com/a",
        "registry.example.com/b",
    ] {
        block_on(providers.provide(image));
    }
    assert_eq!(f.requests().len(), 2);

    // cacheDuration 0 in the response: never cached.
    let f = Fixture::new();
    let providers = f.providers(
        &f.config("'*.example.com'", "12h", &ok_env("Global", "0s")),
        Duration::from_secs(10),
    );
    for _ in 0..3 {
        block_on(providers.provide("registry.example.com/a"));
    }
    assert_eq!(f.requests().len(), 3);
}

#[test]
fn failures_are_clear_and_yield_no_credentials() {
    let cases: [(&str, fn(&PluginError) -> bool, &str); 5] = [
        (
            "slow",
            |e| matches!(e, PluginError::Timeout { .. }),
            "timed out after 500ms",
        ),
        (
            "badjson",
            |e| matches!(e, PluginError::BadResponse { .. }),
            "error decoding the response",
        ),
        (
            "wrongapi",
            |e| matches!(e, PluginError::WrongApiVersion { .. }),
            "does not match the configured",
        ),
        (
            "badtype",
            |e| matches!(e, PluginError::BadResponse { .. }),
            "error decoding the response",
        ),
        (
            "fail",
            |e| matches!(e, PluginError::Exit { .. }),
            "exited with exit status: 3",
        ),
    ];
    for (mode, is_expected, text) in cases {
        let f = Fixture::new();
        let providers = f.providers(
            &f.config("'*.example.com'", "1h", &[("MODE", mode)]),
            Duration::from_millis(500),
        );
        let (creds, errors) = block_on(providers.provide("registry.example.com/a"));
        assert!(creds.is_empty(), "{mode}");
        assert_eq!(errors.len(), 1, "{mode}");
        assert!(is_expected(&errors[0]), "{mode}: {:?}", errors[0]);
        let message = errors[0].to_string();
        assert!(
            message.contains(text) && message.contains("fake-provider"),
            "{mode}: {message}"
        );
        // The plugin's stderr goes to the agent's log, never into the error (which reaches the
        // PullSet's outcome).
        assert!(!message.contains("token service"), "{mode}: {message}");
    }
}

/// A plugin that writes 50 MiB to stdout (or stderr) and then hangs is killed as soon as it
/// passes 1 MiB, long before its timeout, and the error names the plugin and the stream only.
#[test]
fn a_plugin_writing_too_much_is_killed_with_a_clear_error() {
    for (mode, stream) in [("flood", "stdout"), ("errflood", "stderr")] {
        let f = Fixture::new();
        let pid_file = f.pid_file();
        let providers = f.providers(
            &f.config(
                "'*.example.com'",
                "1h",
                &[("MODE", mode), ("PIDFILE", &pid_file)],
            ),
            // Far longer than the test waits: only the size bound can end the plugin.
            Duration::from_secs(600),
        );
        let (creds, errors) = block_on(providers.provide("registry.example.com/a"));
        assert!(creds.is_empty(), "{mode}");
        assert_eq!(errors.len(), 1, "{mode}");
        assert!(
            matches!(errors[0], PluginError::TooMuchOutput { .. }),
            "{mode}: {:?}",
            errors[0]
        );
        let message = errors[0].to_string();
        assert!(
            message.contains(&format!(
                "plugin fake-provider wrote more than 1 MiB to {stream}"
            )),
            "{mode}: {message}"
        );
        assert!(
            message.len() < 300 && !message.contains('\0'),
            "{mode}: {message}"
        );
        let plugin = f.written_pid();
        wait_until(
            "the flooding plugin to be gone",
            Duration::from_secs(30),
            || !procfs::alive(plugin),
        )
        .unwrap();
    }
}

/// A plugin that starts a grandchild (holding its stdout) and outlives its timeout: the whole
/// process group is killed, so the grandchild does not outlive the plugin.
#[test]
fn a_timed_out_plugin_takes_its_grandchildren_with_it() {
    let f = Fixture::new();
    let pid_file = f.pid_file();
    let providers = f.providers(
        &f.config(
            "'*.example.com'",
            "1h",
            &[("MODE", "orphan"), ("PIDFILE", &pid_file)],
        ),
        Duration::from_secs(5),
    );
    let (creds, errors) = block_on(providers.provide("registry.example.com/a"));
    assert!(creds.is_empty());
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(errors[0], PluginError::Timeout { .. }),
        "{:?}",
        errors[0]
    );
    let grandchild = f.written_pid();
    wait_until(
        "the plugin's grandchild to be gone",
        Duration::from_secs(30),
        || !procfs::alive(grandchild),
    )
    .unwrap();
}

#[test]
fn a_missing_binary_is_refused_at_start() {
    let f = Fixture::new();
    let config = f.config("'*.example.com'", "1h", &[]);
    std::fs::remove_file(f.dir.path().join("bin/fake-provider")).unwrap();
    let err = CredentialProviders::new(
        load_config(&config).unwrap(),
        &f.dir.path().join("bin"),
        Duration::from_secs(1),
    )
    .err()
    .expect("missing binary must be an error");
    assert!(
        err.to_string().contains("fake-provider does not exist"),
        "{err}"
    );
}

#[test]
fn plugin_credentials_pull_from_a_real_registry() {
    let env = TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"));
    let image = env.push(&ImageSpec::new("plugin/app", "v1")).unwrap();
    let f = Fixture::new();
    let host = env.registry.host();
    let config = f.config(
        &format!("'{host}'"),
        "1h",
        &[
            ("MODE", "ok"),
            ("CACHE_KEY_TYPE", "Registry"),
            ("CACHE_DURATION", "1h"),
            ("KEY", &host),
            ("PLUGIN_USER", USER),
            ("PLUGIN_PASSWORD", PASSWORD),
        ],
    );
    // No pull secret at all: the node's plugin supplies the credential, as for an ECR node.
    env.write_manifest("set.yaml", &pullset("team", "s", &[&image.by_tag], &[]))
        .unwrap();
    let run = env
        .agent()
        .args(&["--image-credential-provider-config"])
        .args(&[config.to_str().unwrap()])
        .args(&[
            "--image-credential-provider-bin-dir",
            f.dir.path().join("bin").to_str().unwrap(),
        ])
        .run_once(Duration::from_secs(120))
        .unwrap();
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let o = run.prepull(&image.by_tag);
    assert_eq!(o["credential"], format!("plugin fake-provider key {host}"));
    env.assert_no_leak(&[&run.stdout, &run.stderr], &[PASSWORD]);
}

/// Through the real agent: a plugin that floods stdout fails the pull's plugin step with the size
/// error (not the timeout), the agent's memory stays bounded, and what the plugin wrote to stderr
/// is in the agent's log only, never in the outcome on stdout.
#[test]
fn a_flooding_plugin_leaves_the_agent_bounded_and_its_stderr_in_the_log() {
    let env = TestEnv::start().unwrap_or_else(|e| panic!("test environment: {e:#}"));
    let image = env.push(&ImageSpec::new("plugin/flood", "v1")).unwrap();
    let f = Fixture::new();
    let host = env.registry.host();
    let pid_file = f.pid_file();
    let config = f.config(
        &format!("'{host}'"),
        "1h",
        &[("MODE", "flood"), ("PIDFILE", &pid_file)],
    );
    env.write_manifest("set.yaml", &pullset("team", "s", &[&image.by_tag], &[]))
        .unwrap();
    let bin_dir = f.dir.path().join("bin");
    let agent = env.daemon(&[
        "--recheck-interval",
        "1h",
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        bin_dir.to_str().unwrap(),
        // Longer than the wait below: only the size bound can end the plugin in time.
        "--credential-provider-timeout",
        "10m",
    ]);
    agent
        .wait_for("the pre-pull", Duration::from_secs(120), 1, |l| {
            l["kind"] == "prepull"
        })
        .unwrap();
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "a plugin writing 50 MiB to stdout");
    let plugin = f.written_pid();
    wait_until(
        "the flooding plugin to be gone",
        Duration::from_secs(30),
        || !procfs::alive(plugin),
    )
    .unwrap();
    let (stdout, stderr) = agent.finish();
    assert!(
        stdout.contains("plugin fake-provider wrote more than 1 MiB to stdout"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The plugin is the node's configuration: its stderr is told on the Node (an Event), never
    // in an outcome or an Event of the tenant's PullSet.
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let quoting: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("stderr-marker-7q"))
        .collect();
    assert!(
        !quoting.is_empty(),
        "no Node Event tells the plugin's stderr:\n{stdout}"
    );
    for line in quoting {
        assert_eq!(line["kind"], "event", "the plugin's stderr reached {line}");
        assert_eq!(line["reason"], "CredentialPluginFailed", "{line}");
        assert!(
            line["regarding"]
                .as_str()
                .is_some_and(|r| r.starts_with("Node ")),
            "the plugin's stderr reached an Event not on the Node: {line}"
        );
    }
    // Scrubbed of the provider's env values (a secret may hide there): the marker holds none.
    assert!(
        stderr.contains("stderr-marker-7q"),
        "the plugin's stderr is not in the agent's log:\n{stderr}"
    );
}
