//! The fake chain's state and what it is made of: the checkpoints (each new
//! one sent to the open subscriptions: whole checkpoints to
//! `SubscribeCheckpoints`, the matching events and a progress-only frame to
//! `SubscribeEvents`), the registry table with its Move events, foreign
//! noise events, and the objects `GetObject` and `ListDynamicFields` serve,
//! built from the table as the real node would (type strings full length,
//! contents BCS).
//!
//! Invariants: a change to the table and the checkpoint carrying its event
//! happen in one critical section ([`Shared::append`]), so no reader sees
//! one without the other; a subscription is registered and sent its first
//! frame in one critical section too, so no checkpoint falls between its
//! start position and its first live frame. Every message sent on a
//! stream is counted in [`FakeCalls`] (messages, bytes, events, foreign
//! events).

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use prost_types::Timestamp;
use sha2::{Digest as _, Sha256};
use sui_rpc::{field::FieldMaskTree, merge::Merge as _, proto::sui::rpc::v2 as proto};
use sui_sdk_types::Address;
use tokio::sync::mpsc;
use tonic::Status;

use super::{
    FAKE_MODULE, FakeCalls,
    events::{Filter, encode, end_of},
};
use crate::chain::registry::{Field, Node, Registry, RegistryRef, Table, Uid};

/// The chain, shared by the [`FakeChain`](super::FakeChain) handle and the
/// services.
pub(super) struct Shared {
    pub(super) registry: RegistryRef,
    /// The package of the noise events.
    pub(super) noise_package: Address,
    pub(super) table_id: Address,
    pub(super) state: Mutex<State>,
    pub(super) calls: FakeCalls,
}

/// One open subscription: its read mask and where its frames go.
pub(super) struct Subscriber {
    pub(super) mask: FieldMaskTree,
    pub(super) tx: mpsc::UnboundedSender<Result<proto::SubscribeCheckpointsResponse, Status>>,
}

/// One open `SubscribeEvents` subscription: its filter, read mask and
/// where its frames go.
pub(super) struct EventSubscriber {
    pub(super) filter: Filter,
    pub(super) mask: FieldMaskTree,
    pub(super) tx: mpsc::UnboundedSender<Result<proto::SubscribeEventsResponse, Status>>,
}

/// What changes, behind [`Shared::state`].
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent on/off switches of the fake node, not a state machine"
)]
pub(super) struct State {
    pub(super) chain_id: String,
    /// Every checkpoint, index = sequence number, without the noise
    /// events (read them with [`Shared::checkpoint`]).
    pub(super) checkpoints: Vec<proto::Checkpoint>,
    /// The noise events of each checkpoint, index = sequence number.
    pub(super) noise_counts: Vec<usize>,
    pub(super) nodes: BTreeMap<Address, Node>,
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) event_subscribers: Vec<EventSubscriber>,
    pub(super) unavailable: bool,
    /// Whether `SubscribeEvents` and `ListEvents` are served (else
    /// `UNIMPLEMENTED`, like a node without them).
    pub(super) filtered_streams: bool,
    /// Whether `SubscribeCheckpoints` and `SubscribeEvents` are served
    /// (else `UNIMPLEMENTED`, like a node without a subscription service).
    pub(super) subscriptions: bool,
    /// Foreign events appended to every checkpoint (another package).
    pub(super) noise: usize,
    /// A progress-only frame to event subscribers every this many
    /// checkpoints.
    pub(super) progress_every: u64,
    /// The largest item limit and the scan budget of `ListEvents`.
    pub(super) list_limits: super::events::Limits,
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

    /// Appends a checkpoint with the noise transaction (when noise is on)
    /// and one transaction carrying `events` (none: no such transaction),
    /// applies `change` to the state in the same critical section, and
    /// sends the checkpoint to the checkpoint subscribers and its matching
    /// events to the event subscribers.
    pub(super) fn append(&self, events: Vec<proto::Event>, change: impl FnOnce(&mut State)) -> u64 {
        let mut state = self.lock();
        change(&mut state);
        let sequence = state.checkpoints.len() as u64;
        let now = Timestamp::from(SystemTime::now());
        let digest = Address::new(Sha256::digest(sequence.to_le_bytes()).into()).to_string();
        let mut batches = Vec::new();
        if state.noise > 0 {
            batches.push((b"noise".as_slice(), self.noise_events(state.noise)));
        }
        if !events.is_empty() {
            state.registry_version += 1;
            batches.push((b"tx".as_slice(), events));
        }
        let noise = state.noise;
        let transactions: Vec<_> = batches
            .into_iter()
            .enumerate()
            .map(|(index, (prefix, events))| {
                let tx_digest = tx_digest(prefix, sequence);
                let index = index as u64;
                let events = stamp(events, sequence, index, &tx_digest);
                proto::ExecutedTransaction::default()
                    .with_digest(tx_digest)
                    .with_checkpoint(sequence)
                    .with_timestamp(now)
                    .with_transaction_index(index)
                    .with_events(proto::TransactionEvents::default().with_events(events))
            })
            .collect();
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
        let calls = &self.calls;
        let package = &self.registry.package;
        state.subscribers.retain(|s| {
            let frame = proto::SubscribeCheckpointsResponse::default()
                .with_cursor(sequence)
                .with_checkpoint(proto::Checkpoint::merge_from(&checkpoint, &s.mask));
            calls.sent_checkpoint(&frame, package);
            s.tx.send(Ok(frame)).is_ok()
        });
        let progress = state.progress_every.max(1);
        state.event_subscribers.retain(|s| {
            let mut open = true;
            for (pos, event) in super::events::positioned(sequence, &checkpoint) {
                if !s.filter.matches(event) {
                    continue;
                }
                let mut watermark = proto::Watermark::default().with_cursor(encode(pos));
                watermark.checkpoint = sequence.checked_sub(1);
                let frame = proto::SubscribeEventsResponse::default()
                    .with_event(proto::Event::merge_from(event, &s.mask))
                    .with_watermark(watermark);
                calls.sent_event_frame(frame.encoded_len(), frame.event.as_ref(), package);
                open &= s.tx.send(Ok(frame)).is_ok();
            }
            if sequence.is_multiple_of(progress) {
                let frame = progress_frame(sequence);
                calls.sent_event_frame(frame.encoded_len(), None, package);
                open &= s.tx.send(Ok(frame)).is_ok();
            }
            open
        });
        // Stored without the noise events (rebuilt when read, see
        // `Shared::checkpoint`): a busy chain's history would not fit.
        let mut stored = checkpoint;
        if noise > 0
            && let Some(first) = stored.transactions.first_mut()
        {
            first.events = Some(proto::TransactionEvents::default());
        }
        state.checkpoints.push(stored);
        state.noise_counts.push(noise);
        sequence
    }

    /// Checkpoint `sequence` as it was appended (noise events included).
    pub(super) fn checkpoint(&self, state: &State, sequence: u64) -> Option<proto::Checkpoint> {
        let index = usize::try_from(sequence).ok()?;
        let mut checkpoint = state.checkpoints.get(index)?.clone();
        let noise = state.noise_counts.get(index).copied().unwrap_or(0);
        if noise > 0
            && let Some(first) = checkpoint.transactions.first_mut()
        {
            let digest = tx_digest(b"noise", sequence);
            first.events = Some(proto::TransactionEvents::default().with_events(stamp(
                self.noise_events(noise),
                sequence,
                0,
                &digest,
            )));
        }
        Some(checkpoint)
    }

    /// `count` events of the noise package (a busy DEX-like module), each
    /// about as large as a real swap event.
    fn noise_events(&self, count: usize) -> Vec<proto::Event> {
        let event_type = format!("{}::pool::SwapEvent", self.noise_package);
        let sender = self.noise_package.to_string();
        (0..count)
            .map(|i| {
                let mut contents = vec![0x5a; 160];
                contents[..8].copy_from_slice(&(i as u64).to_le_bytes());
                proto::Event::default()
                    .with_package_id(self.noise_package.to_string())
                    .with_module("pool")
                    .with_sender(sender.clone())
                    .with_event_type(event_type.clone())
                    .with_contents(
                        proto::Bcs::default()
                            .with_name(event_type.clone())
                            .with_value(contents),
                    )
            })
            .collect()
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
        let ended = || Status::unavailable("fake Sui full node: stream ended (test switch)");
        for s in self.subscribers.drain(..) {
            let _ = s.tx.send(Err(ended()));
        }
        for s in self.event_subscribers.drain(..) {
            let _ = s.tx.send(Err(ended()));
        }
    }
}

/// The digest of the transaction `prefix` of checkpoint `sequence`.
fn tx_digest(prefix: &[u8], sequence: u64) -> String {
    Address::new(
        Sha256::new_with_prefix(prefix)
            .chain_update(sequence.to_le_bytes())
            .finalize()
            .into(),
    )
    .to_string()
}

/// `events` with their position: checkpoint, transaction (index and
/// digest), index in the transaction.
fn stamp(
    events: Vec<proto::Event>,
    sequence: u64,
    transaction: u64,
    digest: &str,
) -> Vec<proto::Event> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            e.with_checkpoint(sequence)
                .with_transaction_digest(digest)
                .with_transaction_index(transaction)
                .with_event_index(u32::try_from(i).unwrap_or(u32::MAX))
        })
        .collect()
}

/// The progress-only frame of an event subscription that has covered
/// checkpoint `sequence` (also a new subscription's first frame).
pub(super) fn progress_frame(sequence: u64) -> proto::SubscribeEventsResponse {
    proto::SubscribeEventsResponse::default().with_watermark(
        proto::Watermark::default()
            .with_cursor(encode(end_of(sequence)))
            .with_checkpoint(sequence),
    )
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
