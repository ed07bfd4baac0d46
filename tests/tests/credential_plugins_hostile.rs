//! Credential plugins that hang, leave processes behind, or answer with absurd values, through the
//! real exec path and the real agent: a pass behind a hung plugin waits out one timeout, not one per
//! image; shutdown ends the wait and kills the plugin; orphans come to the agent and are reaped;
//! a centuries-long `cacheDuration` neither panics nor pins an answer; an alias bomb in the config
//! is refused, naming the file.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::adapters::credential_plugin::PluginError;
use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::manifests::pullset;
use pullgate_testenv::plugin::{Fixture, PROVIDER, ok_env};
use pullgate_testenv::process::{output_within, wait_until};
use pullgate_testenv::{TestEnv, block_on, procfs};
use std::time::Duration;

/// Sends SIGTERM to a process.
fn sigterm(pid: u32) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: kill(2) touches no memory; `pid` is the agent this test started and still holds.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM to the agent");
}

/// A plugin that never answers serves every image of a PullSet. Without a cached failure the pass
/// ran it once per image, each waiting out the timeout (12 × 4 s here; 10,000 × 1 minute in the
/// field); now the first timeout holds for the provider, and the other images get that failure at
/// once. Counted by the plugin's own request log, not timed.
#[test]
fn a_hung_plugin_costs_a_pass_one_timeout_not_one_per_image() {
    const IMAGES: usize = 12;
    let env = TestEnv::started();
    let f = Fixture::new();
    let host = env.registry.host();
    let pid_file = f.pid_file();
    let config = f.config(
        &format!("'{host}'"),
        "1h",
        &[("MODE", "hang"), ("PIDFILE", &pid_file)],
    );
    let images: Vec<String> = (0..IMAGES)
        .map(|i| format!("{host}/hung/app-{i}:v1"))
        .collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    env.write_manifest("set.yaml", &pullset("team", "s", &refs, &[]))
        .unwrap();
    let args = f.agent_args(&config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = env
        .agent()
        .args(&args)
        .args(&["--credential-provider-timeout", "4s"])
        // Without the fix the pass takes 12 timeouts (about 50 s); this only tells "finishes"
        // from "hangs".
        .run_once(Duration::from_secs(300))
        .unwrap();
    let requests = f.requests();
    assert_eq!(
        requests.len(),
        1,
        "the hung plugin ran once per image: {requests:?}\nstderr:\n{}",
        run.stderr
    );
    for image in &images {
        let o = run.prepull(image);
        let message = o["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("credential provider {PROVIDER}"))
                && message.contains("timed out after 4s"),
            "{image}: {message}"
        );
    }
    let plugin = f.written_pid();
    wait_until(
        "the hung plugin to be gone",
        Duration::from_secs(30),
        || !procfs::alive(plugin),
    )
    .unwrap();
}

/// SIGTERM while a plugin hangs (with a 10-minute timeout): the wait ends at once, the plugin is
/// killed, and the agent exits. Without the fix the agent sat out the plugin's timeout.
#[test]
fn shutdown_ends_the_wait_for_a_hung_plugin_and_kills_it() {
    let env = TestEnv::started();
    let f = Fixture::new();
    let host = env.registry.host();
    let pid_file = f.pid_file();
    let config = f.config(
        &format!("'{host}'"),
        "1h",
        &[("MODE", "hang"), ("PIDFILE", &pid_file)],
    );
    let image = format!("{host}/hung/app:v1");
    env.write_manifest("set.yaml", &pullset("team", "s", &[&image], &[]))
        .unwrap();
    let mut args = f.agent_args(&config);
    args.extend(["--credential-provider-timeout".into(), "10m".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = env.daemon(&args);
    wait_until("the plugin to start", Duration::from_secs(60), || {
        f.pid_if_written().is_some()
    })
    .unwrap();
    let plugin = f.written_pid();
    sigterm(agent.pid());
    let code = agent
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the agent waited for the hung plugin: {e:#}"));
    assert_eq!(code, Some(0), "stderr:\n{}", agent.stderr());
    wait_until(
        "the hung plugin to be gone",
        Duration::from_secs(30),
        || !procfs::alive(plugin),
    )
    .unwrap();
}

/// A plugin whose grandchild outlives its parent (a subshell), then the plugin times out. The
/// grandchild comes to the agent (a child subreaper; in its container it is PID 1 anyway), is
/// killed with the plugin's group, and is reaped: no zombie child of the agent remains. Without
/// the fix the orphan went to the machine's init, and as the container's PID 1 the agent would
/// have kept it a zombie for ever.
#[test]
fn an_orphan_of_a_timed_out_plugin_is_reaped_by_the_agent() {
    let env = TestEnv::started();
    let f = Fixture::new();
    let host = env.registry.host();
    let pid_file = f.pid_file();
    let config = f.config(
        &format!("'{host}'"),
        "1h",
        &[("MODE", "orphan-exit"), ("PIDFILE", &pid_file)],
    );
    let image = format!("{host}/orphan/app:v1");
    env.write_manifest("set.yaml", &pullset("team", "s", &[&image], &[]))
        .unwrap();
    let mut args = f.agent_args(&config);
    args.extend([
        "--credential-provider-timeout".into(),
        "10s".into(),
        "--recheck-interval".into(),
        "1h".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = env.daemon(&args);
    let me = agent.pid();
    wait_until(
        "the plugin's grandchild to start",
        Duration::from_secs(60),
        || f.pid_if_written().is_some(),
    )
    .unwrap();
    let orphan = f.written_pid();
    // It lives until the plugin's timeout (10 s), far longer than this takes.
    wait_until(
        "the orphan to be reparented to the agent",
        Duration::from_secs(30),
        || procfs::parent(orphan) == Some(me),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: the orphan's parent is {:?}, not the agent {me}",
            procfs::parent(orphan)
        )
    });
    agent
        .wait_for("the pre-pull", Duration::from_secs(120), 1, |l| {
            l["kind"] == "prepull"
        })
        .unwrap();
    assert!(
        agent.stdout().contains("timed out after 10s"),
        "{}",
        agent.stdout()
    );
    wait_until("the orphan to be reaped", Duration::from_secs(60), || {
        !procfs::exists(orphan)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: pid {orphan} is {:?}, child of {:?}",
            procfs::status_field(orphan, "State"),
            procfs::parent(orphan)
        )
    });
    wait_until(
        "no zombie child of the agent",
        Duration::from_secs(60),
        || procfs::zombie_children(me).is_empty(),
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", procfs::zombie_children(me)));
    agent.assert_alive("after reaping");
}

/// A plugin that answers at once but leaves a grandchild that exits 5 s later: it comes to the
/// agent and is reaped when it exits, not left a zombie.
#[test]
fn a_leftover_of_an_answering_plugin_is_reaped_when_it_exits() {
    let env = TestEnv::started();
    let f = Fixture::new();
    let host = env.registry.host();
    let pid_file = f.pid_file();
    let mut plugin_env = ok_env("Registry", "1h", &host, "u", "leftover-Token-5d1e");
    plugin_env[0] = ("MODE", "leftover");
    plugin_env.push(("PIDFILE", &pid_file));
    let config = f.config(&format!("'{host}'"), "1h", &plugin_env);
    let image = format!("{host}/leftover/app:v1");
    env.write_manifest("set.yaml", &pullset("team", "s", &[&image], &[]))
        .unwrap();
    let mut args = f.agent_args(&config);
    args.extend(["--recheck-interval".into(), "1h".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = env.daemon(&args);
    let me = agent.pid();
    wait_until(
        "the plugin's leftover to start",
        Duration::from_secs(60),
        || f.pid_if_written().is_some(),
    )
    .unwrap();
    let leftover = f.written_pid();
    // It lives 5 s, far longer than this takes.
    wait_until(
        "the leftover to be reparented to the agent",
        Duration::from_secs(30),
        || procfs::parent(leftover) == Some(me),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: the leftover's parent is {:?}, not the agent {me}",
            procfs::parent(leftover)
        )
    });
    wait_until("the leftover to be reaped", Duration::from_secs(60), || {
        !procfs::exists(leftover)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: pid {leftover} is {:?}, child of {:?} (the agent is {me})",
            procfs::status_field(leftover, "State"),
            procfs::parent(leftover)
        )
    });
    assert!(procfs::zombie_children(me).is_empty());
    agent.assert_alive("after reaping");
    let (stdout, stderr) = agent.finish();
    env.assert_no_leak(&[&stdout, &stderr], &["leftover-Token-5d1e"]);
}

/// A real plugin answering `cacheDuration` at the edge of Go's range (292 years) and past it. The
/// first is accepted (and cached: no second run); the second is refused as the kubelet refuses it
/// (Go's ParseDuration overflows), where it used to be taken as 584 years; the refusal is cached
/// with its backoff, so the plugin is not run again at once. Nothing panics.
#[test]
fn huge_cache_durations_neither_panic_nor_pin_an_answer() {
    for (duration, accepted) in [("2562047h", true), ("99999999999999999999h", false)] {
        let f = Fixture::new();
        let config = f.config(
            "'*.example.com'",
            "0s",
            &ok_env("Global", duration, "*.example.com", "u", "huge-Token-93c1"),
        );
        let providers = f.providers(&config, Duration::from_secs(10));
        for _ in 0..2 {
            let (creds, errors) = block_on(providers.provide("registry.example.com/a"));
            if accepted {
                assert!(errors.is_empty(), "{duration}: {errors:?}");
                assert_eq!(creds.len(), 1, "{duration}");
            } else {
                assert!(creds.is_empty(), "{duration}");
                assert_eq!(errors.len(), 1, "{duration}");
                assert!(
                    matches!(
                        errors[0],
                        PluginError::BadResponse { .. } | PluginError::Backoff { .. }
                    ),
                    "{duration}: {:?}",
                    errors[0]
                );
                let message = errors[0].to_string();
                assert!(
                    message.contains("error decoding the response")
                        && !message.contains("huge-Token"),
                    "{message}"
                );
            }
        }
        assert_eq!(f.requests().len(), 1, "{duration}: run once, then cached");
    }
}

/// A credential-provider config whose YAML aliases expand a 1 MiB anchor 1,000 times: the real
/// binary refuses it at start with an error naming the file, instead of building 1 GiB.
#[test]
fn an_alias_bomb_in_the_plugin_config_is_refused_naming_the_file() {
    let f = Fixture::new();
    let mut yaml = format!(
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: {PROVIDER}\n    matchImages: ['*.example.com']\n    defaultCacheDuration: 1h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    args:\n      - &big {}\n",
        "x".repeat(1 << 20)
    );
    for _ in 0..1000 {
        yaml.push_str("      - *big\n");
    }
    let config = f.dir.path().join("bomb.yaml");
    std::fs::write(&config, yaml).unwrap();
    let docker_config = f.dir.path().join("config.json");
    std::fs::write(&docker_config, r#"{"auths": {}}"#).unwrap();
    let mut command = std::process::Command::new(pullgate_binary().unwrap());
    command
        .args([
            "auth",
            "resolve",
            "registry.example.com/a:v1",
            "--docker-config",
        ])
        .arg(&docker_config)
        .args(f.agent_args(&config));
    let output = output_within(command, Duration::from_secs(120)).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("bomb.yaml") && stderr.contains("expands to more than 16 MiB"),
        "stderr:\n{stderr}"
    );
}
