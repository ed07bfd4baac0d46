//! Hostile registries and token realms, against the real binary: a registry or token realm that
//! accepts the connection and never answers, a `full` canary of a manifest declaring a petabyte
//! layer, a token realm answering 50 MiB or an error page with content the tenant must not see,
//! a registry echoing the bearer token back, and an HTTPS registry naming a plain-HTTP realm.
//!
//! Each scripted server is a [`HostileServer`]. Every run is bounded by a generous deadline that
//! tells "finishes" from "hangs" (without the fixes these runs hang or carry the body); nothing is
//! timed. Every output is grepped for the password, the token and the marker.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::{MEMORY_CAP_KIB, pullgate_binary};
use pullgate_testenv::hostile_server::{HostileServer, Reply, Request};
use pullgate_testenv::manifests::{pull_secret, pullset};
use pullgate_testenv::process::output_within;
use pullgate_testenv::tls::TestCa;
use pullgate_testenv::{PASSWORD, TestEnv, USER};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::process::Command;
use std::time::Duration;

/// A token a realm hands out: never to be printed.
const TOKEN: &str = "pg-Bearer-T0ken-5e8d1a";
/// What a realm's error page holds (an internal service's answer): never to be shown.
const MARKER: &str = "pg-internal-MARKER-77c1";

/// Generous: these runs take seconds; without the fixes they hang.
const BOUND: Duration = Duration::from_secs(90);

struct Checked {
    outcomes: Vec<Value>,
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

impl Checked {
    fn outcome(&self, image: &str) -> &Value {
        self.outcomes
            .iter()
            .find(|o| o["image"] == image)
            .unwrap_or_else(|| panic!("no outcome for {image}\n{}\n{}", self.stdout, self.stderr))
    }

    fn assert_no_leak(&self) {
        for (what, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            for secret in [PASSWORD, TOKEN, MARKER] {
                assert!(!text.contains(secret), "{secret} leaked into the {what}");
            }
        }
    }
}

/// `pullgate check IMAGES --json --depth DEPTH` with pull secret `team/regcred` (the test
/// password) for `registry`, debug logging on (so that a leak into any log line is caught).
fn check(registry: &str, images: &[&str], depth: &str, extra: &[&str]) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret.yaml"),
        pull_secret("team", "regcred", registry, USER, PASSWORD),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("set.yaml"),
        pullset("team", "hostile", images, &["regcred"]),
    )
    .unwrap();
    let mut command = Command::new(pullgate_binary().unwrap());
    command
        .env("RUST_LOG", "debug")
        .arg("check")
        .args(images)
        .args([
            "--json",
            "--depth",
            depth,
            "-n",
            "team",
            "--pullset",
            "hostile",
        ])
        .args(extra)
        .arg("--manifests")
        .arg(dir.path());
    let out = output_within(command, BOUND).unwrap_or_else(|e| panic!("{e:#}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Checked {
        outcomes: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

fn message(o: &Value) -> &str {
    o["message"].as_str().unwrap_or_default()
}

/// A registry whose `/v2/` sends clients to `realm` for a token, and whose other requests `rest`
/// answers.
fn token_registry(
    realm: String,
    rest: impl Fn(&Request) -> Reply + Send + Sync + 'static,
) -> HostileServer {
    HostileServer::start(move |r| {
        if r.path == "/v2/" {
            let challenge = format!(r#"Bearer realm="{realm}",service="hostile""#);
            Reply::new(
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge.as_str())],
                "",
            )
        } else {
            rest(r)
        }
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Hangs: every registry interaction of a canary is under a deadline.

#[test]
fn a_registry_that_never_answers_the_ping_ends_the_canary_with_network() {
    let registry = HostileServer::start(|_| Reply::Never).unwrap();
    let host = registry.host();
    let image = format!("{host}/team/app:v1");
    let c = check(
        &host,
        &[&image],
        "manifest",
        &["--insecure-registry", &host, "--registry-timeout", "3s"],
    );
    let o = c.outcome(&image);
    assert_eq!(o["verdict"], "Network", "{o}");
    assert!(
        message(o).contains(&format!("registry {host}: /v2/: timed out after 3s")),
        "{o}"
    );
    assert_ne!(c.code, Some(0));
    c.assert_no_leak();
}

#[test]
fn a_token_realm_that_never_answers_ends_the_canary_with_network() {
    let realm = HostileServer::start(|_| Reply::Never).unwrap();
    let registry = token_registry(format!("http://{}/token", realm.host()), |_| {
        Reply::new("401 Unauthorized", &[], "")
    });
    let host = registry.host();
    let image = format!("{host}/team/app:v1");
    let c = check(
        &host,
        &[&image],
        "manifest",
        &["--insecure-registry", &host, "--registry-timeout", "3s"],
    );
    let o = c.outcome(&image);
    assert_eq!(o["verdict"], "Network", "{o}");
    assert!(
        message(o).contains(&format!(
            "token service http://{}/token: timed out after 3s",
            realm.host()
        )),
        "{o}"
    );
    assert_eq!(realm.requests().len(), 1, "one token request");
    c.assert_no_leak();
}

#[test]
fn the_canary_deadline_ends_a_probe_whose_requests_may_each_take_an_hour() {
    // The ping answers; the manifest request is accepted and never answered. Each request is
    // allowed an hour here: --canary-timeout ends the probe, naming where it stopped.
    let registry = HostileServer::start(|r| {
        if r.path == "/v2/" {
            Reply::new("200 OK", &[], "{}")
        } else {
            Reply::Never
        }
    })
    .unwrap();
    let host = registry.host();
    let image = format!("{host}/team/app:v1");
    let c = check(
        &host,
        &[&image],
        "manifest",
        &[
            "--insecure-registry",
            &host,
            "--registry-timeout",
            "1h",
            "--canary-timeout",
            "3s",
        ],
    );
    let o = c.outcome(&image);
    assert_eq!(o["verdict"], "Network", "{o}");
    assert!(
        message(o).contains(&format!(
            "registry {host}: the canary did not finish within 3s (stopped during manifest v1"
        )),
        "{o}"
    );
    c.assert_no_leak();
}

// ---------------------------------------------------------------------------------------------
// `full` depth: the canary's byte budget.

#[test]
fn a_full_canary_checks_a_petabyte_layer_by_head_only_and_finishes() {
    let petabyte: u64 = 1 << 50;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(config)));
    let layer = format!("sha256:{}", "5e".repeat(32));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{petabyte}}}]}}"#,
        config.len()
    );
    let (c_digest, l_digest) = (config_digest.clone(), layer.clone());
    let registry = HostileServer::start(move |r| {
        if r.path == "/v2/" {
            Reply::new("200 OK", &[], "{}")
        } else if r.path.ends_with("/manifests/v1") {
            Reply::new(
                "200 OK",
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                manifest.clone(),
            )
        } else if r.path.ends_with(&c_digest) {
            Reply::new("200 OK", &[], config.to_vec())
        } else if r.path.ends_with(&l_digest) {
            // HEAD: 200 with the declared size; GET: a petabyte of zeros, at loopback speed.
            Reply::repeat("200 OK", &[], 0, petabyte)
        } else {
            Reply::new("404 Not Found", &[], "")
        }
    })
    .unwrap();
    let host = registry.host();
    let image = format!("{host}/team/huge:v1");
    let c = check(
        &host,
        &[&image],
        "full",
        &["--insecure-registry", &host, "--registry-timeout", "10s"],
    );
    assert_eq!(c.code, Some(0), "{}\n{}", c.stdout, c.stderr);
    let o = c.outcome(&image);
    assert_eq!(o["verdict"], "Ok", "{o}");
    assert!(
        message(o).starts_with(
            "1 blob(s) downloaded and verified (" // the config and the manifest
        ) && message(o).ends_with(", 1 over the byte budget checked by HEAD only"),
        "{o}"
    );
    let warnings = o["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{o}");
    let warning = warnings[0].as_str().unwrap();
    assert!(
        warning.starts_with(&format!(
            "NotDownloaded: blob {layer} declares {petabyte} bytes, more than the "
        )) && warning.contains("1073741824-byte budget (--max-canary-bytes): checked by HEAD only"),
        "{warning}"
    );
    // The layer was asked about, never downloaded.
    let layer_requests: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&layer))
        .map(|r| r.method)
        .collect();
    assert_eq!(layer_requests, ["HEAD"]);
    c.assert_no_leak();
}

// ---------------------------------------------------------------------------------------------
// The token realm: bounded reads, nothing of its body shown, no plain-HTTP realm for HTTPS.

/// The scope a token request asks for, by repository (`team/NAME`).
fn repository_of(r: &Request) -> String {
    r.path
        .split_once("scope=repository%3A")
        .and_then(|(_, rest)| rest.split_once("%3Apull"))
        .map(|(repo, _)| repo.replace("%2F", "/"))
        .unwrap_or_default()
}

#[test]
fn a_token_realm_s_body_never_reaches_the_output_and_the_token_is_kept_secret() {
    let realm = HostileServer::start(|r| {
        // The credential arrives as Basic auth; the realm answers by repository.
        assert!(
            r.header_starts_with("authorization", "Basic "),
            "{}",
            r.head
        );
        match repository_of(r).as_str() {
            "team/page" => Reply::new(
                "401 Unauthorized",
                &[("Content-Type", "text/html")],
                format!("<html><body>internal admin: {MARKER}</body></html>"),
            ),
            "team/not-a-token" => Reply::json("200 OK", &format!(r#"{{"detail":"{MARKER}"}}"#)),
            "team/long" => Reply::json(
                "403 Forbidden",
                &format!(
                    r#"{{"errors":[{{"code":"DENIED","message":"access denied {}{MARKER}"}}]}}"#,
                    "z".repeat(400)
                ),
            ),
            "team/echo" => Reply::json("200 OK", &format!(r#"{{"token":"{TOKEN}"}}"#)),
            other => panic!("unexpected scope {other}"),
        }
    })
    .unwrap();
    let registry = token_registry(format!("http://{}/token", realm.host()), |r| {
        // The token comes back as a bearer token; this registry echoes it in its error.
        if r.header_starts_with("authorization", &format!("Bearer {TOKEN}")) {
            Reply::json(
                "404 Not Found",
                &format!(
                    r#"{{"errors":[{{"code":"MANIFEST_UNKNOWN","message":"no manifest for {TOKEN}"}}]}}"#
                ),
            )
        } else {
            Reply::new("401 Unauthorized", &[], "")
        }
    });
    let host = registry.host();
    let images: Vec<String> = ["page", "not-a-token", "long", "echo"]
        .iter()
        .map(|n| format!("{host}/team/{n}:v1"))
        .collect();
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let c = check(
        &host,
        &images,
        "manifest",
        &["--insecure-registry", &host, "--registry-timeout", "10s"],
    );
    let realm_name = format!("token service http://{}/token", realm.host());
    let expected = [
        (
            "Unauthorized",
            format!("{realm_name}: HTTP 401: Unauthorized"),
        ),
        (
            "Unauthorized",
            format!("{realm_name}: the answer holds no token"),
        ),
        (
            "Unauthorized",
            format!(
                "{realm_name}: HTTP 403 DENIED: access denied {}…",
                "z".repeat(186)
            ),
        ),
        (
            "NotFound",
            "manifest v1: HTTP 404 MANIFEST_UNKNOWN: no manifest for [REDACTED]".to_string(),
        ),
    ];
    for (image, (verdict, text)) in images.iter().zip(expected) {
        let o = c.outcome(image);
        assert_eq!(o["verdict"], verdict, "{o}");
        assert!(message(o).contains(&text), "{image}: want {text}\n{o}");
        assert!(message(o).len() < 600, "{o}");
    }
    c.assert_no_leak();
}

#[test]
fn a_token_realm_answering_50_mib_leaves_the_daemon_bounded_and_the_messages_short() {
    let mib50: u64 = 50 << 20;
    let realm = HostileServer::start(move |r| match repository_of(r).as_str() {
        "team/big-token" => Reply::repeat(
            "200 OK",
            &[("Content-Type", "application/json")],
            b'a',
            mib50,
        ),
        _ => Reply::repeat(
            "401 Unauthorized",
            &[("Content-Type", "text/plain")],
            b'a',
            mib50,
        ),
    })
    .unwrap();
    let registry = token_registry(format!("http://{}/token", realm.host()), |_| {
        Reply::new("401 Unauthorized", &[], "")
    });
    let host = registry.host();
    let env = TestEnv::started();
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "regcred", &host, USER, PASSWORD),
    )
    .unwrap();
    env.write_manifest(
        "set.yaml",
        &format!(
            "apiVersion: pullgate.io/v1alpha1\nkind: PullSet\nmetadata: {{name: hostile, namespace: team}}\nspec:\n  prePull: false\n  gate: false\n  imagePullSecrets: [{{name: regcred}}]\n  images: [{{image: '{host}/team/big-token:v1'}}, {{image: '{host}/team/big-error:v1'}}]\n  canary: {{depth: manifest}}\n"
        ),
    )
    .unwrap();
    let agent = env
        .agent()
        .canary_defaults(&host)
        .args(&["--registry-timeout", "20s"])
        .spawn()
        .unwrap();
    agent
        .wait_for("both canaries", BOUND, 2, |l| l["kind"] == "canary")
        .unwrap();
    let realm_name = format!("token service http://{}/token", realm.host());
    for (image, verdict, text) in [
        (
            "big-token",
            "RuntimeError",
            format!("{realm_name}: larger than the 1048576-byte limit"),
        ),
        (
            "big-error",
            "Unauthorized",
            format!("{realm_name}: HTTP 401: Unauthorized"),
        ),
    ] {
        let o = agent.last(|l| {
            l["kind"] == "canary" && l["image"] == format!("{host}/team/{image}:v1").as_str()
        });
        assert_eq!(o["verdict"], verdict, "{o}");
        assert!(message(&o).contains(&text), "{o}");
        assert!(
            !message(&o).contains("aaaa") && message(&o).len() < 600,
            "{o}"
        );
    }
    agent.assert_up_and_bounded(MEMORY_CAP_KIB, "a 50 MiB token realm");
    // The figure the README quotes (a bound is asserted above, never this number).
    if let Ok(peak) = pullgate_testenv::procfs::peak_kib(agent.pid()) {
        eprintln!(
            "agent peak RSS: {:.0} MiB",
            pullgate_testenv::procfs::mib(peak)
        );
    }
    let (stdout, stderr) = agent.finish();
    assert!(
        !stderr.contains("aaaaaaaaaaaaaaaa"),
        "the realm's body reached the log"
    );
    env.assert_no_leak(&[&stdout, &stderr], &[PASSWORD]);
}

#[test]
fn an_https_registry_naming_a_plain_http_realm_is_refused_before_any_request() {
    let ca = TestCa::generate("hostile").unwrap();
    let realm =
        HostileServer::start(|_| Reply::json("200 OK", &format!(r#"{{"token":"{TOKEN}"}}"#)))
            .unwrap();
    let realm_url = format!("http://{}/token", realm.host());
    let registry = HostileServer::start_tls(&ca, move |r| {
        if r.path == "/v2/" {
            let challenge = format!(r#"Bearer realm="{realm_url}",service="hostile""#);
            Reply::new(
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge.as_str())],
                "",
            )
        } else {
            Reply::new("401 Unauthorized", &[], "")
        }
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let host = registry.host();
    let image = format!("{host}/team/app:v1");
    // No --insecure-registry: the registry is reached over HTTPS, trusting the test CA.
    let c = check(
        &host,
        &[&image],
        "manifest",
        &["--registry-ca-file", ca_file.to_str().unwrap()],
    );
    let o = c.outcome(&image);
    assert_eq!(o["verdict"], "RuntimeError", "{o}");
    assert!(
        message(o).contains(&format!(
            "registry {host} is reached over HTTPS but names a plain-HTTP token realm (http://{}/token): refused, no request sent to it",
            realm.host()
        )),
        "{o}"
    );
    // The HTTPS registry was reached (so the refusal is the rule, not TLS), the realm never.
    let seen: Vec<String> = registry.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/v2/"]);
    assert!(realm.requests().is_empty(), "{:?}", realm.requests());
    c.assert_no_leak();
}
