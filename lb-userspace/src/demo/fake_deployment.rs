//! A fake Nautilus deployment for tests and benchmarks: a fake full node
//! ([`FakeChain`]) holding a trusted `EnclaveConfig<T>` and one node's
//! `Enclave<T>`, and the fake enclave ([`FakeEnclave`]) whose key that
//! `Enclave` registers: everything a `nautilus` check of the node reads.

use sui_sdk_types::Address;

use super::{fake_enclave::FakeEnclave, fake_node::FakeChain};
use crate::{
    chain::registry::Uid,
    health::nautilus::{Attester, Clock, NodeEnclave},
    nautilus::enclave::{Enclave, EnclaveConfig, Pcrs, enclave_config_type, enclave_type},
};

/// The app (`module::WITNESS`, in the enclave package) of the fake objects.
pub const APP: &str = "perf::PERF";

/// The stake the registry lists for the fake node, MIST.
pub const NODE_STAKE: u64 = 5_000;

/// An address of `tag` bytes ending in `byte`.
pub fn fake_address(tag: u8, byte: u8) -> Address {
    let mut bytes = [tag; Address::LENGTH];
    bytes[Address::LENGTH - 1] = byte;
    Address::new(bytes)
}

/// The package that defines the `enclave` module and the app.
pub fn package() -> Address {
    fake_address(0x11, 1)
}

/// The trusted `EnclaveConfig`'s id.
pub fn config_id() -> Address {
    fake_address(0x22, 1)
}

/// The node's `Enclave` id.
pub fn enclave_id() -> Address {
    fake_address(0x33, 1)
}

/// The node's key in the registry.
pub fn node_key() -> Address {
    fake_address(0x44, 1)
}

/// The PCRs of the trusted config unless told otherwise.
pub fn default_pcrs() -> Pcrs {
    Pcrs(vec![1; 48], vec![2; 48], vec![3; 48])
}

/// A running fake deployment; stops when dropped.
pub struct FakeDeployment {
    /// The fake full node.
    pub chain: FakeChain,
    /// The node's fake enclave.
    pub enclave: FakeEnclave,
    /// The node as the check sees it (stake [`NODE_STAKE`]).
    pub node: NodeEnclave,
}

impl FakeDeployment {
    /// Starts both fakes; publishes the config ([`config_id`], version 0,
    /// [`default_pcrs`]) and the node's enclave ([`enclave_id`], version 0,
    /// the fake's key), and makes the fake attest [`node_key`].
    pub async fn start(chain_id: &str) -> anyhow::Result<Self> {
        let chain = FakeChain::start(chain_id).await?;
        let enclave = FakeEnclave::start().await?;
        publish_config(&chain, config_id(), default_pcrs(), 0);
        publish_enclave(&chain, enclave_id(), enclave.public_key(), 0, APP);
        enclave.set_node(Some(node_key()));
        let node = NodeEnclave {
            node: node_key(),
            nautilus_url: enclave.url(),
            enclave_id: enclave_id(),
            stake_mist: NODE_STAKE,
        };
        Ok(Self {
            chain,
            enclave,
            node,
        })
    }

    /// An attester trusting [`config_id`] on this chain.
    pub fn attester(&self, stake_validation: bool, clock: Clock) -> Attester {
        Attester::new(&self.chain.url(), config_id(), stake_validation, clock)
    }
}

/// Publishes (or replaces) `EnclaveConfig<APP>` `id` with `pcrs` at `version`.
pub fn publish_config(chain: &FakeChain, id: Address, pcrs: Pcrs, version: u64) {
    let config = EnclaveConfig {
        id: Uid(id),
        name: "perf".to_owned(),
        pcrs,
        capability_id: fake_address(0x55, 1),
        version,
    };
    chain.put_object(
        id,
        enclave_config_type(package(), APP),
        bcs::to_bytes(&config).expect("BCS of an EnclaveConfig is infallible"),
    );
}

/// Publishes (or replaces) `Enclave<app>` `id` with `key`, registered under
/// `config_version`.
pub fn publish_enclave(
    chain: &FakeChain,
    id: Address,
    key: [u8; 32],
    config_version: u64,
    app: &str,
) {
    let enclave = Enclave {
        id: Uid(id),
        pk: key.to_vec(),
        config_version,
        owner: fake_address(0x66, 1),
    };
    chain.put_object(
        id,
        enclave_type(package(), app),
        bcs::to_bytes(&enclave).expect("BCS of an Enclave is infallible"),
    );
}
