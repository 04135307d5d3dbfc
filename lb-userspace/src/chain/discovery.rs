//! The discovery task: keeps a [`RegistryView`] of the on-chain registry
//! current and publishes it on a watch channel.
//!
//! - Full sync: `GetCheckpoint` (latest, remembered as the cursor), then
//!   `GetObject` of the `Registry` object (its BCS contents give the table
//!   ID), then every table entry with `ListDynamicFields` (paged), the key and
//!   the `Node` decoded from BCS. A node without RPC indexes answers
//!   `ListDynamicFields` with `NOT_FOUND`/`UNIMPLEMENTED`: the error names the
//!   missing feature (`rpc.enable-indexing`).
//! - Deltas, filtered (the default): `SubscribeEvents` with a server-side
//!   filter on the registry's three event types ([`super::events`]), so
//!   only registry events cross the wire. The subscription's first frame is
//!   its start position; what happened between the cursor and it is
//!   replayed with `ListEvents` (same filter, from the last watermark
//!   cursor or the checkpoint after the cursor, up to that position
//!   exclusive), paged through `ITEM_LIMIT`/`SCAN_LIMIT` ends and repeated
//!   while the node's index trails (`LEDGER_TIP`). Every frame's watermark
//!   moves the cursor (progress-only frames too); events are applied in
//!   ledger order and deduplicated by position, so none is lost or applied
//!   twice across reconnects.
//! - Deltas, fallback: a node that answers `UNIMPLEMENTED` to
//!   `SubscribeEvents` or `ListEvents` is followed like before filtered
//!   streams, for the rest of the task's life (one `warn!` naming the URL
//!   and the reason): `SubscribeCheckpoints` with an explicit read mask (an
//!   absent one gives empty frames); the events of each checkpoint are
//!   filtered here and applied in order and the checkpoint becomes the
//!   cursor. After (re)subscribing, the checkpoints between the cursor and
//!   the node's latest are fetched with `GetCheckpoint` by sequence number,
//!   and so is any hole in the stream; checkpoints at or below the cursor
//!   are skipped. [`DiscoveryStats::stream`] says which mode is in use.
//! - Polling, the fallback's fallback: a node that also answers
//!   `UNIMPLEMENTED` to `SubscribeCheckpoints` is polled: `GetCheckpoint`
//!   of the latest checkpoint every [`POLL_INTERVAL`], then of each one
//!   since the cursor (as a gap repair), with a second `warn!`.
//! - In every mode a hole larger than [`MAX_GAP_REPAIR`] checkpoints, or
//!   one the node has pruned, is repaired with a full sync instead.
//! - A stream that ends or fails is re-subscribed after an exponential
//!   backoff (100 ms doubling to 5 s, reset by the next frame).
//! - A full resync every `discovery_interval` is the safety net.
//! - An unreachable node (at start or later) is retried with the same
//!   backoff; until the first full sync the view is not `synced` and
//!   `last_error` says why, and consumers keep their static servers.
//!
//! The view is published (receivers notified) when its nodes, `synced` or
//! `last_error` change. The cursor moves with every checkpoint covered and
//! is not part of the view: the task keeps it ([`Progress`]), and
//! [`DiscoveryStats::cursor`] shows it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use prost::bytes::Bytes;
use sui_rpc::{
    Client,
    field::{FieldMask, FieldMaskUtil as _},
    proto::sui::rpc::v2 as proto,
};
use sui_sdk_types::{Address, StructTag};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};
use tonic::{Code, Status};
use tracing::{debug, error, info, warn};

use super::{
    events::{EVENT_MASK, PageEnd, Position, Progress, page_end, registry_filter},
    registry::{Node, Registry, RegistryRef, classify},
    view::RegistryView,
};

/// The largest hole in the checkpoint sequence repaired checkpoint by
/// checkpoint; a larger one is repaired with a full sync.
pub const MAX_GAP_REPAIR: u64 = 1000;

/// How often [`StreamMode::Polling`] reads the latest checkpoint.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The page size asked of `ListDynamicFields` (the real node's maximum).
const PAGE_SIZE: u32 = 1000;

/// The checkpoint fields discovery reads (stream and gap repair).
const CHECKPOINT_MASK: [&str; 3] = [
    "sequence_number",
    "transactions.events.events.event_type",
    "transactions.events.events.contents",
];

/// What the discovery task needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// The full node's gRPC URL (`http://` or `https://`).
    pub sui_rpc_url: String,
    /// Where the registry lives.
    pub registry: RegistryRef,
    /// The period of the full resync.
    pub discovery_interval: Duration,
    /// The bound on each unary call (and on each page).
    pub request_timeout: Duration,
    /// The first reconnect/retry delay, doubled after each failure...
    pub min_backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
}

impl DiscoverySettings {
    /// Settings with the default timeout (10 s) and backoff (100 ms .. 5 s).
    pub fn new(sui_rpc_url: String, registry: RegistryRef, discovery_interval: Duration) -> Self {
        Self {
            sui_rpc_url,
            registry,
            discovery_interval,
            request_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Counters of the discovery task (for metrics and tests).
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    /// `NodeRegistered` events applied.
    pub registered: AtomicU64,
    /// `NodeUpdated` events applied.
    pub updated: AtomicU64,
    /// `NodeRemoved` events applied.
    pub removed: AtomicU64,
    /// Events delivered that are not the registry's (another package,
    /// module or struct). With the filtered stream foreign events are not
    /// delivered, so this stays 0 unless the node's filter lets one
    /// through; with the checkpoint stream or polling it counts every
    /// foreign event.
    pub ignored: AtomicU64,
    /// Registry events skipped because their BCS contents did not decode.
    pub malformed: AtomicU64,
    /// The last checkpoint applied (0 before the first full sync, i.e.
    /// while the view is not `synced`).
    pub cursor: AtomicU64,
    /// When [`DiscoveryStats::cursor`] last moved (a full sync or a
    /// checkpoint applied), in milliseconds since the Unix epoch; 0 before
    /// the first full sync. A live chain moves it several times a second,
    /// so its age says how stale the registry view may be.
    pub advanced_unix_ms: AtomicU64,
    /// Full syncs completed (the first one included).
    pub resyncs_total: AtomicU64,
    /// Subscriptions lost (stream ended or failed) or not established.
    pub reconnects_total: AtomicU64,
    /// Checkpoints fetched by sequence number to repair holes (checkpoint
    /// stream).
    pub gap_checkpoints: AtomicU64,
    /// Registry events replayed with `ListEvents` to repair holes (filtered
    /// stream).
    pub gap_events: AtomicU64,
    /// The stream in use: 0 none yet, else a [`StreamMode`] + 1; set once
    /// a subscription has caught up.
    stream: AtomicU8,
}

/// How discovery follows the chain's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// `SubscribeEvents` + `ListEvents`, filtered on the node.
    Filtered,
    /// `SubscribeCheckpoints` + `GetCheckpoint`, filtered here (the
    /// fallback).
    Checkpoints,
    /// `GetCheckpoint` of the latest checkpoint every [`POLL_INTERVAL`],
    /// then of each one since the cursor, filtered here (the fallback of
    /// the fallback: a node that serves no subscription).
    Polling,
}

impl StreamMode {
    /// Every mode, in label order.
    pub const ALL: [Self; 3] = [Self::Filtered, Self::Checkpoints, Self::Polling];

    /// The name in `GET /status` and the `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filtered => "filtered",
            Self::Checkpoints => "checkpoints",
            Self::Polling => "polling",
        }
    }
}

impl DiscoveryStats {
    /// The stream in use, once one has caught up.
    pub fn stream(&self) -> Option<StreamMode> {
        match self.stream.load(Ordering::Relaxed) {
            1 => Some(StreamMode::Filtered),
            2 => Some(StreamMode::Checkpoints),
            3 => Some(StreamMode::Polling),
            _ => None,
        }
    }

    fn set_stream(&self, mode: StreamMode) {
        let value = match mode {
            StreamMode::Filtered => 1,
            StreamMode::Checkpoints => 2,
            StreamMode::Polling => 3,
        };
        self.stream.store(value, Ordering::Relaxed);
    }

    /// Records that the cursor moved to `cursor` now.
    fn advanced_to(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::Relaxed);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        self.advanced_unix_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The `kind` labels of `daas_lb_registry_events_total`.
    pub const KINDS: [&'static str; 5] =
        ["registered", "updated", "removed", "ignored", "malformed"];

    /// The number of events of one kind (see [`Self::KINDS`]); 0 for an
    /// unknown kind.
    pub fn events_total(&self, kind: &str) -> u64 {
        self.counter(kind).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every kind with its count, in [`Self::KINDS`] order.
    pub fn events(&self) -> [(&'static str, u64); 5] {
        Self::KINDS.map(|kind| (kind, self.events_total(kind)))
    }

    fn counter(&self, kind: &str) -> Option<&AtomicU64> {
        match kind {
            "registered" => Some(&self.registered),
            "updated" => Some(&self.updated),
            "removed" => Some(&self.removed),
            "ignored" => Some(&self.ignored),
            "malformed" => Some(&self.malformed),
            _ => None,
        }
    }

    fn bump(&self, kind: &str) {
        if let Some(c) = self.counter(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The discovery task (see the module docs).
pub struct Discovery;

impl Discovery {
    /// Starts the task; the receiver sees the view (initially empty and not
    /// synced). The task runs until the handle is aborted or every receiver
    /// is dropped.
    pub fn spawn(
        settings: DiscoverySettings,
        stats: Arc<DiscoveryStats>,
    ) -> (watch::Receiver<RegistryView>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(RegistryView::default());
        let runner = Runner {
            settings,
            stats,
            tx,
            client: None,
            progress: Progress::default(),
            mode: StreamMode::Filtered,
        };
        (rx, tokio::spawn(runner.run()))
    }
}

/// Why following the stream stopped.
enum FollowEnd {
    /// The stream or a call failed: re-subscribe after a backoff.
    Lost(anyhow::Error),
    /// The hole cannot be repaired checkpoint by checkpoint.
    FullSync(String),
    /// The node does not serve filtered streams: fall back to checkpoints.
    Unsupported(String),
    /// Every receiver is gone.
    Closed,
}

struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

struct Runner {
    settings: DiscoverySettings,
    stats: Arc<DiscoveryStats>,
    tx: watch::Sender<RegistryView>,
    client: Option<Client>,
    /// How far the view has applied the chain (checkpoint 0 before the
    /// first full sync).
    progress: Progress,
    /// How to follow the chain: filtered streams until the node says it
    /// does not serve them, then checkpoints, then polling.
    mode: StreamMode,
}

/// A status as `CODE: message`, the code spelled like gRPC's (`NOT_FOUND`).
fn status_text(status: &Status) -> String {
    format!("{}: {}", code_name(status.code()), status.message())
}

fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn checkpoint_mask() -> FieldMask {
    FieldMask::from_paths(CHECKPOINT_MASK)
}

impl Runner {
    async fn run(mut self) {
        let mut backoff = Backoff {
            min: self.settings.min_backoff,
            max: self.settings.max_backoff,
            next: self.settings.min_backoff,
        };
        let mut need_full_sync = true;
        let mut next_resync = Instant::now();
        loop {
            if self.tx.is_closed() {
                return;
            }
            if need_full_sync {
                if let Err(e) = self.full_sync().await {
                    // (The borrow must end before record_error publishes.)
                    let synced = self.tx.borrow().synced;
                    self.record_error(&e, !synced);
                    sleep(backoff.next()).await;
                    continue;
                }
                backoff.reset();
                need_full_sync = false;
                next_resync = Instant::now() + self.settings.discovery_interval;
            }
            match self.follow(&mut next_resync, &mut backoff).await {
                FollowEnd::Closed => return,
                FollowEnd::FullSync(why) => {
                    info!(url = %self.settings.sui_rpc_url, why, "registry: full sync");
                    need_full_sync = true;
                }
                FollowEnd::Unsupported(reason) => {
                    if self.mode == StreamMode::Filtered {
                        warn!(
                            url = %self.settings.sui_rpc_url,
                            reason,
                            "registry: the full node does not serve filtered event streams; \
                             following every checkpoint instead"
                        );
                        self.mode = StreamMode::Checkpoints;
                    } else {
                        warn!(
                            url = %self.settings.sui_rpc_url,
                            reason,
                            interval = ?POLL_INTERVAL,
                            "registry: the full node serves no subscription; \
                             polling its checkpoints instead"
                        );
                        self.mode = StreamMode::Polling;
                    }
                }
                FollowEnd::Lost(e) => {
                    self.stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
                    self.record_error(&e, false);
                    sleep(backoff.next()).await;
                }
            }
        }
    }

    /// Logs `e` and sets it as the view's `last_error` (an `error!` when
    /// discovery has nothing yet or the message is new, else `debug!`).
    fn record_error(&self, e: &anyhow::Error, fatal: bool) {
        let text = format!("{e:#}");
        let new = self.tx.borrow().last_error.as_deref() != Some(text.as_str());
        if fatal && new {
            error!(url = %self.settings.sui_rpc_url, error = %text, "registry discovery failed; retrying");
        } else if new {
            warn!(url = %self.settings.sui_rpc_url, error = %text, "registry discovery: reconnecting");
        } else {
            debug!(url = %self.settings.sui_rpc_url, error = %text, "registry discovery: still failing");
        }
        self.tx.send_if_modified(|view| {
            let changed = view.last_error.as_deref() != Some(text.as_str());
            view.last_error = Some(text);
            changed
        });
    }

    fn clear_error(&self) {
        self.tx
            .send_if_modified(|view| view.last_error.take().is_some());
    }

    fn client(&mut self) -> anyhow::Result<Client> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = Client::new(self.settings.sui_rpc_url.as_str())
            .map_err(|s| anyhow!("{}", status_text(&s)))
            .with_context(|| format!("Sui full node URL {}", self.settings.sui_rpc_url))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Runs one unary call within the request timeout; errors name `what`
    /// and the URL.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> anyhow::Result<T> {
        let url = &self.settings.sui_rpc_url;
        match timeout(self.settings.request_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(anyhow!("{what} at {url}: {}", status_text(&status))),
            Err(_) => Err(anyhow!(
                "{what} at {url}: no answer within {:?}",
                self.settings.request_timeout
            )),
        }
    }

    async fn latest_checkpoint(&mut self) -> anyhow::Result<u64> {
        let mut client = self.client()?;
        let request = proto::GetCheckpointRequest::latest()
            .with_read_mask(FieldMask::from_paths(["sequence_number"]));
        let response = self
            .call(
                "GetCheckpoint(latest)",
                client.ledger_client().get_checkpoint(request),
            )
            .await?;
        response
            .checkpoint
            .and_then(|c| c.sequence_number)
            .ok_or_else(|| {
                anyhow!(
                    "GetCheckpoint(latest) at {}: no sequence number",
                    self.settings.sui_rpc_url
                )
            })
    }

    /// Reads the whole registry and replaces the view's nodes.
    async fn full_sync(&mut self) -> anyhow::Result<()> {
        let url = self.settings.sui_rpc_url.clone();
        let registry = self.settings.registry.clone();
        let cursor = self.latest_checkpoint().await?;
        let mut client = self.client()?;

        let request =
            proto::GetObjectRequest::new(&registry.object).with_read_mask(FieldMask::from_paths([
                "object_id",
                "version",
                "object_type",
                "contents",
            ]));
        let object = self
            .call(
                "GetObject(registry object)",
                client.ledger_client().get_object(request),
            )
            .await
            .with_context(|| format!("reading the registry object {}", registry.object))?
            .object
            .ok_or_else(|| anyhow!("GetObject({}) at {url}: no object", registry.object))?;
        if let Some(object_type) = object.object_type.as_deref() {
            let ours = object_type
                .parse::<StructTag>()
                .is_ok_and(|tag| registry.is_ours(&tag, "Registry"));
            if !ours {
                bail!(
                    "object {} at {url} is a {object_type}, not a {}",
                    registry.object,
                    registry.type_string("Registry")
                );
            }
        }
        let contents = object
            .contents
            .as_ref()
            .and_then(|b| b.value.as_deref())
            .ok_or_else(|| anyhow!("GetObject({}) at {url}: no contents", registry.object))?;
        let root: Registry = bcs::from_bytes(contents)
            .with_context(|| format!("decoding the registry object {} (BCS)", registry.object))?;
        let table = root.nodes.id.0;

        let request = proto::ListDynamicFieldsRequest::default()
            .with_parent(table.to_string())
            .with_page_size(PAGE_SIZE)
            .with_read_mask(FieldMask::from_paths(["field_id", "name", "value"]));
        let mut fields = Box::pin(client.list_dynamic_fields(request));
        let mut nodes = std::collections::BTreeMap::new();
        loop {
            let next = timeout(self.settings.request_timeout, fields.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "ListDynamicFields({table}) at {url}: no answer within {:?}",
                        self.settings.request_timeout
                    )
                })?;
            let field = match next {
                None => break,
                Some(Ok(field)) => field,
                Some(Err(status))
                    if matches!(status.code(), Code::NotFound | Code::Unimplemented) =>
                {
                    bail!(
                        "the full node at {url} serves no RPC indexes (ListDynamicFields: {}); \
                         enable `rpc.enable-indexing` in its config",
                        code_name(status.code())
                    );
                }
                Some(Err(status)) => {
                    bail!(
                        "ListDynamicFields({table}) at {url}: {}",
                        status_text(&status)
                    )
                }
            };
            let field_id = field.field_id.clone().unwrap_or_default();
            let key: Address = bcs::from_bytes(
                field
                    .name
                    .as_ref()
                    .and_then(|b| b.value.as_deref())
                    .unwrap_or_default(),
            )
            .with_context(|| {
                format!("registry table entry {field_id}: decoding the key (BCS address)")
            })?;
            let node: Node = bcs::from_bytes(
                field
                    .value
                    .as_ref()
                    .and_then(|b| b.value.as_deref())
                    .unwrap_or_default(),
            )
            .with_context(|| {
                format!("registry table entry {field_id} (node {key}): decoding the Node (BCS)")
            })?;
            nodes.insert(key, node);
        }
        if nodes.len() as u64 != root.nodes.size {
            debug!(
                url,
                listed = nodes.len(),
                size = root.nodes.size,
                "registry: table size differs (changed while reading)"
            );
        }

        let count = nodes.len();
        // Set before the view says `synced`.
        self.progress = Progress::synced_at(cursor);
        self.stats.advanced_to(cursor);
        self.tx.send_if_modified(|view| {
            let changed = view.nodes != nodes || !view.synced || view.last_error.is_some();
            view.nodes = nodes;
            view.synced = true;
            view.last_error = None;
            changed
        });
        self.stats.resyncs_total.fetch_add(1, Ordering::Relaxed);
        info!(url, nodes = count, cursor, "registry: full sync done");
        Ok(())
    }

    /// Follows the chain with the stream of the current mode until
    /// something fails (a full resync is run in between when `next_resync`
    /// passes).
    async fn follow(&mut self, next_resync: &mut Instant, backoff: &mut Backoff) -> FollowEnd {
        match self.mode {
            StreamMode::Filtered => self.follow_events(next_resync, backoff).await,
            StreamMode::Checkpoints => self.follow_checkpoints(next_resync, backoff).await,
            StreamMode::Polling => self.follow_polling(next_resync, backoff).await,
        }
    }

    /// Reads the latest checkpoint every [`POLL_INTERVAL`] and applies the
    /// checkpoints since the cursor (fetched by sequence number, as a gap).
    async fn follow_polling(
        &mut self,
        next_resync: &mut Instant,
        backoff: &mut Backoff,
    ) -> FollowEnd {
        loop {
            let latest = match self.latest_checkpoint().await {
                Ok(latest) => latest,
                Err(e) => return FollowEnd::Lost(e),
            };
            if let Some(end) = self.repair(latest).await {
                return end;
            }
            self.stats.set_stream(StreamMode::Polling);
            self.clear_error();
            backoff.reset();
            tokio::select! {
                () = sleep(POLL_INTERVAL) => {}
                () = sleep_until(*next_resync) => {
                    if let Err(e) = self.full_sync().await {
                        return FollowEnd::Lost(e.context("periodic full resync"));
                    }
                    *next_resync = Instant::now() + self.settings.discovery_interval;
                }
                () = self.tx.closed() => return FollowEnd::Closed,
            }
        }
    }

    /// Subscribes to the registry's events, replays what the subscription
    /// does not cover, then applies frames.
    async fn follow_events(
        &mut self,
        next_resync: &mut Instant,
        backoff: &mut Backoff,
    ) -> FollowEnd {
        let url = self.settings.sui_rpc_url.clone();
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return FollowEnd::Lost(e),
        };
        let request = proto::SubscribeEventsRequest::default()
            .with_read_mask(FieldMask::from_paths(EVENT_MASK))
            .with_filter(registry_filter(&self.settings.registry));
        let mut stream = match timeout(
            self.settings.request_timeout,
            client.subscription_client().subscribe_events(request),
        )
        .await
        {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return stream_failed("SubscribeEvents", &url, &status),
            Err(_) => {
                return FollowEnd::Lost(anyhow!(
                    "SubscribeEvents at {url}: no answer within {:?}",
                    self.settings.request_timeout
                ));
            }
        };
        // The first frame establishes the stream's start position.
        let first = match timeout(self.settings.request_timeout, stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(status))) => return stream_failed("SubscribeEvents", &url, &status),
            Ok(None) => {
                return FollowEnd::Lost(anyhow!("SubscribeEvents at {url}: the stream ended"));
            }
            Err(_) => {
                return FollowEnd::Lost(anyhow!(
                    "SubscribeEvents at {url}: no first frame within {:?}",
                    self.settings.request_timeout
                ));
            }
        };
        let Some(start) = first.watermark.as_ref().and_then(|w| w.cursor.clone()) else {
            return FollowEnd::Lost(anyhow!(
                "SubscribeEvents at {url}: a frame without its watermark cursor"
            ));
        };
        let start_checkpoint = first.watermark.as_ref().and_then(|w| w.checkpoint);
        if let Some(end) = self.replay(start, start_checkpoint).await {
            return end;
        }
        if let Err(e) = self.apply_event_frame(first.event.as_ref(), first.watermark.as_ref()) {
            return FollowEnd::Lost(e.context(format!("SubscribeEvents at {url}")));
        }
        self.stats.set_stream(StreamMode::Filtered);
        self.clear_error();
        debug!(
            url,
            cursor = self.progress.checkpoint,
            "registry: following filtered events"
        );
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let frame = match frame {
                        None => return FollowEnd::Lost(anyhow!("SubscribeEvents at {url}: the stream ended")),
                        Some(Err(status)) => return stream_failed("SubscribeEvents", &url, &status),
                        Some(Ok(frame)) => frame,
                    };
                    backoff.reset();
                    if let Err(e) = self.apply_event_frame(frame.event.as_ref(), frame.watermark.as_ref()) {
                        return FollowEnd::Lost(e.context(format!("SubscribeEvents at {url}")));
                    }
                }
                () = sleep_until(*next_resync) => {
                    if let Err(e) = self.full_sync().await {
                        return FollowEnd::Lost(e.context("periodic full resync"));
                    }
                    *next_resync = Instant::now() + self.settings.discovery_interval;
                }
                () = self.tx.closed() => return FollowEnd::Closed,
            }
        }
    }

    /// Replays with `ListEvents` the registry events after the progress and
    /// strictly before `before` (a new subscription's start position, which
    /// covers checkpoint `before_checkpoint` when known), page after page,
    /// asking again while the node's index trails the subscription (for at
    /// most the request timeout).
    async fn replay(&mut self, before: Bytes, before_checkpoint: Option<u64>) -> Option<FollowEnd> {
        if self.progress.resume.as_ref() == Some(&before) {
            return None;
        }
        let missed = before_checkpoint.map_or(0, |k| k.saturating_sub(self.progress.checkpoint));
        if missed > MAX_GAP_REPAIR {
            return Some(FollowEnd::FullSync(format!(
                "{missed} checkpoints missed (more than {MAX_GAP_REPAIR})"
            )));
        }
        let url = self.settings.sui_rpc_url.clone();
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return Some(FollowEnd::Lost(e)),
        };
        let patience = Instant::now() + self.settings.request_timeout;
        loop {
            let request = self
                .progress
                .replay_request(&self.settings.registry, before.clone());
            debug!(url, after = ?request.options.as_ref().and_then(|o| o.after.as_ref()), start = ?request.start_checkpoint, "registry: replaying missed events");
            let mut frames = match timeout(
                self.settings.request_timeout,
                client.ledger_client().list_events(request),
            )
            .await
            {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return Some(list_failed(&url, &status)),
                Err(_) => {
                    return Some(FollowEnd::Lost(anyhow!(
                        "ListEvents at {url}: no answer within {:?}",
                        self.settings.request_timeout
                    )));
                }
            };
            let mut end = None;
            loop {
                let frame = match timeout(self.settings.request_timeout, frames.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(status))) => return Some(list_failed(&url, &status)),
                    Err(_) => {
                        return Some(FollowEnd::Lost(anyhow!(
                            "ListEvents at {url}: no frame within {:?}",
                            self.settings.request_timeout
                        )));
                    }
                };
                if frame.event.is_some() {
                    self.stats.gap_events.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) =
                    self.apply_event_frame(frame.event.as_ref(), frame.watermark.as_ref())
                {
                    return Some(FollowEnd::Lost(e.context(format!("ListEvents at {url}"))));
                }
                if frame.end.is_some() {
                    end = frame.end;
                    break;
                }
            }
            match page_end(end.as_ref()) {
                Ok(PageEnd::Done) => return None,
                Ok(PageEnd::More) => {}
                Ok(PageEnd::IndexBehind) => {
                    if Instant::now() >= patience {
                        return Some(FollowEnd::Lost(anyhow!(
                            "ListEvents at {url}: the node's event index stayed behind its subscription for {:?}",
                            self.settings.request_timeout
                        )));
                    }
                    sleep(self.settings.min_backoff).await;
                }
                Err(why) => return Some(FollowEnd::Lost(anyhow!("ListEvents at {url}: {why}"))),
            }
        }
    }

    /// Applies one frame of a filtered stream: its event (if any, and not
    /// applied yet), then its watermark. A frame without a watermark, or an
    /// event without its position, breaks the protocol: an error.
    fn apply_event_frame(
        &mut self,
        event: Option<&proto::Event>,
        watermark: Option<&proto::Watermark>,
    ) -> anyhow::Result<()> {
        let Some(watermark) = watermark else {
            bail!("a frame without its watermark");
        };
        if let Some(event) = event {
            let position = Position::of(event).ok_or_else(|| {
                anyhow!("an event without its checkpoint, transaction_index or event_index")
            })?;
            self.apply_events(&mut std::iter::once((position, event)));
        }
        if self.progress.watermark(watermark) {
            self.stats.advanced_to(self.progress.checkpoint);
        }
        Ok(())
    }

    /// Subscribes to every checkpoint (the fallback), catches up to the
    /// node's latest checkpoint, then applies frames.
    async fn follow_checkpoints(
        &mut self,
        next_resync: &mut Instant,
        backoff: &mut Backoff,
    ) -> FollowEnd {
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return FollowEnd::Lost(e),
        };
        let request =
            proto::SubscribeCheckpointsRequest::default().with_read_mask(checkpoint_mask());
        let url = self.settings.sui_rpc_url.clone();
        let mut stream = match timeout(
            self.settings.request_timeout,
            client.subscription_client().subscribe_checkpoints(request),
        )
        .await
        {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return stream_failed("SubscribeCheckpoints", &url, &status),
            Err(_) => {
                return FollowEnd::Lost(anyhow!(
                    "SubscribeCheckpoints at {url}: no answer within {:?}",
                    self.settings.request_timeout
                ));
            }
        };
        // Checkpoints executed before the subscription took effect.
        let latest = match self.latest_checkpoint().await {
            Ok(latest) => latest,
            Err(e) => return FollowEnd::Lost(e),
        };
        if let Some(end) = self.repair(latest).await {
            return end;
        }
        self.stats.set_stream(StreamMode::Checkpoints);
        self.clear_error();
        debug!(url = %self.settings.sui_rpc_url, cursor = self.progress.checkpoint, "registry: following checkpoints");
        loop {
            tokio::select! {
                frame = stream.next() => {
                    let frame = match frame {
                        None => return FollowEnd::Lost(anyhow!("SubscribeCheckpoints at {}: the stream ended", self.settings.sui_rpc_url)),
                        Some(Err(status)) => return FollowEnd::Lost(anyhow!("SubscribeCheckpoints at {}: {}", self.settings.sui_rpc_url, status_text(&status))),
                        Some(Ok(frame)) => frame,
                    };
                    backoff.reset();
                    let Some(sequence) = frame.cursor.or_else(|| frame.checkpoint.as_ref().and_then(|c| c.sequence_number)) else {
                        continue;
                    };
                    if sequence <= self.progress.checkpoint {
                        continue;
                    }
                    if let Some(end) = self.repair(sequence - 1).await {
                        return end;
                    }
                    match frame.checkpoint {
                        Some(checkpoint) => self.apply_checkpoint(sequence, &checkpoint),
                        // A frame without its checkpoint: fetch it.
                        None => {
                            if let Some(end) = self.repair(sequence).await {
                                return end;
                            }
                        }
                    }
                }
                () = sleep_until(*next_resync) => {
                    if let Err(e) = self.full_sync().await {
                        return FollowEnd::Lost(e.context("periodic full resync"));
                    }
                    *next_resync = Instant::now() + self.settings.discovery_interval;
                }
                () = self.tx.closed() => return FollowEnd::Closed,
            }
        }
    }

    /// Fetches and applies the checkpoints after the cursor up to `end`
    /// (none when the cursor is already there).
    async fn repair(&mut self, end: u64) -> Option<FollowEnd> {
        let start = self.progress.checkpoint + 1;
        if end < start {
            return None;
        }
        if end - start + 1 > MAX_GAP_REPAIR {
            return Some(FollowEnd::FullSync(format!(
                "{} checkpoints missed (more than {MAX_GAP_REPAIR})",
                end - start + 1
            )));
        }
        debug!(url = %self.settings.sui_rpc_url, start, end, "registry: repairing missed checkpoints");
        let mut client = match self.client() {
            Ok(c) => c,
            Err(e) => return Some(FollowEnd::Lost(e)),
        };
        for sequence in start..=end {
            let request = proto::GetCheckpointRequest::by_sequence_number(sequence)
                .with_read_mask(checkpoint_mask());
            let what = format!("GetCheckpoint({sequence})");
            let response = match timeout(
                self.settings.request_timeout,
                client.ledger_client().get_checkpoint(request),
            )
            .await
            {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) if status.code() == Code::NotFound => {
                    return Some(FollowEnd::FullSync(format!(
                        "{what}: {}",
                        status_text(&status)
                    )));
                }
                Ok(Err(status)) => {
                    return Some(FollowEnd::Lost(anyhow!(
                        "{what} at {}: {}",
                        self.settings.sui_rpc_url,
                        status_text(&status)
                    )));
                }
                Err(_) => {
                    return Some(FollowEnd::Lost(anyhow!(
                        "{what} at {}: no answer within {:?}",
                        self.settings.sui_rpc_url,
                        self.settings.request_timeout
                    )));
                }
            };
            let Some(checkpoint) = response.checkpoint else {
                return Some(FollowEnd::Lost(anyhow!(
                    "{what} at {}: no checkpoint",
                    self.settings.sui_rpc_url
                )));
            };
            self.stats.gap_checkpoints.fetch_add(1, Ordering::Relaxed);
            self.apply_checkpoint(sequence, &checkpoint);
        }
        None
    }

    /// Applies the registry events of checkpoint `sequence` in order and
    /// moves the cursor to it.
    fn apply_checkpoint(&mut self, sequence: u64, checkpoint: &proto::Checkpoint) {
        let mut events = checkpoint
            .transactions
            .iter()
            .enumerate()
            .flat_map(|(t, transaction)| {
                transaction
                    .events
                    .iter()
                    .flat_map(|e| e.events.iter())
                    .enumerate()
                    .map(move |(i, event)| {
                        let position = Position {
                            checkpoint: sequence,
                            transaction: t as u64,
                            event: u32::try_from(i).unwrap_or(u32::MAX),
                        };
                        (position, event)
                    })
            });
        self.apply_events(&mut events);
        if self.progress.checkpoint_done(sequence) {
            self.stats.advanced_to(sequence);
        }
    }

    /// Applies events in ledger order, each one only if the progress has
    /// not passed its position: registry events change the view, foreign
    /// ones are counted as ignored, malformed ones as malformed (and
    /// logged).
    fn apply_events(&mut self, events: &mut dyn Iterator<Item = (Position, &proto::Event)>) {
        let registry = &self.settings.registry;
        let stats = &self.stats;
        let progress = &mut self.progress;
        self.tx.send_if_modified(|view| {
            let mut changed = false;
            for (position, event) in events {
                if !progress.is_new(position) {
                    continue;
                }
                progress.applied(position);
                let event_type = event.event_type.as_deref().unwrap_or_default();
                let contents = event
                    .contents
                    .as_ref()
                    .and_then(|b| b.value.as_deref())
                    .unwrap_or_default();
                let checkpoint = position.checkpoint;
                match classify(event_type, contents, registry) {
                    Ok(None) => stats.bump("ignored"),
                    Ok(Some(e)) => {
                        stats.bump(e.kind());
                        debug!(checkpoint, kind = e.kind(), node = %e.node(), "registry event");
                        changed |= view.apply(&e);
                    }
                    Err(reason) => {
                        stats.bump("malformed");
                        warn!(checkpoint, event_type, reason, "registry event skipped");
                    }
                }
            }
            changed
        });
    }
}

/// The end of following when a streaming call fails with `status`:
/// `UNIMPLEMENTED` means the node does not serve it (fall back), anything
/// else is a lost stream.
fn stream_failed(what: &str, url: &str, status: &Status) -> FollowEnd {
    if status.code() == Code::Unimplemented {
        FollowEnd::Unsupported(format!("{what}: {}", status_text(status)))
    } else {
        FollowEnd::Lost(anyhow!("{what} at {url}: {}", status_text(status)))
    }
}

/// Like [`stream_failed`] for `ListEvents`, where `NOT_FOUND` and
/// `OUT_OF_RANGE` mean the range is no longer there (pruned): a full sync.
fn list_failed(url: &str, status: &Status) -> FollowEnd {
    if matches!(status.code(), Code::NotFound | Code::OutOfRange) {
        FollowEnd::FullSync(format!("ListEvents at {url}: {}", status_text(status)))
    } else {
        stream_failed("ListEvents", url, status)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        chain::registry::{NodeRegistered, RegistryRef},
        demo::fake_node::FakeChain,
    };

    const CHAIN: &str = "4c78adac";
    /// The bound of every wait (the tests normally take a fraction of it).
    const PATIENCE: Duration = Duration::from_secs(3);

    fn address(byte: u8) -> Address {
        let mut bytes = [0x5a; Address::LENGTH];
        bytes[Address::LENGTH - 1] = byte;
        Address::new(bytes)
    }

    fn node(byte: u8, stake: u64) -> Node {
        Node {
            operator: address(200),
            endpoint: format!("10.0.0.{byte}"),
            stake,
            sui_rpc: format!("http://10.0.0.{byte}:9000"),
            nautilus_url: String::new(),
            enclave_id: Address::ZERO,
        }
    }

    fn settings(chain: &FakeChain, interval: Duration) -> DiscoverySettings {
        DiscoverySettings {
            request_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_millis(400),
            ..DiscoverySettings::new(chain.url(), chain.registry(), interval)
        }
    }

    struct Running {
        rx: watch::Receiver<RegistryView>,
        stats: Arc<DiscoveryStats>,
        task: JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn start(settings: DiscoverySettings) -> Running {
        let stats = Arc::new(DiscoveryStats::default());
        let (rx, task) = Discovery::spawn(settings, Arc::clone(&stats));
        Running { rx, stats, task }
    }

    impl Running {
        /// Waits until the published view satisfies `pred`.
        async fn view(
            &mut self,
            what: &str,
            pred: impl FnMut(&RegistryView) -> bool,
        ) -> RegistryView {
            let result = timeout(PATIENCE, self.rx.wait_for(pred))
                .await
                .map(|r| r.map(|v| v.clone()));
            match result {
                Ok(Ok(view)) => view,
                Ok(Err(closed)) => panic!("discovery stopped ({closed}) while waiting for {what}"),
                Err(elapsed) => panic!(
                    "timed out ({elapsed}) waiting for {what}; view: {:?}",
                    *self.rx.borrow()
                ),
            }
        }

        /// Polls until `pred` holds (for counters and the cursor, which do
        /// not notify).
        async fn until(&self, what: &str, mut pred: impl FnMut(&Self) -> bool) {
            let deadline = Instant::now() + PATIENCE;
            while !pred(self) {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; stats: {:?}",
                    self.stats
                );
                sleep(Duration::from_millis(5)).await;
            }
        }

        fn count(&self, kind: &str) -> u64 {
            self.stats.events_total(kind)
        }
    }

    async fn synced(chain: &FakeChain, interval: Duration) -> Running {
        let mut running = start(settings(chain, interval));
        running.view("the first full sync", |v| v.synced).await;
        // Following the stream: later checkpoints reach the subscription.
        running
            .until("the subscription", |_| {
                chain.calls().subscribe.load(Ordering::Relaxed) >= 1
            })
            .await;
        // And its catch-up (the ListEvents replay, or the read of the latest
        // checkpoint): an event made before it would be counted as a
        // repaired gap. (Under load the tests' first event used to land in
        // that window.)
        running
            .until("the catch-up after subscribing", |r| {
                r.stats.stream().is_some()
            })
            .await;
        running
    }

    #[tokio::test]
    async fn full_sync_reads_every_page_of_the_table() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        for i in 1..=8 {
            chain.register(address(i), node(i, u64::from(i) * 1_000_000_000));
        }
        chain.remove(address(4));
        chain.set_max_page_size(3);
        let mut running = start(settings(&chain, Duration::from_mins(5)));
        let view = running.view("the first full sync", |v| v.synced).await;
        assert_eq!(view.nodes, chain.nodes());
        assert_eq!(view.nodes.len(), 7);
        assert_eq!(view.nodes[&address(8)], node(8, 8_000_000_000));
        assert_eq!(view.last_error, None);
        // 7 entries, 3 a page.
        assert_eq!(chain.calls().list_dynamic_fields.load(Ordering::Relaxed), 3);
        // Nodes from the table are not events.
        assert_eq!(running.stats.events().map(|(_, n)| n), [0; 5]);
        assert_eq!(running.stats.resyncs_total.load(Ordering::Relaxed), 1);
        assert_eq!(running.stats.cursor.load(Ordering::Relaxed), chain.latest());
    }

    /// `advanced_unix_ms` is the wall-clock time of the full sync, then of
    /// every checkpoint applied (what `daas_lb_registry_last_update_timestamp_seconds`
    /// and the `DaasLbRegistryStale` alert read).
    #[tokio::test]
    async fn the_stats_record_when_the_cursor_last_moved() {
        let now_ms = || {
            u64::try_from(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap()
        };
        let before = now_ms();
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let running = synced(&chain, Duration::from_mins(5)).await;
        let synced_at = running.stats.advanced_unix_ms.load(Ordering::Relaxed);
        assert!(
            (before..=now_ms()).contains(&synced_at),
            "{synced_at} not in {before}..now"
        );
        // The next checkpoint comes at least a millisecond later.
        std::thread::sleep(Duration::from_millis(2));
        let last = chain.tick();
        running
            .until("the next checkpoint's time", |r| {
                r.stats.cursor.load(Ordering::Relaxed) == last
                    && r.stats.advanced_unix_ms.load(Ordering::Relaxed) > synced_at
            })
            .await;
        assert!(running.stats.advanced_unix_ms.load(Ordering::Relaxed) <= now_ms());
    }

    #[tokio::test]
    async fn events_reach_the_view_within_a_second() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let mut running = synced(&chain, Duration::from_mins(5)).await;

        let t0 = Instant::now();
        chain.register(address(1), node(1, 5));
        running
            .view("the registered node", |v| v.nodes.contains_key(&address(1)))
            .await;
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

        let t0 = Instant::now();
        chain.update(address(1), node(1, 50));
        running
            .view("the updated stake", |v| {
                v.nodes.get(&address(1)).is_some_and(|n| n.stake == 50)
            })
            .await;
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

        let t0 = Instant::now();
        let last = chain.remove(address(1));
        running.view("the removal", |v| v.nodes.is_empty()).await;
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(running.stats.cursor.load(Ordering::Relaxed), last);
        assert_eq!(
            [
                running.count("registered"),
                running.count("updated"),
                running.count("removed")
            ],
            [1, 1, 1]
        );
        assert_eq!(running.stats.reconnects_total.load(Ordering::Relaxed), 0);
        assert_eq!(running.stats.stream(), Some(StreamMode::Filtered));
        assert_eq!(
            running.stats.gap_events.load(Ordering::Relaxed),
            0,
            "no gap to repair"
        );
        assert_eq!(
            chain
                .calls()
                .checkpoints_by_sequence
                .load(Ordering::Relaxed),
            0,
            "no checkpoint read"
        );
    }

    #[tokio::test]
    async fn a_dropped_stream_is_resumed_without_losing_or_repeating_events() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        chain.register(address(1), node(1, 10));
        running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;

        // The stream breaks; three checkpoints land while nobody listens.
        chain.end_streams();
        chain.register(address(2), node(2, 20));
        chain.update(address(1), node(1, 11));
        chain.register(address(3), node(3, 30));
        let view = running
            .view("the missed checkpoints", |v| {
                v.nodes.len() == 3 && v.nodes[&address(1)].stake == 11 && v.last_error.is_none()
            })
            .await;
        assert_eq!(view.nodes, chain.nodes());
        assert!(running.stats.reconnects_total.load(Ordering::Relaxed) >= 1);
        assert!(chain.calls().subscribe_events.load(Ordering::Relaxed) >= 2);
        assert!(
            chain.calls().list_events.load(Ordering::Relaxed) >= 2,
            "gap repaired by ListEvents (one replay at the start, one after the drop)"
        );
        assert_eq!(running.stats.gap_events.load(Ordering::Relaxed), 3);
        assert_eq!(
            chain
                .calls()
                .checkpoints_by_sequence
                .load(Ordering::Relaxed),
            0,
            "no checkpoint read"
        );

        // And the new stream carries on.
        let last = chain.remove(address(3));
        running
            .view("node 3 removed", |v| !v.nodes.contains_key(&address(3)))
            .await;
        running
            .until("the cursor", |r| {
                r.stats.cursor.load(Ordering::Relaxed) == last
            })
            .await;
        sleep(Duration::from_millis(100)).await;
        // Every event applied exactly once.
        assert_eq!(
            [
                running.count("registered"),
                running.count("updated"),
                running.count("removed")
            ],
            [3, 1, 1]
        );
        assert_eq!(
            running.stats.resyncs_total.load(Ordering::Relaxed),
            1,
            "no full resync needed"
        );
        assert_eq!(running.rx.borrow().nodes, chain.nodes());
    }

    #[tokio::test]
    async fn an_outage_mid_way_is_repaired_after_the_node_comes_back() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        chain.set_unavailable(true);
        chain.register(address(1), node(1, 10));
        chain.register(address(2), node(2, 10));
        running
            .view("the outage", |v| {
                v.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("UNAVAILABLE"))
            })
            .await;
        assert!(
            running.rx.borrow().synced,
            "the view stays usable during an outage"
        );
        chain.set_unavailable(false);
        let view = running
            .view("the recovery", |v| {
                v.nodes.len() == 2 && v.last_error.is_none()
            })
            .await;
        assert_eq!(view.nodes, chain.nodes());
        assert_eq!(running.count("registered"), 2);
    }

    #[tokio::test]
    async fn a_large_gap_is_repaired_with_a_full_sync() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        chain.end_streams();
        chain.register(address(1), node(1, 10));
        for _ in 0..MAX_GAP_REPAIR {
            chain.tick();
        }
        running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;
        assert_eq!(running.stats.resyncs_total.load(Ordering::Relaxed), 2);
        assert_eq!(
            running.count("registered"),
            0,
            "read from the table, not the event"
        );
        assert_eq!(running.stats.cursor.load(Ordering::Relaxed), chain.latest());
    }

    #[tokio::test]
    async fn other_packages_modules_and_malformed_events_are_not_applied() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        let ours = chain.registry();
        let other_package = RegistryRef {
            package: address(99),
            ..ours.clone()
        };
        let other_module = RegistryRef {
            module: "registry_v2".to_owned(),
            ..ours.clone()
        };
        let valid = bcs::to_bytes(&NodeRegistered {
            node: address(7),
            info: node(7, 1),
        })
        .unwrap();
        chain.emit_raw(other_package.type_string("NodeRegistered"), valid.clone());
        chain.emit_raw(other_module.type_string("NodeRegistered"), valid.clone());
        chain.emit_raw(
            ours.type_string("NodeRegistered"),
            valid[..valid.len() - 3].to_vec(),
        );
        let mut trailing = valid.clone();
        trailing.push(1);
        chain.emit_raw(ours.type_string("NodeRegistered"), trailing);
        chain.register(address(1), node(1, 10));
        let view = running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;
        assert_eq!(view.nodes.keys().copied().collect::<Vec<_>>(), [address(1)]);
        // Filtered on the node: the foreign events never arrive.
        assert_eq!(running.count("ignored"), 0);
        assert_eq!(running.count("malformed"), 2);
        assert_eq!(running.count("registered"), 1);
        assert_eq!(chain.calls().foreign_events_sent.load(Ordering::Relaxed), 0);
    }

    /// Appends the foreign and malformed events of the test above.
    fn emit_foreign_and_malformed(chain: &FakeChain) {
        let ours = chain.registry();
        let valid = bcs::to_bytes(&NodeRegistered {
            node: address(7),
            info: node(7, 1),
        })
        .unwrap();
        let other_package = RegistryRef {
            package: address(99),
            ..ours.clone()
        };
        chain.emit_raw(other_package.type_string("NodeRegistered"), valid.clone());
        chain.emit_raw(
            format!("{}::registry_v2::NodeRegistered", ours.package),
            valid.clone(),
        );
        chain.emit_raw(
            ours.type_string("NodeRegistered"),
            valid[..valid.len() - 3].to_vec(),
        );
    }

    /// A node that answers `UNIMPLEMENTED` to `SubscribeEvents` is followed
    /// through every checkpoint: events still apply, the mode says so, and
    /// foreign events arrive and are counted as ignored.
    #[tokio::test]
    async fn a_node_without_filtered_streams_is_followed_through_checkpoints() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.set_filtered_streams(false);
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        assert_eq!(running.stats.stream(), Some(StreamMode::Checkpoints));
        assert_eq!(chain.calls().subscribe_events.load(Ordering::Relaxed), 0);
        emit_foreign_and_malformed(&chain);
        chain.register(address(1), node(1, 10));
        running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;
        assert_eq!(running.count("ignored"), 2);
        assert_eq!(running.count("malformed"), 1);
        assert_eq!(running.count("registered"), 1);
        // The other package's event (the other module's is of our package).
        assert_eq!(chain.calls().foreign_events_sent.load(Ordering::Relaxed), 1);
        // A drop is repaired checkpoint by checkpoint.
        chain.end_streams();
        chain.register(address(2), node(2, 10));
        running
            .view("node 2", |v| v.nodes.contains_key(&address(2)))
            .await;
        assert!(running.stats.gap_checkpoints.load(Ordering::Relaxed) >= 1);
        assert_eq!(running.count("registered"), 2);
        assert_eq!(running.stats.reconnects_total.load(Ordering::Relaxed), 1);
    }

    /// A node that serves no subscription at all (`UNIMPLEMENTED` to
    /// `SubscribeEvents` and `SubscribeCheckpoints`) is polled: events still
    /// apply, within a poll interval.
    #[tokio::test]
    async fn a_node_without_subscriptions_is_polled() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.set_subscriptions(false);
        let mut running = start(settings(&chain, Duration::from_mins(5)));
        running.view("the first full sync", |v| v.synced).await;
        running
            .until("polling", |r| r.stats.stream() == Some(StreamMode::Polling))
            .await;
        let last = chain.register(address(1), node(1, 10));
        chain.tick();
        running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;
        assert_eq!(running.count("registered"), 1);
        running
            .until("the cursor", |r| {
                r.stats.cursor.load(Ordering::Relaxed) > last
            })
            .await;
        assert_eq!(chain.calls().subscribe.load(Ordering::Relaxed), 0);
        assert!(running.stats.gap_checkpoints.load(Ordering::Relaxed) >= 2);
        assert_eq!(running.stats.reconnects_total.load(Ordering::Relaxed), 0);
    }

    /// Mainnet-like noise (another package's events in every checkpoint)
    /// never crosses the wire with the filtered stream; with the checkpoint
    /// stream all of it does.
    #[tokio::test]
    async fn foreign_noise_is_filtered_on_the_node() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.set_noise(200);
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        for _ in 0..5 {
            chain.tick();
        }
        let last = chain.register(address(1), node(1, 10));
        running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;
        running
            .until("the cursor", |r| {
                r.stats.cursor.load(Ordering::Relaxed) == last
            })
            .await;
        let calls = chain.calls();
        assert_eq!(calls.foreign_events_sent.load(Ordering::Relaxed), 0);
        assert_eq!(calls.events_sent.load(Ordering::Relaxed), 1);
        assert_eq!(running.count("ignored"), 0);

        let fallback = FakeChain::start(CHAIN).await.unwrap();
        fallback.set_noise(200);
        fallback.set_filtered_streams(false);
        let mut running = synced(&fallback, Duration::from_mins(5)).await;
        for _ in 0..5 {
            fallback.tick();
        }
        fallback.register(address(1), node(1, 10));
        running
            .view("node 1", |v| v.nodes.contains_key(&address(1)))
            .await;
        assert!(fallback.calls().foreign_events_sent.load(Ordering::Relaxed) >= 6 * 200);
        assert!(running.count("ignored") >= 6 * 200);
    }

    /// Progress-only frames move the cursor without events, in the steps
    /// the node sends them; a replay pages through item and scan limits.
    #[tokio::test]
    async fn progress_frames_move_the_cursor_and_replays_page() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.set_progress_every(3);
        chain.set_list_limits(1, 2);
        let mut running = synced(&chain, Duration::from_mins(5)).await;
        let start = running.stats.cursor.load(Ordering::Relaxed);
        let mut last = 0;
        for _ in 0..6 {
            last = chain.tick();
        }
        let on_boundary = last - last % 3;
        running
            .until("the progress frame", |r| {
                r.stats.cursor.load(Ordering::Relaxed) == on_boundary
            })
            .await;
        assert!(on_boundary > start);
        assert_eq!(on_boundary % 3, 0);
        assert_eq!(running.stats.events().map(|(_, n)| n), [0; 5]);

        chain.end_streams();
        for i in 1..=4 {
            chain.register(address(i), node(i, 10));
            chain.tick();
        }
        running
            .view("the four nodes", |v| {
                v.nodes.len() == 4 && v.last_error.is_none()
            })
            .await;
        // One item per page: at least one ListEvents per event.
        assert!(chain.calls().list_events.load(Ordering::Relaxed) > 4);
        assert_eq!(running.stats.gap_events.load(Ordering::Relaxed), 4);
        assert_eq!(running.count("registered"), 4);
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_reported_and_recovered() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.register(address(1), node(1, 10));
        chain.set_unavailable(true);
        let mut running = start(settings(&chain, Duration::from_mins(5)));
        let view = running.view("the error", |v| v.last_error.is_some()).await;
        assert!(!view.synced);
        assert!(view.nodes.is_empty());
        let error = view.last_error.unwrap();
        assert!(
            error.contains(&chain.url()) && error.contains("UNAVAILABLE"),
            "{error}"
        );
        chain.set_unavailable(false);
        let view = running.view("the recovery", |v| v.synced).await;
        assert_eq!((view.nodes.len(), view.last_error), (1, None));
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error_too() {
        // A port nobody listens on (bound then released).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let registry = RegistryRef {
            package: address(1),
            module: "registry".to_owned(),
            object: address(2),
        };
        let mut running = start(DiscoverySettings::new(
            url.clone(),
            registry,
            Duration::from_mins(5),
        ));
        let view = running.view("the error", |v| v.last_error.is_some()).await;
        assert!(!view.synced);
        assert!(view.last_error.unwrap().contains(&url));
    }

    #[tokio::test]
    async fn a_node_without_indexes_gets_a_clear_error() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.set_indexes(false);
        let mut running = start(settings(&chain, Duration::from_mins(5)));
        let view = running.view("the error", |v| v.last_error.is_some()).await;
        let error = view.last_error.unwrap();
        assert!(
            error.contains(&format!(
                "the full node at {} serves no RPC indexes (ListDynamicFields: NOT_FOUND)",
                chain.url()
            )) && error.contains("rpc.enable-indexing"),
            "{error}"
        );
        assert!(!view.synced);
        chain.set_indexes(true);
        running
            .view("the recovery", |v| v.synced && v.last_error.is_none())
            .await;
    }

    #[tokio::test]
    async fn a_wrong_object_is_named() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        let registry = RegistryRef {
            object: address(3),
            ..chain.registry()
        };
        let mut running = start(DiscoverySettings {
            registry,
            ..settings(&chain, Duration::from_mins(5))
        });
        let error = running
            .view("the error", |v| v.last_error.is_some())
            .await
            .last_error
            .unwrap();
        assert!(
            error.contains(&address(3).to_string()) && error.contains("NOT_FOUND"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn the_registry_is_resynced_periodically() {
        let chain = FakeChain::start(CHAIN).await.unwrap();
        chain.register(address(1), node(1, 10));
        let running = synced(&chain, Duration::from_millis(100)).await;
        running
            .until("three full syncs", |r| {
                r.stats.resyncs_total.load(Ordering::Relaxed) >= 3
            })
            .await;
        // A resync runs beside the stream, it does not reconnect.
        assert_eq!(running.stats.reconnects_total.load(Ordering::Relaxed), 0);
        assert_eq!(chain.calls().subscribe.load(Ordering::Relaxed), 1);
        assert_eq!(running.rx.borrow().nodes, chain.nodes());
    }

    #[test]
    fn codes_are_spelled_like_grpc() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        let mut backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
            next: Duration::from_millis(100),
        };
        let delays: Vec<_> = (0..8).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(100));
    }
}
