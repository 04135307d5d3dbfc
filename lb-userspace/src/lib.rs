//! daas-lb controller library: everything `daas-lb` does, so integration
//! tests and the binary share one implementation.
//!
//! - [`config`]: the YAML config and its validation.
//! - [`dataplane`]: loading, pinning, attaching/adopting and detaching the kernel programs.
//! - [`map_ids`]: which map slot holds which service and backend (pure).
//! - [`selection`]: which server a service uses (pure).
//! - [`health`]: active probes.
//! - [`controller`]: ties health, selection and the maps together.
//! - [`status`], [`metrics`], [`api`]: what the controller shows.
//! - [`run`], [`demo`]: the `daas-lb run` command and its embedded demo.

pub mod api;
mod bpf_sys;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod demo;
pub mod ebpf_object;
pub mod health;
pub mod map_ids;
pub mod metrics;
pub mod persist;
pub mod run;
pub mod selection;
pub mod sock_diag;
pub mod state_machine;
pub mod status;
