//! daas-lb controller library: everything `daas-lb` does, so integration
//! tests and the binary share one implementation.
//!
//! - [`config`]: the YAML config and its validation.
//! - [`chain`]: Sui on-chain discovery (registry sync over gRPC, the `sui_sync` check, a fake full node).
//! - [`nautilus`]: Nautilus enclave attestations (signed performance scores, on-chain enclaves, the Nitro document).
//! - [`dataplane`]: loading, pinning, attaching/adopting and detaching the kernel programs
//!   (`xdp_attach`: the XDP links on the `xdp` interfaces).
//! - [`xdp_settings`], [`if_addrs`]: the `xdp_config` entry, the SNAT port check, and the
//!   interfaces' primary addresses (the `if_addrs` map).
//! - [`map_ids`]: which map slot holds which service and backend (pure).
//! - [`maglev`]: the weighted Maglev backend table of `policy: spread` (pure).
//! - [`state_machine`]: the K3s server states and which server a service uses (pure).
//! - [`ranking`]: performance ranking scores and the Maglev weights they give (pure).
//! - [`health`]: active probes (tcp, udp, http, https, all).
//! - [`sock_diag`], [`connections`]: counting and closing connections through a VIP.
//! - [`persist`]: the per-service state files (K3s format).
//! - [`controller`]: ties checks, connections, the state machines and the maps together.
//! - [`status`], [`metrics`], [`api`]: what the controller shows.
//! - [`run`], [`demo`]: the `daas-lb run` command and its embedded demo.

pub mod api;
mod bpf_sys;
pub mod chain;
pub mod config;
pub mod connections;
pub mod controller;
pub mod dataplane;
pub mod demo;
pub mod ebpf_object;
pub mod health;
pub mod if_addrs;
pub mod maglev;
pub mod map_ids;
pub mod metrics;
pub mod nautilus;
mod netlink;
pub mod persist;
pub mod ranking;
pub mod run;
pub mod sock_diag;
pub mod state_machine;
pub mod status;
mod xdp_attach;
pub mod xdp_settings;
