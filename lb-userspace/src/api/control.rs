//! The control socket's file: where every change to the load balancer
//! comes in (`control_socket`, default `/run/daas-lb/control.sock`).
//!
//! [`bind`] makes it safe before anyone can connect:
//! - its directory is created `0700` (`0710` with the group of
//!   `control_group`, so members can reach the socket) if it is missing; an
//!   existing one must be a real directory owned by root (or the daemon's
//!   user) that nobody else can write to;
//! - a socket file left by a crashed run (nobody answers on it) is replaced;
//!   a socket some running process answers on is refused (naming its pid),
//!   and so is anything that is not a socket;
//! - the new socket is `0600` (`0660` with `control_group`'s group).
//!
//! The file is removed when [`ControlSocket`] is dropped, unless another
//! process has replaced it in the meantime.

use std::{
    fs::{self, DirBuilder},
    io,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::config::ControlGroup;

/// The bound control socket's file; removed on drop.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    /// (device, inode) of the file we created.
    id: (u64, u64),
}

impl ControlSocket {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                if let Err(err) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %err, "cannot remove the control socket");
                }
            }
            _ => {}
        }
    }
}

/// Binds the control socket at `path` (see the module docs).
pub fn bind(
    path: &Path,
    group: Option<&ControlGroup>,
) -> anyhow::Result<(UnixListener, ControlSocket)> {
    let dir = path
        .parent()
        .with_context(|| format!("control_socket {} has no directory", path.display()))?;
    prepare_dir(dir, group)?;
    remove_stale(path)?;
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    let (mode, gid) = match group {
        Some(group) => (0o660, Some(group.gid)),
        None => (0o600, None),
    };
    set_owner_and_mode(path, gid, mode)?;
    let meta = fs::symlink_metadata(path)
        .with_context(|| format!("control socket {}: cannot stat it", path.display()))?;
    Ok((
        listener,
        ControlSocket {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        },
    ))
}

/// Creates `dir` private (see the module docs), or checks the existing one.
fn prepare_dir(dir: &Path, group: Option<&ControlGroup>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    match fs::symlink_metadata(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    format!("creating the control socket directory {}", dir.display())
                })?;
            let (mode, gid) = match group {
                Some(group) => (0o710, Some(group.gid)),
                None => (0o700, None),
            };
            set_owner_and_mode(dir, gid, mode)
        }
        Err(err) => Err(err)
            .with_context(|| format!("control socket directory {}: cannot stat it", dir.display())),
        Ok(meta) => {
            if !meta.file_type().is_dir() {
                bail!(
                    "control socket directory {} is not a directory (a symlink or file is not accepted)",
                    dir.display()
                );
            }
            if meta.uid() != 0 && meta.uid() != euid {
                bail!(
                    "control socket directory {} belongs to uid {}; it must belong to root, or \
                     another user could replace the socket",
                    dir.display(),
                    meta.uid()
                );
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o022 != 0 {
                bail!(
                    "control socket directory {} has mode {mode:04o}: other users can create files \
                     in it and could replace the socket; use a directory only root can write to \
                     (the default /run/daas-lb is created 0700)",
                    dir.display()
                );
            }
            if let Some(group) = group {
                let group_can_enter =
                    (meta.gid() == group.gid && mode & 0o010 != 0) || mode & 0o001 != 0;
                if !group_can_enter {
                    warn!(
                        dir = %dir.display(),
                        mode = format!("{mode:04o}"),
                        control_group = %group.name,
                        "members of control_group cannot enter the control socket's directory; \
                         `chgrp {} {}` and `chmod 0710 {}` let them",
                        group.name,
                        dir.display(),
                        dir.display()
                    );
                }
            }
            Ok(())
        }
    }
}

/// Removes a socket file nobody answers on; refuses a live socket or any
/// other kind of file.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => {
            return Err(err)
                .with_context(|| format!("control socket {}: cannot stat it", path.display()));
        }
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        bail!(
            "control socket {} exists and is not a socket; refusing to replace it (remove it, or \
             set control_socket to another path)",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(stream) => {
            let pid = peer_pid(&stream)
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            bail!(
                "another daas-lb{pid} is serving the control socket {}; stop it first, or give \
                 this one another control_socket",
                path.display()
            )
        }
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path)
                .with_context(|| format!("removing the stale control socket {}", path.display()))?;
            info!(path = %path.display(), "replaced a control socket left behind by an earlier run");
            Ok(())
        }
        Err(err) => Err(err).with_context(|| {
            format!(
                "control socket {}: cannot tell whether another daas-lb serves it",
                path.display()
            )
        }),
    }
}

/// The pid of the process at the other end of `stream`.
fn peer_pid(stream: &UnixStream) -> Option<i32> {
    use std::os::fd::AsRawFd as _;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is valid for `len` bytes, the size of `ucred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

/// `chown :gid` (when given) and `chmod mode` on a file we just created.
fn set_owner_and_mode(path: &Path, gid: Option<u32>, mode: u32) -> anyhow::Result<()> {
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(path, None, Some(gid)).with_context(|| {
            format!("giving {} to group {gid} (needs CAP_CHOWN)", path.display())
        })?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:04o} on {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("daas-lb-control-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_new_socket_is_private_replaces_a_stale_one_and_refuses_a_live_one() {
        let dir = temp("bind");
        let path = dir.join("run").join("control.sock");
        let (listener, socket) = bind(&path, None).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);

        // A second daemon on the same socket is refused, naming us.
        let err = format!("{:#}", bind(&path, None).unwrap_err());
        assert!(
            err.contains(&format!("another daas-lb (pid {})", std::process::id())),
            "{err}"
        );
        assert!(path.exists(), "the live socket must survive the refusal");

        // A crashed run leaves the file behind, with nobody listening.
        drop(listener);
        std::mem::forget(socket);
        let (_listener, socket) = bind(&path, None).unwrap();
        assert_eq!(mode(&path), 0o600);
        drop(socket);
        assert!(!path.exists(), "dropping the guard removes the socket");

        // Something that is not a socket is never replaced.
        fs::write(&path, "precious").unwrap();
        let err = format!("{:#}", bind(&path, None).unwrap_err());
        assert!(err.contains("exists and is not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn directories_others_can_write_to_are_refused() {
        let dir = temp("open-dir");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = format!("{:#}", bind(&dir.join("control.sock"), None).unwrap_err());
        assert!(
            err.contains("has mode 1777: other users can create files"),
            "{err}"
        );

        let target = temp("target");
        fs::create_dir_all(&target).unwrap();
        let link = temp("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = format!("{:#}", bind(&link.join("control.sock"), None).unwrap_err());
        assert!(err.contains("is not a directory"), "{err}");
        for d in [&dir, &target] {
            fs::remove_dir_all(d).unwrap();
        }
        fs::remove_file(&link).unwrap();
    }

    #[tokio::test]
    async fn a_control_group_gets_the_directory_and_the_socket() {
        let dir = temp("group");
        let path = dir.join("run").join("control.sock");
        // Our own group: chown to it works as root and as any user.
        // SAFETY: getgid has no preconditions.
        let gid = unsafe { libc::getgid() };
        let group = ControlGroup {
            name: gid.to_string(),
            gid,
        };
        let (_listener, _socket) = bind(&path, Some(&group)).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o710);
        assert_eq!(mode(&path), 0o660);
        fs::remove_dir_all(&dir).unwrap();
    }
}
