//! Nautilus attestations: what a node's enclave signs about the node and
//! its verification ([`attestation`]), the on-chain `Enclave`/`EnclaveConfig`
//! objects ([`enclave`]), asking an enclave over HTTP ([`client`]), the
//! Nitro attestation document check ([`document`]). The `nautilus` health
//! check that puts them together is [`crate::health::nautilus`]. The fake enclave and
//! deployment are in [`crate::demo`].

pub mod attestation;
pub mod client;
pub mod document;
pub mod enclave;
