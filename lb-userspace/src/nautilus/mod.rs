//! Nautilus attestations: what a node's enclave signs about the node and
//! its verification ([`attestation`]), the on-chain `Enclave`/`EnclaveConfig`
//! objects ([`enclave`]), asking an enclave over HTTP ([`client`]) and a fake
//! enclave for tests ([`fake_enclave`]), and the Nitro attestation document
//! check ([`document`]).

pub mod attestation;
pub mod client;
pub mod document;
pub mod enclave;
pub mod fake_enclave;
