//! `pullgate-env image` (`cargo xtask image`): the agent's OCI image archive from the stripped
//! binary, optionally pushed. The archive's path is the last line on stdout.

use anyhow::{Context as _, Result};
use oci_client::secrets::RegistryAuth;
use pullgate_testenv::agent_image::{self, Inputs};
use std::path::Path;

/// Where to push, and as whom.
pub struct Push {
    /// `REGISTRY/REPO[:TAG]`.
    pub target: String,
    pub user: Option<String>,
    /// From `PULLGATE_PUSH_PASSWORD`; never printed.
    pub password: Option<String>,
    pub plain_http: bool,
}

pub fn image(binary: &Path, out: Option<&Path>, push: Option<Push>) -> Result<()> {
    let inputs = Inputs::for_binary(binary)?;
    let image = agent_image::build(&inputs)?;
    let path = out.map_or_else(
        || agent_image::archive_path(&inputs.version),
        Path::to_path_buf,
    );
    image.write(&path)?;
    let archive = std::fs::metadata(&path)
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    let binary_size = std::fs::metadata(binary)?.len();
    eprintln!(
        "image {}: manifest {}, layer {} ({:.1} MiB compressed), binary {:.1} MiB, archive {:.1} MiB",
        image.reference,
        image.manifest_digest(),
        image.layer_digest(),
        mib(image.layer.len() as u64),
        mib(binary_size),
        mib(archive),
    );
    if let Some(push) = push {
        let auth = match (push.user, push.password) {
            (Some(user), Some(password)) => RegistryAuth::Basic(user, password),
            (None, None) => RegistryAuth::Anonymous,
            (Some(_), None) => {
                anyhow::bail!("--user without a password: set PULLGATE_PUSH_PASSWORD")
            }
            (None, Some(_)) => anyhow::bail!("PULLGATE_PUSH_PASSWORD is set without --user"),
        };
        let pushed = pullgate_testenv::block_on(image.push(&push.target, &auth, push.plain_http))?;
        eprintln!("pushed {pushed}");
    }
    println!("{}", path.display());
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
