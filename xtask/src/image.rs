//! `cargo xtask image`: the agent's OCI image without Docker. Builds the release binary, strips
//! a copy into `target/image/pullgate`, and hands it to the test crate's builder (`pullgate-env
//! image`, `tests/src/agent_image.rs`), whose last line of output is the archive's path.

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CA bundle the image carries (Debian's `ca-certificates`).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the stripped binary and the archive go, relative to the workspace root. Keep in step
/// with `tests/src/agent_image.rs` (`output_dir`).
const OUT: &str = "target/image";

/// `extra`: the builder's flags (`--push REGISTRY/REPO[:TAG]`, `--user U`, `--plain-http`,
/// `--out FILE`); the push password comes from `PULLGATE_PUSH_PASSWORD`.
pub fn image(extra: &[String]) -> Result<()> {
    if !Path::new(CA_BUNDLE).is_file() {
        eprintln!("xtask image: installing ca-certificates ({CA_BUNDLE} is missing)");
        crate::apt_install(&["ca-certificates"])?;
    }
    if !crate::on_path("strip") {
        eprintln!("xtask image: installing binutils (strip)");
        crate::apt_install(&["binutils"])?;
    }
    crate::cargo(&["build", "--release", "-p", "pullgate", "--bin", "pullgate"])?;
    let release = target_dir().join("release/pullgate");
    std::fs::create_dir_all(OUT).with_context(|| format!("mkdir -p {OUT}"))?;
    let stripped = Path::new(OUT).join("pullgate");
    crate::run(
        Command::new("strip")
            .args(["--strip-all", "-o"])
            .arg(&stripped)
            .arg(&release),
    )?;
    let mut args = vec![
        "run",
        "--quiet",
        "-p",
        "pullgate-testenv",
        "--bin",
        "pullgate-env",
        "--",
        "image",
        "--binary",
    ];
    let stripped = stripped.to_string_lossy().into_owned();
    args.push(&stripped);
    args.extend(extra.iter().map(String::as_str));
    crate::cargo(&args)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}
