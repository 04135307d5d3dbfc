//! The per-interface links of the forwarder for remote clients: `lb_xdp` as
//! an XDP link ([`xdp`]) or `lb_tc` as a tcx link on tc ingress ([`tc`]),
//! one per interface of the `xdp` block, the hook chosen by
//! `policy::hook` from what `kernel::devices` says about the device.
//!
//! Each link is pinned at `<pin dir>/links/<kind>@<interface name>` (`xdp@`
//! or `tc@`), next to the cgroup links. A link pinned for the same
//! interface (same ifindex) is adopted with `BPF_LINK_UPDATE`: the new
//! program replaces the old one without a moment without forwarding. A link
//! whose interface is gone or was recreated (another ifindex) is unpinned
//! and a new one attached. Links of interfaces no longer configured, and the
//! old link of an interface that switched hook, are detached after every
//! new link is in place.

pub(crate) mod tc;
pub(crate) mod xdp;

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::programs::{SchedClassifier, Xdp};
use tracing::{info, warn};

use super::{
    bpf_sys, devices,
    report::{AttachReport, HookInUse, InterfaceLinks},
};
use crate::{
    config::{XdpAttachMode, XdpHook, XdpSettings},
    policy::hook::{self, Decision, DeviceFacts, DeviceKind, Plan},
};

/// A configured interface, its index in the controller's network namespace
/// and the hook and mode asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// Name as configured.
    pub(crate) name: String,
    /// `if_nametoindex` of the name.
    pub(crate) ifindex: u32,
    /// `hook` asked for.
    pub(crate) hook: XdpHook,
    /// `mode` asked for.
    pub(crate) mode: XdpAttachMode,
}

/// The two kinds of per-interface link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// An XDP link running `lb_xdp`.
    Xdp,
    /// A tcx link (tc ingress) running `lb_tc`.
    Tc,
}

impl LinkKind {
    /// Both kinds.
    pub(crate) const ALL: [Self; 2] = [Self::Xdp, Self::Tc];

    /// Prefix of the pin file names.
    const fn prefix(self) -> &'static str {
        match self {
            Self::Xdp => "xdp@",
            Self::Tc => "tc@",
        }
    }

    /// The kernel's `BPF_LINK_TYPE_*` of such a link.
    const fn link_type(self) -> u32 {
        match self {
            Self::Xdp => bpf_sys::LINK_TYPE_XDP,
            Self::Tc => bpf_sys::LINK_TYPE_TCX,
        }
    }

    /// `XDP` or `tc`, for messages.
    const fn what(self) -> &'static str {
        match self {
            Self::Xdp => "XDP",
            Self::Tc => "tc",
        }
    }
}

/// Pin file name of the `kind` link on `interface`.
pub(crate) fn link_pin_name(kind: LinkKind, interface: &str) -> String {
    format!("{}{interface}", kind.prefix())
}

/// The interface a pin file of `kind` is named after, if `file_name` is one.
pub(crate) fn pinned_interface(kind: LinkKind, file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(kind.prefix())
        .filter(|name| !name.is_empty())
}

/// Looks up every configured interface; an unknown name is an error that
/// names it (checked before anything is loaded).
pub(crate) fn resolve(settings: &XdpSettings) -> anyhow::Result<Vec<Interface>> {
    settings
        .interfaces
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let name = &entry.name;
            let ifindex = ifindex(name)
                .with_context(|| format!("xdp.interfaces[{index}]: interface {name}"))?;
            Ok(Interface {
                name: name.clone(),
                ifindex,
                hook: entry.hook,
                mode: entry.mode,
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

/// The decision for every interface, in order: device facts from the
/// kernel, then `policy::hook`. A refused request is an error naming the
/// interface's config path, before anything is attached. A device whose
/// kind cannot be read counts as an unknown virtual device (tc under
/// `hook: auto`, native XDP refused), with a warning.
pub(crate) fn decide_all(interfaces: &[Interface]) -> anyhow::Result<Vec<Decision>> {
    interfaces
        .iter()
        .enumerate()
        .map(|(index, interface)| {
            let facts = devices::facts(&interface.name, interface.ifindex).unwrap_or_else(|err| {
                warn!(
                    interface = interface.name,
                    error = format!("{err:#}"),
                    "cannot read what kind of device this is; treating it as a virtual device"
                );
                DeviceFacts {
                    name: interface.name.clone(),
                    kind: DeviceKind::OtherVirtual {
                        kind: "device of unknown kind".to_owned(),
                    },
                }
            });
            hook::decide(&facts, interface.hook, interface.mode)
                .map_err(|refusal| anyhow::anyhow!("xdp.interfaces[{index}]: {refusal}"))
        })
        .collect()
}

/// The loaded programs the per-interface links run.
pub(crate) struct Programs<'a> {
    /// `lb_xdp`, loaded.
    pub(crate) xdp: &'a mut Xdp,
    /// `lb_tc`, loaded.
    pub(crate) tc: &'a mut SchedClassifier,
}

/// Attaches (or adopts) the hook each of `decisions` says on its interface,
/// falling back where a refused native XDP attach allows it, then detaches
/// the links no longer wanted (other interfaces, or the other hook).
pub(crate) fn attach_all(
    programs: &mut Programs<'_>,
    links_dir: &Path,
    interfaces: &[Interface],
    decisions: Vec<Decision>,
    report: &mut AttachReport,
) -> anyhow::Result<()> {
    let mut keep_xdp = Vec::new();
    let mut keep_tc = Vec::new();
    for (interface, decision) in interfaces.iter().zip(decisions) {
        let in_use = attach_one(programs, links_dir, interface, decision, report)?;
        if in_use.hook == "xdp" {
            keep_xdp.push(interface.name.as_str());
        } else {
            keep_tc.push(interface.name.as_str());
        }
        info!(
            interface = in_use.interface,
            hook = in_use.hook,
            mode = in_use.mode,
            why = in_use.why,
            "forwarding remote clients' packets"
        );
        report.hooks.push(in_use);
    }
    for (kind, keep) in [(LinkKind::Xdp, &keep_xdp), (LinkKind::Tc, &keep_tc)] {
        let detached = detach_except(links_dir, kind, keep)?;
        for interface in &detached {
            info!(
                interface,
                kind = kind.what(),
                "detached a link no longer wanted (interface not configured, or now on the other hook)"
            );
        }
        links_of(report, kind).detached = detached;
    }
    Ok(())
}

/// The report's links of `kind`.
fn links_of(report: &mut AttachReport, kind: LinkKind) -> &mut InterfaceLinks {
    match kind {
        LinkKind::Xdp => &mut report.xdp,
        LinkKind::Tc => &mut report.tc,
    }
}

fn attach_one(
    programs: &mut Programs<'_>,
    links_dir: &Path,
    interface: &Interface,
    decision: Decision,
    report: &mut AttachReport,
) -> anyhow::Result<HookInUse> {
    let name = interface.name.as_str();
    let in_use = |hook: &str, mode: &str, why: &str| HookInUse {
        interface: name.to_owned(),
        hook: hook.to_owned(),
        mode: mode.to_owned(),
        why: why.to_owned(),
    };
    match decision.plan {
        Plan::Tc => {
            let mode = tc::attach(programs.tc, links_dir, interface, &mut report.tc)?;
            Ok(in_use("tc", mode, &decision.why))
        }
        Plan::XdpSkb | Plan::XdpDriver { .. } => {
            let mode = if decision.plan == Plan::XdpSkb {
                XdpAttachMode::Skb
            } else {
                XdpAttachMode::Driver
            };
            match xdp::attach(programs.xdp, links_dir, interface, mode, &mut report.xdp) {
                Ok(mode) => Ok(in_use("xdp", mode, &decision.why)),
                Err(xdp::AttachError::Refused { errno, error }) => {
                    let Some(fallback) = hook::after_refusal(&decision, &errno) else {
                        return Err(error);
                    };
                    warn!(
                        interface = name,
                        errno,
                        error = format!("{error:#}"),
                        fallback = fallback.why,
                        "the driver refused native XDP; falling back"
                    );
                    attach_one(programs, links_dir, interface, fallback, report)
                }
                Err(xdp::AttachError::Other(error)) => Err(error),
            }
        }
    }
}

/// What became of a link pinned at the place of a new one.
pub(crate) enum Pinned {
    /// Nothing was pinned there.
    Nothing,
    /// It was on the same interface and got the new program.
    Adopted,
    /// It was stale (another or a vanished interface, or another link
    /// type) and was unpinned.
    Replaced,
}

/// Adopts the `kind` link pinned at `link_pin` for `interface` by swapping
/// `prog` into it, or unpins it when it belongs to another interface.
pub(crate) fn adopt_pinned(
    kind: LinkKind,
    link_pin: &Path,
    interface: &Interface,
    prog: BorrowedFd<'_>,
) -> anyhow::Result<Pinned> {
    if !link_pin.exists() {
        return Ok(Pinned::Nothing);
    }
    let name = interface.name.as_str();
    let link = bpf_sys::obj_get(link_pin)?;
    let info = bpf_sys::link_info(link.as_fd())
        .with_context(|| format!("reading link {}", link_pin.display()))?;
    if info.link_type == kind.link_type() && info.ifindex == interface.ifindex {
        bpf_sys::link_update(link.as_fd(), prog)
            .with_context(|| format!("swapping the program into link {}", link_pin.display()))?;
        info!(
            interface = name,
            link_id = info.id,
            kind = kind.what(),
            "adopted existing link"
        );
        return Ok(Pinned::Adopted);
    }
    warn!(
        interface = name,
        link_id = info.id,
        link_ifindex = info.ifindex,
        ifindex = interface.ifindex,
        kind = kind.what(),
        "pinned link belongs to another (or a vanished) interface; replacing it"
    );
    fs::remove_file(link_pin).with_context(|| format!("unpinning {}", link_pin.display()))?;
    drop(link);
    Ok(Pinned::Replaced)
}

/// The pins of `kind` under `links_dir`, as (interface name, path).
pub(crate) fn pinned_links(
    links_dir: &Path,
    kind: LinkKind,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", links_dir.display())),
    };
    let mut links = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", links_dir.display()))?;
        let file_name = entry.file_name();
        if let Some(interface) = file_name
            .to_str()
            .and_then(|name| pinned_interface(kind, name))
        {
            links.push((interface.to_owned(), entry.path()));
        }
    }
    links.sort();
    Ok(links)
}

/// Unpins (which detaches) the `kind` links of interfaces not in `keep`;
/// returns their interface names.
pub(crate) fn detach_except(
    links_dir: &Path,
    kind: LinkKind,
    keep: &[&str],
) -> anyhow::Result<Vec<String>> {
    let mut detached = Vec::new();
    for (interface, path) in pinned_links(links_dir, kind)? {
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
    use crate::config::XdpInterface;

    #[test]
    fn pin_names_round_trip() {
        assert_eq!(link_pin_name(LinkKind::Xdp, "eth0"), "xdp@eth0");
        assert_eq!(link_pin_name(LinkKind::Tc, "eth0"), "tc@eth0");
        assert_eq!(pinned_interface(LinkKind::Xdp, "xdp@eth0"), Some("eth0"));
        assert_eq!(
            pinned_interface(LinkKind::Tc, "tc@veth-a.10"),
            Some("veth-a.10")
        );
        assert_eq!(pinned_interface(LinkKind::Xdp, "tc@eth0"), None);
        assert_eq!(pinned_interface(LinkKind::Tc, "tc@"), None);
        assert_eq!(pinned_interface(LinkKind::Xdp, "lb_connect4"), None);
    }

    #[test]
    fn unknown_interfaces_are_named() {
        let settings = XdpSettings {
            interfaces: vec![XdpInterface::named("lo"), XdpInterface::named("nosuchif0")],
            hook: XdpHook::Auto,
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
            interfaces: vec![XdpInterface {
                name: "lo".to_owned(),
                hook: XdpHook::Tc,
                mode: XdpAttachMode::Auto,
            }],
            ..settings
        };
        let resolved = resolve(&settings).unwrap();
        assert_eq!((resolved[0].ifindex, resolved[0].hook), (1, XdpHook::Tc));
    }

    #[test]
    fn detaching_removes_only_other_pins_of_the_kind() {
        let dir = std::env::temp_dir().join(format!("daas-lb-link-pins-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in ["xdp@eth0", "xdp@eth1", "tc@eth1", "lb_connect4"] {
            fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(
            pinned_links(&dir, LinkKind::Xdp).unwrap(),
            vec![
                ("eth0".to_owned(), dir.join("xdp@eth0")),
                ("eth1".to_owned(), dir.join("xdp@eth1"))
            ]
        );
        assert_eq!(
            detach_except(&dir, LinkKind::Xdp, &["eth0"]).unwrap(),
            ["eth1"]
        );
        assert!(dir.join("xdp@eth0").exists());
        assert!(dir.join("tc@eth1").exists());
        assert!(dir.join("lb_connect4").exists());
        assert!(!dir.join("xdp@eth1").exists());
        assert_eq!(detach_except(&dir, LinkKind::Tc, &[]).unwrap(), ["eth1"]);
        assert_eq!(detach_except(&dir, LinkKind::Xdp, &[]).unwrap(), ["eth0"]);
        fs::remove_dir_all(&dir).unwrap();
        assert!(pinned_links(&dir, LinkKind::Tc).unwrap().is_empty());
    }

    #[test]
    fn loopback_gets_tc_and_refuses_native_xdp() {
        let lo = |hook, mode| Interface {
            name: "lo".to_owned(),
            ifindex: 1,
            hook,
            mode,
        };
        let decisions = decide_all(&[lo(XdpHook::Auto, XdpAttachMode::Auto)]).unwrap();
        assert_eq!(decisions[0].plan, Plan::Tc);
        assert_eq!(decisions[0].why, "auto: loopback -> tc");
        let err = decide_all(&[lo(XdpHook::Xdp, XdpAttachMode::Driver)]).unwrap_err();
        assert!(
            format!("{err:#}")
                .starts_with("xdp.interfaces[0]: interface lo: `hook: xdp, mode: driver`"),
            "{err:#}"
        );
    }
}
