//! `lb_xdp` on one interface as a pinned XDP link, in native (driver) or
//! generic (skb) mode; an earlier run's link on the same interface is
//! adopted and keeps the mode it was attached in (the kernel's
//! `IFLA_XDP_ATTACHED` says which, and that is what gets reported).

use std::{os::fd::AsFd as _, path::Path};

use anyhow::Context as _;
use aya::{
    programs::{ProgramError, Xdp, XdpMode, links::FdLink},
    sys::SyscallError,
};
use tracing::{info, warn};

use super::{Interface, LinkKind, Pinned, adopt_pinned, link_pin_name};
use crate::{
    config::XdpAttachMode,
    kernel::{devices, report::InterfaceLinks},
};

/// aya's attach mode for a configured one.
pub(crate) const fn aya_mode(mode: XdpAttachMode) -> XdpMode {
    match mode {
        XdpAttachMode::Auto => XdpMode::Default,
        XdpAttachMode::Driver => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
    }
}

/// Why an XDP attach failed.
pub(crate) enum AttachError {
    /// The driver refused native XDP (`errno` is its name): a fallback may
    /// apply (`policy::hook::after_refusal`).
    Refused {
        /// `EOPNOTSUPP`, `ERANGE`, ...
        errno: String,
        /// The error, explained.
        error: anyhow::Error,
    },
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for AttachError {
    fn from(error: anyhow::Error) -> Self {
        Self::Other(error)
    }
}

/// Attaches (or adopts) `program` on `interface` in `mode` (`Driver` or
/// `Skb`); returns the mode in use as the kernel reports it.
pub(crate) fn attach(
    program: &mut Xdp,
    links_dir: &Path,
    interface: &Interface,
    mode: XdpAttachMode,
    report: &mut InterfaceLinks,
) -> Result<&'static str, AttachError> {
    let name = interface.name.as_str();
    let link_pin = links_dir.join(link_pin_name(LinkKind::Xdp, name));
    let prog_fd = program
        .fd()
        .context("lb_xdp program fd")?
        .try_clone()
        .context("duplicating the lb_xdp program fd")?;
    match adopt_pinned(LinkKind::Xdp, &link_pin, interface, prog_fd.as_fd())? {
        Pinned::Adopted => {
            report.adopted.push(name.to_owned());
            let actual = devices::xdp_attached_mode(interface.ifindex)
                .with_context(|| format!("reading the XDP mode of interface {name}"))?
                .unwrap_or("unknown");
            if actual != mode.as_str() {
                warn!(
                    interface = name,
                    attached = actual,
                    wanted = %mode,
                    "the adopted XDP link keeps its attach mode; `daas-lb cleanup` (with daas-lb stopped) and a start attach it anew"
                );
            }
            return Ok(actual);
        }
        Pinned::Replaced => report.replaced.push(name.to_owned()),
        Pinned::Nothing => {}
    }
    let link_id = program
        .attach_to_if_index(interface.ifindex, aya_mode(mode))
        .map_err(|err| attach_error(err, name, mode))?;
    let link: FdLink = program
        .take_link(link_id)
        .context("taking the XDP link")?
        .try_into()
        .with_context(|| {
            format!("the XDP attachment on {name} is not a bpf_link (kernel < 5.9?)")
        })?;
    link.pin(&link_pin)
        .with_context(|| format!("pinning XDP link {}", link_pin.display()))?;
    info!(interface = name, %mode, "attached lb_xdp");
    if !report.replaced.iter().any(|n| n == name) {
        report.attached.push(name.to_owned());
    }
    Ok(mode.as_str())
}

/// The name of the errnos a driver refuses native XDP with.
fn errno_name(errno: i32) -> String {
    match errno {
        libc::EOPNOTSUPP => "EOPNOTSUPP".to_owned(),
        libc::ERANGE => "ERANGE".to_owned(),
        libc::EINVAL => "EINVAL".to_owned(),
        libc::ENOMEM => "ENOMEM".to_owned(),
        libc::ENOSPC => "ENOSPC".to_owned(),
        other => format!("errno {other}"),
    }
}

/// An attach failure, explained for the common causes; a refusal by the
/// driver of native XDP is told apart so that a fallback can apply.
fn attach_error(err: ProgramError, interface: &str, mode: XdpAttachMode) -> AttachError {
    let errno = match &err {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    };
    let busy = matches!(errno, Some(libc::EBUSY | libc::EEXIST));
    let hint = if busy {
        format!(
            "; another XDP program is attached to it (see `bpftool net show dev {interface}`), detach that one first"
        )
    } else {
        "; the driver refused it: use `hook: tc` (or `hook: auto`), or `mode: skb`".to_owned()
    };
    let error = anyhow::Error::new(err).context(format!(
        "xdp.interfaces: attaching lb_xdp to interface {interface} in mode {mode}{hint}"
    ));
    match errno {
        Some(errno)
            if mode == XdpAttachMode::Driver
                && !busy
                && !matches!(errno, libc::EPERM | libc::EACCES | libc::ENODEV) =>
        {
            AttachError::Refused {
                errno: errno_name(errno),
                error,
            }
        }
        _ => AttachError::Other(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_aya() {
        assert_eq!(aya_mode(XdpAttachMode::Auto), XdpMode::Default);
        assert_eq!(aya_mode(XdpAttachMode::Driver), XdpMode::Driver);
        assert_eq!(aya_mode(XdpAttachMode::Skb), XdpMode::Skb);
    }

    #[test]
    fn driver_refusals_are_told_apart_from_other_failures() {
        let syscall = |errno| {
            ProgramError::SyscallError(SyscallError {
                call: "bpf_link_create",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        };
        match attach_error(syscall(libc::EOPNOTSUPP), "eth0", XdpAttachMode::Driver) {
            AttachError::Refused { errno, error } => {
                assert_eq!(errno, "EOPNOTSUPP");
                let text = format!("{error:#}");
                assert!(
                    text.contains("use `hook: tc` (or `hook: auto`), or `mode: skb`"),
                    "{text}"
                );
            }
            AttachError::Other(error) => panic!("not a refusal: {error:#}"),
        }
        assert!(matches!(
            attach_error(syscall(libc::ERANGE), "veth0", XdpAttachMode::Driver),
            AttachError::Refused { errno, .. } if errno == "ERANGE"
        ));
        match attach_error(syscall(libc::EBUSY), "eth0", XdpAttachMode::Driver) {
            AttachError::Other(error) => {
                assert!(format!("{error:#}").contains("bpftool net show dev eth0"));
            }
            AttachError::Refused { .. } => panic!("EBUSY is not a driver refusal"),
        }
        assert!(matches!(
            attach_error(syscall(libc::EOPNOTSUPP), "eth0", XdpAttachMode::Skb),
            AttachError::Other(_)
        ));
    }
}
