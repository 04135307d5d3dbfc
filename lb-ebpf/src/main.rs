//! daas-lb kernel programs: the entry points only. Each one delegates at
//! once; the logic lives by concern:
//!
//! - `sock`: cgroup `sock_addr` hooks that connect a socket aimed at a
//!   service VIP straight to the service's selected backend and show the VIP
//!   again to getpeername/recvmsg;
//! - `fwd`: the forwarder that serves the VIPs to remote clients with full
//!   NAT (`parse` → `nat` → the hook's rewrite), one code for two hooks:
//!   XDP (`fwd::xdp`) and tc ingress (`fwd::tc`);
//! - `choice`: the backend for a new connection or flow (shared);
//! - `dial`: kernel-observed TCP dials (the `sock_ops` program, and the
//!   connect hooks skipping a backend that just failed one);
//! - `ctx`: reading and writing the `sock_addr` context;
//! - `klog`: aya-log records of rare events (refused connects, failed
//!   dials, suspect skips, forwarder drops), off unless `kernel_log` says so;
//! - `maps`: every map (their shapes are declared in `lb_common::maps`).
//!
//! Each hook is parse → look up → rewrite; every decision (which backend) is
//! made by the controller and stored in the maps. Non-VIP traffic is never
//! touched. The function names are the program names userspace loads
//! (`lb_common::program_names`).
#![no_std]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core has no atomic add for the BPF target; the intrinsic lowers to BPF's atomic add"
)]
#![no_main]

mod choice;
mod ctx;
mod dial;
mod fwd;
mod klog;
mod maps;
mod sock;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{cgroup_sock_addr, classifier, sock_ops, xdp},
    programs::{SockAddrContext, SockOpsContext, TcContext, XdpContext},
};
use lb_common::{AF_INET, AF_INET6};
use sock::{Call, forward, reverse};

#[xdp]
fn lb_xdp(ctx: XdpContext) -> u32 {
    fwd::run(&ctx)
}

/// The baseline of `cargo xtask bench xdp`: the cheapest possible XDP program.
#[xdp]
fn lb_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The same forwarder at tc ingress (for devices where XDP cannot see
/// partial checksums: veth, bridges, virtio).
#[classifier]
fn lb_tc(ctx: TcContext) -> i32 {
    fwd::tc::run(&ctx)
}

/// The tc baseline of `cargo xtask bench xdp`: the cheapest tc program.
#[classifier]
fn lb_tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cgroup_sock_addr(connect4)]
fn lb_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, AF_INET, Call::Connect)
}

#[cgroup_sock_addr(connect6)]
fn lb_connect6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, AF_INET6, Call::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, AF_INET, Call::SendMsg)
}

#[cgroup_sock_addr(sendmsg6)]
fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, AF_INET6, Call::SendMsg)
}

/// Sees each TCP connect the socket hooks redirected succeed or fail.
#[sock_ops]
fn lb_sock_ops(ctx: SockOpsContext) -> u32 {
    dial::sock_ops(&ctx);
    1
}

#[cgroup_sock_addr(getpeername4)]
fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET)
}

#[cgroup_sock_addr(getpeername6)]
fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET6)
}

#[cgroup_sock_addr(recvmsg4)]
fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET)
}

#[cgroup_sock_addr(recvmsg6)]
fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, AF_INET6)
}

// Only for the bpf target: a host check of the whole workspace links std in
// (through lb-common's `user` feature), which has its own handler.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
