//! The signed performance attestations of a node's Nautilus enclave, and
//! their verification.
//!
//! A Nautilus enclave answers `POST /process_data` with
//! `{"response":{"intent","timestamp_ms","data"},"signature":hex}`: an
//! [`IntentMessage`] and a raw Ed25519 signature (RFC 8032, no Sui intent
//! prefix, no hashing) over the message's BCS bytes, `intent: u8 |
//! timestamp_ms: u64 LE | BCS(data)`. The key is the one the enclave
//! registered on chain (its `Enclave<T>.pk`).
//!
//! [`verify`] never trusts the JSON's bytes: it re-encodes the typed
//! message, so a signature covers exactly the fields the controller acts on.
//! Then it checks, in this order, the intent scope, the node, the freshness
//! of the timestamp, the validity window, the score ranges, the minimum
//! performance score and the attested stake against the on-chain stake.

use std::{fmt, time::Duration};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sui_sdk_types::Address;

use crate::policy::ranking::MAX_BASIS_POINTS;

/// The intent scope of `process_data` responses (`IntentScope::ProcessData`
/// in the Nautilus examples).
pub const PROCESS_DATA_INTENT: u8 = 0;

/// What a node's enclave attests about the node (the `data` of its
/// [`IntentMessage`]). Field order is the BCS layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerformanceAttestation {
    /// The node (its key in the on-chain registry).
    pub node: Address,
    /// Measured performance, basis points (`0..=10000`).
    pub performance_score: u64,
    /// Reputation, basis points (`0..=10000`).
    pub reputation_score: u64,
    /// The stake the enclave saw, MIST.
    pub stake_amount: u64,
    /// The attestation holds until this time (Unix ms).
    pub valid_until_ms: u64,
}

/// Nautilus's signed envelope: BCS of this struct is what the enclave signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentMessage<T> {
    /// The app-defined scope of the message.
    pub intent: u8,
    /// When the enclave produced it (Unix ms).
    pub timestamp_ms: u64,
    /// The payload.
    pub data: T,
}

/// The JSON body of a `process_data` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedResponse<T> {
    /// The signed message.
    pub response: IntentMessage<T>,
    /// Ed25519 signature of `BCS(response)`, 128 lowercase hex digits, no `0x`.
    pub signature: String,
}

/// The JSON body of a `process_data` request: `{"payload": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDataRequest<T> {
    /// The app request.
    pub payload: T,
}

/// The payload asking for a node's attestation: `{"node":"0x…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeQuery {
    /// The node to attest.
    pub node: Address,
}

/// The checks' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The intent scope responses must carry.
    pub intent: u8,
    /// How old (or how far ahead of `now`) a response's timestamp may be.
    pub max_age: Duration,
    /// The lowest acceptable performance score (basis points).
    pub min_performance_score: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            intent: PROCESS_DATA_INTENT,
            max_age: Duration::from_mins(1),
            min_performance_score: 0,
        }
    }
}

/// What the controller expects of one node's attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The enclave's on-chain public key (`Enclave<T>.pk`).
    pub public_key: [u8; 32],
    /// The node asked about.
    pub node: Address,
    /// The node's stake in the registry, MIST.
    pub chain_stake: u64,
}

/// An attestation that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The attested values.
    pub attestation: PerformanceAttestation,
    /// When the enclave signed it (Unix ms).
    pub timestamp_ms: u64,
}

impl Verified {
    /// Seconds since the enclave signed it, at `now_ms` (0 if ahead).
    pub fn age_seconds(&self, now_ms: u64) -> f64 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "an age in ms shown as fractional seconds"
        )]
        let ms = now_ms.saturating_sub(self.timestamp_ms) as f64;
        ms / 1000.0
    }
}

/// Why a node's attestation (or its enclave) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The signature does not verify with the on-chain key.
    BadSignature,
    /// The enclave's key is not the one registered on chain.
    WrongKey {
        /// The key the enclave reports (hex).
        reported: String,
        /// The on-chain key (hex).
        on_chain: String,
    },
    /// The timestamp is too far from `now`.
    Stale {
        /// The response's timestamp (Unix ms).
        timestamp_ms: u64,
        /// The verifier's clock (Unix ms).
        now_ms: u64,
        /// The allowed distance.
        max_age_ms: u64,
    },
    /// Another intent scope than expected.
    WrongIntent {
        /// What the response carries.
        got: u8,
        /// What the policy requires.
        want: u8,
    },
    /// The attestation is about another node.
    WrongNode {
        /// The attested node.
        got: Address,
        /// The node asked about.
        want: Address,
    },
    /// The attestation's validity ended.
    Expired {
        /// Its `valid_until_ms`.
        valid_until_ms: u64,
        /// The verifier's clock (Unix ms).
        now_ms: u64,
    },
    /// The performance score is below the policy's minimum.
    BelowThreshold {
        /// The attested score.
        score: u64,
        /// The minimum.
        min: u64,
    },
    /// The enclave attests more stake than the registry holds.
    StakeAboveChain {
        /// The attested stake, MIST.
        attested: u64,
        /// The registry's stake, MIST.
        on_chain: u64,
    },
    /// The on-chain `Enclave` belongs to an older `EnclaveConfig` version.
    NotCurrent {
        /// `Enclave.config_version`.
        enclave_version: u64,
        /// `EnclaveConfig.version`.
        config_version: u64,
    },
    /// The node registered no enclave, or its `Enclave` object is not on
    /// chain.
    NoEnclave(String),
    /// The node's `Enclave<T>` is of another app than the trusted
    /// `EnclaveConfig<T>` (another package or another `T`).
    WrongApp {
        /// The enclave's type.
        enclave: String,
        /// The trusted config's type.
        config: String,
    },
    /// The Nitro attestation document (`/get_attestation`) does not verify,
    /// or does not match the config's PCRs and the on-chain key.
    BadDocument(String),
    /// The enclave or the chain could not be reached in time (or the chain
    /// answered an error).
    Unreachable(String),
    /// The enclave answered an HTTP error (`{"error": …}`).
    EnclaveError {
        /// The HTTP status.
        status: u16,
        /// Its `error` text (or the body).
        message: String,
    },
    /// A response, key, signature or object that does not decode, or a
    /// value out of range.
    Malformed(String),
}

impl Rejection {
    /// A human-readable reason, with the numbers involved.
    pub fn reason(&self) -> String {
        match self {
            Self::BadSignature => {
                "the signature does not verify with the enclave's on-chain key".to_owned()
            }
            Self::WrongKey { reported, on_chain } => {
                format!("the enclave reports key {reported}, the chain has {on_chain}")
            }
            Self::Stale {
                timestamp_ms,
                now_ms,
                max_age_ms,
            } => {
                if timestamp_ms > now_ms {
                    format!(
                        "timestamp {timestamp_ms} ms is {} ms ahead of now ({now_ms} ms); at most {max_age_ms} ms allowed",
                        timestamp_ms - now_ms
                    )
                } else {
                    format!(
                        "timestamp {timestamp_ms} ms is {} ms old (now {now_ms} ms); at most {max_age_ms} ms allowed",
                        now_ms - timestamp_ms
                    )
                }
            }
            Self::WrongIntent { got, want } => {
                format!("intent scope {got}, expected {want}")
            }
            Self::WrongNode { got, want } => {
                format!("the attestation is about node {got}, expected {want}")
            }
            Self::Expired {
                valid_until_ms,
                now_ms,
            } => format!("valid until {valid_until_ms} ms, now is {now_ms} ms"),
            Self::BelowThreshold { score, min } => {
                format!("performance score {score} is below the minimum {min}")
            }
            Self::StakeAboveChain { attested, on_chain } => format!(
                "attested stake {attested} MIST is above the on-chain stake {on_chain} MIST"
            ),
            Self::NotCurrent {
                enclave_version,
                config_version,
            } => format!(
                "the enclave was registered for config version {enclave_version}, the config is at version {config_version}"
            ),
            Self::NoEnclave(why) => format!("no enclave: {why}"),
            Self::WrongApp { enclave, config } => {
                format!("the enclave is a {enclave}, not of the trusted config's app ({config})")
            }
            Self::BadDocument(why) => format!("attestation document: {why}"),
            Self::Unreachable(why) => format!("unreachable: {why}"),
            Self::EnclaveError { status, message } => {
                format!("the enclave answered HTTP {status}: {message}")
            }
            Self::Malformed(why) => format!("malformed: {why}"),
        }
    }

    /// Whether the enclave or the chain contradicts the node (a forged,
    /// misdirected or outdated attestation or enclave), as opposed to a
    /// node that is slow, unreachable, stale or below the threshold.
    pub const fn is_forgery(&self) -> bool {
        matches!(
            self,
            Self::BadSignature
                | Self::WrongKey { .. }
                | Self::WrongNode { .. }
                | Self::WrongIntent { .. }
                | Self::WrongApp { .. }
                | Self::NotCurrent { .. }
                | Self::StakeAboveChain { .. }
                | Self::BadDocument(_)
        )
    }

    /// A short, fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::WrongKey { .. } => "wrong_key",
            Self::Stale { .. } => "stale",
            Self::WrongIntent { .. } => "wrong_intent",
            Self::WrongNode { .. } => "wrong_node",
            Self::Expired { .. } => "expired",
            Self::BelowThreshold { .. } => "below_threshold",
            Self::StakeAboveChain { .. } => "stake_above_chain",
            Self::NotCurrent { .. } => "not_current",
            Self::NoEnclave(_) => "no_enclave",
            Self::WrongApp { .. } => "wrong_app",
            Self::BadDocument(_) => "bad_document",
            Self::Unreachable(_) => "unreachable",
            Self::EnclaveError { .. } => "enclave_error",
            Self::Malformed(_) => "malformed",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for Rejection {}

/// Parses a 32-byte Ed25519 public key, as an `Enclave.pk` or hex from
/// `/health_check`.
pub fn public_key(bytes: &[u8]) -> Result<VerifyingKey, Rejection> {
    let bytes: &[u8; 32] = bytes.try_into().map_err(|_| {
        Rejection::Malformed(format!("public key of {} bytes, expected 32", bytes.len()))
    })?;
    VerifyingKey::from_bytes(bytes)
        .map_err(|_| Rejection::Malformed("public key is not a valid Ed25519 point".to_owned()))
}

/// Checks that `signature_hex` is `key`'s signature of `BCS(message)`
/// (`verify_strict`: no small-order keys, canonical signatures only).
pub fn verify_signature<T: Serialize>(
    message: &IntentMessage<T>,
    signature_hex: &str,
    key: &VerifyingKey,
) -> Result<(), Rejection> {
    let bytes = hex::decode(signature_hex)
        .map_err(|e| Rejection::Malformed(format!("signature is not hex: {e}")))?;
    let signature = Signature::from_slice(&bytes).map_err(|_| {
        Rejection::Malformed(format!("signature of {} bytes, expected 64", bytes.len()))
    })?;
    let signed = bcs::to_bytes(message)
        .map_err(|e| Rejection::Malformed(format!("cannot encode the message: {e}")))?;
    key.verify_strict(&signed, &signature)
        .map_err(|_| Rejection::BadSignature)
}

/// Verifies a node's signed attestation against the on-chain facts and the
/// policy, at `now_ms` (Unix ms, injected).
pub fn verify(
    response: &SignedResponse<PerformanceAttestation>,
    expected: &Expected,
    policy: &Policy,
    now_ms: u64,
) -> Result<Verified, Rejection> {
    let key = public_key(&expected.public_key)?;
    verify_signature(&response.response, &response.signature, &key)?;
    let IntentMessage {
        intent,
        timestamp_ms,
        data: ref attestation,
    } = response.response;
    if intent != policy.intent {
        return Err(Rejection::WrongIntent {
            got: intent,
            want: policy.intent,
        });
    }
    if attestation.node != expected.node {
        return Err(Rejection::WrongNode {
            got: attestation.node,
            want: expected.node,
        });
    }
    let max_age_ms = u64::try_from(policy.max_age.as_millis()).unwrap_or(u64::MAX);
    if timestamp_ms.abs_diff(now_ms) > max_age_ms {
        return Err(Rejection::Stale {
            timestamp_ms,
            now_ms,
            max_age_ms,
        });
    }
    if attestation.valid_until_ms < now_ms {
        return Err(Rejection::Expired {
            valid_until_ms: attestation.valid_until_ms,
            now_ms,
        });
    }
    for (name, score) in [
        ("performance_score", attestation.performance_score),
        ("reputation_score", attestation.reputation_score),
    ] {
        if score > MAX_BASIS_POINTS {
            return Err(Rejection::Malformed(format!(
                "{name} {score} is above {MAX_BASIS_POINTS}"
            )));
        }
    }
    if attestation.performance_score < policy.min_performance_score {
        return Err(Rejection::BelowThreshold {
            score: attestation.performance_score,
            min: policy.min_performance_score,
        });
    }
    if attestation.stake_amount > expected.chain_stake {
        return Err(Rejection::StakeAboveChain {
            attested: attestation.stake_amount,
            on_chain: expected.chain_stake,
        });
    }
    Ok(Verified {
        attestation: attestation.clone(),
        timestamp_ms,
    })
}

/// Signs `message` with `key` the way a Nautilus enclave does (for the fake
/// enclave and tests).
pub fn sign<T: Serialize>(
    message: IntentMessage<T>,
    key: &ed25519_dalek::SigningKey,
) -> SignedResponse<T> {
    use ed25519_dalek::Signer as _;
    let bytes = bcs::to_bytes(&message).expect("BCS of an intent message is infallible");
    SignedResponse {
        signature: hex::encode(key.sign(&bytes).to_bytes()),
        response: message,
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    #[test]
    fn forgeries_are_told_apart_from_failures_to_answer() {
        let forged = [
            Rejection::BadSignature,
            Rejection::WrongKey {
                reported: String::new(),
                on_chain: String::new(),
            },
            Rejection::WrongIntent { got: 1, want: 0 },
            Rejection::NotCurrent {
                enclave_version: 0,
                config_version: 1,
            },
            Rejection::BadDocument(String::new()),
        ];
        assert!(forged.iter().all(Rejection::is_forgery));
        let failures = [
            Rejection::Unreachable(String::new()),
            Rejection::Stale {
                timestamp_ms: 0,
                now_ms: 1,
                max_age_ms: 0,
            },
            Rejection::BelowThreshold { score: 1, min: 2 },
            Rejection::EnclaveError {
                status: 400,
                message: String::new(),
            },
            Rejection::NoEnclave(String::new()),
        ];
        assert!(!failures.iter().any(Rejection::is_forgery));
    }

    /// The weather example's payload (MystenLabs/nautilus).
    #[derive(Serialize)]
    struct Weather {
        location: String,
        temperature: u64,
    }

    const WEATHER_PK: &str = "e8e62201dbe293b703c759f653107acbc2c911fa1d2e66f2c747bec95971a2af";
    const WEATHER_SIG: &str = "77b6d8be225440d00f3d6eb52e91076a8927cebfb520e58c19daf31ecf06b3798ec3d3ce9630a9eceee46d24f057794a60dd781657cb06d952269cfc5ae19500";

    fn weather(timestamp_ms: u64) -> IntentMessage<Weather> {
        IntentMessage {
            intent: 0,
            timestamp_ms,
            data: Weather {
                location: "San Francisco".to_owned(),
                temperature: 13,
            },
        }
    }

    fn weather_key() -> VerifyingKey {
        public_key(&hex::decode(WEATHER_PK).unwrap()).unwrap()
    }

    #[test]
    fn bcs_layout_matches_nautilus() {
        assert_eq!(
            hex::encode(bcs::to_bytes(&weather(1_744_038_900_000)).unwrap()),
            "0020b1d110960100000d53616e204672616e636973636f0d00000000000000"
        );
    }

    #[test]
    fn real_enclave_signature_verifies() {
        verify_signature(&weather(1_744_683_300_000), WEATHER_SIG, &weather_key()).unwrap();
    }

    #[test]
    fn real_signature_fails_on_any_change() {
        let key = weather_key();
        // Message: the timestamp one ms later, one bit of the temperature.
        assert_eq!(
            verify_signature(&weather(1_744_683_300_001), WEATHER_SIG, &key),
            Err(Rejection::BadSignature)
        );
        let mut message = weather(1_744_683_300_000);
        message.data.temperature ^= 1;
        assert_eq!(
            verify_signature(&message, WEATHER_SIG, &key),
            Err(Rejection::BadSignature)
        );
        // Signature: one bit of every byte position.
        let signature = hex::decode(WEATHER_SIG).unwrap();
        for i in 0..signature.len() {
            let mut flipped = signature.clone();
            flipped[i] ^= 1;
            assert!(
                verify_signature(&weather(1_744_683_300_000), &hex::encode(&flipped), &key)
                    .is_err(),
                "byte {i}"
            );
        }
        // Key: one bit.
        let mut pk = hex::decode(WEATHER_PK).unwrap();
        pk[0] ^= 1;
        if let Ok(other) = public_key(&pk) {
            assert!(verify_signature(&weather(1_744_683_300_000), WEATHER_SIG, &other).is_err());
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    fn node(byte: u8) -> Address {
        let mut bytes = [0; Address::LENGTH];
        bytes[Address::LENGTH - 1] = byte;
        Address::new(bytes)
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn attestation() -> PerformanceAttestation {
        PerformanceAttestation {
            node: node(7),
            performance_score: 9_000,
            reputation_score: 8_000,
            stake_amount: 5_000_000_000,
            valid_until_ms: NOW + 60_000,
        }
    }

    fn message(data: PerformanceAttestation) -> IntentMessage<PerformanceAttestation> {
        IntentMessage {
            intent: PROCESS_DATA_INTENT,
            timestamp_ms: NOW - 1_000,
            data,
        }
    }

    fn expected() -> Expected {
        Expected {
            public_key: key(1).verifying_key().to_bytes(),
            node: node(7),
            chain_stake: 5_000_000_000,
        }
    }

    fn policy() -> Policy {
        Policy {
            intent: PROCESS_DATA_INTENT,
            max_age: Duration::from_secs(30),
            min_performance_score: 5_000,
        }
    }

    fn check(message: IntentMessage<PerformanceAttestation>) -> Result<Verified, Rejection> {
        verify(&sign(message, &key(1)), &expected(), &policy(), NOW)
    }

    #[test]
    fn generated_key_round_trip() {
        let verified = check(message(attestation())).unwrap();
        assert_eq!(verified.attestation, attestation());
        assert_eq!(verified.timestamp_ms, NOW - 1_000);
        // Through JSON, as on the wire.
        let json = serde_json::to_string(&sign(message(attestation()), &key(1))).unwrap();
        let back: SignedResponse<PerformanceAttestation> = serde_json::from_str(&json).unwrap();
        verify(&back, &expected(), &policy(), NOW).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["response"]["intent"], 0);
        assert_eq!(value["response"]["data"]["node"], node(7).to_string());
        assert_eq!(value["signature"].as_str().unwrap().len(), 128);
    }

    #[test]
    fn boundaries_are_accepted() {
        let mut m = message(attestation());
        m.timestamp_ms = NOW - 30_000;
        m.data.valid_until_ms = NOW;
        m.data.performance_score = 5_000;
        m.data.reputation_score = MAX_BASIS_POINTS;
        check(m.clone()).unwrap();
        m.timestamp_ms = NOW + 30_000;
        check(m).unwrap();
    }

    #[test]
    fn rejections() {
        // Another key signed it.
        let signed = sign(message(attestation()), &key(2));
        assert_eq!(
            verify(&signed, &expected(), &policy(), NOW),
            Err(Rejection::BadSignature)
        );
        // Signed, then a field changed.
        let mut tampered = sign(message(attestation()), &key(1));
        tampered.response.data.performance_score += 1;
        assert_eq!(
            verify(&tampered, &expected(), &policy(), NOW),
            Err(Rejection::BadSignature)
        );
        // Not hex, wrong length.
        let mut bad = sign(message(attestation()), &key(1));
        bad.signature = "zz".to_owned();
        assert_eq!(
            verify(&bad, &expected(), &policy(), NOW)
                .unwrap_err()
                .label(),
            "malformed"
        );
        bad.signature = "00".repeat(63);
        assert_eq!(
            verify(&bad, &expected(), &policy(), NOW)
                .unwrap_err()
                .label(),
            "malformed"
        );

        let mut m = message(attestation());
        m.intent = 1;
        assert_eq!(check(m), Err(Rejection::WrongIntent { got: 1, want: 0 }));

        let mut m = message(attestation());
        m.data.node = node(8);
        assert_eq!(
            check(m),
            Err(Rejection::WrongNode {
                got: node(8),
                want: node(7)
            })
        );

        let mut m = message(attestation());
        m.timestamp_ms = NOW - 30_001;
        let stale = check(m).unwrap_err();
        assert_eq!(
            stale,
            Rejection::Stale {
                timestamp_ms: NOW - 30_001,
                now_ms: NOW,
                max_age_ms: 30_000
            }
        );
        assert!(
            stale.reason().contains("30001 ms old"),
            "{}",
            stale.reason()
        );
        let mut m = message(attestation());
        m.timestamp_ms = NOW + 30_001;
        let ahead = check(m).unwrap_err();
        assert_eq!(ahead.label(), "stale");
        assert!(
            ahead.reason().contains("30001 ms ahead"),
            "{}",
            ahead.reason()
        );

        let mut m = message(attestation());
        m.data.valid_until_ms = NOW - 1;
        assert_eq!(
            check(m),
            Err(Rejection::Expired {
                valid_until_ms: NOW - 1,
                now_ms: NOW
            })
        );

        let mut m = message(attestation());
        m.data.performance_score = 4_999;
        let below = check(m).unwrap_err();
        assert_eq!(
            below,
            Rejection::BelowThreshold {
                score: 4_999,
                min: 5_000
            }
        );
        assert_eq!(
            below.reason(),
            "performance score 4999 is below the minimum 5000"
        );

        for (performance, reputation) in [(10_001, 0), (9_000, 10_001)] {
            let mut m = message(attestation());
            m.data.performance_score = performance;
            m.data.reputation_score = reputation;
            let out_of_range = check(m).unwrap_err();
            assert_eq!(out_of_range.label(), "malformed");
            assert!(out_of_range.reason().contains("10001 is above 10000"));
        }

        let mut m = message(attestation());
        m.data.stake_amount = 5_000_000_001;
        assert_eq!(
            check(m),
            Err(Rejection::StakeAboveChain {
                attested: 5_000_000_001,
                on_chain: 5_000_000_000
            })
        );

        // A malformed on-chain key.
        let mut e = expected();
        e.public_key = [0xff; 32];
        let signed = sign(message(attestation()), &key(1));
        let rejected = verify(&signed, &e, &policy(), NOW).unwrap_err();
        assert!(matches!(
            rejected,
            Rejection::Malformed(_) | Rejection::BadSignature
        ));
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Rejection::BadSignature,
            Rejection::WrongKey {
                reported: "aa".to_owned(),
                on_chain: "bb".to_owned(),
            },
            Rejection::Stale {
                timestamp_ms: 1,
                now_ms: 2,
                max_age_ms: 0,
            },
            Rejection::WrongIntent { got: 1, want: 0 },
            Rejection::WrongNode {
                got: node(1),
                want: node(2),
            },
            Rejection::Expired {
                valid_until_ms: 1,
                now_ms: 2,
            },
            Rejection::BelowThreshold { score: 1, min: 2 },
            Rejection::StakeAboveChain {
                attested: 2,
                on_chain: 1,
            },
            Rejection::NotCurrent {
                enclave_version: 0,
                config_version: 1,
            },
            Rejection::Unreachable("x".to_owned()),
            Rejection::EnclaveError {
                status: 400,
                message: "z".to_owned(),
            },
            Rejection::Malformed("y".to_owned()),
        ];
        let labels: std::collections::BTreeSet<_> = all.iter().map(Rejection::label).collect();
        assert_eq!(labels.len(), all.len());
        for r in &all {
            assert!(!r.reason().is_empty());
            assert_eq!(r.to_string(), r.reason());
        }
    }
}
