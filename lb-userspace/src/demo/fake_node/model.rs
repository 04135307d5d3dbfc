//! The fake chain's state and what it is made of: the checkpoints (each new
//! one sent to the open subscriptions), the registry table with its Move
//! events, and the objects `GetObject` and `ListDynamicFields` serve, built
//! from the table as the real node would (type strings full length,
//! contents BCS).
//!
//! Invariant: a change to the table and the checkpoint carrying its event
//! happen in one critical section ([`Shared::append`]), so no reader sees
//! one without the other.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use prost_types::Timestamp;
use sha2::{Digest as _, Sha256};
use sui_rpc::{field::FieldMaskTree, merge::Merge as _, proto::sui::rpc::v2 as proto};
use sui_sdk_types::Address;
use tokio::sync::mpsc;
use tonic::Status;

use super::{FAKE_MODULE, FakeCalls};
use crate::chain::registry::{Field, Node, Registry, RegistryRef, Table, Uid};

/// The chain, shared by the [`FakeChain`](super::FakeChain) handle and the
/// services.
pub(super) struct Shared {
    pub(super) registry: RegistryRef,
    pub(super) table_id: Address,
    pub(super) state: Mutex<State>,
    pub(super) calls: FakeCalls,
}

/// One open subscription: its read mask and where its frames go.
pub(super) struct Subscriber {
    pub(super) mask: FieldMaskTree,
    pub(super) tx: mpsc::UnboundedSender<Result<proto::SubscribeCheckpointsResponse, Status>>,
}

/// What changes, behind [`Shared::state`].
pub(super) struct State {
    pub(super) chain_id: String,
    /// Every checkpoint, index = sequence number.
    pub(super) checkpoints: Vec<proto::Checkpoint>,
    pub(super) nodes: BTreeMap<Address, Node>,
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) unavailable: bool,
    pub(super) indexes: bool,
    pub(super) lag_checkpoints: u64,
    pub(super) lag_age: Duration,
    pub(super) delay: Duration,
    pub(super) max_page_size: u32,
    pub(super) registry_version: u64,
    /// Objects put with [`FakeChain::put_object`]: type string, BCS contents.
    pub(super) objects: BTreeMap<Address, (String, Vec<u8>)>,
}

/// A deterministic full-length address (no leading zero byte, so its type
/// strings cannot be shortened by accident).
pub(super) fn derived_address(seed: &[u8]) -> Address {
    let mut bytes: [u8; Address::LENGTH] = Sha256::digest(seed).into();
    bytes[0] |= 0x80;
    Address::new(bytes)
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn event<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        sender: Address,
    ) -> proto::Event {
        let event_type = self.registry.type_string(name);
        let contents = bcs::to_bytes(value).expect("BCS of the registry events is infallible");
        proto::Event::default()
            .with_package_id(self.registry.package.to_string())
            .with_module(FAKE_MODULE)
            .with_sender(sender.to_string())
            .with_event_type(event_type.clone())
            .with_contents(
                proto::Bcs::default()
                    .with_name(event_type)
                    .with_value(contents),
            )
    }

    /// Appends a checkpoint with one transaction carrying `events` (none:
    /// an empty checkpoint), applies `change` to the state in the same
    /// critical section, and sends the checkpoint to the subscribers.
    pub(super) fn append(&self, events: Vec<proto::Event>, change: impl FnOnce(&mut State)) -> u64 {
        let mut state = self.lock();
        change(&mut state);
        let sequence = state.checkpoints.len() as u64;
        let now = Timestamp::from(SystemTime::now());
        let digest = Address::new(Sha256::digest(sequence.to_le_bytes()).into()).to_string();
        let mut transactions = Vec::new();
        if !events.is_empty() {
            state.registry_version += 1;
            let tx_digest = Address::new(
                Sha256::new_with_prefix(b"tx")
                    .chain_update(sequence.to_le_bytes())
                    .finalize()
                    .into(),
            )
            .to_string();
            let events: Vec<_> = events
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    e.with_checkpoint(sequence)
                        .with_transaction_digest(tx_digest.clone())
                        .with_event_index(u32::try_from(i).unwrap_or(u32::MAX))
                })
                .collect();
            transactions.push(
                proto::ExecutedTransaction::default()
                    .with_digest(tx_digest)
                    .with_checkpoint(sequence)
                    .with_timestamp(now)
                    .with_events(proto::TransactionEvents::default().with_events(events)),
            );
        }
        let checkpoint = proto::Checkpoint::default()
            .with_sequence_number(sequence)
            .with_digest(digest)
            .with_summary(
                proto::CheckpointSummary::default()
                    .with_sequence_number(sequence)
                    .with_epoch(0)
                    .with_timestamp(now),
            )
            .with_transactions(transactions);
        state.subscribers.retain(|s| {
            let frame = proto::SubscribeCheckpointsResponse::default()
                .with_cursor(sequence)
                .with_checkpoint(proto::Checkpoint::merge_from(&checkpoint, &s.mask));
            s.tx.send(Ok(frame)).is_ok()
        });
        state.checkpoints.push(checkpoint);
        sequence
    }

    pub(super) fn registry_object(&self, state: &State) -> proto::Object {
        let registry = Registry {
            id: Uid(self.registry.object),
            nodes: Table {
                id: Uid(self.table_id),
                size: state.nodes.len() as u64,
            },
        };
        let object_type = self.registry.type_string("Registry");
        proto::Object::default()
            .with_object_id(self.registry.object.to_string())
            .with_version(state.registry_version)
            .with_digest(
                Address::new(Sha256::digest(state.registry_version.to_le_bytes()).into())
                    .to_string(),
            )
            .with_object_type(object_type.clone())
            .with_contents(
                proto::Bcs::default().with_name(object_type).with_value(
                    bcs::to_bytes(&registry).expect("BCS of the registry is infallible"),
                ),
            )
    }

    /// The table's entries as dynamic fields, ordered by field ID (the real
    /// node's order).
    pub(super) fn dynamic_fields(&self, state: &State) -> Vec<(Address, proto::DynamicField)> {
        let node_type = self.registry.type_string("Node");
        let field_type = format!("0x2::dynamic_field::Field<address, {node_type}>");
        let mut fields: Vec<_> = state
            .nodes
            .iter()
            .map(|(key, node)| {
                let mut seed = self.table_id.as_bytes().to_vec();
                seed.extend_from_slice(key.as_bytes());
                let field_id = Address::new(Sha256::digest(&seed).into());
                let field = Field {
                    id: Uid(field_id),
                    name: *key,
                    value: node.clone(),
                };
                let object = proto::Object::default()
                    .with_object_id(field_id.to_string())
                    .with_version(state.registry_version)
                    .with_object_type(field_type.clone())
                    .with_contents(
                        proto::Bcs::default()
                            .with_name(field_type.clone())
                            .with_value(
                                bcs::to_bytes(&field).expect("BCS of a table entry is infallible"),
                            ),
                    );
                let dynamic_field = proto::DynamicField::default()
                    .with_kind(proto::dynamic_field::DynamicFieldKind::Field)
                    .with_parent(self.table_id.to_string())
                    .with_field_id(field_id.to_string())
                    .with_field_object(object)
                    .with_name(
                        proto::Bcs::default()
                            .with_name("address")
                            .with_value(key.as_bytes().to_vec()),
                    )
                    .with_value(
                        proto::Bcs::default()
                            .with_name(node_type.clone())
                            .with_value(bcs::to_bytes(node).expect("BCS of a node is infallible")),
                    )
                    .with_value_type(node_type.clone());
                (field_id, dynamic_field)
            })
            .collect();
        fields.sort_by_key(|(id, _)| *id);
        fields
    }
}

impl State {
    pub(super) fn latest(&self) -> u64 {
        self.checkpoints.len().saturating_sub(1) as u64
    }

    pub(super) fn end_streams(&mut self) {
        for s in self.subscribers.drain(..) {
            let _ = s.tx.send(Err(Status::unavailable(
                "fake Sui full node: stream ended (test switch)",
            )));
        }
    }
}

/// An object put with [`FakeChain::put_object`], as `GetObject` returns it.
pub(super) fn put_object(id: Address, object_type: &str, contents: &[u8]) -> proto::Object {
    proto::Object::default()
        .with_object_id(id.to_string())
        .with_version(1)
        .with_digest(Address::new(Sha256::digest(contents).into()).to_string())
        .with_object_type(object_type)
        .with_contents(
            proto::Bcs::default()
                .with_name(object_type)
                .with_value(contents.to_vec()),
        )
}
