//! Leaks (#13): what the agent prints and logs never carries a credential, whatever `RUST_LOG`
//! says; registry keys with userinfo are shown without it; password fingerprints are keyed; text
//! a registry or a file sends reaches no terminal control.
//!
//! A token-auth front (in this file) stands before the real registry: `/v2/` answers `401` with a
//! `Bearer` challenge, the realm hands out [`BEARER_TOKEN`] for `USER:PASSWORD` (Basic), and
//! requests with that token are passed to the registry with the real credentials. Repository
//! `team/evil` answers `404` with a message carrying a terminal title escape.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::agent::pullgate_binary;
use pullgate_testenv::http::{read_request_head, request_path};
use pullgate_testenv::manifests::{canaried_pullset, pull_secret, pullset};
use pullgate_testenv::process::{free_port, output_within, wait_until};
use pullgate_testenv::{
    Containerd, ImageSpec, PASSWORD, Registry, TestEnv, USER, basic_auth, http,
};
use serde_json::Value;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The token the front's realm hands out. Never to be printed.
const BEARER_TOKEN: &str = "pg-Bearer-T0ken-5d6e7f";
/// A token pasted into a registry key's userinfo. Never to be printed.
const USERINFO_TOKEN: &str = "pg-Userinfo-T0ken-a1b2c3";
/// What `team/evil` answers with: a terminal title escape.
const EVIL: &str = "\u{1b}]0;pwned\u{7}";

/// The token-auth front; stops accepting when dropped.
struct TokenFront {
    port: u16,
    tokens_issued: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TokenFront {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let tokens_issued = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (issued, s, upstream) = (tokens_issued.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (issued, upstream) = (issued.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = serve(client, port, &upstream, &issued);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            tokens_issued,
            stop,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TokenFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn respond(client: &mut TcpStream, status: &str, headers: &[String], body: &str) {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        response.push_str(h);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(body);
    let _ = client.write_all(response.as_bytes());
}

fn serve(
    mut client: TcpStream,
    port: u16,
    upstream: &str,
    issued: &AtomicU64,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let Some(head) = read_request_head(&mut client) else {
        return Ok(());
    };
    let path = request_path(&head).to_string();
    let auth = header(&head, "authorization").unwrap_or_default();
    if path.starts_with("/token") {
        if auth == format!("Basic {}", basic_auth(USER, PASSWORD)) {
            issued.fetch_add(1, Ordering::Relaxed);
            let body = serde_json::json!({
                "token": BEARER_TOKEN,
                "access_token": BEARER_TOKEN,
                "expires_in": 300,
            });
            respond(&mut client, "200 OK", &[], &body.to_string());
        } else {
            respond(&mut client, "401 Unauthorized", &[], "{}");
        }
        return Ok(());
    }
    if auth != format!("Bearer {BEARER_TOKEN}") {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"front\""
        );
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        respond(&mut client, "401 Unauthorized", &[challenge], body);
        return Ok(());
    }
    if path.starts_with("/v2/team/evil/") {
        let body = serde_json::json!({"errors": [{
            "code": "MANIFEST_UNKNOWN",
            "message": format!("{EVIL}manifest unknown\r\u{9b}31m"),
        }]});
        respond(&mut client, "404 Not Found", &[], &body.to_string());
        return Ok(());
    }
    // Passed on with the real credentials.
    let mut lines = head.lines();
    let mut forwarded = format!("{}\r\n", lines.next().unwrap_or_default());
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if !["authorization", "connection"].contains(&name.to_ascii_lowercase().as_str()) {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str(&format!(
        "Authorization: Basic {}\r\nConnection: close\r\n\r\n",
        basic_auth(USER, PASSWORD)
    ));
    let mut registry = TcpStream::connect(upstream)?;
    registry.write_all(forwarded.as_bytes())?;
    std::io::copy(&mut registry, &mut client)?;
    Ok(())
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `pullgate ARGS` in `cwd` with `RUST_LOG`, finished within 120 s.
fn pullgate(args: &[&str], rust_log: &str, cwd: &Path) -> Out {
    let mut command = Command::new(pullgate_binary().unwrap());
    command
        .current_dir(cwd)
        .env("TMPDIR", cwd)
        .env("RUST_LOG", rust_log)
        .env_remove("PULLGATE_FINGERPRINT_KEY")
        .args(args);
    let out = output_within(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}"));
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `RUST_LOG=trace` asks every dependency for everything: the token endpoint's response (the
/// bearer token), the `Authorization` headers (Basic `base64(user:password)`, Bearer token). None
/// of it reaches stderr or stdout, and the canary is `Ok` through the token flow.
#[test]
fn trace_logging_shows_no_token_password_or_basic_header() {
    let env = TestEnv::started();
    env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let front = TokenFront::start(&env.registry.host());
    let image = format!("{}/team/app:v1", front.host());
    env.write_manifest(
        "s.yaml",
        &pull_secret("team", "regcred", &front.host(), USER, PASSWORD),
    )
    .unwrap();
    env.write_manifest("p.yaml", &pullset("team", "set", &[&image], &["regcred"]))
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let manifests = env.manifests.path().to_str().unwrap();
    let run = |log_format: &str| {
        pullgate(
            &[
                "--log-format",
                log_format,
                "check",
                &image,
                "--json",
                "-n",
                "team",
                "--pullset",
                "set",
                "--insecure-registry",
                &front.host(),
                "--manifests",
                manifests,
            ],
            "trace",
            scratch.path(),
        )
    };
    for log_format in ["text", "json"] {
        let before = front.tokens_issued.load(Ordering::Relaxed);
        let out = run(log_format);
        let outcome: Value =
            serde_json::from_str(out.stdout.lines().next().unwrap_or("null")).unwrap();
        assert_eq!(outcome["verdict"], "Ok", "{outcome}\n{}", out.stderr);
        assert_eq!(out.code, Some(0));
        // The token flow ran, and trace logging is on (our own targets log at trace/debug).
        assert!(front.tokens_issued.load(Ordering::Relaxed) > before);
        assert!(
            out.stderr.contains("DEBUG") || out.stderr.contains("TRACE"),
            "{}",
            out.stderr
        );
        env.assert_no_leak(&[&out.stdout, &out.stderr], &[PASSWORD, BEARER_TOKEN]);
        assert!(!out.stderr.contains(&basic_auth(USER, PASSWORD)));
    }
}

/// A pull secret keyed `http://robot:TOKEN@HOST` (and one key that does not parse, holding the
/// token too): the canary pulls with it as the kubelet would (the host matches), and neither the
/// JSON lines, the log, `/metrics` (the `credential` label), `check`, nor `auth resolve` shows
/// the token; `auth resolve` says that the key carries userinfo.
#[test]
fn a_key_with_userinfo_is_shown_without_it() {
    // A second registry user whose password is a JWT with an `exp`: the canary then reports the
    // credential's expiry, and `/metrics` carries the `credential` label.
    let jwt = {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"exp":4102444800}"#)
        )
    };
    let registry = Registry::start(&[(USER, PASSWORD), ("robot", &jwt)]).unwrap();
    let env = TestEnv {
        containerd: Containerd::start(&[registry.host()]).unwrap(),
        registry,
        manifests: tempfile::tempdir().unwrap(),
    };
    let pushed = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    let host = env.registry.host();
    let key = format!("http://robot:{USERINFO_TOKEN}@{host}");
    let auth = basic_auth("robot", &jwt);
    let config = serde_json::json!({"auths": {
        key.as_str(): {"auth": auth},
        format!("{USERINFO_TOKEN} is not a key"): {"auth": auth},
    }})
    .to_string();
    let data = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(config)
    };
    env.write_manifest(
        "s.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\n  namespace: team\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {data}\n"
        ),
    )
    .unwrap();
    env.write_manifest(
        "set.yaml",
        &canaried_pullset(
            "team",
            "critical",
            &pushed.by_tag,
            &["regcred"],
            "schedule: '0 0 * * *', jitter: 0s, depth: manifest",
        ),
    )
    .unwrap();
    let port = free_port().unwrap();
    let metrics_addr = format!("127.0.0.1:{port}");
    let agent = env
        .agent()
        .canary_defaults(&host)
        .args(&["--metrics-addr", &metrics_addr])
        .spawn()
        .unwrap();
    agent
        .wait_for("the start-up canary", Duration::from_secs(120), 1, |l| {
            l["kind"] == "canary"
        })
        .unwrap();
    let canary = agent.first(|l| l["kind"] == "canary");
    assert_eq!(canary["verdict"], "Ok", "{canary}");
    assert_eq!(
        canary["credential"],
        format!("secret team/regcred key http://{host}"),
        "{canary}"
    );
    let mut metrics = String::new();
    let label = format!("credential=\"secret team/regcred key http://{host}\"");
    wait_until(
        "the credential's expiry metric",
        Duration::from_secs(60),
        || {
            metrics = http::get(port, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            metrics.contains(&label)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let (stdout, stderr) = agent.finish();

    let scratch = tempfile::tempdir().unwrap();
    let manifests = env.manifests.path().to_str().unwrap();
    let selection = [
        "-n",
        "team",
        "--pullset",
        "critical",
        "--manifests",
        manifests,
    ];
    let check = pullgate(
        &[
            &["check", &pushed.by_tag, "--insecure-registry", &host][..],
            &selection,
        ]
        .concat(),
        "debug",
        scratch.path(),
    );
    assert_eq!(check.code, Some(0), "{}\n{}", check.stdout, check.stderr);
    let resolve = pullgate(
        &[
            &["auth", "resolve", &pushed.by_tag, "--json"][..],
            &selection,
        ]
        .concat(),
        "debug",
        scratch.path(),
    );
    let report: Value = serde_json::from_str(&resolve.stdout).unwrap();
    assert_eq!(
        report["candidates"][0]["key"],
        format!("http://{host}"),
        "{report}"
    );
    let verdicts = report["verdicts"].to_string();
    assert!(verdicts.contains("carries userinfo"), "{verdicts}");
    assert!(verdicts.contains("<unparseable key, "), "{verdicts}");
    env.assert_no_leak(
        &[
            &stdout,
            &stderr,
            &metrics,
            &check.stdout,
            &check.stderr,
            &resolve.stdout,
            &resolve.stderr,
        ],
        &[PASSWORD, USERINFO_TOKEN, &jwt],
    );
}

/// `auth resolve`'s `password_hmac_sha256`: with `--fingerprint-key` (or
/// `PULLGATE_FINGERPRINT_KEY`), the same across runs and equal to `openssl dgst -sha256 -hmac`;
/// without, different on every run, and the output says so; never a plain SHA-256.
#[test]
fn auth_resolve_fingerprints_are_keyed() {
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"auths": {"r.example": {"auth": basic_auth(USER, PASSWORD)}}})
            .to_string(),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let resolve = |extra: &[&str]| {
        let out = pullgate(
            &[
                &[
                    "auth",
                    "resolve",
                    "r.example/app:1",
                    "--docker-config",
                    config,
                ][..],
                extra,
            ]
            .concat(),
            "info",
            scratch.path(),
        );
        assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
        out
    };
    let json = |extra: &[&str]| -> Value {
        serde_json::from_str(&resolve(&[&["--json"][..], extra].concat()).stdout).unwrap()
    };
    // printf %s pg-Secret-Passw0rd-7f3a9c | openssl dgst -sha256 -hmac team-fingerprint-key
    let expected = "2d44d08686cbc950b73c22857fc5182e4d81e90f902486f957d6dbf93233446d";
    let keyed = ["--fingerprint-key", "team-fingerprint-key"];
    let (a, b) = (json(&keyed), json(&keyed));
    assert_eq!(a["candidates"][0]["password_hmac_sha256"], expected, "{a}");
    assert_eq!(b["candidates"][0]["password_hmac_sha256"], expected, "{b}");
    assert_eq!(a["fingerprint_key_per_run"], false, "{a}");
    let (c, d) = (json(&[]), json(&[]));
    let fp = |v: &Value| {
        v["candidates"][0]["password_hmac_sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(fp(&c), fp(&d));
    assert_ne!(fp(&c), expected);
    assert_eq!(c["fingerprint_key_per_run"], true, "{c}");
    assert!(
        c["fingerprints"]
            .as_str()
            .unwrap()
            .contains("within this output only"),
        "{c}"
    );
    let table = resolve(&[]).stdout;
    assert!(
        table.contains("password hmac-sha256: HMAC-SHA256 with a key drawn for this run"),
        "{table}"
    );
    let keyed_table = resolve(&keyed).stdout;
    assert!(keyed_table.contains(&expected[..12]), "{keyed_table}");
    // No unkeyed digest of the password, in any form of the output.
    let plain = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(PASSWORD.as_bytes()))
    };
    for out in [a.to_string(), c.to_string(), table, keyed_table] {
        assert!(!out.contains(&plain[..12]), "{out}");
        assert!(!out.contains("password_sha256"), "{out}");
        assert!(
            !out.contains(PASSWORD) && !out.contains("team-fingerprint-key"),
            "{out}"
        );
    }
}

/// A registry's error message and a file's path carrying `ESC ] 0 ; pwned BEL` (and CR, a C1 CSI):
/// `check` and `diagnose` print them escaped, with no control byte but newlines.
#[test]
fn terminal_escapes_from_a_registry_or_a_file_are_escaped() {
    let env = TestEnv::started();
    let front = TokenFront::start(&env.registry.host());
    let image = format!("{}/team/evil:v1", front.host());
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join(format!("cfg{EVIL}"));
    std::fs::create_dir(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({"auths": {front.host(): {"auth": basic_auth(USER, PASSWORD)}}})
            .to_string(),
    )
    .unwrap();
    env.write_manifest(
        "s.yaml",
        &pull_secret("team", "regcred", &front.host(), USER, PASSWORD),
    )
    .unwrap();
    env.write_manifest("p.yaml", &pullset("team", "set", &[&image], &["regcred"]))
        .unwrap();
    env.write_manifest(
        "sa.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: puller, namespace: team}\nimagePullSecrets: [{name: regcred}]\n",
    )
    .unwrap();
    let check = pullgate(
        &[
            "check",
            &image,
            "--insecure-registry",
            &front.host(),
            "--docker-config",
            config.to_str().unwrap(),
        ],
        "info",
        scratch.path(),
    );
    let diagnose = pullgate(
        &[
            "diagnose",
            &image,
            "-n",
            "team",
            "--service-account",
            "puller",
            "--manifests",
            env.manifests.path().to_str().unwrap(),
            "--insecure-registry",
            &front.host(),
            "--cri-endpoint",
            "off",
        ],
        "info",
        scratch.path(),
    );
    // The registry's answer and the file's path are there, escaped.
    assert!(
        check.stdout.contains("NotFound"),
        "{}\n{}",
        check.stdout,
        check.stderr
    );
    // The registry's message is cleaned where it is read (controls dropped, as the registry
    // adapter does with every message it quotes); the file's path is escaped where it is shown.
    assert!(
        check
            .stdout
            .contains("MANIFEST_UNKNOWN: ]0;pwned manifest unknown"),
        "{}",
        check.stdout
    );
    assert!(
        check
            .stdout
            .contains("cfg\\u{1b}]0;pwned\\u{7}/config.json"),
        "{}",
        check.stdout
    );
    assert!(
        diagnose.stdout.contains("]0;pwned manifest unknown"),
        "{}\n{}",
        diagnose.stdout,
        diagnose.stderr
    );
    for (what, out) in [("check", &check.stdout), ("diagnose", &diagnose.stdout)] {
        let controls: Vec<char> = out
            .chars()
            .filter(|c| c.is_control() && *c != '\n')
            .collect();
        assert!(
            controls.is_empty(),
            "{what} printed control characters {controls:?}:\n{out}"
        );
    }
    env.assert_no_leak(
        &[
            &check.stdout,
            &check.stderr,
            &diagnose.stdout,
            &diagnose.stderr,
        ],
        &[PASSWORD, BEARER_TOKEN],
    );
}
