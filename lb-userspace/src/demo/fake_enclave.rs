//! A fake Nautilus enclave for tests and the demo: an HTTP/1.1 JSON server
//! on `127.0.0.1:<ephemeral>` with a freshly generated Ed25519 key, serving
//! the routes the controller uses like the Nautilus reference server:
//!
//! - `GET /health_check` → `{"pk":"<64 hex>","endpoints_status":{}}`;
//! - `POST /process_data` with `{"payload":{"node":"0x…"}}` → a
//!   [`SignedResponse`](super::attestation::SignedResponse) of a
//!   [`PerformanceAttestation`] about that node;
//! - `GET /get_attestation` → `{"attestation":"<hex>"}`, a Nitro attestation
//!   document: by default the one recorded from the Nautilus weather enclave
//!   ([`weather_attestation`], valid at [`WEATHER_ATTESTATION_VALID_AT_MS`]
//!   only, and attesting its own key and PCRs, not this fake's).
//!
//! Switches simulate what the verifier must refuse: another key (restarted
//! enclave, or signatures that do not match the reported key), an old
//! timestamp, another intent scope, another node, an HTTP 400
//! `{"error":…}`, slow answers, another or no attestation document. Scores
//! and stake can change at any time.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State as AxumState,
    http::StatusCode,
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sui_sdk_types::Address;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    health::nautilus::unix_ms,
    nautilus::attestation::{
        IntentMessage, NodeQuery, PROCESS_DATA_INTENT, PerformanceAttestation, ProcessDataRequest,
        sign,
    },
};

/// Hex of the attestation document recorded from a Nautilus weather enclave
/// (MystenLabs/nautilus, Apache-2.0; see `nautilus/testdata/README.md`).
const WEATHER_ATTESTATION_HEX: &str =
    include_str!("../nautilus/testdata/nautilus_weather_attestation.hex");

/// A clock (ms since the epoch, 2025-04-15 02:26:47 UTC) at which every
/// certificate of [`weather_attestation`] is valid; it has expired since.
pub const WEATHER_ATTESTATION_VALID_AT_MS: u64 = 1_744_684_007_462;

/// The raw CBOR bytes of the recorded weather enclave's attestation
/// document, what a fake enclave serves at `/get_attestation` by default.
#[must_use]
pub fn weather_attestation() -> Vec<u8> {
    // A constant checked by the tests: it always decodes.
    hex::decode(WEATHER_ATTESTATION_HEX.trim()).unwrap_or_default()
}

/// What the fake attests (besides the node and times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeScores {
    /// Performance, basis points.
    pub performance_score: u64,
    /// Reputation, basis points.
    pub reputation_score: u64,
    /// The attested stake, MIST.
    pub stake_amount: u64,
    /// `valid_until_ms` = signing time + this.
    pub valid_for: Duration,
}

impl Default for FakeScores {
    fn default() -> Self {
        Self {
            performance_score: 9_000,
            reputation_score: 9_000,
            stake_amount: 0,
            valid_for: Duration::from_mins(1),
        }
    }
}

/// Requests the fake has served.
#[derive(Debug, Default)]
pub struct FakeEnclaveCalls {
    /// `GET /health_check`.
    pub health_check: AtomicU64,
    /// `POST /process_data`.
    pub process_data: AtomicU64,
    /// `GET /get_attestation`.
    pub get_attestation: AtomicU64,
}

struct Knobs {
    scores: FakeScores,
    /// Reports and signs with this key instead (a re-keyed enclave).
    other_key: Option<SigningKey>,
    /// Reports the real key but signs with this one.
    bad_signing_key: Option<SigningKey>,
    age: Duration,
    intent: u8,
    node: Option<Address>,
    error: Option<String>,
    delay: Duration,
    /// Served at `/get_attestation` (`None`: HTTP 400).
    attestation_document: Option<Vec<u8>>,
}

struct Shared {
    key: SigningKey,
    knobs: Mutex<Knobs>,
    calls: FakeEnclaveCalls,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake enclave; stops when dropped.
pub struct FakeEnclave {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

/// A new random Ed25519 key (OS randomness).
pub fn generate_key() -> anyhow::Result<SigningKey> {
    let mut seed = [0; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("OS randomness: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

impl FakeEnclave {
    /// Starts a fake enclave with a generated key on `127.0.0.1:0`.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("fake enclave: binding 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("fake enclave: local address")?;
        let shared = Arc::new(Shared {
            key: generate_key()?,
            knobs: Mutex::new(Knobs {
                scores: FakeScores::default(),
                other_key: None,
                bad_signing_key: None,
                age: Duration::ZERO,
                intent: PROCESS_DATA_INTENT,
                node: None,
                error: None,
                delay: Duration::ZERO,
                attestation_document: Some(weather_attestation()),
            }),
            calls: FakeEnclaveCalls::default(),
        });
        let app = Router::new()
            .route("/health_check", get(health_check))
            .route("/process_data", post(process_data))
            .route("/get_attestation", get(get_attestation))
            .with_state(Arc::clone(&shared));
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
            {
                tracing::warn!(error = %e, "fake enclave stopped");
            }
        });
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

    /// The enclave's (registered) public key, to publish in `Enclave<T>.pk`.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.key.verifying_key().to_bytes()
    }

    /// The requests served so far.
    pub fn calls(&self) -> &FakeEnclaveCalls {
        &self.shared.calls
    }

    /// What it attests from now on.
    pub fn set_scores(&self, scores: FakeScores) {
        self.shared.lock().scores = scores;
    }

    /// While on, reports and signs with another generated key (an enclave
    /// restarted with a key that is not registered).
    pub fn set_wrong_key(&self, on: bool) -> anyhow::Result<()> {
        self.shared.lock().other_key = if on { Some(generate_key()?) } else { None };
        Ok(())
    }

    /// While on, reports the registered key but signs with another one.
    pub fn set_bad_signature(&self, on: bool) -> anyhow::Result<()> {
        self.shared.lock().bad_signing_key = if on { Some(generate_key()?) } else { None };
        Ok(())
    }

    /// Timestamps are `age` in the past (0: now).
    pub fn set_age(&self, age: Duration) {
        self.shared.lock().age = age;
    }

    /// The intent scope of the responses (0 by default).
    pub fn set_intent(&self, intent: u8) {
        self.shared.lock().intent = intent;
    }

    /// Attests `node` whatever was asked (`None`: the node asked about).
    pub fn set_node(&self, node: Option<Address>) {
        self.shared.lock().node = node;
    }

    /// While set, `/process_data` answers HTTP 400 `{"error": message}`.
    pub fn set_error(&self, message: Option<String>) {
        self.shared.lock().error = message;
    }

    /// Every answer is delayed by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// The document `/get_attestation` serves from now on (raw bytes, sent
    /// hex-encoded); `None`: HTTP 400 `{"error":"no attestation document"}`.
    /// By default [`weather_attestation`].
    pub fn set_attestation_document(&self, document: Option<Vec<u8>>) {
        self.shared.lock().attestation_document = document;
    }
}

impl Drop for FakeEnclave {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

#[derive(Serialize)]
struct HealthCheck {
    pk: String,
    endpoints_status: HashMap<String, bool>,
}

async fn health_check(AxumState(shared): AxumState<Arc<Shared>>) -> Json<HealthCheck> {
    shared.calls.health_check.fetch_add(1, Ordering::Relaxed);
    let (delay, pk) = {
        let knobs = shared.lock();
        let key = knobs.other_key.as_ref().unwrap_or(&shared.key);
        (knobs.delay, hex::encode(key.verifying_key().to_bytes()))
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Json(HealthCheck {
        pk,
        endpoints_status: HashMap::new(),
    })
}

async fn process_data(
    AxumState(shared): AxumState<Arc<Shared>>,
    Json(request): Json<ProcessDataRequest<NodeQuery>>,
) -> Response {
    shared.calls.process_data.fetch_add(1, Ordering::Relaxed);
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let knobs = shared.lock();
    if let Some(error) = &knobs.error {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": error })),
        )
            .into_response();
    }
    let now = SystemTime::now();
    let signed_at = now.checked_sub(knobs.age).unwrap_or(SystemTime::UNIX_EPOCH);
    let message = IntentMessage {
        intent: knobs.intent,
        timestamp_ms: unix_ms(signed_at),
        data: PerformanceAttestation {
            node: knobs.node.unwrap_or(request.payload.node),
            performance_score: knobs.scores.performance_score,
            reputation_score: knobs.scores.reputation_score,
            stake_amount: knobs.scores.stake_amount,
            valid_until_ms: unix_ms(now + knobs.scores.valid_for),
        },
    };
    let key = knobs
        .bad_signing_key
        .as_ref()
        .or(knobs.other_key.as_ref())
        .unwrap_or(&shared.key);
    Json(sign(message, key)).into_response()
}

async fn get_attestation(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    shared.calls.get_attestation.fetch_add(1, Ordering::Relaxed);
    let (delay, document) = {
        let knobs = shared.lock();
        (
            knobs.delay,
            knobs.attestation_document.as_ref().map(hex::encode),
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match document {
        Some(attestation) => {
            Json(serde_json::json!({ "attestation": attestation })).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": "no attestation document" })),
        )
            .into_response(),
    }
}
