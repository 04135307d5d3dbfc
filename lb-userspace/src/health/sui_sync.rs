//! The `sui_sync` health check: is a node's own Sui full node on the right
//! chain and in sync with the network?
//!
//! Whose full node: a discovered server's registry `sui_rpc`; a configured
//! (static) server is itself a full node, asked at its own address
//! ([`server_url`]: `<scheme>://<IP>:<port>`, `scheme` http by default).
//!
//! [`probe`] asks the node for `GetServiceInfo` and, at the same time, gets
//! the reference full nodes' answers from [`References`], each under
//! [`SuiSyncCheck::max_response_time`]; [`evaluate`] (pure) then judges the
//! node's answer against the references' answers:
//!
//! - chain id: the node's must equal the references' (the references that
//!   answered must agree among themselves, or the check fails saying so,
//!   since it cannot tell which chain is right);
//! - checkpoint lag: the highest reference checkpoint height minus the
//!   node's must be at most `max_checkpoint_lag` (a node ahead of the
//!   references has lag 0);
//! - sync age: now minus the timestamp of the node's latest executed
//!   checkpoint must be at most `max_sync_age` (a timestamp in the future
//!   counts as age 0);
//! - response time: the node's `GetServiceInfo` must answer within
//!   `max_response_time`.
//!
//! A value equal to its bound passes. Every failed bound is named in the
//! reason with its numbers, joined with `; `.
//!
//! The references are the check's own `reference_rpc_urls`, else the
//! `chain` block's. Without either (a pool of full nodes fronted without a
//! registry), [`probe_pool`] compares the node with the pool: the service's
//! servers, asked like references ([`References::answers_of`]). Members on
//! another chain than the majority of those that answered are left out (and
//! named); when two chains tie, the check fails as with disagreeing
//! references. The highest checkpoint among the rest is the reference
//! ([`evaluate_pool`]), so a member that falls behind its peers fails while
//! the others pass; a pool whose members all stall together is caught by
//! `max_sync_age` alone (a pool of one has lag 0).
//!
//! The references are asked once for all the servers checked about the same
//! time: [`References`] keeps one connection per reference and reuses their
//! answers for [`REFERENCE_REUSE`] (and probes that start while the
//! answers are being fetched wait for them).
//!
//! When no reference answered (or none is configured) the chain id and the
//! lag cannot be judged: the check then decides on the sync age and the
//! response time alone and says so in the reason (`no reference answered
//! (…); chain id and lag unchecked`). A node that checks its own clock
//! freshness is still caught when it stalls, and an outage of the
//! references (often public full nodes) does not take every server down.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::join_all;
use sui_rpc::{Client, proto::sui::rpc::v2::GetServiceInfoRequest};

use crate::config::{RpcScheme, SuiSyncCheck};

/// How long the references' answers are reused for further probes, counted
/// from when they arrived. Reference heights this old make a node look at
/// most a few checkpoints less behind than it is.
pub const REFERENCE_REUSE: Duration = Duration::from_secs(1);

/// The gRPC URL of a configured server that is itself a Sui full node:
/// `<scheme>://<IP>:<port>` (an IPv6 address in brackets).
pub fn server_url(scheme: RpcScheme, server: SocketAddr) -> String {
    format!("{scheme}://{server}")
}

/// The reference full nodes of `sui_sync` checks: one client per URL
/// (created on first use, its connection kept) and their last answers,
/// shared by every probe within [`REFERENCE_REUSE`]. For a pool the URLs
/// come with each call ([`References::answers_of`]).
pub struct References {
    /// The configured URLs; empty for a pool.
    urls: Vec<String>,
    /// Held while the answers are fetched, so concurrent probes share them.
    state: tokio::sync::Mutex<ReferenceState>,
}

#[derive(Default)]
struct ReferenceState {
    /// By URL; only the URLs of the last call are kept (a pool member
    /// that left drops its connection).
    clients: HashMap<String, Client>,
    /// The last answers, when they arrived and the URLs they are of.
    last: Option<(Instant, Vec<String>, Arc<[ReferenceAnswer]>)>,
}

impl fmt::Debug for References {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("References")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl References {
    /// The reference full nodes at `urls` (none: lag and chain id are not
    /// checked; or a pool, whose URLs come with each call).
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            state: tokio::sync::Mutex::new(ReferenceState::default()),
            urls,
        }
    }

    /// Every configured reference's answer (or why there is none), each
    /// asked within `limit`: the last answers when they are younger than
    /// [`REFERENCE_REUSE`], otherwise fresh ones.
    pub async fn answers(&self, limit: Duration) -> Arc<[ReferenceAnswer]> {
        self.answers_of(&self.urls, limit).await
    }

    /// The answers of the full nodes at `urls` (a pool's members), as
    /// [`References::answers`]: reused when the last answers are of the
    /// same URLs and younger than [`REFERENCE_REUSE`].
    pub async fn answers_of(&self, urls: &[String], limit: Duration) -> Arc<[ReferenceAnswer]> {
        let mut state = self.state.lock().await;
        if let Some((at, of, answers)) = &state.last
            && at.elapsed() < REFERENCE_REUSE
            && of.as_slice() == urls
        {
            return Arc::clone(answers);
        }
        state.clients.retain(|url, _| urls.contains(url));
        let clients: Vec<Result<Client, String>> = urls
            .iter()
            .map(|url| {
                if let Some(client) = state.clients.get(url) {
                    return Ok(client.clone());
                }
                let client = Client::new(url.as_str()).map_err(|status| bad_url(&status))?;
                state.clients.insert(url.clone(), client.clone());
                Ok(client)
            })
            .collect();
        let answers: Arc<[ReferenceAnswer]> =
            join_all(urls.iter().zip(clients).map(|(url, client)| async move {
                let result = match client {
                    Ok(mut client) => ask(&mut client, Instant::now(), limit).await,
                    Err(why) => Err(why),
                };
                ReferenceAnswer {
                    url: url.clone(),
                    result,
                }
            }))
            .await
            .into();
        state.last = Some((Instant::now(), urls.to_vec(), Arc::clone(&answers)));
        answers
    }
}

/// What one full node's `GetServiceInfo` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfoSample {
    /// The chain id (digest of the genesis checkpoint).
    pub chain_id: String,
    /// The sequence number of its latest executed checkpoint.
    pub checkpoint_height: u64,
    /// The timestamp of that checkpoint.
    pub timestamp: SystemTime,
    /// How long the call took.
    pub response_time: Duration,
}

/// One reference full node's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceAnswer {
    /// The reference's URL, as configured.
    pub url: String,
    /// Its answer, or why it gave none (e.g. `no answer within 2 s`).
    pub result: Result<ServiceInfoSample, String>,
}

/// The `sui_sync` check's verdict on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncVerdict {
    /// Whether the node passed.
    pub ok: bool,
    /// Why: every failed bound with its numbers, or what was checked.
    pub reason: String,
    /// Checkpoints the node is behind the highest reference (0 when it is
    /// ahead); `None` when no reference answered, the node did not answer,
    /// or the chain ids differ (a lag across chains means nothing). For
    /// `k3s_blockchain_sync_lag_blocks`.
    pub lag_blocks: Option<u64>,
}

impl SyncVerdict {
    fn failed(reason: String) -> Self {
        Self {
            ok: false,
            reason,
            lag_blocks: None,
        }
    }
}

/// What a node is compared against; names it in reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    /// Reference full nodes (the check's or the `chain` block's).
    References,
    /// The service's own servers.
    Pool,
}

impl Basis {
    const fn one(self) -> &'static str {
        match self {
            Self::References => "reference",
            Self::Pool => "pool member",
        }
    }

    const fn many(self) -> &'static str {
        match self {
            Self::References => "references",
            Self::Pool => "pool members",
        }
    }
}

/// Judges `node`'s answer against the `references`' answers at time `now`
/// (see the module docs for the rules).
pub fn evaluate(
    node: &ServiceInfoSample,
    references: &[ReferenceAnswer],
    bounds: &SuiSyncCheck,
    now: SystemTime,
) -> SyncVerdict {
    evaluate_against(node, references, bounds, now, Basis::References)
}

/// Judges `node`'s answer against its pool's answers (`members`, the node
/// itself among them) at time `now`: members on another chain than the
/// majority are left out and named, the rest are the references.
pub fn evaluate_pool(
    node: &ServiceInfoSample,
    members: &[ReferenceAnswer],
    bounds: &SuiSyncCheck,
    now: SystemTime,
) -> SyncVerdict {
    let (agreeing, outvoted) = majority(members);
    let mut verdict = evaluate_against(node, &agreeing, bounds, now, Basis::Pool);
    if !outvoted.is_empty() {
        let _ = write!(
            verdict.reason,
            "; {} of {} pool members left out, on another chain than the majority ({})",
            outvoted.len(),
            members.len(),
            outvoted.join(", ")
        );
    }
    verdict
}

/// The pool members' answers that count as references: those that did not
/// answer, and those that answered with the chain id most of them share;
/// the others are returned as `url (chain id)`. When two chain ids tie for
/// the most answers, all answers are kept (the check then fails: it cannot
/// tell which chain is right).
fn majority(members: &[ReferenceAnswer]) -> (Vec<ReferenceAnswer>, Vec<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for member in members {
        if let Ok(sample) = &member.result {
            *counts.entry(sample.chain_id.as_str()).or_default() += 1;
        }
    }
    let top = counts.values().copied().max().unwrap_or_default();
    let mut leaders = counts.iter().filter(|(_, count)| **count == top);
    let (Some((chain, _)), None) = (leaders.next(), leaders.next()) else {
        return (members.to_vec(), Vec::new());
    };
    let mut agreeing = Vec::with_capacity(members.len());
    let mut outvoted = Vec::new();
    for member in members {
        match &member.result {
            Ok(sample) if sample.chain_id != *chain => {
                outvoted.push(format!("{} ({})", member.url, sample.chain_id));
            }
            _ => agreeing.push(member.clone()),
        }
    }
    (agreeing, outvoted)
}

/// [`evaluate`] with the references named as `basis` says.
fn evaluate_against(
    node: &ServiceInfoSample,
    references: &[ReferenceAnswer],
    bounds: &SuiSyncCheck,
    now: SystemTime,
    basis: Basis,
) -> SyncVerdict {
    let (one, many) = (basis.one(), basis.many());
    let mut failures: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut lag_blocks = None;

    let answered: Vec<(&str, &ServiceInfoSample)> = references
        .iter()
        .filter_map(|answer| {
            answer
                .result
                .as_ref()
                .ok()
                .map(|sample| (answer.url.as_str(), sample))
        })
        .collect();
    let silent: Vec<String> = references
        .iter()
        .filter_map(|answer| {
            answer
                .result
                .as_ref()
                .err()
                .map(|why| format!("{}: {why}", answer.url))
        })
        .collect();

    if let Some(&(first_url, first)) = answered.first() {
        if let Some(&(other_url, other)) = answered
            .iter()
            .find(|(_, sample)| sample.chain_id != first.chain_id)
        {
            failures.push(format!(
                "{many} disagree on the chain id: {} ({first_url}) ≠ {} ({other_url})",
                first.chain_id, other.chain_id
            ));
        } else if node.chain_id != first.chain_id {
            failures.push(format!(
                "chain id {} ≠ {one} {} ({first_url})",
                node.chain_id, first.chain_id
            ));
        } else {
            // `answered` is not empty here.
            let (top_url, top) = answered
                .iter()
                .max_by_key(|(_, sample)| sample.checkpoint_height)
                .copied()
                .unwrap_or((first_url, first));
            let lag = top.checkpoint_height.saturating_sub(node.checkpoint_height);
            lag_blocks = Some(lag);
            if lag > bounds.max_checkpoint_lag {
                failures.push(format!(
                    "checkpoint lag {lag} > {} behind the highest {one} ({top_url}: {})",
                    bounds.max_checkpoint_lag, top.checkpoint_height
                ));
            } else {
                notes.push(format!(
                    "checkpoint {} (lag {lag} ≤ {} behind {top_url}: {})",
                    node.checkpoint_height, bounds.max_checkpoint_lag, top.checkpoint_height
                ));
            }
        }
        if !silent.is_empty() {
            notes.push(format!(
                "{} of {} {many} did not answer ({})",
                silent.len(),
                references.len(),
                silent.join(", ")
            ));
        }
    } else if references.is_empty() {
        notes.push(format!("no {one} configured; chain id and lag unchecked"));
    } else {
        notes.push(format!(
            "no {one} answered ({}); chain id and lag unchecked",
            silent.join(", ")
        ));
    }

    // A timestamp in the future (clock skew) counts as fresh.
    let age = now.duration_since(node.timestamp).unwrap_or_default();
    if age > bounds.max_sync_age {
        failures.push(format!(
            "latest checkpoint {} old > {}",
            secs(age),
            secs(bounds.max_sync_age)
        ));
    } else {
        notes.push(format!("latest checkpoint {} old", secs(age)));
    }

    if node.response_time > bounds.max_response_time {
        failures.push(format!(
            "GetServiceInfo took {} > {}",
            secs(node.response_time),
            secs(bounds.max_response_time)
        ));
    } else {
        notes.push(format!("answered in {}", secs(node.response_time)));
    }

    let ok = failures.is_empty();
    let reason = if ok {
        notes.join("; ")
    } else {
        failures.join("; ")
    };
    SyncVerdict {
        ok,
        reason,
        lag_blocks,
    }
}

/// Runs the check: `GetServiceInfo` on `node_rpc_url` (a fresh connection)
/// and the `references`' answers, at once, each under
/// `bounds.max_response_time` (so the whole probe takes about that long at
/// most), then [`evaluate`]s the answers. A node that gives no usable answer
/// fails with `unreachable: …`; an empty `node_rpc_url` (a node that
/// registered no `sui_rpc`) fails too.
pub async fn probe(
    node_rpc_url: &str,
    references: &References,
    bounds: &SuiSyncCheck,
) -> SyncVerdict {
    probe_with(node_rpc_url, references, None, bounds).await
}

/// [`probe`] of a pool member: the node at `node_rpc_url` against the
/// full nodes at `members` (the pool, itself included), asked through
/// `pool` and judged by [`evaluate_pool`].
pub async fn probe_pool(
    node_rpc_url: &str,
    pool: &References,
    members: &[String],
    bounds: &SuiSyncCheck,
) -> SyncVerdict {
    probe_with(node_rpc_url, pool, Some(members), bounds).await
}

async fn probe_with(
    node_rpc_url: &str,
    references: &References,
    members: Option<&[String]>,
    bounds: &SuiSyncCheck,
) -> SyncVerdict {
    if node_rpc_url.is_empty() {
        return SyncVerdict::failed("the node registered no sui_rpc URL".to_owned());
    }
    let limit = bounds.max_response_time;
    let answers = async {
        match members {
            Some(members) => references.answers_of(members, limit).await,
            None => references.answers(limit).await,
        }
    };
    let (node, answers) = tokio::join!(service_info(node_rpc_url, limit), answers);
    let now = SystemTime::now();
    let verdict = match node {
        Ok(node) if members.is_some() => evaluate_pool(&node, &answers, bounds, now),
        Ok(node) => evaluate(&node, &answers, bounds, now),
        Err(why) => SyncVerdict::failed(format!("unreachable: {node_rpc_url}: {why}")),
    };
    tracing::debug!(
        node = node_rpc_url,
        pool = members.is_some(),
        ?verdict,
        "sui_sync check done"
    );
    verdict
}

/// Calls `GetServiceInfo` on `url` over a fresh connection and waits at
/// most `limit` for the answer.
async fn service_info(url: &str, limit: Duration) -> Result<ServiceInfoSample, String> {
    let start = Instant::now();
    let mut client = Client::new(url).map_err(|status| bad_url(&status))?;
    ask(&mut client, start, limit).await
}

/// Why a URL gives no client.
fn bad_url(status: &tonic::Status) -> String {
    format!("bad URL: {}", status.message())
}

/// Calls `GetServiceInfo` on `client` and waits at most `limit` for the
/// answer; the response time counts from `start`.
async fn ask(
    client: &mut Client,
    start: Instant,
    limit: Duration,
) -> Result<ServiceInfoSample, String> {
    let call = async {
        client
            .ledger_client()
            .get_service_info(GetServiceInfoRequest::default())
            .await
    };
    let response = match tokio::time::timeout(limit, call).await {
        Err(_) => {
            return Err(format!(
                "GetServiceInfo gave no answer within {}",
                secs(limit)
            ));
        }
        Ok(Err(status)) => return Err(describe_status(&status)),
        Ok(Ok(response)) => response.into_inner(),
    };
    let response_time = start.elapsed();
    let chain_id = response
        .chain_id
        .ok_or("GetServiceInfo answer lacks chain_id")?;
    let checkpoint_height = response
        .checkpoint_height
        .ok_or("GetServiceInfo answer lacks checkpoint_height")?;
    let timestamp = response
        .timestamp
        .ok_or("GetServiceInfo answer lacks timestamp")?;
    let timestamp = SystemTime::try_from(timestamp)
        .map_err(|error| format!("GetServiceInfo answer has a bad timestamp: {error}"))?;
    Ok(ServiceInfoSample {
        chain_id,
        checkpoint_height,
        timestamp,
        response_time,
    })
}

/// `GetServiceInfo: Unavailable: tcp connect error: transport error:
/// Connection refused (os error 111)`: the code, the message and the
/// source chain, each text once (tonic repeats them).
fn describe_status(status: &tonic::Status) -> String {
    let mut text = format!("GetServiceInfo: {:?}", status.code());
    if !status.message().is_empty() {
        let _ = write!(text, ": {}", status.message());
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let part = error.to_string();
        if !text.contains(&part) {
            let _ = write!(text, ": {part}");
        }
        source = error.source();
    }
    text
}

/// `95 s`, `2.4 s`, `0.05 s`: whole seconds from 10 s on, otherwise up to
/// millisecond precision without trailing zeros.
fn secs(duration: Duration) -> String {
    let value = duration.as_secs_f64();
    let text = if value >= 10.0 {
        format!("{value:.0}")
    } else {
        let fixed = format!("{value:.3}");
        fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    format!("{text} s")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::demo::fake_node::FakeChain;

    /// The config's defaults: lag 10, age 30 s, response 2 s.
    const BOUNDS: SuiSyncCheck = SuiSyncCheck {
        max_checkpoint_lag: 10,
        max_sync_age: Duration::from_secs(30),
        max_response_time: Duration::from_secs(2),
        scheme: RpcScheme::Http,
        reference_rpc_urls: Vec::new(),
    };
    const MAINNET: &str = "35834a8a";
    const TESTNET: &str = "4c78adac";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn sample(chain_id: &str, height: u64, age: Duration, response: Duration) -> ServiceInfoSample {
        ServiceInfoSample {
            chain_id: chain_id.to_owned(),
            checkpoint_height: height,
            timestamp: now() - age,
            response_time: response,
        }
    }

    fn fresh(chain_id: &str, height: u64) -> ServiceInfoSample {
        sample(
            chain_id,
            height,
            Duration::from_secs(1),
            Duration::from_millis(50),
        )
    }

    fn answer(url: &str, sample: ServiceInfoSample) -> ReferenceAnswer {
        ReferenceAnswer {
            url: url.to_owned(),
            result: Ok(sample),
        }
    }

    fn silent(url: &str, why: &str) -> ReferenceAnswer {
        ReferenceAnswer {
            url: url.to_owned(),
            result: Err(why.to_owned()),
        }
    }

    #[test]
    fn in_sync_node_passes() {
        let refs = [answer("https://ref", fresh(MAINNET, 1000))];
        let verdict = evaluate(&fresh(MAINNET, 995), &refs, &BOUNDS, now());
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(5));
        assert_eq!(
            verdict.reason,
            "checkpoint 995 (lag 5 ≤ 10 behind https://ref: 1000); latest checkpoint 1 s old; \
             answered in 0.05 s"
        );
    }

    #[test]
    fn lag_is_measured_against_the_highest_reference() {
        let refs = [
            answer("https://low", fresh(MAINNET, 900)),
            answer("https://high", fresh(MAINNET, 1057)),
            answer("https://mid", fresh(MAINNET, 1000)),
        ];
        let verdict = evaluate(&fresh(MAINNET, 1000), &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, Some(57));
        assert_eq!(
            verdict.reason,
            "checkpoint lag 57 > 10 behind the highest reference (https://high: 1057)"
        );
    }

    #[test]
    fn lag_equal_to_the_bound_passes_one_more_fails() {
        let refs = [answer("https://ref", fresh(MAINNET, 1010))];
        let at = evaluate(&fresh(MAINNET, 1000), &refs, &BOUNDS, now());
        assert!(at.ok, "{at:?}");
        assert_eq!(at.lag_blocks, Some(10));
        let over = evaluate(&fresh(MAINNET, 999), &refs, &BOUNDS, now());
        assert!(!over.ok);
        assert_eq!(over.lag_blocks, Some(11));
    }

    #[test]
    fn node_ahead_of_the_references_has_lag_zero() {
        let refs = [answer("https://ref", fresh(MAINNET, 1000))];
        let verdict = evaluate(&fresh(MAINNET, 1003), &refs, &BOUNDS, now());
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(0));
    }

    #[test]
    fn wrong_chain_id_fails_without_a_lag() {
        let refs = [answer("https://ref", fresh(MAINNET, 1000))];
        let verdict = evaluate(&fresh(TESTNET, 1000), &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, None);
        assert_eq!(
            verdict.reason,
            "chain id 4c78adac ≠ reference 35834a8a (https://ref)"
        );
    }

    #[test]
    fn references_that_disagree_fail_the_check() {
        let refs = [
            answer("https://a", fresh(MAINNET, 1000)),
            answer("https://b", fresh(TESTNET, 1000)),
        ];
        let verdict = evaluate(&fresh(MAINNET, 1000), &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, None);
        assert_eq!(
            verdict.reason,
            "references disagree on the chain id: 35834a8a (https://a) ≠ 4c78adac (https://b)"
        );
    }

    #[test]
    fn old_checkpoint_fails_equal_age_passes() {
        let refs = [answer("https://ref", fresh(MAINNET, 1000))];
        let old = sample(
            MAINNET,
            1000,
            Duration::from_secs(95),
            Duration::from_millis(5),
        );
        let verdict = evaluate(&old, &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, Some(0));
        assert_eq!(verdict.reason, "latest checkpoint 95 s old > 30 s");

        let edge = sample(
            MAINNET,
            1000,
            Duration::from_secs(30),
            Duration::from_millis(5),
        );
        assert!(evaluate(&edge, &refs, &BOUNDS, now()).ok);
    }

    #[test]
    fn checkpoint_from_the_future_counts_as_fresh() {
        let mut node = fresh(MAINNET, 1000);
        node.timestamp = now() + Duration::from_secs(5);
        let refs = [answer("https://ref", fresh(MAINNET, 1000))];
        let verdict = evaluate(&node, &refs, &BOUNDS, now());
        assert!(verdict.ok, "{verdict:?}");
        assert!(verdict.reason.contains("latest checkpoint 0 s old"));
    }

    #[test]
    fn slow_answer_fails_equal_time_passes() {
        let refs = [answer("https://ref", fresh(MAINNET, 1000))];
        let slow = sample(
            MAINNET,
            1000,
            Duration::from_secs(1),
            Duration::from_millis(2400),
        );
        let verdict = evaluate(&slow, &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(verdict.reason, "GetServiceInfo took 2.4 s > 2 s");

        let edge = sample(
            MAINNET,
            1000,
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert!(evaluate(&edge, &refs, &BOUNDS, now()).ok);
    }

    #[test]
    fn every_failed_bound_is_named() {
        let refs = [answer("https://ref", fresh(MAINNET, 2000))];
        let bad = sample(
            MAINNET,
            1000,
            Duration::from_secs(61),
            Duration::from_secs(3),
        );
        let verdict = evaluate(&bad, &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(
            verdict.reason,
            "checkpoint lag 1000 > 10 behind the highest reference (https://ref: 2000); \
             latest checkpoint 61 s old > 30 s; GetServiceInfo took 3 s > 2 s"
        );
    }

    #[test]
    fn silent_references_are_skipped_and_mentioned() {
        let refs = [
            silent("https://down", "GetServiceInfo gave no answer within 2 s"),
            answer("https://up", fresh(MAINNET, 1000)),
        ];
        let verdict = evaluate(&fresh(MAINNET, 998), &refs, &BOUNDS, now());
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(2));
        assert!(
            verdict.reason.contains(
                "1 of 2 references did not answer (https://down: GetServiceInfo gave no answer \
                 within 2 s)"
            ),
            "{}",
            verdict.reason
        );
    }

    #[test]
    fn no_reference_answered_judges_age_and_response_only() {
        let refs = [silent("https://down", "unreachable")];
        let node = fresh(TESTNET, 1);
        let verdict = evaluate(&node, &refs, &BOUNDS, now());
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, None);
        assert_eq!(
            verdict.reason,
            "no reference answered (https://down: unreachable); chain id and lag unchecked; \
             latest checkpoint 1 s old; answered in 0.05 s"
        );

        let stale = sample(TESTNET, 1, Duration::from_secs(31), Duration::ZERO);
        let verdict = evaluate(&stale, &refs, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(verdict.reason, "latest checkpoint 31 s old > 30 s");
    }

    #[test]
    fn no_reference_configured_says_so() {
        let verdict = evaluate(&fresh(MAINNET, 1), &[], &BOUNDS, now());
        assert!(verdict.ok);
        assert!(
            verdict
                .reason
                .starts_with("no reference configured; chain id and lag unchecked"),
            "{}",
            verdict.reason
        );
    }

    #[test]
    fn secs_formats_readably() {
        assert_eq!(secs(Duration::from_secs(95)), "95 s");
        assert_eq!(secs(Duration::from_millis(95_400)), "95 s");
        assert_eq!(secs(Duration::from_millis(2400)), "2.4 s");
        assert_eq!(secs(Duration::from_secs(2)), "2 s");
        assert_eq!(secs(Duration::from_millis(50)), "0.05 s");
        assert_eq!(secs(Duration::ZERO), "0 s");
    }

    /// [`super::probe`] with fresh [`References`] (nothing reused between
    /// calls).
    async fn probe(
        node_rpc_url: &str,
        references: &[String],
        bounds: &SuiSyncCheck,
    ) -> SyncVerdict {
        super::probe(node_rpc_url, &References::new(references.to_vec()), bounds).await
    }

    /// A node and a reference on the same chain, both current.
    async fn pair() -> (FakeChain, FakeChain) {
        let node = FakeChain::start(MAINNET).await.expect("node");
        let reference = FakeChain::start(MAINNET).await.expect("reference");
        for _ in 0..100 {
            node.tick();
            reference.tick();
        }
        (node, reference)
    }

    /// Bounds with a short response time, for the slow cases.
    const QUICK: SuiSyncCheck = SuiSyncCheck {
        max_checkpoint_lag: 10,
        max_sync_age: Duration::from_secs(30),
        max_response_time: Duration::from_millis(300),
        scheme: RpcScheme::Http,
        reference_rpc_urls: Vec::new(),
    };

    #[tokio::test]
    async fn probe_passes_a_node_in_sync() {
        let (node, reference) = pair().await;
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(0));
        assert!(
            verdict.reason.starts_with(&format!(
                "checkpoint 100 (lag 0 ≤ 10 behind {}: 100); latest checkpoint ",
                reference.url()
            )),
            "{}",
            verdict.reason
        );
    }

    #[tokio::test]
    async fn probe_fails_a_lagging_node() {
        let (node, reference) = pair().await;
        node.set_lag(57, Duration::ZERO);
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, Some(57));
        assert_eq!(
            verdict.reason,
            format!(
                "checkpoint lag 57 > 10 behind the highest reference ({}: 100)",
                reference.url()
            )
        );

        node.set_lag(10, Duration::ZERO);
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(10));
    }

    #[tokio::test]
    async fn probe_uses_the_highest_of_several_references() {
        let (node, low) = pair().await;
        let high = FakeChain::start(MAINNET).await.expect("high reference");
        for _ in 0..120 {
            high.tick();
        }
        let verdict = probe(&node.url(), &[low.url(), high.url()], &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, Some(20));
        assert!(verdict.reason.contains(&format!("({}: 120)", high.url())));
    }

    #[tokio::test]
    async fn probe_fails_a_node_on_another_chain() {
        let (node, reference) = pair().await;
        node.set_chain_id("4btiuiMP".to_owned());
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, None);
        assert_eq!(
            verdict.reason,
            format!(
                "chain id 4btiuiMP ≠ reference 35834a8a ({})",
                reference.url()
            )
        );
    }

    #[tokio::test]
    async fn probe_fails_a_stalled_node() {
        let (node, reference) = pair().await;
        node.set_lag(0, Duration::from_secs(95));
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.reason, "latest checkpoint 95 s old > 30 s");
    }

    #[tokio::test]
    async fn probe_fails_a_slow_node_within_the_bound() {
        let (node, reference) = pair().await;
        node.set_delay(Duration::from_secs(5));
        let start = Instant::now();
        let verdict = probe(&node.url(), &[reference.url()], &QUICK).await;
        let took = start.elapsed();
        assert!(!verdict.ok);
        assert_eq!(
            verdict.reason,
            format!(
                "unreachable: {}: GetServiceInfo gave no answer within 0.3 s",
                node.url()
            )
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[tokio::test]
    async fn probe_fails_an_unavailable_node() {
        let (node, reference) = pair().await;
        node.set_unavailable(true);
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(!verdict.ok);
        assert!(
            verdict.reason.starts_with(&format!(
                "unreachable: {}: GetServiceInfo: Unavailable",
                node.url()
            )),
            "{}",
            verdict.reason
        );
    }

    #[tokio::test]
    async fn probe_without_an_answering_reference_judges_age_only() {
        let (node, reference) = pair().await;
        reference.set_unavailable(true);
        node.set_lag(50, Duration::ZERO);
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, None);
        assert!(
            verdict.reason.starts_with(&format!(
                "no reference answered ({}: GetServiceInfo: Unavailable",
                reference.url()
            )),
            "{}",
            verdict.reason
        );
        assert!(verdict.reason.contains("chain id and lag unchecked"));

        node.set_lag(50, Duration::from_secs(40));
        let verdict = probe(&node.url(), &[reference.url()], &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.reason, "latest checkpoint 40 s old > 30 s");
    }

    #[tokio::test]
    async fn probe_does_not_wait_for_a_slow_reference() {
        let (node, slow) = pair().await;
        let (_, fast) = pair().await;
        slow.set_delay(Duration::from_secs(5));
        let start = Instant::now();
        let verdict = probe(&node.url(), &[slow.url(), fast.url()], &QUICK).await;
        let took = start.elapsed();
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(0));
        assert!(
            verdict.reason.contains(&format!(
                "1 of 2 references did not answer ({}: GetServiceInfo gave no answer within 0.3 \
                 s)",
                slow.url()
            )),
            "{}",
            verdict.reason
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[tokio::test]
    async fn empty_node_url_fails() {
        let verdict = probe("", &[], &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.reason, "the node registered no sui_rpc URL");
    }

    #[tokio::test]
    async fn unreachable_node_fails() {
        // A port nothing listens on: bind, note it, close.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let verdict = probe(&url, &[], &BOUNDS).await;
        assert!(!verdict.ok);
        assert!(
            verdict.reason.starts_with(&format!("unreachable: {url}: ")),
            "{}",
            verdict.reason
        );
        assert_eq!(verdict.lag_blocks, None);
    }

    #[tokio::test]
    async fn servers_probed_within_the_reuse_window_share_one_reference_call() {
        let (node, reference) = pair().await;
        let (other, _) = pair().await;
        let references = References::new(vec![reference.url()]);
        let start = Instant::now();
        // One after another...
        for _ in 0..3 {
            let verdict = super::probe(&node.url(), &references, &BOUNDS).await;
            assert!(verdict.ok, "{verdict:?}");
        }
        // ...and at once.
        let (node_url, other_url) = (node.url(), other.url());
        let bounds = BOUNDS;
        let verdicts = join_all(
            [&node_url, &other_url, &other_url].map(|url| super::probe(url, &references, &bounds)),
        )
        .await;
        assert!(verdicts.iter().all(|v| v.ok), "{verdicts:?}");
        assert!(start.elapsed() < REFERENCE_REUSE, "the test was too slow");
        let calls = |chain: &FakeChain| chain.calls().service_info.load(Ordering::Relaxed);
        assert_eq!(calls(&reference), 1, "the reference is asked once");
        assert_eq!((calls(&node), calls(&other)), (4, 2), "every node is asked");

        // Later answers are fresh: the reference is asked again.
        tokio::time::sleep(REFERENCE_REUSE).await;
        reference.tick();
        let verdict = super::probe(&node.url(), &references, &BOUNDS).await;
        assert_eq!(verdict.lag_blocks, Some(1), "{verdict:?}");
        assert_eq!(calls(&reference), 2);
    }

    #[test]
    fn server_urls_carry_the_scheme_and_the_address() {
        let v4: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:443".parse().unwrap();
        assert_eq!(server_url(RpcScheme::Http, v4), "http://10.0.0.1:9000");
        assert_eq!(server_url(RpcScheme::Https, v6), "https://[fd00::1]:443");
    }

    #[test]
    fn a_pool_member_behind_the_highest_member_fails() {
        let pool = [
            answer("http://a", fresh(MAINNET, 1000)),
            answer("http://b", fresh(MAINNET, 1020)),
            answer("http://c", fresh(MAINNET, 1015)),
        ];
        let behind = evaluate_pool(&fresh(MAINNET, 1000), &pool, &BOUNDS, now());
        assert!(!behind.ok);
        assert_eq!(behind.lag_blocks, Some(20));
        assert_eq!(
            behind.reason,
            "checkpoint lag 20 > 10 behind the highest pool member (http://b: 1020)"
        );
        let top = evaluate_pool(&fresh(MAINNET, 1020), &pool, &BOUNDS, now());
        assert!(top.ok, "{top:?}");
        assert_eq!(top.lag_blocks, Some(0));
        let close = evaluate_pool(&fresh(MAINNET, 1015), &pool, &BOUNDS, now());
        assert!(close.ok, "{close:?}");
        assert_eq!(close.lag_blocks, Some(5));
    }

    #[test]
    fn pool_members_on_a_minority_chain_are_left_out() {
        let pool = [
            answer("http://a", fresh(MAINNET, 1000)),
            answer("http://b", fresh(MAINNET, 1001)),
            answer("http://c", fresh(TESTNET, 5000)),
            silent("http://d", "unreachable"),
        ];
        // The testnet member's height does not count.
        let verdict = evaluate_pool(&fresh(MAINNET, 1000), &pool, &BOUNDS, now());
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.lag_blocks, Some(1));
        assert!(
            verdict
                .reason
                .contains("1 of 3 pool members did not answer (http://d: unreachable)"),
            "{}",
            verdict.reason
        );
        assert!(
            verdict.reason.ends_with(
                "; 1 of 4 pool members left out, on another chain than the majority (http://c \
                 (4c78adac))"
            ),
            "{}",
            verdict.reason
        );
        // The minority member itself fails.
        let verdict = evaluate_pool(&fresh(TESTNET, 5000), &pool, &BOUNDS, now());
        assert!(!verdict.ok);
        assert!(
            verdict
                .reason
                .starts_with("chain id 4c78adac ≠ pool member 35834a8a (http://a)"),
            "{}",
            verdict.reason
        );
    }

    #[test]
    fn a_pool_split_evenly_between_chains_fails() {
        let pool = [
            answer("http://a", fresh(MAINNET, 1000)),
            answer("http://b", fresh(TESTNET, 1000)),
        ];
        let verdict = evaluate_pool(&fresh(MAINNET, 1000), &pool, &BOUNDS, now());
        assert!(!verdict.ok);
        assert_eq!(
            verdict.reason,
            "pool members disagree on the chain id: 35834a8a (http://a) ≠ 4c78adac (http://b)"
        );
    }

    #[tokio::test]
    async fn probe_pool_fails_the_member_that_lags_behind_the_others() {
        let (a, b) = pair().await;
        let (c, _) = pair().await;
        c.set_lag(30, Duration::ZERO);
        let members = [a.url(), b.url(), c.url()];
        let pool = References::new(Vec::new());
        for node in [&a, &b] {
            let verdict = probe_pool(&node.url(), &pool, &members, &BOUNDS).await;
            assert!(verdict.ok, "{verdict:?}");
            assert_eq!(verdict.lag_blocks, Some(0));
        }
        let verdict = probe_pool(&c.url(), &pool, &members, &BOUNDS).await;
        assert!(!verdict.ok);
        assert_eq!(verdict.lag_blocks, Some(30));
        assert!(
            verdict
                .reason
                .starts_with("checkpoint lag 30 > 10 behind the highest pool member"),
            "{}",
            verdict.reason
        );
        // The members were asked once for the three probes.
        let calls = |chain: &FakeChain| chain.calls().service_info.load(Ordering::Relaxed);
        assert_eq!((calls(&a), calls(&b), calls(&c)), (2, 2, 2));
    }
}
