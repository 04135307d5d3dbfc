//! Sui on-chain discovery: the registry's Move types and events
//! ([`registry`]), the view of the registry ([`view`]), the task that keeps
//! it current over gRPC ([`discovery`]) with the pure rules of its filtered
//! event streams ([`events`]) and the servers a service gets from
//! the registry ([`servers`]); the `sui_sync` check is
//! [`crate::health::sui_sync`]. The on-chain layout is documented in docs/registry.md;
//! the per-chain ports are config vocabulary ([`crate::config::ports`]) and
//! the fake full node lives with the other doubles ([`crate::demo::fake_node`]).

pub mod discovery;
pub mod events;
pub mod registry;
pub mod servers;
pub mod view;
