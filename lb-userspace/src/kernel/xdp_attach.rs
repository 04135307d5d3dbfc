//! Attaching `lb_xdp` to the interfaces of the `xdp` block with one pinned
//! `bpf_link` each, adopting the links a crashed controller left, and
//! detaching the links of interfaces that are no longer configured.
//!
//! Each link is pinned at `<pin dir>/links/xdp@<interface name>`, next to the
//! cgroup links. A link pinned for the same interface (same ifindex) is
//! adopted with `BPF_LINK_UPDATE`: the new program replaces the old one
//! without a moment without XDP. A link whose interface is gone or was
//! recreated (another ifindex) is unpinned and a new one attached.

use std::{
    ffi::CString,
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    programs::{ProgramError, Xdp, XdpMode, links::FdLink},
    sys::SyscallError,
};
use tracing::{info, warn};

use crate::{
    config::{XdpAttachMode, XdpSettings},
    kernel::{bpf_sys, report::AttachReport},
};

/// Prefix of the pin file names of XDP links.
const LINK_PREFIX: &str = "xdp@";

/// A configured interface and its index in the controller's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// Name as configured.
    pub(crate) name: String,
    /// `if_nametoindex` of the name.
    pub(crate) ifindex: u32,
}

/// Pin file name of the XDP link on `interface`.
pub(crate) fn link_pin_name(interface: &str) -> String {
    format!("{LINK_PREFIX}{interface}")
}

/// The interface an XDP link pin file is named after, if `file_name` is one.
pub(crate) fn pinned_interface(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(LINK_PREFIX)
        .filter(|name| !name.is_empty())
}

/// aya's attach mode for a configured one.
pub(crate) const fn aya_mode(mode: XdpAttachMode) -> XdpMode {
    match mode {
        XdpAttachMode::Auto => XdpMode::Default,
        XdpAttachMode::Driver => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
    }
}

/// Looks up every configured interface; an unknown name is an error that
/// names it (checked before anything is loaded).
pub(crate) fn resolve(settings: &XdpSettings) -> anyhow::Result<Vec<Interface>> {
    settings
        .interfaces
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let ifindex = ifindex(name)
                .with_context(|| format!("xdp.interfaces[{index}]: interface {name}"))?;
            Ok(Interface {
                name: name.clone(),
                ifindex,
            })
        })
        .collect()
}

/// `if_nametoindex`, with the reason when the interface does not exist.
fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c_name = CString::new(name).context("the name contains a NUL byte")?;
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODEV) {
            bail!(
                "does not exist in daas-lb's network namespace (`ip link show` lists the interfaces)"
            );
        }
        return Err(err).context("if_nametoindex");
    }
    Ok(index)
}

/// The XDP link pins under `links_dir`, as (interface name, path).
pub(crate) fn pinned_links(links_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", links_dir.display())),
    };
    let mut links = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", links_dir.display()))?;
        let file_name = entry.file_name();
        if let Some(interface) = file_name.to_str().and_then(pinned_interface) {
            links.push((interface.to_owned(), entry.path()));
        }
    }
    links.sort();
    Ok(links)
}

/// Attaches (or adopts) `program` on every interface and detaches the XDP
/// links of interfaces not in `interfaces`. `program` must be loaded.
pub(crate) fn attach_all(
    program: &mut Xdp,
    links_dir: &Path,
    interfaces: &[Interface],
    mode: XdpAttachMode,
    report: &mut AttachReport,
) -> anyhow::Result<()> {
    for interface in interfaces {
        attach_one(program, links_dir, interface, mode, report)?;
    }
    let keep: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    report.xdp_detached = detach_except(links_dir, &keep)?;
    for interface in &report.xdp_detached {
        info!(
            interface,
            "detached the XDP link of an interface no longer configured"
        );
    }
    Ok(())
}

fn attach_one(
    program: &mut Xdp,
    links_dir: &Path,
    interface: &Interface,
    mode: XdpAttachMode,
    report: &mut AttachReport,
) -> anyhow::Result<()> {
    let name = interface.name.as_str();
    let link_pin = links_dir.join(link_pin_name(name));
    if link_pin.exists() {
        let link = bpf_sys::obj_get(&link_pin)?;
        let info = bpf_sys::link_info(link.as_fd())
            .with_context(|| format!("reading link {}", link_pin.display()))?;
        if info.link_type == bpf_sys::LINK_TYPE_XDP && info.ifindex == interface.ifindex {
            let prog_fd = program.fd().context("lb_xdp program fd")?;
            bpf_sys::link_update(link.as_fd(), prog_fd.as_fd())
                .with_context(|| format!("swapping lb_xdp into link {}", link_pin.display()))?;
            info!(
                interface = name,
                link_id = info.id,
                "adopted existing XDP link (its attach mode is kept)"
            );
            report.xdp_adopted.push(name.to_owned());
            return Ok(());
        }
        warn!(
            interface = name,
            link_id = info.id,
            link_ifindex = info.ifindex,
            ifindex = interface.ifindex,
            "pinned XDP link belongs to another (or a vanished) interface; replacing it"
        );
        fs::remove_file(&link_pin).with_context(|| format!("unpinning {}", link_pin.display()))?;
        drop(link);
        report.xdp_replaced.push(name.to_owned());
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
    report.xdp_attached.push(name.to_owned());
    Ok(())
}

/// An attach failure, explained for the common causes.
fn attach_error(err: ProgramError, interface: &str, mode: XdpAttachMode) -> anyhow::Error {
    let errno = match &err {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    };
    let hint = match errno {
        Some(libc::EOPNOTSUPP) if mode == XdpAttachMode::Driver => {
            "; its driver has no native XDP support: use `mode: skb` (or `auto`)".to_owned()
        }
        Some(libc::EBUSY | libc::EEXIST) => format!(
            "; another XDP program is attached to it (see `bpftool net show dev {interface}`), detach that one first"
        ),
        _ => String::new(),
    };
    anyhow::Error::new(err).context(format!(
        "xdp.interfaces: attaching lb_xdp to interface {interface} in mode {mode}{hint}"
    ))
}

/// Unpins (which detaches) the XDP links of interfaces not in `keep`;
/// returns their interface names.
pub(crate) fn detach_except(links_dir: &Path, keep: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut detached = Vec::new();
    for (interface, path) in pinned_links(links_dir)? {
        if keep.contains(&interface.as_str()) {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
        }
        detached.push(interface);
    }
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        assert_eq!(link_pin_name("eth0"), "xdp@eth0");
        assert_eq!(pinned_interface("xdp@eth0"), Some("eth0"));
        assert_eq!(pinned_interface("xdp@veth-a.10"), Some("veth-a.10"));
        assert_eq!(pinned_interface("xdp@"), None);
        assert_eq!(pinned_interface("lb_connect4"), None);
    }

    #[test]
    fn modes_map_to_aya() {
        assert_eq!(aya_mode(XdpAttachMode::Auto), XdpMode::Default);
        assert_eq!(aya_mode(XdpAttachMode::Driver), XdpMode::Driver);
        assert_eq!(aya_mode(XdpAttachMode::Skb), XdpMode::Skb);
    }

    #[test]
    fn unknown_interfaces_are_named() {
        let settings = XdpSettings {
            interfaces: vec!["lo".to_owned(), "nosuchif0".to_owned()],
            mode: XdpAttachMode::Auto,
            snat_ipv4: None,
            snat_ipv6: None,
            snat_ports: crate::config::PortRange::DEFAULT_SNAT,
            flow_timeouts: crate::config::FlowTimeouts::DEFAULT,
            flow_gc_interval: crate::config::FlowTimeouts::DEFAULT_GC_INTERVAL,
        };
        let err = format!("{:#}", resolve(&settings).unwrap_err());
        assert!(
            err.starts_with("xdp.interfaces[1]: interface nosuchif0: does not exist"),
            "{err}"
        );
        let settings = XdpSettings {
            interfaces: vec!["lo".to_owned()],
            ..settings
        };
        assert_eq!(resolve(&settings).unwrap()[0].ifindex, 1);
    }

    #[test]
    fn detaching_removes_only_other_xdp_pins() {
        let dir = std::env::temp_dir().join(format!("daas-lb-xdp-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in ["xdp@eth0", "xdp@eth1", "lb_connect4"] {
            fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(
            pinned_links(&dir).unwrap(),
            vec![
                ("eth0".to_owned(), dir.join("xdp@eth0")),
                ("eth1".to_owned(), dir.join("xdp@eth1"))
            ]
        );
        assert_eq!(detach_except(&dir, &["eth0"]).unwrap(), ["eth1"]);
        assert!(dir.join("xdp@eth0").exists());
        assert!(dir.join("lb_connect4").exists());
        assert!(!dir.join("xdp@eth1").exists());
        assert_eq!(detach_except(&dir, &[]).unwrap(), ["eth0"]);
        fs::remove_dir_all(&dir).unwrap();
        assert!(pinned_links(&dir).unwrap().is_empty());
    }
}
