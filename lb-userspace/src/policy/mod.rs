//! Pure decisions: no I/O, no tokio, no aya. Each takes its inputs (and a
//! clock where time matters) and returns what to do; the controller carries
//! it out.
//!
//! - [`state_machine`]: the K3s server states and which server a service uses.
//! - [`ranking`]: performance ranking scores and the Maglev weights they give.
//! - [`maglev`]: the weighted Maglev backend table of `policy: spread`.
//! - [`map_ids`]: which map slot holds which service and backend.
//! - [`dial_stall`]: when a SYN has waited too long (`dial_stall_timeout`).
//! - [`dns`]: what a lookup of a server's DNS name does to its service's list.
//! - [`flow_expiry`]: when the flow collector removes an XDP flow.
//! - [`hook`]: native XDP, generic XDP or tc on each interface of the `xdp` block.

pub mod dial_stall;
pub mod dns;
pub mod flow_expiry;
pub mod hook;
pub mod maglev;
pub mod map_ids;
pub mod ranking;
pub mod state_machine;
