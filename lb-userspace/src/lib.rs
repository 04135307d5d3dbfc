//! daas-lb controller library: everything `daas-lb` does, so integration
//! tests and the binary share one implementation. One place per concern,
//! layered so that arrows only point down:
//!
//! - [`config`]: the YAML model and its validation, a leaf (it imports
//!   nothing from the rest of the crate but the server states of
//!   [`policy::state_machine`], shared vocabulary).
//! - [`policy`]: pure decisions with no I/O, no tokio and no aya: the K3s
//!   server state machine, performance ranking, Maglev tables, map id planning.
//! - [`kernel`]: everything that talks to the kernel: loading, pinning and
//!   attaching the programs, the maps, XDP links and settings, rtnetlink
//!   addresses, `sock_diag` dumps and `SOCK_DESTROY`, connections per VIP.
//! - [`health`]: active probes by kind (tcp, udp, http, https, all,
//!   `sui_sync`, `nautilus`) behind one [`health::Prober`].
//! - [`chain`], [`nautilus`]: the real Sui registry client and the real
//!   attestation verification and enclave client.
//! - [`proxy`]: proxy mode's userspace data plane (listeners on the VIPs,
//!   the K3s dial loop, copying and splicing, HTTP CONNECT dialing); it
//!   imports nothing from the rest of the crate and dials what the
//!   controller's route says.
//! - [`controller`]: ties checks, connections, the state machines, the
//!   maps and the proxies together, and keeps the per-service state files
//!   ([`controller::persist`]).
//! - [`metrics`], [`api`]: what the controller shows and takes: the status
//!   document, the three listeners, the command line's client.
//! - [`run`]: the `daas-lb run` command.
//! - [`demo`] (cargo feature `demo`, on by default): the embedded demo and
//!   every test double (fake full node, fake enclaves); a build with
//!   `--no-default-features` leaves them and tonic's server stack out.

pub mod api;
pub mod chain;
pub mod config;
pub mod controller;
#[cfg(any(test, feature = "demo"))]
pub mod demo;
pub mod health;
pub mod kernel;
pub mod metrics;
pub mod nautilus;
pub mod policy;
pub mod proxy;
pub mod run;
