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
//!   from the moment of the subscription) and `SubscribeEvents` (filtered
//!   server-side: a progress-only first frame at the tip, then each
//!   matching event and a progress-only frame per checkpoint, or every
//!   [`FakeChain::set_progress_every`] checkpoints);
//! - `LedgerService::ListEvents`: the same filter over a checkpoint range
//!   and cursor bounds, with item and scan limits, watermarks and
//!   `QueryEnd` reasons as the proto documents them (see `events`).
//!
//! [`FakeChain::set_filtered_streams`] makes `SubscribeEvents` and
//! `ListEvents` answer `UNIMPLEMENTED` (a node without them),
//! [`FakeChain::set_subscriptions`] both subscriptions;
//! [`FakeChain::set_noise`] adds N foreign events (another package) to
//! every checkpoint, like a busy mainnet; [`FakeCalls`] counts what the
//! streams sent (messages, bytes, events, foreign events).
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
//!
//! This file holds the handle ([`FakeChain`]: start, the mutators and the
//! switches) and the call counts; `model` holds the chain's state (the
//! checkpoints, the registry table, the events and the objects built from
//! them), `events` the filter and the `ListEvents` scan, and `service` the
//! gRPC services that serve it.

mod events;
mod model;
mod service;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use prost::Message as _;
use sui_rpc::proto::sui::rpc::v2::{
    self as proto, ledger_service_server::LedgerServiceServer,
    state_service_server::StateServiceServer,
    subscription_service_server::SubscriptionServiceServer,
};
use sui_sdk_types::Address;
use tokio::{sync::oneshot, task::JoinHandle};
use tracing::debug;

use self::{
    model::{Shared, State, derived_address},
    service::Service,
};
use crate::chain::registry::{Node, NodeRegistered, NodeRemoved, NodeUpdated, RegistryRef};

/// The module name of the fake registry.
pub const FAKE_MODULE: &str = "registry";

/// Default and maximum page sizes of `ListDynamicFields` (the real node's).
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

/// Checkpoints one `ListEvents` call scans before it ends with
/// `SCAN_LIMIT` (the fake's budget; the real node has its own).
const DEFAULT_SCAN_BUDGET: u64 = 10_000;

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
    /// Subscriptions, `SubscribeCheckpoints` or `SubscribeEvents` (counted
    /// once the subscription is registered: every later checkpoint reaches
    /// it).
    pub subscribe: AtomicU64,
    /// `SubscribeEvents` subscriptions (also counted in `subscribe`).
    pub subscribe_events: AtomicU64,
    /// `ListEvents` calls (one per page).
    pub list_events: AtomicU64,
    /// `GetServiceInfo`.
    pub service_info: AtomicU64,
    /// Messages sent by the calls discovery follows the chain with
    /// (`SubscribeCheckpoints`, `SubscribeEvents`, `ListEvents`,
    /// `GetCheckpoint`).
    pub messages_sent: AtomicU64,
    /// Their bytes: each message's protobuf encoding plus the 5-byte gRPC
    /// frame header (HTTP/2 framing not counted).
    pub bytes_sent: AtomicU64,
    /// Events in those messages.
    pub events_sent: AtomicU64,
    /// Of those, events whose type is not of the registry's package.
    pub foreign_events_sent: AtomicU64,
}

impl FakeCalls {
    /// Counts one message of `len` encoded bytes carrying `events`.
    fn sent(&self, len: usize, events: &mut dyn Iterator<Item = &proto::Event>, package: &Address) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(len as u64 + 5, Ordering::Relaxed);
        let prefix = format!("{package}::");
        let (mut all, mut foreign) = (0, 0);
        for event in events {
            all += 1;
            if !event
                .event_type
                .as_deref()
                .is_some_and(|t| t.starts_with(&prefix))
            {
                foreign += 1;
            }
        }
        self.events_sent.fetch_add(all, Ordering::Relaxed);
        self.foreign_events_sent
            .fetch_add(foreign, Ordering::Relaxed);
    }

    /// Counts a `SubscribeCheckpoints` frame.
    fn sent_checkpoint(&self, frame: &proto::SubscribeCheckpointsResponse, package: &Address) {
        self.sent_whole_checkpoint(frame.encoded_len(), frame.checkpoint.as_ref(), package);
    }

    /// Counts a message of `len` bytes carrying `checkpoint`.
    fn sent_whole_checkpoint(
        &self,
        len: usize,
        checkpoint: Option<&proto::Checkpoint>,
        package: &Address,
    ) {
        let mut events = checkpoint
            .into_iter()
            .flat_map(|c| c.transactions.iter())
            .filter_map(|t| t.events.as_ref())
            .flat_map(|e| e.events.iter());
        self.sent(len, &mut events, package);
    }

    /// Counts a `SubscribeEvents` or `ListEvents` frame.
    fn sent_event_frame(&self, len: usize, event: Option<&proto::Event>, package: &Address) {
        self.sent(len, &mut event.into_iter(), package);
    }
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
            noise_package: derived_address(b"daas-lb fake noise package"),
            table_id: derived_address(b"daas-lb fake registry table"),
            state: Mutex::new(State {
                chain_id: chain_id.to_owned(),
                checkpoints: Vec::new(),
                noise_counts: Vec::new(),
                nodes: BTreeMap::new(),
                subscribers: Vec::new(),
                event_subscribers: Vec::new(),
                unavailable: false,
                filtered_streams: true,
                subscriptions: true,
                noise: 0,
                progress_every: 1,
                list_limits: events::Limits {
                    max_items: MAX_PAGE_SIZE,
                    scan_budget: DEFAULT_SCAN_BUDGET,
                },
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

    /// Ends every open subscription (`SubscribeCheckpoints` and
    /// `SubscribeEvents`) with `UNAVAILABLE`, as
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

    /// While off, `SubscribeEvents` and `ListEvents` answer
    /// `UNIMPLEMENTED`, like a full node that does not serve filtered
    /// streams (on by default).
    pub fn set_filtered_streams(&self, on: bool) {
        let mut state = self.shared.lock();
        state.filtered_streams = on;
        if !on {
            for s in state.event_subscribers.drain(..) {
                let _ = s.tx.send(Err(tonic::Status::unimplemented(
                    "fake Sui full node: filtered streams off (test switch)",
                )));
            }
        }
    }

    /// While off, `SubscribeCheckpoints` and `SubscribeEvents` answer
    /// `UNIMPLEMENTED`, like a full node without a subscription service
    /// (on by default); open subscriptions end with that status.
    pub fn set_subscriptions(&self, on: bool) {
        let mut state = self.shared.lock();
        state.subscriptions = on;
        if !on {
            let off = || {
                tonic::Status::unimplemented("fake Sui full node: subscriptions off (test switch)")
            };
            for s in state.subscribers.drain(..) {
                let _ = s.tx.send(Err(off()));
            }
            for s in state.event_subscribers.drain(..) {
                let _ = s.tx.send(Err(off()));
            }
        }
    }

    /// Every checkpoint appended from now on also carries a transaction
    /// with `per_checkpoint` events of another package (`pool::SwapEvent`,
    /// 160 bytes of contents each), like mainnet traffic.
    pub fn set_noise(&self, per_checkpoint: usize) {
        self.shared.lock().noise = per_checkpoint;
    }

    /// Event subscriptions get a progress-only frame every `checkpoints`
    /// checkpoints (1 by default: after each one).
    pub fn set_progress_every(&self, checkpoints: u64) {
        self.shared.lock().progress_every = checkpoints.max(1);
    }

    /// `ListEvents` serves at most `max_items` items per call (1000 by
    /// default) and scans at most `scan_budget` checkpoints per call
    /// (10,000), to exercise `ITEM_LIMIT` and `SCAN_LIMIT` paging.
    pub fn set_list_limits(&self, max_items: u32, scan_budget: u64) {
        self.shared.lock().list_limits = events::Limits {
            max_items: max_items.max(1),
            scan_budget: scan_budget.max(1),
        };
    }

    /// The package of the noise events ([`FakeChain::set_noise`]).
    pub fn noise_package(&self) -> Address {
        self.shared.noise_package
    }

    /// Caps the page size of `ListDynamicFields` (1000 by default, like the
    /// real node), to exercise paging with few entries.
    pub fn set_max_page_size(&self, max: u32) {
        self.shared.lock().max_page_size = max.clamp(1, MAX_PAGE_SIZE);
    }
}

impl Drop for FakeChain {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.subscribers.clear();
            state.event_subscribers.clear();
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}
