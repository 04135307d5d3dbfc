//! `lb_tc` on one interface's tc ingress.
//!
//! On Linux 6.6 and later as a tcx link (`BPF_LINK_TYPE_TCX`, attached
//! after any other tcx program of the interface), pinned at
//! `links/tc@<interface>` and adopted by the next run like the XDP links.
//!
//! Older kernels have no tcx: the program goes in as a filter of the
//! interface's `clsact` qdisc (netlink, created if missing), at the fixed
//! preference [`CLSACT_PRIORITY`] and handle [`CLSACT_HANDLE`]. Such a
//! filter is no `bpf_link` and cannot be pinned: it is removed when daas-lb
//! exits normally; after a crash it stays attached (running the old
//! program) until the next start replaces it at the same preference and
//! handle, and neither `daas-lb cleanup` nor a config without the interface
//! removes it (`tc filter del dev <if> ingress pref 49 handle 0x1 bpf` does).

use std::{os::fd::AsFd as _, path::Path};

use anyhow::Context as _;
use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use tracing::{info, warn};

use super::{Interface, LinkKind, Pinned, adopt_pinned, link_pin_name};
use crate::kernel::report::InterfaceLinks;

/// Preference of the clsact filter on kernels without tcx.
pub(crate) const CLSACT_PRIORITY: u16 = 49;
/// Handle of the clsact filter on kernels without tcx.
pub(crate) const CLSACT_HANDLE: u32 = 1;

/// Whether the running kernel has tcx links (Linux 6.6).
pub(crate) fn has_tcx() -> anyhow::Result<bool> {
    let current = KernelVersion::current().map_err(|err| anyhow::anyhow!("{err}"))?;
    Ok(current >= KernelVersion::new(6, 6, 0))
}

/// Attaches (or adopts) `program` on `interface`'s tc ingress; returns
/// `tcx` or `clsact`.
pub(crate) fn attach(
    program: &mut SchedClassifier,
    links_dir: &Path,
    interface: &Interface,
    report: &mut InterfaceLinks,
) -> anyhow::Result<&'static str> {
    let name = interface.name.as_str();
    if !has_tcx().context("reading the kernel version")? {
        attach_clsact(program, name)?;
        report.attached.push(name.to_owned());
        return Ok("clsact");
    }
    let link_pin = links_dir.join(link_pin_name(LinkKind::Tc, name));
    let prog_fd = program.fd().context("lb_tc program fd")?.try_clone()?;
    match adopt_pinned(LinkKind::Tc, &link_pin, interface, prog_fd.as_fd())? {
        Pinned::Adopted => {
            report.adopted.push(name.to_owned());
            return Ok("tcx");
        }
        Pinned::Replaced => report.replaced.push(name.to_owned()),
        Pinned::Nothing => report.attached.push(name.to_owned()),
    }
    let link_id = program
        .attach_with_options(
            name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| {
            format!("xdp.interfaces: attaching lb_tc to tc ingress of {name} (tcx)")
        })?;
    let link: FdLink = program
        .take_link(link_id)
        .context("taking the tcx link")?
        .try_into()
        .with_context(|| format!("the tc attachment on {name} is not a bpf_link"))?;
    link.pin(&link_pin)
        .with_context(|| format!("pinning tc link {}", link_pin.display()))?;
    info!(interface = name, "attached lb_tc (tcx)");
    Ok("tcx")
}

/// The clsact filter of kernels without tcx; the link stays with the
/// program, which removes it when daas-lb exits. Public so the tests can
/// run this path on a kernel that has tcx (`tests/tests/hooks.rs`).
pub fn attach_clsact(program: &mut SchedClassifier, name: &str) -> anyhow::Result<()> {
    warn!(
        interface = name,
        "this kernel has no tcx links (Linux 6.6): lb_tc goes in as a clsact filter, which cannot \
         be pinned; after a crash it stays until the next start replaces it, and `daas-lb \
         cleanup` cannot remove it"
    );
    if let Err(err) = tc::qdisc_add_clsact(name) {
        // Usually "exists" (ours from an earlier run, or someone else's);
        // a real problem shows in the attach below.
        info!(interface = name, error = %err, "clsact qdisc not added");
    }
    let options = || NlOptions {
        priority: CLSACT_PRIORITY,
        handle: TcHandle::from(CLSACT_HANDLE),
        classid: None,
    };
    match program.attach_with_options(
        name,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(options()),
    ) {
        Ok(_) => Ok(()),
        Err(first) => {
            // An earlier run's filter at our preference and handle: replace it.
            let old = SchedClassifierLink::attached(
                name,
                TcAttachType::Ingress,
                CLSACT_PRIORITY,
                TcHandle::from(CLSACT_HANDLE),
                None,
            )
            .with_context(|| format!("interface {name}"))?;
            program.attach_to_link(old).map(drop).with_context(|| {
                format!(
                    "xdp.interfaces: attaching lb_tc to the clsact ingress of {name} (first try: {first})"
                )
            })
        }
    }
}
