//! The fake full node's filtered event services, as pure functions over
//! its checkpoints: the `EventFilter` DNF evaluated by the proto's rules,
//! the opaque cursors, and the `ListEvents` scan with its bounds, limits,
//! watermarks and `QueryEnd` reasons.
//!
//! - Filter: an absent filter matches everything; a present one needs at
//!   least one term, each term at least one literal, each literal a
//!   predicate (else `INVALID_ARGUMENT`). Terms are or-ed, literals and-ed, a
//!   negated literal inverts its predicate. `Sender` compares the event's
//!   sender, `EmitModule` (`0xpkg[::module]`) the event's `package_id` and
//!   `module` (the Move call that emitted it), `EventType`
//!   (`0xaddr[::module[::Name[<T>]]]`) the parsed event type (a name
//!   without parameters matches any instantiation). `EventStreamHead` is
//!   not served by the fake (`INVALID_ARGUMENT`).
//! - Cursor: 20 bytes, the big-endian (checkpoint, transaction index, event
//!   index) of a position, so byte order is ledger order; the end of
//!   checkpoint `k` is `(k, u64::MAX, u32::MAX)`. Genesis (checkpoint 0)
//!   holds no events, so `(0, 0, 0)` stands for "before everything".
//! - Scan (ascending only; a descending one is `INVALID_ARGUMENT`): the
//!   interval is strictly after `options.after` and from `start_checkpoint`
//!   on, strictly before the nearest of `options.before` (`CURSOR_BOUND`),
//!   `end_checkpoint` (`CHECKPOINT_BOUND`) and the tip (`LEDGER_TIP`); it
//!   stops early after `limit` items (`ITEM_LIMIT`, on the item's frame) or
//!   after the scan budget in checkpoints (`SCAN_LIMIT`). Every frame has a
//!   watermark: an item's cursor is its position, `checkpoint` the last
//!   fully covered one (unset until the first is covered); the terminal
//!   frame's cursor is the bound (`CURSOR_BOUND`) or the end of the last
//!   covered checkpoint.

use prost::bytes::Bytes;
use sui_rpc::{field::FieldMaskTree, merge::Merge as _, proto::sui::rpc::v2 as proto};
use sui_sdk_types::{Address, StructTag};
use tonic::Status;

/// A ledger position: checkpoint, transaction index, event index.
pub(super) type Pos = (u64, u64, u32);

/// The default item limit of `ListEvents` when the request sets none.
pub(super) const DEFAULT_LIST_LIMIT: u32 = 50;

/// The cursor of a position.
pub(super) fn encode(pos: Pos) -> Bytes {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&pos.0.to_be_bytes());
    bytes.extend_from_slice(&pos.1.to_be_bytes());
    bytes.extend_from_slice(&pos.2.to_be_bytes());
    Bytes::from(bytes)
}

fn decode(cursor: &[u8]) -> Result<Pos, Status> {
    let invalid = || Status::invalid_argument("invalid cursor (not one this node issued)");
    if cursor.len() != 20 {
        return Err(invalid());
    }
    let u64_at = |at: usize| {
        cursor
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let event = cursor
        .get(16..20)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes);
    match (u64_at(0), u64_at(8), event) {
        (Some(c), Some(t), Some(e)) => Ok((c, t, e)),
        _ => Err(invalid()),
    }
}

/// The end of checkpoint `k`: after every event in it.
pub(super) fn end_of(k: u64) -> Pos {
    (k, u64::MAX, u32::MAX)
}

/// One literal's predicate, parsed.
#[derive(Debug, Clone)]
enum Predicate {
    Sender(Address),
    EmitModule(Address, Option<String>),
    TypeAddress(Address),
    TypeModule(Address, String),
    TypeName(Address, String, String),
    TypeExact(StructTag),
}

/// A validated `EventFilter`.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    /// Or-ed terms of and-ed (negated, predicate) literals; none: match all.
    terms: Option<Vec<Vec<(bool, Predicate)>>>,
}

fn parse_address(text: &str, what: &str) -> Result<Address, Status> {
    text.parse()
        .map_err(|e| Status::invalid_argument(format!("{what}: invalid address {text:?}: {e}")))
}

fn parse_predicate(
    predicate: Option<&proto::event_literal::Predicate>,
) -> Result<Predicate, Status> {
    use proto::event_literal::Predicate as P;
    match predicate {
        Some(P::Sender(f)) => Ok(Predicate::Sender(parse_address(
            f.address.as_deref().unwrap_or_default(),
            "sender",
        )?)),
        Some(P::EmitModule(f)) => {
            let path = f.module.as_deref().unwrap_or_default();
            let mut parts = path.splitn(2, "::");
            let package = parse_address(parts.next().unwrap_or_default(), "emit_module")?;
            Ok(Predicate::EmitModule(
                package,
                parts.next().map(str::to_owned),
            ))
        }
        Some(P::EventType(f)) => {
            let text = f.event_type.as_deref().unwrap_or_default();
            if text.contains('<') {
                let tag = text.parse::<StructTag>().map_err(|e| {
                    Status::invalid_argument(format!("event_type: invalid type {text:?}: {e}"))
                })?;
                return Ok(Predicate::TypeExact(tag));
            }
            let parts: Vec<&str> = text.split("::").collect();
            let address = parse_address(parts.first().copied().unwrap_or_default(), "event_type")?;
            match parts.as_slice() {
                [_] => Ok(Predicate::TypeAddress(address)),
                [_, module] => Ok(Predicate::TypeModule(address, (*module).to_owned())),
                [_, module, name] => Ok(Predicate::TypeName(
                    address,
                    (*module).to_owned(),
                    (*name).to_owned(),
                )),
                _ => Err(Status::invalid_argument(format!(
                    "event_type: invalid type {text:?}"
                ))),
            }
        }
        Some(P::EventStreamHead(_)) => Err(Status::invalid_argument(
            "event_stream_head filters are not served by the fake full node",
        )),
        Some(_) | None => Err(Status::invalid_argument(
            "an event filter literal needs a predicate",
        )),
    }
}

impl Filter {
    /// Validates and parses a request's filter.
    pub(super) fn parse(filter: Option<&proto::EventFilter>) -> Result<Self, Status> {
        let Some(filter) = filter else {
            return Ok(Self { terms: None });
        };
        if filter.terms.is_empty() {
            return Err(Status::invalid_argument(
                "a present event filter needs at least one term",
            ));
        }
        let mut terms = Vec::with_capacity(filter.terms.len());
        for term in &filter.terms {
            if term.literals.is_empty() {
                return Err(Status::invalid_argument(
                    "an event filter term needs at least one literal",
                ));
            }
            let literals = term
                .literals
                .iter()
                .map(|l| Ok((l.negated, parse_predicate(l.predicate.as_ref())?)))
                .collect::<Result<Vec<_>, Status>>()?;
            terms.push(literals);
        }
        Ok(Self { terms: Some(terms) })
    }

    /// Whether `event` matches.
    pub(super) fn matches(&self, event: &proto::Event) -> bool {
        let Some(terms) = &self.terms else {
            return true;
        };
        let tag = event
            .event_type
            .as_deref()
            .and_then(|t| t.parse::<StructTag>().ok());
        let holds = |predicate: &Predicate| match predicate {
            Predicate::Sender(address) => event
                .sender
                .as_deref()
                .and_then(|s| s.parse::<Address>().ok())
                .is_some_and(|s| s == *address),
            Predicate::EmitModule(package, module) => {
                event
                    .package_id
                    .as_deref()
                    .and_then(|p| p.parse::<Address>().ok())
                    .is_some_and(|p| p == *package)
                    && module
                        .as_deref()
                        .is_none_or(|m| event.module.as_deref() == Some(m))
            }
            Predicate::TypeAddress(address) => tag.as_ref().is_some_and(|t| t.address() == address),
            Predicate::TypeModule(address, module) => tag
                .as_ref()
                .is_some_and(|t| t.address() == address && t.module().as_str() == module),
            Predicate::TypeName(address, module, name) => tag.as_ref().is_some_and(|t| {
                t.address() == address && t.module().as_str() == module && t.name().as_str() == name
            }),
            Predicate::TypeExact(want) => tag.as_ref() == Some(want),
        };
        terms.iter().any(|term| {
            term.iter()
                .all(|(negated, predicate)| holds(predicate) != *negated)
        })
    }
}

/// The events of a checkpoint with their positions.
pub(super) fn positioned(
    sequence: u64,
    checkpoint: &proto::Checkpoint,
) -> impl Iterator<Item = (Pos, &proto::Event)> {
    checkpoint
        .transactions
        .iter()
        .enumerate()
        .flat_map(move |(t, tx)| {
            tx.events
                .iter()
                .flat_map(|e| e.events.iter())
                .enumerate()
                .map(move |(i, event)| {
                    (
                        (sequence, t as u64, u32::try_from(i).unwrap_or(u32::MAX)),
                        event,
                    )
                })
        })
}

/// The limits of one `ListEvents` scan.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// The largest item limit served.
    pub(super) max_items: u32,
    /// Checkpoints scanned per request before `SCAN_LIMIT`.
    pub(super) scan_budget: u64,
}

fn watermark(cursor: Bytes, covered: Option<u64>) -> proto::Watermark {
    let mut w = proto::Watermark::default().with_cursor(cursor);
    w.checkpoint = covered;
    w
}

fn terminal(reason: proto::QueryEndReason, w: proto::Watermark) -> proto::ListEventsResponse {
    proto::ListEventsResponse::default()
        .with_watermark(w)
        .with_end(proto::QueryEnd::default().with_reason(reason))
}

/// Runs one `ListEvents` scan over the checkpoints `at` gives by sequence
/// number, `tip` the latest, and returns its frames (see the module docs).
pub(super) fn list(
    at: &dyn Fn(u64) -> Option<proto::Checkpoint>,
    tip: u64,
    request: &proto::ListEventsRequest,
    filter: &Filter,
    mask: &FieldMaskTree,
    limits: Limits,
) -> Result<Vec<proto::ListEventsResponse>, Status> {
    use proto::QueryEndReason as Reason;
    let options = request.options.clone().unwrap_or_default();
    if options
        .ordering
        .is_some_and(|o| o != proto::Ordering::Ascending as i32)
    {
        return Err(Status::invalid_argument(
            "the fake full node scans in ascending order only",
        ));
    }
    let limit = options
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, limits.max_items);
    let after = options.after.as_deref().map(decode).transpose()?;
    let before = options.before.as_deref().map(decode).transpose()?;
    let start = request.start_checkpoint.unwrap_or(0);
    let first = after.map_or(start, |a| a.0.max(start));
    // The nearest exclusive upper bound and why it is one (ties: the cursor
    // first, then the checkpoint range, then the tip).
    let mut upper = ((tip + 1, 0, 0), Reason::LedgerTip);
    if let Some(end) = request.end_checkpoint
        && (end, 0, 0) <= upper.0
    {
        upper = ((end, 0, 0), Reason::CheckpointBound);
    }
    if let Some(b) = before
        && b <= upper.0
    {
        upper = (b, Reason::CursorBound);
    }
    let mut frames = Vec::new();
    let mut covered: Option<u64> = None;
    let mut items = 0;
    let mut scanned = 0;
    let mut sequence = first;
    let reason = 'scan: loop {
        if (sequence, 0, 0) >= upper.0 {
            break upper.1;
        }
        if scanned == limits.scan_budget {
            break Reason::ScanLimit;
        }
        let Some(checkpoint) = at(sequence) else {
            break upper.1;
        };
        for (pos, event) in positioned(sequence, &checkpoint) {
            if after.is_some_and(|a| pos <= a) {
                continue;
            }
            if pos >= upper.0 {
                break 'scan upper.1;
            }
            if !filter.matches(event) {
                continue;
            }
            items += 1;
            let frame = proto::ListEventsResponse::default()
                .with_event(proto::Event::merge_from(event, mask))
                .with_watermark(watermark(encode(pos), covered));
            if items == limit {
                frames.push(
                    frame.with_end(proto::QueryEnd::default().with_reason(Reason::ItemLimit)),
                );
                return Ok(frames);
            }
            frames.push(frame);
        }
        covered = Some(sequence);
        scanned += 1;
        sequence += 1;
    };
    let cursor = match (reason, covered) {
        (Reason::CursorBound, _) => options.before.clone().unwrap_or_default(),
        (_, Some(k)) => encode(end_of(k)),
        (_, None) => match &options.after {
            Some(after) => after.clone(),
            None if start > 0 => encode(end_of(start - 1)),
            None => encode((0, 0, 0)),
        },
    };
    frames.push(terminal(reason, watermark(cursor, covered)));
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(byte: u8) -> Address {
        Address::new([byte; Address::LENGTH])
    }

    fn event(package: u8, module: &str, name: &str, sender: u8) -> proto::Event {
        proto::Event::default()
            .with_package_id(address(package).to_string())
            .with_module(module)
            .with_sender(address(sender).to_string())
            .with_event_type(format!("{}::{module}::{name}", address(package)))
    }

    fn type_literal(text: &str, negated: bool) -> proto::EventLiteral {
        proto::EventLiteral::default()
            .with_negated(negated)
            .with_event_type(proto::EventTypeFilter::default().with_event_type(text))
    }

    fn filter(terms: Vec<Vec<proto::EventLiteral>>) -> Result<Filter, Status> {
        let f = proto::EventFilter::default().with_terms(
            terms
                .into_iter()
                .map(|l| proto::EventTerm::default().with_literals(l))
                .collect(),
        );
        Filter::parse(Some(&f))
    }

    #[test]
    fn the_dnf_is_evaluated_by_the_proto_rules() {
        let ours = event(1, "registry", "NodeRegistered", 9);
        let other_module = event(1, "other", "NodeRegistered", 9);
        let other_package = event(2, "registry", "NodeRegistered", 9);
        let pkg = address(1).to_string();

        let by_module =
            filter(vec![vec![type_literal(&format!("{pkg}::registry"), false)]]).unwrap();
        assert!(by_module.matches(&ours));
        assert!(!by_module.matches(&other_module));
        assert!(!by_module.matches(&other_package));

        let by_name = filter(vec![vec![type_literal(
            &format!("{pkg}::registry::NodeRegistered"),
            false,
        )]])
        .unwrap();
        assert!(by_name.matches(&ours));
        assert!(!by_name.matches(&event(1, "registry", "NodeRemoved", 9)));

        // OR of terms; AND with a negated literal.
        let either = filter(vec![
            vec![type_literal(&format!("{pkg}::other"), false)],
            vec![
                type_literal(&pkg, false),
                type_literal(&format!("{pkg}::other"), true),
            ],
        ])
        .unwrap();
        assert!(either.matches(&ours) && either.matches(&other_module));
        assert!(!either.matches(&other_package));

        let sender = filter(vec![vec![proto::EventLiteral::default().with_sender(
            proto::SenderFilter::default().with_address(address(9).to_string()),
        )]])
        .unwrap();
        assert!(sender.matches(&ours) && !sender.matches(&event(1, "registry", "X", 8)));

        // The emitting call's package, not the type's.
        let emit = filter(vec![vec![proto::EventLiteral::default().with_emit_module(
            proto::EmitModuleFilter::default().with_module(format!("{pkg}::registry")),
        )]])
        .unwrap();
        let mut emitted_elsewhere = ours.clone();
        emitted_elsewhere.package_id = Some(address(3).to_string());
        assert!(emit.matches(&ours) && !emit.matches(&emitted_elsewhere));

        assert!(Filter::parse(None).unwrap().matches(&other_package));
        assert!(filter(vec![]).is_err(), "no term");
        assert!(filter(vec![vec![]]).is_err(), "no literal");
        assert!(
            filter(vec![vec![proto::EventLiteral::default()]]).is_err(),
            "no predicate"
        );
        assert!(filter(vec![vec![type_literal("0xzz::m", false)]]).is_err());
    }

    /// Checkpoints 0..=4: checkpoint k > 0 has one transaction with events
    /// ours(k), foreign, ours(k).
    fn chain() -> Vec<proto::Checkpoint> {
        (0..5u64)
            .map(|k| {
                let events = if k == 0 {
                    Vec::new()
                } else {
                    vec![
                        event(1, "registry", "NodeRegistered", 9).with_checkpoint(k),
                        event(2, "noise", "Swap", 9).with_checkpoint(k),
                        event(1, "registry", "NodeRemoved", 9).with_checkpoint(k),
                    ]
                };
                proto::Checkpoint::default()
                    .with_sequence_number(k)
                    .with_transactions(vec![
                        proto::ExecutedTransaction::default()
                            .with_events(proto::TransactionEvents::default().with_events(events)),
                    ])
            })
            .collect()
    }

    fn run(request: &proto::ListEventsRequest, limits: Limits) -> Vec<proto::ListEventsResponse> {
        let f = filter(vec![vec![type_literal(&address(1).to_string(), false)]]).unwrap();
        let Ok(all) = "*".parse::<FieldMaskTree>();
        let checkpoints = chain();
        let at = |k: u64| checkpoints.get(usize::try_from(k).ok()?).cloned();
        list(&at, 4, request, &f, &all, limits).unwrap()
    }

    const WIDE: Limits = Limits {
        max_items: 1000,
        scan_budget: 1000,
    };

    fn positions(frames: &[proto::ListEventsResponse]) -> Vec<(u64, u32)> {
        frames
            .iter()
            .filter_map(|f| f.event.as_ref())
            .map(|e| (e.checkpoint.unwrap(), 0))
            .collect()
    }

    fn end(frames: &[proto::ListEventsResponse]) -> (proto::QueryEndReason, Option<u64>) {
        let last = frames.last().unwrap();
        assert!(frames[..frames.len() - 1].iter().all(|f| f.end.is_none()));
        (
            last.end.unwrap().reason(),
            last.watermark.as_ref().unwrap().checkpoint,
        )
    }

    #[test]
    fn a_scan_stops_at_the_tip_the_range_or_the_cursor() {
        use proto::QueryEndReason as R;
        let frames = run(
            &proto::ListEventsRequest::default().with_start_checkpoint(3),
            WIDE,
        );
        assert_eq!(positions(&frames), [(3, 0), (3, 0), (4, 0), (4, 0)]);
        assert_eq!(end(&frames), (R::LedgerTip, Some(4)));
        assert_eq!(
            frames[0].watermark.as_ref().unwrap().checkpoint,
            None,
            "nothing covered yet"
        );
        assert_eq!(frames[2].watermark.as_ref().unwrap().checkpoint, Some(3));

        let frames = run(
            &proto::ListEventsRequest::default()
                .with_start_checkpoint(1)
                .with_end_checkpoint(3),
            WIDE,
        );
        assert_eq!(positions(&frames).len(), 4);
        assert_eq!(end(&frames), (R::CheckpointBound, Some(2)));

        // Strictly after (2, 0, 0) and before (4, 0, 2): (2,0,2), (3,0,0), (3,0,2), (4,0,0).
        let request = proto::ListEventsRequest::default().with_options(
            proto::QueryOptions::default()
                .with_after(encode((2, 0, 0)))
                .with_before(encode((4, 0, 2))),
        );
        let frames = run(&request, WIDE);
        assert_eq!(positions(&frames), [(2, 0), (3, 0), (3, 0), (4, 0)]);
        assert_eq!(end(&frames), (R::CursorBound, Some(3)));
        assert_eq!(
            frames.last().unwrap().watermark.as_ref().unwrap().cursor,
            Some(encode((4, 0, 2)))
        );
    }

    #[test]
    fn limits_end_a_page_and_the_next_resumes_from_its_cursor() {
        use proto::QueryEndReason as R;
        let small = Limits {
            max_items: 3,
            scan_budget: 1000,
        };
        let mut request = proto::ListEventsRequest::default().with_start_checkpoint(1);
        let mut seen = Vec::new();
        loop {
            let frames = run(&request, small);
            seen.extend(frames.iter().filter_map(|f| f.event.clone()));
            let last = frames.last().unwrap();
            if last.end.unwrap().reason() != R::ItemLimit {
                assert_eq!(last.end.unwrap().reason(), R::LedgerTip);
                break;
            }
            assert!(
                last.event.is_some(),
                "the item-limit frame carries the item"
            );
            let cursor = last.watermark.as_ref().unwrap().cursor.clone().unwrap();
            request.options = Some(proto::QueryOptions::default().with_after(cursor));
        }
        assert_eq!(seen.len(), 8, "every match once");

        let budget = Limits {
            max_items: 1000,
            scan_budget: 2,
        };
        let frames = run(
            &proto::ListEventsRequest::default().with_start_checkpoint(1),
            budget,
        );
        assert_eq!(end(&frames), (R::ScanLimit, Some(2)));
        assert_eq!(
            frames.last().unwrap().watermark.as_ref().unwrap().cursor,
            Some(encode(end_of(2)))
        );
    }

    #[test]
    fn cursors_round_trip_in_ledger_order() {
        let a = encode((1, 2, 3));
        assert_eq!(decode(&a).unwrap(), (1, 2, 3));
        assert!(encode((1, 2, 3)) < encode((1, 3, 0)));
        assert!(encode(end_of(1)) < encode((2, 0, 0)));
        assert!(decode(b"short").is_err());
    }
}
