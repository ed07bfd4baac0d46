//! The size and free space of a file system (statvfs), for the disk headroom: the CRI's
//! `ImageFsInfo` names the image filesystem's mountpoint and its usage, but not its capacity.

use crate::decide::runtime::ImageFsSpace;

/// Free and total bytes of the file system at `path` (statvfs: `f_bavail` and `f_blocks` in
/// `f_frsize` units, as the kubelet's cadvisor reads them); `None` when it cannot be read. The
/// standard library has no statvfs; the one unsafe call is confined here.
#[allow(unsafe_code)]
pub fn space(path: &str) -> Option<ImageFsSpace> {
    let c_path = std::ffi::CString::new(path).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `st` a buffer of the right type that
    // statvfs fills entirely on success; it is read only then.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        tracing::debug!(path, error = %std::io::Error::last_os_error(), "statvfs of the image filesystem failed");
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)]
    let unit = u64::from(st.f_frsize);
    #[allow(clippy::useless_conversion)]
    Some(ImageFsSpace {
        free_bytes: u64::from(st.f_bavail).saturating_mul(unit),
        capacity_bytes: u64::from(st.f_blocks).saturating_mul(unit),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_real_file_system_has_a_size_and_a_missing_path_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let space = super::space(dir.path().to_str().unwrap()).unwrap();
        assert!(space.capacity_bytes > 0 && space.free_bytes <= space.capacity_bytes);
        assert_eq!(super::space("/no/such/path/for/pullgate"), None);
        assert_eq!(super::space("nul\0inside"), None);
    }
}
