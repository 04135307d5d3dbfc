//! The two filesystems the data plane stands on: bpffs for the pins and
//! cgroup v2 for the attachment. Finds them, and mounts one at its standard
//! place when it is missing there.
//!
//! Why: `ip netns exec NAME daas-lb run ...` starts the daemon in a new mount
//! namespace with a fresh sysfs on `/sys` (iproute2 remounts `/sys` so that
//! `/sys/class/net` shows the new network namespace). In it `/sys/fs/bpf`
//! and `/sys/fs/cgroup` are the empty directories sysfs provides; nothing is
//! mounted on them. A minimal host may also boot without a bpffs mount.
//!
//! Invariants (what makes mounting safe):
//! - bpffs is mounted only on [`BPFFS_MOUNT`], only when the pin directory
//!   is below it, only when it is not bpffs yet and only when it is an
//!   empty directory: nothing that was visible there is hidden.
//! - cgroup2 is mounted only on [`CGROUP2_MOUNT`], only when no cgroup2 is
//!   mounted anywhere in this mount namespace, and only when that is an
//!   empty directory. cgroup v2 has one hierarchy: the new mount shows the
//!   same cgroups as the host's (from the root of this process's cgroup
//!   namespace), under other paths on hybrid hosts
//!   (`/sys/fs/cgroup/unified/X` there is `/sys/fs/cgroup/X` here).
//! - Each mount is logged. A bpffs mounted here is a new, empty instance
//!   that only this mount namespace sees: its pins, and with them the
//!   attachment, last only as long as the namespace (under `ip netns exec`:
//!   until the daemon exits, crash included), which is logged as a warning.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

/// Where bpffs belongs (and where daas-lb mounts it when missing).
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Where daas-lb mounts cgroup v2 when no cgroup2 is mounted at all.
pub const CGROUP2_MOUNT: &str = "/sys/fs/cgroup";
/// `statfs` magic of bpffs.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `statfs` magic of cgroup v2.
pub const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The mount table of this process's mount namespace.
const MOUNTS: &str = "/proc/self/mounts";

/// What [`ensure_bpffs`] and [`ensure_cgroup2`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// The filesystem was there already.
    Present,
    /// daas-lb mounted it now.
    MountedNow,
}

/// Makes sure `pin_dir` is, or would be created, on bpffs: mounts bpffs on
/// [`BPFFS_MOUNT`] when `pin_dir` is below it and it is an empty directory
/// that is not bpffs yet (see the module's invariants).
///
/// # Errors
///
/// When `pin_dir`'s nearest existing ancestor is not bpffs and that cannot
/// be mended under the rules above, or the mount fails.
pub fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<Mount> {
    let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(pin_dir);
    if fs_magic(existing)? == BPF_FS_MAGIC {
        return Ok(Mount::Present);
    }
    let mount_point = Path::new(BPFFS_MOUNT);
    if !pin_dir.starts_with(mount_point) {
        bail!(
            "{} is not bpffs (bpffs_dir {} must be on a bpf filesystem; daas-lb mounts one \
             itself only at {BPFFS_MOUNT}: mount it with `mount -t bpf bpf DIR`)",
            existing.display(),
            pin_dir.display()
        );
    }
    if !is_empty_dir(mount_point)? {
        bail!(
            "{BPFFS_MOUNT} is not bpffs and not an empty directory to mount it on \
             (mount it with `mount -t bpf bpf {BPFFS_MOUNT}`)"
        );
    }
    mount("bpf", mount_point, "bpf", 0, Some("mode=0700"))?;
    warn!(
        mount_point = BPFFS_MOUNT,
        pin_dir = %pin_dir.display(),
        "no bpffs was mounted here (e.g. under `ip netns exec`, which remounts /sys): mounted a \
         new one; its pins, and so the attachment, last only as long as this mount namespace"
    );
    Ok(Mount::MountedNow)
}

/// Makes sure a cgroup2 filesystem is mounted in this mount namespace:
/// when none is, mounts one on [`CGROUP2_MOUNT`] if that is an empty
/// directory (see the module's invariants).
///
/// # Errors
///
/// When no cgroup2 is mounted and [`CGROUP2_MOUNT`] is not an empty
/// directory, or the mount fails.
pub fn ensure_cgroup2() -> anyhow::Result<Mount> {
    if first_cgroup2_mount(&read_mounts()?).is_some() {
        return Ok(Mount::Present);
    }
    let mount_point = Path::new(CGROUP2_MOUNT);
    if !is_empty_dir(mount_point)? {
        bail!(
            "no cgroup2 filesystem is mounted and {CGROUP2_MOUNT} is not an empty directory to \
             mount one on: mount one (`mount -t cgroup2 none DIR`) and pass --cgroup DIR/..."
        );
    }
    mount(
        "cgroup2",
        mount_point,
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    info!(
        mount_point = CGROUP2_MOUNT,
        "no cgroup2 was mounted here (e.g. under `ip netns exec`, which remounts /sys): mounted \
         it; cgroup paths are relative to this mount"
    );
    Ok(Mount::MountedNow)
}

/// The first cgroup2 mount point of this mount namespace: the default
/// cgroup to attach to.
///
/// # Errors
///
/// When the mount table cannot be read or holds no cgroup2.
pub fn default_cgroup() -> anyhow::Result<PathBuf> {
    first_cgroup2_mount(&read_mounts()?)
        .context("no cgroup2 filesystem is mounted (mount one, or pass --cgroup)")
}

fn read_mounts() -> anyhow::Result<String> {
    fs::read_to_string(MOUNTS).with_context(|| format!("reading {MOUNTS}"))
}

fn first_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "cgroup2").then(|| PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// `statfs(path).f_type`.
///
/// # Errors
///
/// When `statfs` fails (e.g. `path` does not exist).
pub fn fs_magic(path: &Path) -> anyhow::Result<i64> {
    let c_path = c_path(path)?;
    // SAFETY: an all-zero `statfs` is a valid value for the kernel to fill in.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type)
}

/// Whether `path` is a directory with no entries.
fn is_empty_dir(path: &Path) -> anyhow::Result<bool> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("listing {}", path.display())),
    }
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

/// `mount(source, target, fs_type, flags, data)`.
fn mount(
    source: &str,
    target: &Path,
    fs_type: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> anyhow::Result<()> {
    let what = || format!("mounting {fs_type} on {}", target.display());
    let source = CString::new(source).with_context(what)?;
    let c_target = c_path(target)?;
    let c_fs_type = CString::new(fs_type).with_context(what)?;
    let data = data.map(CString::new).transpose().with_context(what)?;
    let data_ptr = data
        .as_ref()
        .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call
    // (or null for `data`, which mount(2) accepts).
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            c_target.as_ptr(),
            c_fs_type.as_ptr(),
            flags,
            data_ptr,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("{} (needs CAP_SYS_ADMIN)", what()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_cgroup2_mount() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup2 /other cgroup2 rw 0 0\n";
        assert_eq!(
            first_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(first_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn a_pin_dir_outside_sys_fs_bpf_on_another_filesystem_is_refused_without_a_mount() {
        let dir = std::env::temp_dir().join(format!("daas-lb-mounts-{}", std::process::id()));
        let err = ensure_bpffs(&dir.join("pins")).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("is not bpffs") && text.contains("mount -t bpf bpf DIR"),
            "{text}"
        );
    }
}
