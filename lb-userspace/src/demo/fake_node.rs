//! An in-process fake Sui full node for tests and the `daas-lb run` demo.
//!
//! It serves the real `sui.rpc.v2` gRPC services (the server traits
//! generated in `sui-rpc`) on `127.0.0.1:<ephemeral>` over plain HTTP/2:
//!
//! - `LedgerService`: `GetServiceInfo`, `GetCheckpoint` (latest, by sequence
//!   number or digest), `GetObject` (the registry object and objects put
//!   with [`FakeChain::put_object`]);
//! - `StateService`: `ListDynamicFields` (the registry table's entries,
//!   paged by field ID like the real node);
//! - `SubscriptionService`: `SubscribeCheckpoints` (new checkpoints only,
//!   from the moment of the subscription).
//!
//! Read masks are applied with `sui_rpc::merge::Merge`, as the real node does:
//! an absent mask gives the documented default (`sequence_number,digest` for
//! checkpoints, `object_id,version,digest` for objects, `parent,field_id` for
//! dynamic fields), and an absent mask on `SubscribeCheckpoints` gives frames
//! that carry only the cursor.
//!
//! The chain holds one registry (package, module `registry`, a shared
//! `Registry` object with a `Table<address, Node>`). The mutators
//! ([`FakeChain::register`], [`FakeChain::update`], [`FakeChain::remove`])
//! change the table and append a checkpoint with the matching event (type
//! strings full length, contents BCS), like a transaction calling the Move
//! module would. Switches simulate the failures discovery and the `sui_sync`
//! check must survive: ended streams, an unavailable node, a node without
//! RPC indexes, another chain, a lagging node, slow responses.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use prost_types::Timestamp;
use sha2::{Digest as _, Sha256};
use sui_rpc::{
    field::FieldMaskTree,
    merge::Merge as _,
    proto::sui::rpc::v2::{
        self as proto,
        get_checkpoint_request::CheckpointId,
        ledger_service_server::{LedgerService, LedgerServiceServer},
        state_service_server::{StateService, StateServiceServer},
        subscription_service_server::{SubscriptionService, SubscriptionServiceServer},
    },
};
use sui_sdk_types::Address;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tonic::{Request, Response, Status, codegen::BoxStream, metadata::MetadataValue};
use tracing::debug;

use crate::chain::registry::{
    Field, Node, NodeRegistered, NodeRemoved, NodeUpdated, Registry, RegistryRef, Table, Uid,
};

/// The module name of the fake registry.
pub const FAKE_MODULE: &str = "registry";

/// Default and maximum page sizes of `ListDynamicFields` (the real node's).
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

/// A running fake full node; stops (and ends its streams) when dropped.
pub struct FakeChain {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

/// Calls the fake has served, for tests to check what the client did.
#[derive(Debug, Default)]
pub struct FakeCalls {
    /// `GetCheckpoint` by sequence number (gap repair).
    pub checkpoints_by_sequence: AtomicU64,
    /// `GetCheckpoint` of the latest checkpoint.
    pub latest_checkpoint: AtomicU64,
    /// `GetObject`.
    pub get_object: AtomicU64,
    /// `ListDynamicFields` (one per page).
    pub list_dynamic_fields: AtomicU64,
    /// `SubscribeCheckpoints` (counted once the subscription is registered:
    /// every later checkpoint reaches it).
    pub subscribe: AtomicU64,
    /// `GetServiceInfo`.
    pub service_info: AtomicU64,
}

struct Shared {
    registry: RegistryRef,
    table_id: Address,
    state: Mutex<State>,
    calls: FakeCalls,
}

/// One open subscription: its read mask and where its frames go.
struct Subscriber {
    mask: FieldMaskTree,
    tx: mpsc::UnboundedSender<Result<proto::SubscribeCheckpointsResponse, Status>>,
}

struct State {
    chain_id: String,
    /// Every checkpoint, index = sequence number.
    checkpoints: Vec<proto::Checkpoint>,
    nodes: BTreeMap<Address, Node>,
    subscribers: Vec<Subscriber>,
    unavailable: bool,
    indexes: bool,
    lag_checkpoints: u64,
    lag_age: Duration,
    delay: Duration,
    max_page_size: u32,
    registry_version: u64,
    /// Objects put with [`FakeChain::put_object`]: type string, BCS contents.
    objects: BTreeMap<Address, (String, Vec<u8>)>,
}

impl FakeChain {
    /// Starts a fake full node of chain `chain_id` on `127.0.0.1:0` with an
    /// empty registry and one (genesis) checkpoint, sequence number 0.
    pub async fn start(chain_id: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("fake Sui full node: binding 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("fake Sui full node: local address")?;
        let registry = RegistryRef {
            package: derived_address(b"daas-lb fake registry package"),
            module: FAKE_MODULE.to_owned(),
            object: derived_address(b"daas-lb fake registry object"),
        };
        let shared = Arc::new(Shared {
            registry,
            table_id: derived_address(b"daas-lb fake registry table"),
            state: Mutex::new(State {
                chain_id: chain_id.to_owned(),
                checkpoints: Vec::new(),
                nodes: BTreeMap::new(),
                subscribers: Vec::new(),
                unavailable: false,
                indexes: true,
                lag_checkpoints: 0,
                lag_age: Duration::ZERO,
                delay: Duration::ZERO,
                max_page_size: MAX_PAGE_SIZE,
                registry_version: 1,
                objects: BTreeMap::new(),
            }),
            calls: FakeCalls::default(),
        });
        shared.append(Vec::new(), |_| ());
        let service = Service(Arc::clone(&shared));
        let (shutdown, stop) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(LedgerServiceServer::new(service.clone()))
            .add_service(StateServiceServer::new(service.clone()))
            .add_service(SubscriptionServiceServer::new(service));
        let server = tokio::spawn(async move {
            // Without TCP_NODELAY the small trailers frame after each
            // answer waits ~40 ms for the client's delayed ACK (Nagle).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
            {
                tracing::warn!(error = %e, "fake Sui full node stopped");
            }
        });
        debug!(%addr, chain_id, "fake Sui full node started");
        Ok(Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the fake registry lives (package, module `registry`, object).
    pub fn registry(&self) -> RegistryRef {
        self.shared.registry.clone()
    }

    /// The registry table's ID (the parent of its dynamic fields).
    pub fn table_id(&self) -> Address {
        self.shared.table_id
    }

    /// The calls served so far.
    pub fn calls(&self) -> &FakeCalls {
        &self.shared.calls
    }

    /// The sequence number of the latest checkpoint.
    pub fn latest(&self) -> u64 {
        self.shared.lock().latest()
    }

    /// The registry's nodes as the chain has them.
    pub fn nodes(&self) -> BTreeMap<Address, Node> {
        self.shared.lock().nodes.clone()
    }

    /// Registers `node`: inserts it into the table and appends a checkpoint
    /// with a `NodeRegistered` event. Returns the checkpoint's sequence
    /// number.
    pub fn register(&self, node: Address, info: Node) -> u64 {
        let event = self.shared.event(
            "NodeRegistered",
            &NodeRegistered {
                node,
                info: info.clone(),
            },
            info.operator,
        );
        self.shared.append(vec![event], |state| {
            state.nodes.insert(node, info);
        })
    }

    /// Replaces `node` in the table and appends a checkpoint with a
    /// `NodeUpdated` event.
    pub fn update(&self, node: Address, info: Node) -> u64 {
        let event = self.shared.event(
            "NodeUpdated",
            &NodeUpdated {
                node,
                info: info.clone(),
            },
            info.operator,
        );
        self.shared.append(vec![event], |state| {
            state.nodes.insert(node, info);
        })
    }

    /// Removes `node` from the table and appends a checkpoint with a
    /// `NodeRemoved` event.
    pub fn remove(&self, node: Address) -> u64 {
        let event = self
            .shared
            .event("NodeRemoved", &NodeRemoved { node }, node);
        self.shared.append(vec![event], |state| {
            state.nodes.remove(&node);
        })
    }

    /// Appends a checkpoint with one event of any type and contents (another
    /// package's or module's event, malformed BCS), leaving the table alone.
    pub fn emit_raw(&self, event_type: String, contents: Vec<u8>) -> u64 {
        let event = proto::Event::default()
            .with_package_id(self.shared.registry.package.to_string())
            .with_module(FAKE_MODULE)
            .with_sender(Address::ZERO.to_string())
            .with_event_type(event_type.clone())
            .with_contents(
                proto::Bcs::default()
                    .with_name(event_type)
                    .with_value(contents),
            );
        self.shared.append(vec![event], |_| ())
    }

    /// Puts (or replaces) a shared object `id` of type `object_type` (full
    /// type string) with BCS `contents`, which `GetObject` then serves (at
    /// version 1), e.g. a Nautilus `Enclave<T>` or `EnclaveConfig<T>`.
    pub fn put_object(&self, id: Address, object_type: String, contents: Vec<u8>) {
        self.shared
            .lock()
            .objects
            .insert(id, (object_type, contents));
    }

    /// Appends a checkpoint without events (the chain moving on).
    pub fn tick(&self) -> u64 {
        self.shared.append(Vec::new(), |_| ())
    }

    /// Ends every open `SubscribeCheckpoints` stream with `UNAVAILABLE`, as
    /// a dropped connection would; later checkpoints reach only new
    /// subscriptions.
    pub fn end_streams(&self) {
        self.shared.lock().end_streams();
    }

    /// While on, every call fails with `UNAVAILABLE` (and open streams end).
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut state = self.shared.lock();
        state.unavailable = unavailable;
        if unavailable {
            state.end_streams();
        }
    }

    /// While off, `ListDynamicFields` fails with `NOT_FOUND`, like a full
    /// node without `rpc.enable-indexing`.
    pub fn set_indexes(&self, indexes: bool) {
        self.shared.lock().indexes = indexes;
    }

    /// The chain ID `GetServiceInfo` reports from now on.
    pub fn set_chain_id(&self, chain_id: String) {
        self.shared.lock().chain_id = chain_id;
    }

    /// `GetServiceInfo` reports `latest - checkpoints` as its height and a
    /// latest-checkpoint timestamp `age` old (both 0 by default: current).
    pub fn set_lag(&self, checkpoints: u64, age: Duration) {
        let mut state = self.shared.lock();
        state.lag_checkpoints = checkpoints;
        state.lag_age = age;
    }

    /// Every response (and the start of every stream) is delayed by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// Caps the page size of `ListDynamicFields` (1000 by default, like the
    /// real node), to exercise paging with few entries.
    pub fn set_max_page_size(&self, max: u32) {
        self.shared.lock().max_page_size = max.clamp(1, MAX_PAGE_SIZE);
    }
}

impl Drop for FakeChain {
    fn drop(&mut self) {
        self.shared.lock().subscribers.clear();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

/// A deterministic full-length address (no leading zero byte, so its type
/// strings cannot be shortened by accident).
fn derived_address(seed: &[u8]) -> Address {
    let mut bytes: [u8; Address::LENGTH] = Sha256::digest(seed).into();
    bytes[0] |= 0x80;
    Address::new(bytes)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn event<T: serde::Serialize>(&self, name: &str, value: &T, sender: Address) -> proto::Event {
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
    fn append(&self, events: Vec<proto::Event>, change: impl FnOnce(&mut State)) -> u64 {
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

    /// The start of every call: the delay, then the unavailable switch.
    async fn enter(&self) -> Result<(), Status> {
        let delay = self.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.lock().unavailable {
            return Err(Status::unavailable(
                "fake Sui full node: unavailable (test switch)",
            ));
        }
        Ok(())
    }

    /// A unary response with the metadata headers every real response
    /// carries.
    fn reply<T>(&self, message: T) -> Response<T> {
        let state = self.lock();
        let mut response = Response::new(message);
        let metadata = response.metadata_mut();
        if let Ok(chain_id) = MetadataValue::try_from(state.chain_id.as_str()) {
            metadata.insert("x-sui-chain-id", chain_id);
        }
        let height = state.latest().saturating_sub(state.lag_checkpoints);
        metadata.insert("x-sui-checkpoint-height", MetadataValue::from(height));
        response
    }

    fn registry_object(&self, state: &State) -> proto::Object {
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
    fn dynamic_fields(&self, state: &State) -> Vec<(Address, proto::DynamicField)> {
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
    fn latest(&self) -> u64 {
        self.checkpoints.len().saturating_sub(1) as u64
    }

    fn end_streams(&mut self) {
        for s in self.subscribers.drain(..) {
            let _ = s.tx.send(Err(Status::unavailable(
                "fake Sui full node: stream ended (test switch)",
            )));
        }
    }
}

/// An object put with [`FakeChain::put_object`], as `GetObject` returns it.
fn put_object(id: Address, object_type: &str, contents: &[u8]) -> proto::Object {
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

/// Applies a `DynamicField` read mask (top-level fields, and the
/// `field_object` subtree through `Merge`).
fn mask_dynamic_field(field: &proto::DynamicField, mask: &FieldMaskTree) -> proto::DynamicField {
    let mut out = proto::DynamicField::default();
    if mask.contains("kind") {
        out.kind = field.kind;
    }
    if mask.contains("parent") {
        out.parent.clone_from(&field.parent);
    }
    if mask.contains("field_id") {
        out.field_id.clone_from(&field.field_id);
    }
    if let Some(submask) = mask.subtree("field_object") {
        out.field_object = field
            .field_object
            .as_ref()
            .map(|o| proto::Object::merge_from(o, &submask));
    }
    if mask.contains("name") {
        out.name.clone_from(&field.name);
    }
    if mask.contains("value") {
        out.value.clone_from(&field.value);
    }
    if mask.contains("value_type") {
        out.value_type.clone_from(&field.value_type);
    }
    out
}

fn mask_or(mask: Option<prost_types::FieldMask>, default: &str) -> FieldMaskTree {
    match mask {
        Some(mask) if !mask.paths.is_empty() => FieldMaskTree::from(mask),
        _ => {
            let Ok(tree) = default.parse();
            tree
        }
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl LedgerService for Service {
    async fn get_service_info(
        &self,
        _request: Request<proto::GetServiceInfoRequest>,
    ) -> Result<Response<proto::GetServiceInfoResponse>, Status> {
        self.0.enter().await?;
        self.0.calls.service_info.fetch_add(1, Ordering::Relaxed);
        let info = {
            let state = self.0.lock();
            let at = SystemTime::now()
                .checked_sub(state.lag_age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            proto::GetServiceInfoResponse::default()
                .with_chain_id(state.chain_id.clone())
                .with_chain("fake")
                .with_epoch(0)
                .with_checkpoint_height(state.latest().saturating_sub(state.lag_checkpoints))
                .with_timestamp(Timestamp::from(at))
                .with_lowest_available_checkpoint(0)
                .with_lowest_available_checkpoint_objects(0)
                .with_server("daas-lb fake Sui full node")
        };
        Ok(self.0.reply(info))
    }

    async fn get_checkpoint(
        &self,
        request: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::GetCheckpointResponse>, Status> {
        self.0.enter().await?;
        let request = request.into_inner();
        let mask = mask_or(request.read_mask, "sequence_number,digest");
        let checkpoint = {
            let state = self.0.lock();
            let found = match &request.checkpoint_id {
                None => {
                    self.0
                        .calls
                        .latest_checkpoint
                        .fetch_add(1, Ordering::Relaxed);
                    state.checkpoints.last()
                }
                Some(CheckpointId::SequenceNumber(n)) => {
                    self.0
                        .calls
                        .checkpoints_by_sequence
                        .fetch_add(1, Ordering::Relaxed);
                    usize::try_from(*n)
                        .ok()
                        .and_then(|n| state.checkpoints.get(n))
                }
                Some(CheckpointId::Digest(d)) => state
                    .checkpoints
                    .iter()
                    .find(|c| c.digest.as_ref() == Some(d)),
                Some(_) => None,
            };
            found
                .map(|c| proto::Checkpoint::merge_from(c, &mask))
                .ok_or_else(|| {
                    Status::not_found(format!("checkpoint {:?} not found", request.checkpoint_id))
                })?
        };
        Ok(self
            .0
            .reply(proto::GetCheckpointResponse::default().with_checkpoint(checkpoint)))
    }

    async fn get_object(
        &self,
        request: Request<proto::GetObjectRequest>,
    ) -> Result<Response<proto::GetObjectResponse>, Status> {
        self.0.enter().await?;
        self.0.calls.get_object.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let id: Address = request
            .object_id
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| Status::invalid_argument(format!("invalid object_id: {e}")))?;
        let full = {
            let state = self.0.lock();
            if id == self.0.registry.object {
                self.0.registry_object(&state)
            } else if let Some((object_type, contents)) = state.objects.get(&id) {
                put_object(id, object_type, contents)
            } else {
                return Err(Status::not_found(format!("object {id} not found")));
            }
        };
        let mask = mask_or(request.read_mask, "object_id,version,digest");
        let object = proto::Object::merge_from(&full, &mask);
        Ok(self
            .0
            .reply(proto::GetObjectResponse::default().with_object(object)))
    }
}

#[tonic::async_trait]
impl StateService for Service {
    async fn list_dynamic_fields(
        &self,
        request: Request<proto::ListDynamicFieldsRequest>,
    ) -> Result<Response<proto::ListDynamicFieldsResponse>, Status> {
        self.0.enter().await?;
        self.0
            .calls
            .list_dynamic_fields
            .fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let (indexes, max_page_size) = {
            let state = self.0.lock();
            (state.indexes, state.max_page_size)
        };
        if !indexes {
            return Err(Status::not_found("not found"));
        }
        let parent: Address = request
            .parent
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| Status::invalid_argument(format!("invalid parent: {e}")))?;
        let start = match request.page_token.as_deref() {
            None => None,
            Some(token) => Some(
                Address::from_bytes(token)
                    .map_err(|_| Status::invalid_argument("invalid page_token"))?,
            ),
        };
        let page_size = request
            .page_size
            .unwrap_or(DEFAULT_PAGE_SIZE)
            .clamp(1, max_page_size) as usize;
        let mask = mask_or(request.read_mask, "parent,field_id");
        let fields = if parent == self.0.table_id {
            self.0.dynamic_fields(&self.0.lock())
        } else {
            Vec::new()
        };
        let mut page: Vec<_> = fields
            .into_iter()
            .filter(|(id, _)| start.is_none_or(|start| *id >= start))
            .take(page_size + 1)
            .collect();
        let next = (page.len() > page_size).then(|| page.pop()).flatten();
        let mut response = proto::ListDynamicFieldsResponse::default().with_dynamic_fields(
            page.iter()
                .map(|(_, field)| mask_dynamic_field(field, &mask))
                .collect(),
        );
        if let Some((id, _)) = next {
            response.set_next_page_token(id.as_bytes().to_vec());
        }
        Ok(self.0.reply(response))
    }
}

#[tonic::async_trait]
impl SubscriptionService for Service {
    async fn subscribe_checkpoints(
        &self,
        request: Request<proto::SubscribeCheckpointsRequest>,
    ) -> Result<Response<BoxStream<proto::SubscribeCheckpointsResponse>>, Status> {
        self.0.enter().await?;
        // Like the real node: no mask matches nothing, frames carry only the
        // cursor.
        let mask = request
            .into_inner()
            .read_mask
            .map(FieldMaskTree::from)
            .unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.lock().subscribers.push(Subscriber { mask, tx });
        self.0.calls.subscribe.fetch_add(1, Ordering::Relaxed);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let item = rx.recv().await?;
            Some((item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
