//! The registry-direct canary reaches each registry the way containerd does: the `config_path`
//! the runtime reports (or `--runtime-registry-config`), each registry's `hosts.toml`, and
//! containerd's defaults — with no `--insecure-registry` — so that after a rotation both canary
//! paths say `Unauthorized` instead of the registry-direct one failing on TLS.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate::adapters::containerd_config::{RuntimeRegistry, config_file};
use pullgate_testenv::containerd::{Options, Release};
use pullgate_testenv::manifests::{canaried_pullset, pull_secret};
use pullgate_testenv::{Agent, Containerd, ImageSpec, PASSWORD, Registry, USER, block_on, images};
use serde_json::Value;
use std::time::Duration;

const ROTATED: &str = "pg-Rotated-Passw0rd-hosts-61b0";

/// Where the registry `config_path` is found, per release line: 1.6 and 1.7 send the CRI
/// plugin's whole configuration in the verbose CRI `Status`, `registry.configPath` included; 2.1
/// sends the runtime plugin's only (the registry settings moved to `io.containerd.cri.v1.images`,
/// which `Status` does not report, nor does the introspection service: only the task runtime
/// answers `PluginInfo`), so the agent reads containerd's configuration file. On every line the
/// one discovery finds the directory containerd routes by; on 1.x without the file, proving it
/// came from the runtime.
#[test]
fn the_registry_config_path_is_discovered_on_every_line() {
    let containerd = Containerd::start(&["127.0.0.1:5999".to_string()]).unwrap();
    let config = block_on(async { containerd.cri().status_config().await.unwrap() })
        .expect("containerd's verbose Status carries a `config` entry on every line");
    let json: Value = serde_json::from_str(&config).unwrap();
    let dir = containerd.registry_config_dir();
    let roots = RuntimeRegistry::roots_from_cri_config(&config).unwrap();
    let from_file = config_file::read(&containerd.config_file())
        .unwrap()
        .unwrap();
    assert_eq!(from_file.files, [containerd.config_file()]);
    let config_file = match containerd.release() {
        Release::V1_6 | Release::V1_7 => {
            assert_eq!(
                json["registry"]["configPath"].as_str(),
                Some(dir.to_str().unwrap()),
                "{}",
                json["registry"]
            );
            assert_eq!(roots, Some(vec![dir.clone()]));
            // A version-2 file: containerd 2.x would migrate its CRI plugin's registry too.
            assert_eq!(from_file.roots, std::slice::from_ref(&dir));
            containerd.config_file().with_file_name("absent.toml")
        }
        Release::V2_1 => {
            assert!(json.get("registry").is_none(), "{}", json);
            assert!(
                json.get("containerdRootDir").is_some(),
                "not the CRI configuration: {json}"
            );
            assert_eq!(roots, None);
            assert_eq!(from_file.roots, std::slice::from_ref(&dir));
            containerd.config_file()
        }
    };
    let discovered = block_on(async {
        let cri = containerd.cri();
        let version = cri.version().await.unwrap();
        RuntimeRegistry::discover(&cri, Some(&version), None, &config_file).await
    });
    assert_eq!(discovered.roots, [dir]);
}

/// The opening scenario. The registry speaks plain HTTP with htpasswd; containerd reaches
/// it only through `hosts.toml` `server = "http://…"`; the agent gets no registry flag at all.
/// The image is named by a name only the hosts.toml routes (`pullgate-alias.invalid:PORT` →
/// `http://127.0.0.1:PORT`), which the agent can only reach by discovering the `config_path`:
/// reported by the runtime on 1.6 and 1.7, read from containerd's configuration file on 2.1.
/// A registry the node reaches only through `hosts.toml`: the image is named
/// `pullgate-alias.invalid:PORT/…`, a name no resolver knows, that containerd routes to the
/// registry over plain HTTP (`server = "http://…"`); `manifests` holds its pull Secret
/// `team/regcred` for that name.
struct Aliased {
    registry: Registry,
    containerd: Containerd,
    image: String,
    manifests: tempfile::TempDir,
}

fn aliased() -> Aliased {
    let registry = Registry::start(&[(USER, PASSWORD)]).unwrap();
    let alias = format!("pullgate-alias.invalid:{}", registry.port());
    let containerd = Containerd::start_with(
        &[registry.host()],
        &Options {
            routes: vec![(
                alias.clone(),
                format!("http://{}", registry.host()),
                String::new(),
            )],
            ..Options::default()
        },
    )
    .unwrap();
    let pushed = block_on(images::push(
        &registry.host(),
        USER,
        PASSWORD,
        &ImageSpec::new("team/app", "v1"),
    ))
    .unwrap();
    let image = pushed.by_tag.replace(&registry.host(), &alias);
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("secret.yaml"),
        pull_secret("team", "regcred", &alias, USER, PASSWORD),
    )
    .unwrap();
    Aliased {
        registry,
        containerd,
        image,
        manifests,
    }
}

#[test]
fn a_plain_http_registry_routed_by_hosts_toml_agrees_after_a_rotation_without_any_flag() {
    let Aliased {
        mut registry,
        containerd,
        image,
        manifests,
    } = aliased();
    let release = Release::from_env();
    std::fs::write(
        manifests.path().join("set.yaml"),
        canaried_pullset(
            "team",
            "critical",
            &image,
            &["regcred"],
            "schedule: '*/2 * * * * *', jitter: 0s, depth: manifest, runtime: true",
        ),
    )
    .unwrap();
    // No --insecure-registry, no --runtime-registry-config. A node's containerd reads
    // /etc/containerd/config.toml, the default of --runtime-config-file; this one reads its own.
    let config_file = containerd.config_file();
    let agent = Agent::new(manifests.path(), &containerd.endpoint())
        .args(&[
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
            "--runtime-config-file",
            config_file.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let canary = |path: &'static str, verdict: &'static str| {
        move |l: &Value| l["kind"] == "canary" && l["path"] == path && l["verdict"] == verdict
    };
    agent
        .wait_for("pre-pull", Duration::from_secs(90), 1, |l| {
            l["kind"] == "prepull" && l["verdict"] == "Ok"
        })
        .unwrap();
    agent
        .wait_for(
            "a registry-direct canary Ok",
            Duration::from_secs(60),
            1,
            canary("registry", "Ok"),
        )
        .unwrap();
    agent
        .wait_for(
            "a runtime canary Ok",
            Duration::from_secs(60),
            1,
            canary("runtime", "Ok"),
        )
        .unwrap();

    // The password rotates; the Secret is not updated; the image stays cached.
    registry.set_password(USER, ROTATED).unwrap();
    agent
        .wait_for(
            "the registry-direct canary Unauthorized",
            Duration::from_secs(90),
            1,
            canary("registry", "Unauthorized"),
        )
        .unwrap();
    agent
        .wait_for(
            "the runtime canary Unauthorized",
            Duration::from_secs(90),
            1,
            canary("runtime", "Unauthorized"),
        )
        .unwrap();
    let (stdout, stderr) = agent.finish();
    // No registry-direct canary ever failed on TLS or the network: it reached the registry as the
    // runtime did, every time (a canary during the registry's restart may see it down, as
    // `Network` naming the refused connection, never TLS).
    for line in stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if line["kind"] == "canary" && line["path"] == "registry" {
            let message = line["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains("TLS") && !message.contains("InvalidContentType"),
                "{line}"
            );
        }
    }
    if release.is_v2() {
        assert!(
            stderr.contains("config_path read from containerd's configuration file"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("config_path reported by the runtime"),
            "{stderr}"
        );
    }
    for secret in [PASSWORD, ROTATED] {
        for (what, text) in [
            ("stdout", stdout.as_str()),
            ("stderr", stderr.as_str()),
            ("containerd log", &containerd.log()),
            ("registry log", &registry.log()),
        ] {
            assert!(!text.contains(secret), "a password leaked into the {what}");
            assert!(
                !text.contains(&pullgate_testenv::basic_auth(USER, secret)),
                "a Basic credential leaked into the {what}"
            );
        }
    }
}

/// A real distribution registry behind TLS with a private CA (and, with `mtls`, requiring a
/// client certificate of that CA), configured for containerd and pullgate only through
/// `hosts.toml` (`ca`, `client`): both canaries agree before and after a rotation, and the
/// same registry through a hosts.toml missing the setting fails TLS, naming the host, what failed
/// and the setting that fixes it. The agent is given no registry flag: it discovers the
/// `config_path` (reported by the runtime on 1.x, read from containerd's configuration file on 2.1).
fn private_tls_registry_agrees(mtls: bool) {
    let ca = pullgate_testenv::tls::TestCa::generate("private").unwrap();
    let mut registry = Registry::start(&[(USER, PASSWORD)]).unwrap();
    let pushed = block_on(images::push(
        &registry.host(),
        USER,
        PASSWORD,
        &ImageSpec::new("team/app", "v1"),
    ))
    .unwrap();
    registry.serve_tls(&ca, mtls).unwrap();
    let port = registry.port();
    let good = format!("pullgate-tls.invalid:{port}");
    let lacking = format!("pullgate-lacking.invalid:{port}");
    let server = format!("https://127.0.0.1:{port}");
    let client = "  client = [[\"client.cert\", \"client.key\"]]\n";
    let (good_extra, lacking_extra) = if mtls {
        (
            format!("  ca = \"ca.crt\"\n{client}"),
            "  ca = \"ca.crt\"\n".to_string(),
        )
    } else {
        ("  ca = \"ca.crt\"\n".to_string(), String::new())
    };
    let mut host_files = Vec::new();
    for name in [&good, &lacking] {
        host_files.push((name.clone(), "ca.crt".to_string(), ca.ca_pem.clone()));
        host_files.push((
            name.clone(),
            "client.cert".to_string(),
            ca.client_cert_pem.clone(),
        ));
        host_files.push((
            name.clone(),
            "client.key".to_string(),
            ca.client_key_pem.clone(),
        ));
    }
    let containerd = Containerd::start_with(
        &[],
        &Options {
            routes: vec![
                (good.clone(), server.clone(), good_extra),
                (lacking.clone(), server.clone(), lacking_extra),
            ],
            host_files,
            ..Options::default()
        },
    )
    .unwrap();
    let image = pushed.by_tag.replace(&registry.host(), &good);
    let lacking_image = pushed.by_tag.replace(&registry.host(), &lacking);
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("secret.yaml"),
        [
            pull_secret("team", "regcred", &good, USER, PASSWORD),
            pull_secret("team", "lacking", &lacking, USER, PASSWORD),
        ]
        .join("---\n"),
    )
    .unwrap();
    let canary = "schedule: '*/2 * * * * *', jitter: 0s, depth: blobs";
    std::fs::write(
        manifests.path().join("set.yaml"),
        [
            canaried_pullset(
                "team",
                "critical",
                &image,
                &["regcred"],
                &format!("{canary}, runtime: true"),
            ),
            canaried_pullset("team", "lacking", &lacking_image, &["lacking"], canary),
        ]
        .join("---\n"),
    )
    .unwrap();
    // No registry flag: the config_path is discovered (on 2.1 from containerd's file).
    let config_file = containerd.config_file();
    let agent = Agent::new(manifests.path(), &containerd.endpoint())
        .args(&[
            "--rotation-jitter",
            "0s",
            "--recheck-interval",
            "1h",
            "--runtime-config-file",
            config_file.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let canary_of = |set: &'static str, path: &'static str, verdict: &'static str| {
        move |l: &Value| {
            l["kind"] == "canary"
                && l["pullset"] == set
                && l["path"] == path
                && l["verdict"] == verdict
        }
    };
    agent
        .wait_for("pre-pull", Duration::from_secs(90), 1, |l| {
            l["kind"] == "prepull" && l["pullset"] == "critical" && l["verdict"] == "Ok"
        })
        .unwrap();
    for path in ["registry", "runtime"] {
        agent
            .wait_for(
                "the canaries Ok",
                Duration::from_secs(60),
                1,
                canary_of("critical", path, "Ok"),
            )
            .unwrap();
    }
    agent
        .wait_for(
            "the registry without the setting failing TLS",
            Duration::from_secs(60),
            1,
            canary_of("lacking", "registry", "Network"),
        )
        .unwrap();
    let failed = agent
        .lines()
        .into_iter()
        .find(|l| canary_of("lacking", "registry", "Network")(l))
        .unwrap();
    let message = failed["message"].as_str().unwrap().to_string();
    let (what, fix) = if mtls {
        (
            "it refused the connection without an acceptable client certificate",
            "`client = [[\"client.cert\", \"client.key\"]]`",
        )
    } else {
        (
            "its certificate is signed by a CA the canary does not trust",
            "`ca = \"ca.crt\"`",
        )
    };
    assert!(
        message.contains(&format!("TLS with 127.0.0.1:{port} failed: {what}")),
        "{message}"
    );
    assert!(message.contains(fix), "{message}");

    registry.set_password(USER, ROTATED).unwrap();
    for path in ["registry", "runtime"] {
        agent
            .wait_for(
                "the canaries Unauthorized",
                Duration::from_secs(90),
                1,
                canary_of("critical", path, "Unauthorized"),
            )
            .unwrap();
    }
    let (stdout, stderr) = agent.finish();
    for secret in [PASSWORD, ROTATED] {
        for (what, text) in [
            ("stdout", stdout.as_str()),
            ("stderr", stderr.as_str()),
            ("containerd log", &containerd.log()),
            ("registry log", &registry.log()),
        ] {
            assert!(!text.contains(secret), "a password leaked into the {what}");
            assert!(
                !text.contains(&pullgate_testenv::basic_auth(USER, secret)),
                "a Basic credential leaked into the {what}"
            );
        }
    }
    assert!(
        !stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"),
        "a client key reached the output"
    );
}

#[test]
fn a_registry_behind_a_private_ca_is_trusted_through_hosts_toml_ca() {
    private_tls_registry_agrees(false);
}

#[test]
fn a_registry_requiring_a_client_certificate_is_reached_through_hosts_toml_client() {
    private_tls_registry_agrees(true);
}

/// `pullgate check --runtime` and `pullgate diagnose` find the runtime's registry configuration
/// as `pullgate run` does (one discovery): an image named by an alias only the hosts.toml
/// routes (`pullgate-alias.invalid:PORT` → `http://127.0.0.1:PORT`) passes every registry-direct
/// step with no registry flag, on 1.x from what the runtime reports, on 2.1 from containerd's
/// configuration file.
#[test]
fn the_one_shot_commands_discover_the_registry_config_as_run_does() {
    use pullgate_testenv::agent::pullgate_binary;
    use pullgate_testenv::process::output_within;
    let Aliased {
        registry: _registry,
        containerd,
        image,
        manifests,
    } = aliased();
    std::fs::write(
        manifests.path().join("sa.yaml"),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: builder, namespace: team}\nimagePullSecrets: [{name: regcred}]\n",
    )
    .unwrap();
    std::fs::write(
        manifests.path().join("set.yaml"),
        canaried_pullset("team", "critical", &image, &["regcred"], "depth: manifest"),
    )
    .unwrap();
    let config_file = containerd.config_file();
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(pullgate_binary().unwrap());
        command
            .args(args)
            .args(["--cri-endpoint", &containerd.endpoint()])
            .args(["--runtime-config-file", config_file.to_str().unwrap()])
            .args(["--json", "--manifests"])
            .arg(manifests.path());
        let out = output_within(command, Duration::from_secs(120)).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };

    let (code, stdout, stderr) = run(&[
        "check",
        &image,
        "--runtime",
        "--depth",
        "manifest",
        "-n",
        "team",
        "--pullset",
        "critical",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let outcomes: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 2, "{stdout}");
    for o in &outcomes {
        assert_eq!(o["verdict"], "Ok", "{o}");
    }

    let (code, stdout, stderr) = run(&[
        "diagnose",
        &image,
        "-n",
        "team",
        "--service-account",
        "builder",
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let d: Value = serde_json::from_str(&stdout).unwrap();
    for step in [
        "registry: manifest",
        "registry: blobs",
        "runtime: PullImage",
    ] {
        let rung = d["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["step"] == step)
            .unwrap_or_else(|| panic!("no step {step} in {d}"));
        assert_eq!(rung["ok"], true, "{rung}");
    }
    let found = if containerd.release().is_v2() {
        "config_path read from containerd's configuration file"
    } else {
        "config_path reported by the runtime"
    };
    assert!(stderr.contains(found), "{stderr}");
    for text in [stdout.as_str(), stderr.as_str(), &containerd.log()] {
        assert!(!text.contains(PASSWORD), "a password leaked");
    }
}
