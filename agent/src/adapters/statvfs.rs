//! The size and free space of the runtime's image filesystem (statvfs), for the disk headroom: the
//! CRI's `ImageFsInfo` names the filesystem's mountpoint and its usage, but not its capacity.
//!
//! The mountpoint is a path on the host. In the shipped DaemonSet the agent runs in a container,
//! where the host's directories are found only where they are mounted: `--host-root PATH` says
//! under which directory (the DaemonSet mounts containerd's root there, read-only), and the path
//! read is `PATH` + the mountpoint ([`host_path`], the one join rule). The mountpoint comes from
//! the runtime, so it is not trusted: only an absolute path with no `.`, `..` or NUL component is
//! joined; anything else cannot be read.
//!
//! [`ImageFsProbe`] reads it, says once per distinct path why it cannot (naming the path, the flag
//! and the consequence: `--min-free-disk` is not enforced), and keeps the last reading for the
//! gauges.

use crate::decide::runtime::ImageFsSpace;
use crate::model::printable::printable_line;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How much of a value the runtime sent is shown (in a warning, in a metric label).
const SHOWN_CHARS: usize = 256;
/// Distinct paths whose failure is remembered as said; past this, failures go to the debug log
/// only (a runtime sending ever new mountpoints cannot grow memory or flood the log).
const MAX_SAID: usize = 64;

/// Why the image filesystem's size cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatvfsError {
    #[error("the runtime names no image filesystem mountpoint")]
    NoMountpoint,
    #[error(
        "the runtime's image filesystem mountpoint `{0}` is not an absolute path without `.`, `..` or NUL"
    )]
    NotNormalised(String),
    #[error("cannot read the image filesystem's size at {path}: {cause}")]
    Unreadable { path: String, cause: String },
    #[error(
        "--host-root `{0}`: expected an absolute path (the directory the host's / is found under)"
    )]
    InvalidHostRoot(String),
}

/// `--host-root`: the directory under which the host's paths are found (absolute, no NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl FromStr for HostRoot {
    type Err = StatvfsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.starts_with('/') || s.contains('\0') {
            return Err(StatvfsError::InvalidHostRoot(shown(s)));
        }
        Ok(Self(PathBuf::from(s)))
    }
}

/// Where the agent reads the runtime's `mountpoint`: under `host_root` when given, else as the
/// runtime reports it. Repeated and trailing slashes are harmless and dropped; a relative path, a
/// `.` or `..` component or a NUL is refused (it could name a path outside `host_root`).
pub fn host_path(host_root: Option<&HostRoot>, mountpoint: &str) -> Result<PathBuf, StatvfsError> {
    if mountpoint.is_empty() {
        return Err(StatvfsError::NoMountpoint);
    }
    let refused = || StatvfsError::NotNormalised(shown(mountpoint));
    if !mountpoint.starts_with('/') || mountpoint.contains('\0') {
        return Err(refused());
    }
    let mut path = host_root.map_or_else(|| PathBuf::from("/"), |r| r.0.clone());
    for part in mountpoint.split('/') {
        match part {
            "" => {}
            "." | ".." => return Err(refused()),
            part => path.push(part),
        }
    }
    Ok(path)
}

/// Free and total bytes of the file system at `path` (statvfs: `f_bavail` and `f_blocks` in
/// `f_frsize` units, as the kubelet's cadvisor reads them). The standard library has no statvfs;
/// the one unsafe call is confined here.
#[allow(unsafe_code)]
fn statvfs(path: &Path) -> Result<ImageFsSpace, StatvfsError> {
    use std::os::unix::ffi::OsStrExt as _;
    let unreadable = |cause: String| StatvfsError::Unreadable {
        path: shown(&path.to_string_lossy()),
        cause,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| unreadable("the path contains NUL".into()))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` a buffer of the right type that
    // statvfs fills entirely on success; it is read only then.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(unreadable(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)]
    let unit = u64::from(st.f_frsize);
    #[allow(clippy::useless_conversion)]
    Ok(ImageFsSpace {
        free_bytes: u64::from(st.f_bavail).saturating_mul(unit),
        capacity_bytes: u64::from(st.f_blocks).saturating_mul(unit),
    })
}

/// A value the runtime sent, safe to print and bounded.
fn shown(value: &str) -> String {
    printable_line(&value.chars().take(SHOWN_CHARS).collect::<String>())
}

/// The last look at the image filesystem, for the gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFsReading {
    /// The mountpoint as the runtime reports it (printable, at most 256 characters).
    pub mountpoint: String,
    /// Its space, or `None` when it could not be read.
    pub space: Option<ImageFsSpace>,
}

/// Reads the image filesystem the runtime names, where the agent can see it.
#[derive(Debug, Default)]
pub struct ImageFsProbe {
    host_root: Option<HostRoot>,
    /// The paths (or refused values) whose failure was said.
    said: Mutex<HashSet<String>>,
    last: Mutex<Option<ImageFsReading>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ImageFsProbe {
    pub fn new(host_root: Option<HostRoot>) -> Self {
        Self {
            host_root,
            ..Self::default()
        }
    }

    /// The space of the filesystem at the runtime's `mountpoint` (empty: none named); `None`, and
    /// a warning the first time for this path, when it cannot be read. Blocking (statvfs).
    pub fn read(&self, mountpoint: &str) -> Option<ImageFsSpace> {
        let result = host_path(self.host_root.as_ref(), mountpoint).and_then(|p| statvfs(&p));
        if !mountpoint.is_empty() {
            *lock(&self.last) = Some(ImageFsReading {
                mountpoint: shown(mountpoint),
                space: result.as_ref().ok().copied(),
            });
        }
        match result {
            Ok(space) => Some(space),
            Err(e) => {
                self.say_once(&e);
                None
            }
        }
    }

    /// The last reading, if the runtime ever named a mountpoint.
    pub fn last(&self) -> Option<ImageFsReading> {
        lock(&self.last).clone()
    }

    fn say_once(&self, e: &StatvfsError) {
        let key = match e {
            StatvfsError::Unreadable { path, .. } => path.clone(),
            other => other.to_string(),
        };
        let first = {
            let mut said = lock(&self.said);
            said.len() < MAX_SAID && said.insert(key)
        };
        if first {
            tracing::warn!("{}", warning(e, self.host_root.as_ref()));
        } else {
            tracing::debug!(error = %e, "the image filesystem's size cannot be read");
        }
    }
}

/// The warning for `e`: what was tried, the consequence, and how to mount it.
fn warning(e: &StatvfsError, host_root: Option<&HostRoot>) -> String {
    let how = match (e, host_root) {
        (StatvfsError::NoMountpoint | StatvfsError::NotNormalised(_), _) => {
            "nothing was read".to_string()
        }
        (_, Some(root)) => format!(
            "the path read is --host-root {} + the runtime's mountpoint: mount the host's directory there, read-only (manifests/base/daemonset.yaml mounts /var/lib/containerd)",
            root.path().display()
        ),
        (_, None) => "the path read is the runtime's mountpoint as it reports it: in a container, mount the host's directory under a directory and pass it as --host-root".to_string(),
    };
    format!("{e}; --min-free-disk is not enforced, pulls go ahead ({how})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_rule() {
        let root: HostRoot = "/host".parse().unwrap();
        let overlay = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs";
        for (host_root, mountpoint, expected) in [
            (Some(&root), overlay, Some(format!("/host{overlay}"))),
            (None, overlay, Some(overlay.to_string())),
            (
                Some(&root),
                "/var/lib/containerd/",
                Some("/host/var/lib/containerd".into()),
            ),
            (Some(&root), "//var//lib", Some("/host/var/lib".into())),
            (Some(&root), "/", Some("/host".into())),
            (None, "/", Some("/".into())),
            (Some(&root), "/var/lib/../../etc", None),
            (Some(&root), "/var/..", None),
            (Some(&root), "/var/./lib", None),
            (Some(&root), "var/lib/containerd", None),
            (None, "var/lib/containerd", None),
            (Some(&root), "/var/lib\0/x", None),
            (Some(&root), "", None),
        ] {
            assert_eq!(
                host_path(host_root, mountpoint)
                    .ok()
                    .map(|p| p.display().to_string()),
                expected,
                "{host_root:?} {mountpoint:?}"
            );
        }
        assert_eq!(host_path(None, ""), Err(StatvfsError::NoMountpoint));
        // A refused value is named, printable and bounded.
        let e = host_path(Some(&root), "../\u{1b}]0;x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`../\\u{1b}]0;x`"), "{e}");
        let long = format!("rel/{}", "a".repeat(10_000));
        assert!(host_path(None, &long).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn the_warning_names_the_path_the_flag_and_the_consequence() {
        let root: HostRoot = "/host".parse().unwrap();
        let unreadable = StatvfsError::Unreadable {
            path: "/host/var/lib/containerd/x".into(),
            cause: "No such file or directory (os error 2)".into(),
        };
        for (e, host_root, words) in [
            (
                &unreadable,
                Some(&root),
                &[
                    "at /host/var/lib/containerd/x: No such file",
                    "--host-root /host +",
                ][..],
            ),
            (&unreadable, None, &["pass it as --host-root"][..]),
            (
                &StatvfsError::NoMountpoint,
                Some(&root),
                &["names no image filesystem mountpoint", "nothing was read"][..],
            ),
        ] {
            let w = warning(e, host_root);
            assert!(
                w.contains("--min-free-disk is not enforced, pulls go ahead"),
                "{w}"
            );
            for word in words {
                assert!(w.contains(word), "{word:?} not in {w}");
            }
        }
    }

    #[test]
    fn host_root_parsing() {
        assert_eq!(
            "/host".parse::<HostRoot>().unwrap().path(),
            Path::new("/host")
        );
        for bad in ["host", "", "./host", "/ho\0st"] {
            let e = bad.parse::<HostRoot>().unwrap_err().to_string();
            assert!(e.contains("--host-root"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_real_file_system_has_a_size_and_a_missing_path_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let space = statvfs(dir.path()).unwrap();
        assert!(space.capacity_bytes > 0 && space.free_bytes <= space.capacity_bytes);
        let e = statvfs(Path::new("/no/such/path/for/pullgate")).unwrap_err();
        assert!(e.to_string().contains("/no/such/path/for/pullgate"), "{e}");
    }

    #[test]
    fn the_probe_reads_under_the_host_root_and_keeps_the_last_reading() {
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(host.path().join("var/lib/containerd")).unwrap();
        let root: HostRoot = host.path().to_str().unwrap().parse().unwrap();
        let probe = ImageFsProbe::new(Some(root));
        assert_eq!(probe.last(), None);
        assert!(probe.read("/var/lib/containerd").is_some());
        assert!(probe.last().unwrap().space.is_some());
        // Not under the host root: unreadable, and the gauges are told so.
        assert_eq!(probe.read("/var/lib/other"), None);
        assert_eq!(
            probe.last(),
            Some(ImageFsReading {
                mountpoint: "/var/lib/other".into(),
                space: None
            })
        );
        assert_eq!(probe.read("/var/lib/../containerd"), None);
        // Said once per path, and never more than MAX_SAID paths remembered.
        for i in 0..(MAX_SAID + 10) {
            assert_eq!(probe.read(&format!("/missing/{i}")), None);
            assert_eq!(probe.read(&format!("/missing/{i}")), None);
        }
        assert_eq!(lock(&probe.said).len(), MAX_SAID);
    }
}
