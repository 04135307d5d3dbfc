//! Nautilus attestations: what a node's enclave signs about the node and
//! its verification ([`attestation`]), the on-chain `Enclave`/`EnclaveConfig`
//! objects ([`enclave`]), asking an enclave over HTTP ([`client`]) and a fake
//! enclave for tests ([`fake_enclave`]), the Nitro attestation document
//! check ([`document`]) and the `nautilus` health check that puts them
//! together ([`check`]).

pub mod attestation;
pub mod check;
pub mod client;
pub mod document;
pub mod enclave;
pub mod fake_deployment;
pub mod fake_enclave;
