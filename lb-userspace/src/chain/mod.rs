//! Sui on-chain discovery: the registry's Move types and events
//! ([`registry`]), the view of the registry ([`view`]), the task that keeps
//! it current over gRPC ([`discovery`]), an in-process fake full node for
//! tests and the demo ([`fake_node`]), the per-chain ports ([`ports`]), the
//! servers a service gets from the registry ([`servers`]) and the `sui_sync`
//! health check ([`sync_check`]). The on-chain layout is documented in
//! docs/registry.md.

pub mod discovery;
pub mod fake_node;
pub mod ports;
pub mod registry;
pub mod servers;
pub mod sync_check;
pub mod view;
