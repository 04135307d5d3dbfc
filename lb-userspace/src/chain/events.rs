//! The pure parts of following the registry through filtered event streams
//! (`SubscriptionService.SubscribeEvents`, `LedgerService.ListEvents`):
//! the server-side filter, event positions, and the progress discovery has
//! made (see docs/registry.md, "Event flow").
//!
//! - The filter selects exactly the events [`super::registry::classify`]
//!   accepts: one DNF term per registry event type
//!   (`<package>::<module>::NodeRegistered`, `NodeUpdated`, `NodeRemoved`),
//!   each an `EventTypeFilter` on the type's defining package, never an
//!   `EmitModuleFilter` (that one matches the package of the Move call that
//!   emitted the event, not of its type).
//! - An event's position is (checkpoint, transaction index in the
//!   checkpoint, event index in the transaction): ledger order, the order
//!   both the filtered streams and the checkpoints deliver events in.
//! - [`Progress`] invariants: every registry event at a checkpoint `<=
//!   checkpoint` is in the view, and so is every one at a position `<=
//!   last_event`; an event is applied only when its position is after both
//!   (so none is applied twice, whichever stream or repair delivers it);
//!   `checkpoint` never moves back; `resume` is the last watermark cursor
//!   received (the proto's "safe resume point"), reset by a full sync.

use prost::bytes::Bytes;
use sui_rpc::{
    field::{FieldMask, FieldMaskUtil as _},
    proto::sui::rpc::v2 as proto,
};

use super::registry::{EVENT_NAMES, RegistryRef};

/// The `Event` fields discovery reads from the filtered streams: the type
/// and contents it decodes, and the position it deduplicates by.
pub const EVENT_MASK: [&str; 5] = [
    "event_type",
    "contents",
    "checkpoint",
    "transaction_index",
    "event_index",
];

/// The server-side filter: any of the registry's three event types (full
/// type strings, no type parameters).
pub fn registry_filter(registry: &RegistryRef) -> proto::EventFilter {
    proto::EventFilter::default().with_terms(
        EVENT_NAMES
            .iter()
            .map(|name| {
                proto::EventTerm::default().with_literals(vec![
                    proto::EventLiteral::default().with_event_type(
                        proto::EventTypeFilter::default()
                            .with_event_type(registry.type_string(name)),
                    ),
                ])
            })
            .collect(),
    )
}

/// Where an event is in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The checkpoint that holds it.
    pub checkpoint: u64,
    /// Its transaction's index in the checkpoint.
    pub transaction: u64,
    /// Its index in the transaction's events.
    pub event: u32,
}

impl Position {
    /// The position of an event from a filtered stream (all three fields
    /// are in [`EVENT_MASK`]); `None` when one is missing.
    pub fn of(event: &proto::Event) -> Option<Self> {
        Some(Self {
            checkpoint: event.checkpoint?,
            transaction: event.transaction_index?,
            event: event.event_index?,
        })
    }
}

/// How far discovery has applied the chain (see the module docs for the
/// invariants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every registry event up to this checkpoint (inclusive) is applied.
    pub checkpoint: u64,
    /// The last event applied after `checkpoint`, if any.
    pub last_event: Option<Position>,
    /// The cursor of the last watermark received: where a `ListEvents`
    /// replay resumes (`options.after`). `None` after a full sync (the
    /// replay then starts at `checkpoint + 1`).
    pub resume: Option<Bytes>,
}

impl Progress {
    /// The progress right after a full sync that read checkpoint
    /// `checkpoint`'s state.
    pub fn synced_at(checkpoint: u64) -> Self {
        Self {
            checkpoint,
            last_event: None,
            resume: None,
        }
    }

    /// Whether the event at `position` is not applied yet.
    pub fn is_new(&self, position: Position) -> bool {
        position.checkpoint > self.checkpoint && self.last_event.is_none_or(|last| position > last)
    }

    /// Records that the event at `position` was applied (or skipped as
    /// malformed: it is not delivered again either way).
    pub fn applied(&mut self, position: Position) {
        if self.is_new(position) {
            self.last_event = Some(position);
        }
    }

    /// Records that every event of checkpoint `sequence` is applied (a
    /// checkpoint of the unfiltered stream). Returns whether the checkpoint
    /// moved.
    pub fn checkpoint_done(&mut self, sequence: u64) -> bool {
        if sequence <= self.checkpoint {
            return false;
        }
        self.checkpoint = sequence;
        if self
            .last_event
            .is_some_and(|last| last.checkpoint <= sequence)
        {
            self.last_event = None;
        }
        // An event cursor older than the checkpoint would replay from
        // before it; the checkpoint bound is exact.
        self.resume = None;
        true
    }

    /// Takes a watermark of a filtered stream (`SubscribeEvents` or
    /// `ListEvents`), after the frame's event if it carries one: its cursor
    /// becomes the resume point, and its covered checkpoint (when set)
    /// moves `checkpoint` forward, never back. Returns whether `checkpoint`
    /// moved.
    pub fn watermark(&mut self, watermark: &proto::Watermark) -> bool {
        if let Some(cursor) = &watermark.cursor {
            self.resume = Some(cursor.clone());
        }
        match watermark.checkpoint {
            Some(covered) if covered > self.checkpoint => {
                self.checkpoint = covered;
                if self
                    .last_event
                    .is_some_and(|last| last.checkpoint <= covered)
                {
                    self.last_event = None;
                }
                true
            }
            _ => false,
        }
    }

    /// The `ListEvents` request that replays what is missing before a new
    /// subscription's first frame (cursor `before`, exclusive): from the
    /// resume cursor when there is one, else from the checkpoint after
    /// `checkpoint` (the two bounds compose by intersection on the server).
    pub fn replay_request(
        &self,
        registry: &RegistryRef,
        before: Bytes,
    ) -> proto::ListEventsRequest {
        let mut options = proto::QueryOptions::default().with_before(before);
        let mut request = proto::ListEventsRequest::default()
            .with_read_mask(FieldMask::from_paths(EVENT_MASK))
            .with_filter(registry_filter(registry));
        match &self.resume {
            Some(after) => options.set_after(after.clone()),
            None => request.set_start_checkpoint(self.checkpoint + 1),
        }
        request.with_options(options)
    }
}

/// What the end of one `ListEvents` response means for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEnd {
    /// The replay reached its `before` bound: done.
    Done,
    /// The server stopped at its item or scan limit: ask again from the
    /// last watermark's cursor.
    More,
    /// The server's index has not reached the bound yet: ask again from the
    /// last watermark's cursor a little later.
    IndexBehind,
}

/// Classifies the `QueryEnd` of a finished `ListEvents` stream (`None`: the
/// stream ended without one, which the proto rules out for a successful
/// stream).
pub fn page_end(end: Option<&proto::QueryEnd>) -> Result<PageEnd, String> {
    let Some(end) = end else {
        return Err("the stream ended without its QueryEnd frame".to_owned());
    };
    match end.reason() {
        // A replay sets no checkpoint upper bound; a server that reports
        // one has nothing after it within the request either.
        proto::QueryEndReason::CursorBound | proto::QueryEndReason::CheckpointBound => {
            Ok(PageEnd::Done)
        }
        proto::QueryEndReason::ItemLimit | proto::QueryEndReason::ScanLimit => Ok(PageEnd::More),
        proto::QueryEndReason::LedgerTip => Ok(PageEnd::IndexBehind),
        other => Err(format!("unknown end reason {}", other.as_str_name())),
    }
}

#[cfg(test)]
mod tests {
    use sui_sdk_types::{Address, StructTag};

    use super::*;

    fn registry() -> RegistryRef {
        RegistryRef {
            package: Address::new([0xab; Address::LENGTH]),
            module: "registry".to_owned(),
            object: Address::new([0xcd; Address::LENGTH]),
        }
    }

    fn at(checkpoint: u64, transaction: u64, event: u32) -> Position {
        Position {
            checkpoint,
            transaction,
            event,
        }
    }

    fn watermark(cursor: &[u8], checkpoint: Option<u64>) -> proto::Watermark {
        let mut w = proto::Watermark::default().with_cursor(cursor.to_vec());
        w.checkpoint = checkpoint;
        w
    }

    #[test]
    fn the_filter_names_exactly_the_three_event_types() {
        let registry = registry();
        let filter = registry_filter(&registry);
        let types: Vec<String> = filter
            .terms
            .iter()
            .map(|term| {
                assert_eq!(term.literals.len(), 1);
                let literal = &term.literals[0];
                assert!(!literal.negated);
                match &literal.predicate {
                    Some(proto::event_literal::Predicate::EventType(f)) => {
                        f.event_type.clone().unwrap()
                    }
                    other => panic!("not an event type literal: {other:?}"),
                }
            })
            .collect();
        assert_eq!(types.len(), 3);
        for (ty, name) in types.iter().zip(EVENT_NAMES) {
            // Full length, and the same type classify accepts.
            let tag: StructTag = ty.parse().unwrap();
            assert!(registry.is_ours(&tag, name), "{ty}");
            assert!(ty.starts_with(&format!("0x{}", "ab".repeat(32))), "{ty}");
        }
    }

    #[test]
    fn positions_order_like_the_ledger() {
        assert!(at(5, 0, 9) < at(5, 1, 0));
        assert!(at(5, 1, 0) < at(5, 1, 1));
        assert!(at(5, 9, 9) < at(6, 0, 0));
        let event = proto::Event::default()
            .with_checkpoint(7)
            .with_transaction_index(2)
            .with_event_index(3);
        assert_eq!(Position::of(&event), Some(at(7, 2, 3)));
        assert_eq!(
            Position::of(&proto::Event::default().with_checkpoint(7)),
            None
        );
    }

    #[test]
    fn events_at_or_before_the_progress_are_not_new() {
        let mut p = Progress::synced_at(10);
        assert!(!p.is_new(at(10, 5, 5)), "inside the synced checkpoint");
        assert!(p.is_new(at(11, 0, 0)));
        p.applied(at(11, 1, 0));
        assert!(!p.is_new(at(11, 0, 3)));
        assert!(!p.is_new(at(11, 1, 0)), "the same event again");
        assert!(p.is_new(at(11, 1, 1)));
        // An older event does not move last_event back.
        p.applied(at(11, 0, 0));
        assert_eq!(p.last_event, Some(at(11, 1, 0)));
    }

    /// A progress-only frame (a watermark without an event) moves the
    /// checkpoint and the resume cursor; a repeated or older coverage does
    /// not move the checkpoint back, a watermark without coverage only
    /// moves the cursor.
    #[test]
    fn watermarks_advance_the_cursor_without_events() {
        let mut p = Progress::synced_at(10);
        assert!(p.watermark(&watermark(b"c12", Some(12))));
        assert_eq!((p.checkpoint, p.resume.as_deref()), (12, Some(&b"c12"[..])));
        assert!(
            !p.watermark(&watermark(b"c12b", Some(12))),
            "repeated coverage"
        );
        assert_eq!(p.resume.as_deref(), Some(&b"c12b"[..]));
        assert!(
            !p.watermark(&watermark(b"c13-mid", None)),
            "no coverage yet"
        );
        assert_eq!(
            (p.checkpoint, p.resume.as_deref()),
            (12, Some(&b"c13-mid"[..]))
        );
        assert!(!p.watermark(&watermark(b"c9", Some(9))), "never back");
        assert_eq!(p.checkpoint, 12);
        // An event applied mid-checkpoint, then its checkpoint covered.
        p.applied(at(13, 0, 1));
        assert!(p.watermark(&watermark(b"c13", Some(13))));
        assert_eq!(p.last_event, None, "covered by the checkpoint now");
        assert!(!p.is_new(at(13, 0, 2)));
    }

    #[test]
    fn a_checkpoint_of_the_unfiltered_stream_moves_the_cursor() {
        let mut p = Progress::synced_at(3);
        p.watermark(&watermark(b"x", None));
        p.applied(at(4, 0, 0));
        assert!(p.checkpoint_done(4));
        assert_eq!(p, Progress::synced_at(4));
        assert!(!p.checkpoint_done(4));
        assert!(!p.checkpoint_done(2));
    }

    #[test]
    fn a_replay_starts_at_the_resume_cursor_or_after_the_checkpoint() {
        let registry = registry();
        let mut p = Progress::synced_at(10);
        let request = p.replay_request(&registry, Bytes::from_static(b"sub"));
        assert_eq!(request.start_checkpoint, Some(11));
        assert_eq!(request.end_checkpoint, None);
        let options = request.options.clone().unwrap();
        assert_eq!(options.after, None);
        assert_eq!(options.before.as_deref(), Some(&b"sub"[..]));
        assert_eq!(request.filter, Some(registry_filter(&registry)));
        assert_eq!(request.read_mask.unwrap().paths, EVENT_MASK);

        p.watermark(&watermark(b"w", Some(12)));
        let request = p.replay_request(&registry, Bytes::from_static(b"sub"));
        assert_eq!(request.start_checkpoint, None);
        let options = request.options.unwrap();
        assert_eq!(options.after.as_deref(), Some(&b"w"[..]));
        assert_eq!(options.before.as_deref(), Some(&b"sub"[..]));
    }

    #[test]
    fn page_ends_follow_the_query_end_reasons() {
        use proto::QueryEndReason as R;
        let end = |reason| Some(proto::QueryEnd::default().with_reason(reason));
        assert_eq!(page_end(end(R::CursorBound).as_ref()), Ok(PageEnd::Done));
        assert_eq!(
            page_end(end(R::CheckpointBound).as_ref()),
            Ok(PageEnd::Done)
        );
        assert_eq!(page_end(end(R::ItemLimit).as_ref()), Ok(PageEnd::More));
        assert_eq!(page_end(end(R::ScanLimit).as_ref()), Ok(PageEnd::More));
        assert_eq!(
            page_end(end(R::LedgerTip).as_ref()),
            Ok(PageEnd::IndexBehind)
        );
        assert!(page_end(end(R::Unknown).as_ref()).is_err());
        assert!(page_end(None).is_err());
    }
}
