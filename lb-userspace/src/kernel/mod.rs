//! Everything that talks to the kernel.
//!
//! - [`dataplane`]: loading the embedded object ([`ebpf_object`]), pinning,
//!   attaching/adopting and detaching the programs, and the typed map writes.
//! - [`links`], [`devices`], [`xdp_settings`]: the XDP or tc link on each
//!   `xdp` interface (the hook chosen from what the kernel says about the
//!   device), the `xdp_config` entry and the SNAT port check.
//! - [`if_addrs`]: the interfaces' primary addresses (rtnetlink, the
//!   `if_addrs` map).
//! - [`sock_diag`], [`connections`]: counting and closing (`SOCK_DESTROY`)
//!   connections through a VIP; [`netlink`] is the socket both use.
//! - [`kernel_log`]: the kernel programs' aya-log records, into `tracing`
//!   (target `daas_lb::kernel`).
//! - [`route_events`]: rtnetlink notifications of route, neighbour and
//!   link changes (the next-hop generation).
//! - [`mounts`]: bpffs and cgroup2, found or mounted at their standard places.
//! - `bpf_sys`: the link and batch-map syscalls aya 0.14 does not wrap.

pub use self::{
    links::tc::attach_clsact,
    report::{AttachReport, HookInUse, InterfaceLinks},
};

mod bpf_sys;
pub mod connections;
pub mod dataplane;
mod devices;
pub mod ebpf_object;
pub mod if_addrs;
pub mod kernel_log;
mod links;
pub mod maps;
pub mod mounts;
mod netlink;
mod report;
pub mod route_events;
pub mod sock_diag;
pub mod xdp_settings;
