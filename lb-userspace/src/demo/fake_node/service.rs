//! The gRPC services of the fake full node (`LedgerService`,
//! `StateService`, `SubscriptionService` from sui-rpc's generated server
//! traits) over the chain's [`Shared`] state, with the read masks applied as
//! the real node applies them.
//!
//! Invariant: every call starts with [`Shared::enter`] (the delay and
//! unavailable switches) and every unary answer carries the metadata
//! headers of a real response ([`Shared::reply`]).

use std::{
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

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
    model::{Shared, Subscriber, put_object},
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
