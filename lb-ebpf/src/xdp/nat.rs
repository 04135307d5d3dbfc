//! The XDP flow table's rules: which backend an existing flow may keep
//! ([`keeps_backend`], [`backend`]) and what a new flow gets, its SNAT
//! address and port, stored for both directions ([`new_flow`]). The lookup
//! itself (existing entry, else the VIP's service and `choice::pick`) is
//! written out in `super::forward`: as a function returning its result it
//! needs more stack than the program has left.
//!
//! Invariants: a forwarded flow has two `flows` entries, the client→VIP
//! entry (the forward rewrite, pinned to a backend) and the backend→SNAT
//! entry (the reply rewrite, [`FLOW_REPLY`]). The reply entry is claimed
//! first with `BPF_NOEXIST`, so two flows never share a SNAT address and
//! port; a forward entry is stored only once its reply entry exists. A
//! forward entry keeps its backend while that backend is a used slot of the
//! flow's family and service and not down; otherwise the flow is rebuilt,
//! unless the service still picks the same (failed) backend (fail-open). A
//! reply entry left by a rebuilt flow is removed only while it still
//! translates for that flow. Map values are read through their pointers
//! where a copy would not fit on the nearly full BPF stack.

use aya_ebpf::bindings::BPF_NOEXIST;
use lb_common::{
    AF_INET, AddrBytes, BACKEND_DOWN, Backend, FLOW_REPLY, FlowKey, FlowValue, IF_HAS_V4,
    IF_HAS_V6, NO_BACKEND, SNAT_PORT_ATTEMPTS, XDP_SNAT_V4, XDP_SNAT_V6, XdpConfig,
    maps::FLOW_SCRATCH_REPLY, snat_port, xdp_counter,
};

use super::{Verdict, drop, pass, words};
use crate::maps::{BACKENDS, FLOW_SCRATCH, FLOWS, IF_ADDRS};

/// Backend `id` if it can take packets of `family` for service
/// `service_id`: a used slot of that family and service (a slot freed and
/// reused for another service does not inherit old flows). Whether it is
/// failed does not matter here: the controller only selects a failed server
/// when nothing better exists (K3s fail-open).
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn backend(id: u32, family: u8, service_id: u32) -> Option<Backend> {
    if id == NO_BACKEND {
        return None;
    }
    BACKENDS
        .get(id)
        .copied()
        .filter(|b| b.family == family && b.service_id == service_id)
}

/// Whether an existing flow may stay on its backend: a reply entry always,
/// a forward entry while its backend is a valid slot that is not failed or
/// invalid.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn keeps_backend(flow: &FlowValue, family: u8) -> bool {
    flow.flags & FLOW_REPLY != 0
        || backend(flow.backend_id, family, flow.service_id)
            .is_some_and(|b| b.flags & BACKEND_DOWN == 0)
}

/// Chooses the SNAT address and port of a new flow (`hash` is its
/// [`flow_hash`], which also picked the backend) and stores both
/// directions in `flows`.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(super) fn new_flow(
    key: &FlowKey,
    hash: u64,
    flow: &mut FlowValue,
    config: &XdpConfig,
    egress: u32,
) -> Result<(), Verdict> {
    let (configured, flag, if_flag) = if key.family == AF_INET {
        (config.snat_v4, XDP_SNAT_V4, IF_HAS_V4)
    } else {
        (config.snat_v6, XDP_SNAT_V6, IF_HAS_V6)
    };
    flow.src = if config.flags & flag != 0 {
        configured
    } else {
        match IF_ADDRS.get_ptr(egress) {
            Some(addrs) => {
                // SAFETY: pointer from a successful lookup, copied at once.
                let addrs = unsafe { addrs.read() };
                if addrs.flags & if_flag == 0 {
                    return Err(pass(xdp_counter::PASS_NO_SNAT_ADDR));
                }
                if key.family == AF_INET {
                    addrs.v4
                } else {
                    addrs.v6
                }
            }
            None => return Err(pass(xdp_counter::PASS_NO_SNAT_ADDR)),
        }
    };
    remove_stale_reply(key);
    let Some(reply) = FLOW_SCRATCH.get_ptr_mut(FLOW_SCRATCH_REPLY) else {
        return Err(drop(xdp_counter::DROP_FLOW_TABLE));
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it meanwhile
    // (the program runs to completion on one CPU without preemption).
    let reply = unsafe { &mut *reply };
    *reply = FlowValue {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        flags: FLOW_REPLY,
        ..FlowValue::default()
    };
    let mut reply_key = FlowKey {
        src: flow.dst,
        dst: flow.src,
        src_port: flow.dst_port,
        dst_port: 0,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    };
    let mut claimed = false;
    let mut attempt = 0;
    while attempt < SNAT_PORT_ATTEMPTS {
        reply_key.dst_port = snat_port(hash, attempt, config.port_min, config.port_max);
        if FLOWS
            .insert(reply_key, &*reply, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            claimed = true;
            break;
        }
        attempt += 1;
    }
    if !claimed {
        return Err(drop(xdp_counter::DROP_SNAT_PORTS));
    }
    flow.src_port = reply_key.dst_port;
    if FLOWS.insert(*key, &*flow, 0).is_err() {
        let _ = FLOWS.remove(reply_key);
        return Err(drop(xdp_counter::DROP_FLOW_TABLE));
    }
    Ok(())
}

/// Removes the reply entry of the forward entry that flow `key` has now,
/// if any (one whose backend it may no longer use: the caller is about to
/// rebuild it): left behind, it would keep its SNAT port claimed and keep
/// turning the old backend's packets into replies to the client until the
/// LRU evicts it. Its key is the reverse of the old rewrite (old backend →
/// SNAT address and port); it is removed only while it still translates
/// for this flow (after an LRU eviction the same backend, address and port
/// may serve another one). Called before the new SNAT port is claimed,
/// which may be this very one again. If the rebuild then fails (SNAT ports
/// or table full) the old forward entry stays and the next packet tries
/// again; the old backend's packets are no longer translated meanwhile.
///
/// The entry is looked up again rather than handed over by the caller: the
/// program's stack is nearly full, and a copy kept alive until here does
/// not fit.
#[expect(
    clippy::inline_always,
    reason = "one flat program keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
fn remove_stale_reply(key: &FlowKey) {
    let Some(stale) = FLOWS.get_ptr(key) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; only its fields are read.
    let stale = unsafe { &*stale };
    if stale.flags & FLOW_REPLY != 0 {
        return;
    }
    let reply_key = FlowKey {
        src: stale.dst,
        dst: stale.src,
        src_port: stale.dst_port,
        dst_port: stale.src_port,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    };
    let Some(reply) = FLOWS.get_ptr(reply_key) else {
        return;
    };
    // SAFETY: pointer from a successful lookup; only its fields are read
    // (no copy of the whole value on the small BPF stack).
    let reply = unsafe { &*reply };
    if reply.flags & FLOW_REPLY != 0
        && reply.src_port == key.dst_port
        && reply.dst_port == key.src_port
        && same_addr(&reply.src, &key.dst)
        && same_addr(&reply.dst, &key.src)
    {
        let _ = FLOWS.remove(reply_key);
    }
}

/// Whether two addresses are equal, compared word by word (a byte array
/// comparison may become a `memcmp` call, which BPF does not have).
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn same_addr(a: &AddrBytes, b: &AddrBytes) -> bool {
    let (a, b) = (words(a), words(b));
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}
