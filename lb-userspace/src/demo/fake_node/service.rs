//! The gRPC services of the fake full node (`LedgerService`,
//! `StateService`, `SubscriptionService` from sui-rpc's generated server
//! traits) over the chain's [`Shared`] state, with the read masks applied as
//! the real node applies them.
//!
//! Invariant: every call starts with [`Shared::enter`] (the delay and
//! unavailable switches) and every unary answer carries the metadata
//! headers of a real response ([`Shared::reply`]); the filtered services
//! (`SubscribeEvents`, `ListEvents`) then check their switch
//! ([`Shared::filtered`]) and validate the filter before anything else,
//! and the subscriptions their own switch ([`Shared::subscriptions`]).

use std::{
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use prost::Message as _;
use prost_types::Timestamp;
use sui_rpc::{
    field::FieldMaskTree,
    merge::Merge as _,
    proto::sui::rpc::v2::{
        self as proto, get_checkpoint_request::CheckpointId, ledger_service_server::LedgerService,
        state_service_server::StateService, subscription_service_server::SubscriptionService,
    },
};
use sui_sdk_types::Address;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, codegen::BoxStream, metadata::MetadataValue};

use super::{
    DEFAULT_PAGE_SIZE,
    events::{Filter, list},
    model::{EventSubscriber, Shared, Subscriber, progress_frame, put_object},
};

impl Shared {
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

    /// `UNIMPLEMENTED` while filtered streams are switched off.
    fn filtered(&self, method: &str) -> Result<(), Status> {
        if self.lock().filtered_streams {
            Ok(())
        } else {
            Err(Status::unimplemented(format!(
                "fake Sui full node: {method} is not served (test switch)"
            )))
        }
    }

    /// `UNIMPLEMENTED` while subscriptions are switched off.
    fn subscriptions(&self, method: &str) -> Result<(), Status> {
        if self.lock().subscriptions {
            Ok(())
        } else {
            Err(Status::unimplemented(format!(
                "fake Sui full node: {method} is not served (test switch)"
            )))
        }
    }

    /// A unary response with the metadata headers every real response
    /// carries.
    fn reply<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        self.headers(response.metadata_mut());
        response
    }

    /// The metadata headers of a real response.
    fn headers(&self, metadata: &mut tonic::metadata::MetadataMap) {
        let state = self.lock();
        if let Ok(chain_id) = MetadataValue::try_from(state.chain_id.as_str()) {
            metadata.insert("x-sui-chain-id", chain_id);
        }
        let height = state.latest().saturating_sub(state.lag_checkpoints);
        metadata.insert("x-sui-checkpoint-height", MetadataValue::from(height));
    }
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

/// The frames a subscription's channel receives, as a response stream.
fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<Result<T, Status>>,
) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    }))
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

/// The services' implementation: a handle on the chain's state.
#[derive(Clone)]
pub(super) struct Service(pub(super) Arc<Shared>);

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
                    Some(state.latest())
                }
                Some(CheckpointId::SequenceNumber(n)) => {
                    self.0
                        .calls
                        .checkpoints_by_sequence
                        .fetch_add(1, Ordering::Relaxed);
                    Some(*n)
                }
                Some(CheckpointId::Digest(d)) => state
                    .checkpoints
                    .iter()
                    .position(|c| c.digest.as_ref() == Some(d))
                    .map(|i| i as u64),
                Some(_) => None,
            };
            found
                .and_then(|n| self.0.checkpoint(&state, n))
                .map(|c| proto::Checkpoint::merge_from(&c, &mask))
                .ok_or_else(|| {
                    Status::not_found(format!("checkpoint {:?} not found", request.checkpoint_id))
                })?
        };
        let response = proto::GetCheckpointResponse::default().with_checkpoint(checkpoint);
        self.0.calls.sent_whole_checkpoint(
            response.encoded_len(),
            response.checkpoint.as_ref(),
            &self.0.registry.package,
        );
        Ok(self.0.reply(response))
    }

    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Result<Response<BoxStream<proto::ListEventsResponse>>, Status> {
        self.0.enter().await?;
        self.0.filtered("ListEvents")?;
        self.0.calls.list_events.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let filter = Filter::parse(request.filter.as_ref())?;
        let mask = mask_or(request.read_mask.clone(), "*");
        let frames = {
            let state = self.0.lock();
            let at = |sequence| self.0.checkpoint(&state, sequence);
            list(
                &at,
                state.latest(),
                &request,
                &filter,
                &mask,
                state.list_limits,
            )?
        };
        for frame in &frames {
            self.0.calls.sent_event_frame(
                frame.encoded_len(),
                frame.event.as_ref(),
                &self.0.registry.package,
            );
        }
        let stream: BoxStream<proto::ListEventsResponse> =
            Box::pin(futures::stream::iter(frames.into_iter().map(Ok)));
        let mut response = Response::new(stream);
        self.0.headers(response.metadata_mut());
        Ok(response)
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
        self.0.subscriptions("SubscribeCheckpoints")?;
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
        Ok(Response::new(receiver_stream(rx)))
    }

    async fn subscribe_events(
        &self,
        request: Request<proto::SubscribeEventsRequest>,
    ) -> Result<Response<BoxStream<proto::SubscribeEventsResponse>>, Status> {
        self.0.enter().await?;
        self.0.subscriptions("SubscribeEvents")?;
        self.0.filtered("SubscribeEvents")?;
        let request = request.into_inner();
        let filter = Filter::parse(request.filter.as_ref())?;
        let mask = mask_or(request.read_mask, "*");
        let (tx, rx) = mpsc::unbounded_channel();
        {
            // Registered and started in one critical section: the first
            // frame is the start position, every later checkpoint reaches
            // the subscription.
            let mut state = self.0.lock();
            let first = progress_frame(state.latest());
            self.0
                .calls
                .sent_event_frame(first.encoded_len(), None, &self.0.registry.package);
            let _ = tx.send(Ok(first));
            state
                .event_subscribers
                .push(EventSubscriber { filter, mask, tx });
        }
        self.0.calls.subscribe.fetch_add(1, Ordering::Relaxed);
        self.0
            .calls
            .subscribe_events
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(receiver_stream(rx)))
    }
}
