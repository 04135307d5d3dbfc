//! The `nautilus` health check of one discovered node: the chain says which
//! enclave key to trust, the enclave proves it holds that key by signing a
//! fresh performance attestation of the node.
//!
//! One check, in order (the first failure is the verdict):
//!
//! 1. the node registered a `nautilus_url` and an `enclave_id`;
//! 2. `GetObject` of the trusted `EnclaveConfig<T>` (`chain.enclave_config`)
//!    and of the node's `Enclave<T>`: same app (package and `T`), and the
//!    enclave current under the config's version
//!    ([`enclave::fetch_trusted`]);
//! 3. `GET /health_check`: the enclave reports the on-chain key;
//! 4. `POST /process_data` about the node: the signed attestation verifies
//!    with the on-chain key and passes the policy ([`attestation::verify`]);
//!    the attested stake is compared with the registry's only with
//!    `features.stake_validation`;
//! 5. with `verify_attestation_document`: `GET /get_attestation` and the
//!    Nitro document verified against the AWS root, the config's PCRs and
//!    the on-chain key ([`document::verify_enclave`]).
//!
//! A verdict is reused for `cache_ttl`, never past the attestation's
//! `valid_until_ms` nor past `max_age` after its timestamp, so probes every
//! interval do not ask the enclave (and the chain) each time.
//!
//! [`attestation::verify`]: crate::nautilus::attestation::verify

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sui_sdk_types::Address;

use crate::{
    chain::servers::DiscoveredServer,
    config::NautilusCheck,
    nautilus::{
        attestation::{Expected, Policy, Rejection, Verified},
        client::EnclaveClient,
        document,
        enclave::{self, TrustedEnclave},
    },
};

/// Cached verdicts older than this are dropped when a new one is stored.
const CACHE_PRUNE_AFTER: Duration = Duration::from_mins(10);

/// What the check needs of a discovered node (from its registry entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeEnclave {
    /// The node's key in the registry.
    pub node: Address,
    /// Its enclave's URL (`""` when it registered none).
    pub nautilus_url: String,
    /// Its `Enclave` object (`0x0` when none).
    pub enclave_id: Address,
    /// Its stake in the registry, MIST.
    pub stake_mist: u64,
}

impl From<&DiscoveredServer> for NodeEnclave {
    fn from(server: &DiscoveredServer) -> Self {
        Self {
            node: server.node,
            nautilus_url: server.nautilus_url.clone(),
            enclave_id: server.enclave_id,
            stake_mist: server.stake,
        }
    }
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The verified attestation, or why there is none.
    pub result: Result<Verified, Rejection>,
    /// Whether it was reused from an earlier check (then it was counted
    /// already).
    pub cached: bool,
}

/// The Unix time in ms, injected so tests can move it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// `at` in ms since the Unix epoch (0 before it).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    Arc::new(|| unix_ms(SystemTime::now()))
}

/// Runs `nautilus` checks for every service: the chain client, the HTTP
/// client (one connection pool for every enclave) and the verdict cache are
/// shared.
pub struct Attester {
    chain_url: String,
    enclave_config: Address,
    stake_validation: bool,
    clock: Clock,
    chain: Mutex<Option<sui_rpc::Client>>,
    http: Mutex<Option<reqwest::Client>>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl std::fmt::Debug for Attester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attester")
            .field("chain_url", &self.chain_url)
            .field("enclave_config", &self.enclave_config)
            .field("stake_validation", &self.stake_validation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    node: NodeEnclave,
    check: NautilusCheck,
}

#[derive(Debug, Clone)]
struct Cached {
    result: Result<Verified, Rejection>,
    at: Instant,
}

impl Attester {
    /// An attester reading objects from the full node at `chain_url` and
    /// trusting enclaves of `enclave_config`; `stake_validation` compares
    /// attested stakes with the registry's.
    pub fn new(
        chain_url: &str,
        enclave_config: Address,
        stake_validation: bool,
        clock: Clock,
    ) -> Self {
        Self {
            chain_url: chain_url.to_owned(),
            enclave_config,
            stake_validation,
            clock,
            chain: Mutex::new(None),
            http: Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The injected clock's time (Unix ms).
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Checks `node` with `check`'s policy, within `timeout` (the check's
    /// configured timeout: it also keys the reused HTTP clients).
    pub async fn check(
        &self,
        check: &NautilusCheck,
        node: &NodeEnclave,
        timeout: Duration,
    ) -> Verdict {
        let key = CacheKey {
            node: node.clone(),
            check: *check,
        };
        if let Some(result) = self.cached(&key) {
            return Verdict {
                result,
                cached: true,
            };
        }
        let result = match tokio::time::timeout(timeout, self.fresh(check, node, timeout)).await {
            Ok(result) => result,
            Err(_) => Err(Rejection::Unreachable(format!(
                "no verdict within the check's timeout {timeout:?}"
            ))),
        };
        if !check.cache_ttl.is_zero() {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache.retain(|_, cached| cached.at.elapsed() < CACHE_PRUNE_AFTER);
            cache.insert(
                key,
                Cached {
                    result: result.clone(),
                    at: Instant::now(),
                },
            );
        }
        Verdict {
            result,
            cached: false,
        }
    }

    /// A verdict still good to reuse.
    fn cached(&self, key: &CacheKey) -> Option<Result<Verified, Rejection>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let cached = cache.get(key)?;
        if cached.at.elapsed() >= key.check.cache_ttl {
            return None;
        }
        if let Ok(verified) = &cached.result {
            let now_ms = (self.clock)();
            let max_age_ms = u64::try_from(key.check.max_age.as_millis()).unwrap_or(u64::MAX);
            if now_ms > verified.attestation.valid_until_ms
                || verified.timestamp_ms.abs_diff(now_ms) > max_age_ms
            {
                return None;
            }
        }
        Some(cached.result.clone())
    }

    async fn fresh(
        &self,
        check: &NautilusCheck,
        node: &NodeEnclave,
        timeout: Duration,
    ) -> Result<Verified, Rejection> {
        if node.nautilus_url.is_empty() || node.enclave_id == Address::ZERO {
            return Err(Rejection::NoEnclave(format!(
                "node {} registered no {}",
                node.node,
                if node.nautilus_url.is_empty() {
                    "nautilus_url"
                } else {
                    "enclave_id"
                }
            )));
        }
        let mut chain = self.chain_client()?;
        let trusted =
            enclave::fetch_trusted(&mut chain, node.enclave_id, self.enclave_config, timeout)
                .await?;
        let client = EnclaveClient::with_http(self.http_client()?, &node.nautilus_url, timeout);
        let expected = Expected {
            public_key: trusted.key,
            node: node.node,
            chain_stake: if self.stake_validation {
                node.stake_mist
            } else {
                u64::MAX
            },
        };
        let policy = Policy {
            intent: check.intent,
            max_age: check.max_age,
            min_performance_score: check.min_performance_score,
        };
        // Independent requests: at once. A wrong key is the clearer reason,
        // so it wins over what the signature check says.
        let (health, verified) = tokio::join!(
            client.health_check(&trusted.key),
            client.process_data(&expected, &policy, || (self.clock)()),
        );
        health?;
        let verified = verified?;
        if check.verify_attestation_document {
            let document = client.get_attestation().await?;
            verify_document(&document, &trusted, (self.clock)())?;
        }
        Ok(verified)
    }

    fn chain_client(&self) -> Result<sui_rpc::Client, Rejection> {
        shared(&self.chain, || {
            sui_rpc::Client::new(self.chain_url.clone())
                .map_err(|e| Rejection::Unreachable(format!("full node {}: {e}", self.chain_url)))
        })
    }

    fn http_client(&self) -> Result<reqwest::Client, Rejection> {
        shared(&self.http, || {
            reqwest::Client::builder()
                .build()
                .map_err(|e| Rejection::Unreachable(format!("HTTP client: {e}")))
        })
    }
}

/// The client in `slot`, made by `make` on first use (clients share their
/// connections across clones).
fn shared<T: Clone>(
    slot: &Mutex<Option<T>>,
    make: impl FnOnce() -> Result<T, Rejection>,
) -> Result<T, Rejection> {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(client) = slot.as_ref() {
        return Ok(client.clone());
    }
    let client = make()?;
    *slot = Some(client.clone());
    Ok(client)
}

/// Checks the Nitro attestation document against the trusted config's PCRs
/// and the on-chain key, at `now_ms`.
fn verify_document(
    document: &[u8],
    trusted: &TrustedEnclave,
    now_ms: u64,
) -> Result<(), Rejection> {
    let pcrs = &trusted.config.pcrs;
    let expected = document::Expected {
        pcrs: [&pcrs.0, &pcrs.1, &pcrs.2],
        public_key: &trusted.key,
    };
    document::verify_enclave(document, now_ms, &expected)
        .map(|_| ())
        .map_err(|e| Rejection::BadDocument(e.to_string()))
}

impl Verdict {
    /// The check's reason text (without the `nautilus: ` prefix).
    pub fn reason(&self, now_ms: u64) -> String {
        let cached = if self.cached { " (cached)" } else { "" };
        match &self.result {
            Ok(verified) => {
                let age = verified.age_seconds(now_ms);
                format!(
                    "performance {}, reputation {}, signed {age:.1}s ago{cached}",
                    verified.attestation.performance_score, verified.attestation.reputation_score,
                )
            }
            Err(rejection) => format!("{}{cached}", rejection.reason()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::demo::{
        fake_deployment::{
            APP, FakeDeployment, config_id, default_pcrs, enclave_id, fake_address, node_key,
            publish_config, publish_enclave,
        },
        fake_enclave::FakeScores,
    };

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// The system clock shifted by an adjustable number of ms.
    fn shifted_clock() -> (Clock, Arc<AtomicU64>) {
        let shift = Arc::new(AtomicU64::new(0));
        let system = system_clock();
        let theirs = Arc::clone(&shift);
        (
            Arc::new(move || system() + theirs.load(Ordering::Relaxed)),
            shift,
        )
    }

    async fn setup() -> FakeDeployment {
        FakeDeployment::start("check-test").await.unwrap()
    }

    fn label(verdict: &Verdict) -> &'static str {
        verdict
            .result
            .as_ref()
            .map_or_else(Rejection::label, |_| "ok")
    }

    #[tokio::test]
    async fn a_current_enclave_verifies_and_its_verdict_is_reused_for_cache_ttl() {
        let setup = setup().await;
        setup.enclave.set_scores(FakeScores {
            performance_score: 8_000,
            reputation_score: 7_000,
            stake_amount: 5_000,
            ..FakeScores::default()
        });
        let attester = setup.attester(true, system_clock());
        let check = NautilusCheck {
            cache_ttl: Duration::from_secs(30),
            ..NautilusCheck::DEFAULT
        };
        let first = attester.check(&check, &setup.node, TIMEOUT).await;
        let verified = first.result.clone().unwrap();
        assert!(!first.cached);
        assert_eq!(verified.attestation.performance_score, 8_000);
        assert_eq!(verified.attestation.reputation_score, 7_000);
        assert_eq!(verified.attestation.node, node_key());
        assert!(
            first
                .reason(attester.now_ms())
                .starts_with("performance 8000, reputation 7000, signed "),
            "{}",
            first.reason(attester.now_ms())
        );
        let second = attester.check(&check, &setup.node, TIMEOUT).await;
        assert!(second.cached);
        assert_eq!(second.result, first.result);
        assert!(second.reason(attester.now_ms()).ends_with("(cached)"));
        let calls = setup.enclave.calls();
        assert_eq!(calls.process_data.load(Ordering::Relaxed), 1);
        assert_eq!(calls.health_check.load(Ordering::Relaxed), 1);

        // cache_ttl 0: every check asks again.
        let uncached = NautilusCheck {
            cache_ttl: Duration::ZERO,
            ..NautilusCheck::DEFAULT
        };
        for _ in 0..2 {
            assert!(!attester.check(&uncached, &setup.node, TIMEOUT).await.cached);
        }
        assert_eq!(calls.process_data.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_cached_verdict_is_not_reused_past_validity_or_max_age() {
        let setup = setup().await;
        setup.enclave.set_scores(FakeScores {
            valid_for: Duration::from_secs(10),
            ..FakeScores::default()
        });
        let (clock, shift) = shifted_clock();
        let attester = setup.attester(true, clock);
        let check = NautilusCheck {
            cache_ttl: Duration::from_mins(1),
            max_age: Duration::from_mins(1),
            ..NautilusCheck::DEFAULT
        };
        assert_eq!(
            label(&attester.check(&check, &setup.node, TIMEOUT).await),
            "ok"
        );
        // 20 s later the attestation's validity (10 s) is over: asked again,
        // and the fresh one (signed by the fake's own clock) is 20 s behind
        // the shifted clock but valid for 10 s only.
        shift.store(20_000, Ordering::Relaxed);
        let later = attester.check(&check, &setup.node, TIMEOUT).await;
        assert!(!later.cached);
        assert_eq!(label(&later), "expired");
        assert_eq!(
            setup.enclave.calls().process_data.load(Ordering::Relaxed),
            2
        );

        // Valid for long, but signed 50 s before the check: 20 s later the
        // signature is older than max_age (60 s) while cache_ttl (60 s)
        // still runs: asked again.
        setup.enclave.set_scores(FakeScores {
            valid_for: Duration::from_hours(1),
            ..FakeScores::default()
        });
        setup.enclave.set_age(Duration::from_secs(50));
        let (clock, shift) = shifted_clock();
        let attester = setup.attester(true, clock);
        assert_eq!(
            label(&attester.check(&check, &setup.node, TIMEOUT).await),
            "ok"
        );
        assert!(attester.check(&check, &setup.node, TIMEOUT).await.cached);
        shift.store(20_000, Ordering::Relaxed);
        let later = attester.check(&check, &setup.node, TIMEOUT).await;
        assert!(!later.cached);
        assert_eq!(label(&later), "stale");
        assert_eq!(
            setup.enclave.calls().process_data.load(Ordering::Relaxed),
            4
        );
    }

    #[tokio::test]
    async fn each_broken_link_of_the_chain_of_trust_has_its_reason() {
        let setup = setup().await;
        let check = NautilusCheck {
            cache_ttl: Duration::ZERO,
            ..NautilusCheck::DEFAULT
        };
        let attester = setup.attester(true, system_clock());
        let verdict = |node: NodeEnclave| {
            let attester = &attester;
            async move { attester.check(&check, &node, TIMEOUT).await }
        };

        // The node registered no enclave, or one that is not on chain.
        let no_url = NodeEnclave {
            nautilus_url: String::new(),
            ..setup.node.clone()
        };
        let v = verdict(no_url).await;
        assert_eq!(label(&v), "no_enclave");
        assert!(
            v.reason(0).contains("registered no nautilus_url"),
            "{}",
            v.reason(0)
        );
        let missing = NodeEnclave {
            enclave_id: fake_address(0x77, 1),
            ..setup.node.clone()
        };
        assert_eq!(label(&verdict(missing).await), "no_enclave");

        // An enclave of another app.
        publish_enclave(
            &setup.chain,
            enclave_id(),
            setup.enclave.public_key(),
            0,
            "other::OTHER",
        );
        let v = verdict(setup.node.clone()).await;
        assert_eq!(label(&v), "wrong_app");
        assert!(v.reason(0).contains("other::OTHER"), "{}", v.reason(0));
        publish_enclave(
            &setup.chain,
            enclave_id(),
            setup.enclave.public_key(),
            0,
            APP,
        );
        assert_eq!(label(&verdict(setup.node.clone()).await), "ok");

        // The config moved on (PCR update): the old enclave is not current.
        publish_config(&setup.chain, config_id(), default_pcrs(), 1);
        let v = verdict(setup.node.clone()).await;
        assert_eq!(label(&v), "not_current");
        assert!(v.reason(0).contains("version 0") && v.reason(0).contains("version 1"));
        publish_enclave(
            &setup.chain,
            enclave_id(),
            setup.enclave.public_key(),
            1,
            APP,
        );
        assert_eq!(label(&verdict(setup.node.clone()).await), "ok");

        // The enclave runs with another key than the registered one.
        setup.enclave.set_wrong_key(true).unwrap();
        assert_eq!(label(&verdict(setup.node.clone()).await), "wrong_key");
        setup.enclave.set_wrong_key(false).unwrap();

        // More stake attested than the registry holds.
        setup.enclave.set_scores(FakeScores {
            stake_amount: 5_001,
            ..FakeScores::default()
        });
        assert_eq!(
            label(&verdict(setup.node.clone()).await),
            "stake_above_chain"
        );
        // Without stake validation it is not compared.
        let lenient = setup.attester(false, system_clock());
        assert_eq!(
            label(&lenient.check(&check, &setup.node, TIMEOUT).await),
            "ok"
        );
        setup.enclave.set_scores(FakeScores::default());

        // The chain cannot be read.
        setup.chain.set_unavailable(true);
        assert_eq!(label(&verdict(setup.node.clone()).await), "unreachable");
        setup.chain.set_unavailable(false);

        // A slow enclave: the check's own timeout.
        setup.enclave.set_delay(Duration::from_secs(3));
        let slow = attester
            .check(&check, &setup.node, Duration::from_millis(300))
            .await;
        assert_eq!(label(&slow), "unreachable");
        setup.enclave.set_delay(Duration::ZERO);
    }

    #[tokio::test]
    async fn the_attestation_document_is_verified_when_asked_for() {
        let setup = setup().await;
        let attester = setup.attester(true, system_clock());
        let check = NautilusCheck {
            cache_ttl: Duration::ZERO,
            verify_attestation_document: true,
            ..NautilusCheck::DEFAULT
        };
        // The fake serves the recorded 2025 document: its certificates
        // have expired.
        let v = attester.check(&check, &setup.node, TIMEOUT).await;
        assert_eq!(label(&v), "bad_document");
        assert!(v.reason(0).contains("not valid at"), "{}", v.reason(0));
        assert_eq!(
            setup
                .enclave
                .calls()
                .get_attestation
                .load(Ordering::Relaxed),
            1
        );
        setup.enclave.set_attestation_document(None);
        let v = attester.check(&check, &setup.node, TIMEOUT).await;
        assert_eq!(label(&v), "enclave_error");
    }
}
