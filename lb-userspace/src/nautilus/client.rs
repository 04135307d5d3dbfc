//! Asking a node's Nautilus enclave over HTTP: `GET /health_check` (the key
//! it reports must be the one registered on chain), `POST /process_data`
//! (a signed [`PerformanceAttestation`], checked with [`verify`]) and
//! `GET /get_attestation` (its Nitro attestation document, for
//! [`super::document::verify_enclave`]). Every request has its own timeout.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, de::DeserializeOwned};

use super::attestation::{
    Expected, NodeQuery, PerformanceAttestation, Policy, ProcessDataRequest, Rejection,
    SignedResponse, Verified, verify,
};

/// One enclave's HTTP endpoint.
#[derive(Debug, Clone)]
pub struct EnclaveClient {
    http: reqwest::Client,
    url: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct HealthCheck {
    pk: String,
}

#[derive(Deserialize)]
struct GetAttestation {
    attestation: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

impl EnclaveClient {
    /// A client of the enclave at `url` (`http(s)://host:port`, no trailing
    /// path), each request limited to `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self::with_http(
            reqwest::Client::builder().build()?,
            url,
            timeout,
        ))
    }

    /// Like [`EnclaveClient::new`], on a shared `http` client (its
    /// connection pool serves every enclave).
    pub fn with_http(http: reqwest::Client, url: &str, timeout: Duration) -> Self {
        Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            timeout,
        }
    }

    /// `GET /health_check`: the reported key must be `on_chain_pk`.
    pub async fn health_check(&self, on_chain_pk: &[u8; 32]) -> Result<(), Rejection> {
        let health: HealthCheck = self
            .call(
                self.http.get(format!("{}/health_check", self.url)),
                "/health_check",
            )
            .await?;
        let on_chain = hex::encode(on_chain_pk);
        if health.pk.to_ascii_lowercase() == on_chain {
            Ok(())
        } else {
            Err(Rejection::WrongKey {
                reported: health.pk,
                on_chain,
            })
        }
    }

    /// `POST /process_data` asking about `expected.node`, then [`verify`] at
    /// `now_ms()` (read when the answer arrives).
    pub async fn process_data(
        &self,
        expected: &Expected,
        policy: &Policy,
        now_ms: impl FnOnce() -> u64,
    ) -> Result<Verified, Rejection> {
        let body = serde_json::to_vec(&ProcessDataRequest {
            payload: NodeQuery {
                node: expected.node,
            },
        })
        .map_err(|e| Rejection::Malformed(format!("encoding the request: {e}")))?;
        let response: SignedResponse<PerformanceAttestation> = self
            .call(
                self.http
                    .post(format!("{}/process_data", self.url))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body),
                "/process_data",
            )
            .await?;
        verify(&response, expected, policy, now_ms())
    }

    /// `GET /get_attestation`: the enclave's attestation document (raw
    /// CBOR bytes, hex-decoded, not verified here).
    pub async fn get_attestation(&self) -> Result<Vec<u8>, Rejection> {
        let answer: GetAttestation = self
            .call(
                self.http.get(format!("{}/get_attestation", self.url)),
                "/get_attestation",
            )
            .await?;
        hex::decode(answer.attestation.trim()).map_err(|e| {
            Rejection::Malformed(format!(
                "{}/get_attestation: attestation is not hex: {e}",
                self.url
            ))
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T, Rejection> {
        let unreachable = |e: reqwest::Error| {
            if e.is_timeout() {
                Rejection::Unreachable(format!(
                    "{}{path}: no answer in {:?}",
                    self.url, self.timeout
                ))
            } else {
                Rejection::Unreachable(format!("{}{path}: {e}", self.url))
            }
        };
        let response = request
            .timeout(self.timeout)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error);
            return Err(Rejection::EnclaveError {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| Rejection::Malformed(format!("{}{path}: {e}", self.url)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use sui_sdk_types::Address;

    use super::*;
    use crate::{
        demo::fake_enclave::{
            FakeEnclave, FakeScores, WEATHER_ATTESTATION_VALID_AT_MS, weather_attestation,
        },
        health::nautilus::unix_ms,
        nautilus::document::{self, DocumentError},
    };

    fn now_ms() -> u64 {
        unix_ms(SystemTime::now())
    }

    fn node(byte: u8) -> Address {
        let mut bytes = [0; Address::LENGTH];
        bytes[Address::LENGTH - 1] = byte;
        Address::new(bytes)
    }

    fn policy() -> Policy {
        Policy {
            max_age: Duration::from_secs(10),
            min_performance_score: 5_000,
            ..Policy::default()
        }
    }

    async fn setup() -> (FakeEnclave, EnclaveClient, Expected) {
        let fake = FakeEnclave::start().await.unwrap();
        fake.set_scores(FakeScores {
            performance_score: 8_000,
            reputation_score: 7_000,
            stake_amount: 1_000,
            valid_for: Duration::from_mins(1),
        });
        let client = EnclaveClient::new(&fake.url(), Duration::from_millis(500)).unwrap();
        let expected = Expected {
            public_key: fake.public_key(),
            node: node(7),
            chain_stake: 1_000,
        };
        (fake, client, expected)
    }

    #[tokio::test]
    async fn healthy_enclave_passes_and_scores_follow() {
        let (fake, client, expected) = setup().await;
        client.health_check(&fake.public_key()).await.unwrap();
        let verified = client
            .process_data(&expected, &policy(), now_ms)
            .await
            .unwrap();
        assert_eq!(verified.attestation.node, node(7));
        assert_eq!(verified.attestation.performance_score, 8_000);
        assert_eq!(verified.attestation.reputation_score, 7_000);
        fake.set_scores(FakeScores {
            performance_score: 9_500,
            reputation_score: 10_000,
            stake_amount: 500,
            valid_for: Duration::from_mins(1),
        });
        let verified = client
            .process_data(&expected, &policy(), now_ms)
            .await
            .unwrap();
        assert_eq!(verified.attestation.performance_score, 9_500);
        assert_eq!(verified.attestation.stake_amount, 500);
        fake.set_scores(FakeScores {
            performance_score: 4_000,
            ..FakeScores::default()
        });
        assert_eq!(
            client
                .process_data(&expected, &policy(), now_ms)
                .await
                .unwrap_err()
                .label(),
            "below_threshold"
        );
        assert_eq!(
            fake.calls()
                .health_check
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            fake.calls()
                .process_data
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[tokio::test]
    async fn every_switch_is_refused() {
        let (fake, client, expected) = setup().await;
        let label = |r: Result<Verified, Rejection>| r.unwrap_err().label();

        fake.set_wrong_key(true).unwrap();
        let wrong = client.health_check(&fake.public_key()).await.unwrap_err();
        assert_eq!(wrong.label(), "wrong_key");
        assert!(wrong.reason().contains(&hex::encode(fake.public_key())));
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "bad_signature"
        );
        fake.set_wrong_key(false).unwrap();

        fake.set_bad_signature(true).unwrap();
        client.health_check(&fake.public_key()).await.unwrap();
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "bad_signature"
        );
        fake.set_bad_signature(false).unwrap();

        fake.set_age(Duration::from_secs(30));
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "stale"
        );
        fake.set_age(Duration::ZERO);

        fake.set_intent(3);
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "wrong_intent"
        );
        fake.set_intent(0);

        fake.set_node(Some(node(8)));
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "wrong_node"
        );
        fake.set_node(None);

        fake.set_scores(FakeScores {
            stake_amount: 1_001,
            ..FakeScores::default()
        });
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "stake_above_chain"
        );
        fake.set_scores(FakeScores::default());

        fake.set_error(Some("weather API down".to_owned()));
        let error = client
            .process_data(&expected, &policy(), now_ms)
            .await
            .unwrap_err();
        assert_eq!(
            error,
            Rejection::EnclaveError {
                status: 400,
                message: "weather API down".to_owned()
            }
        );
        fake.set_error(None);

        fake.set_delay(Duration::from_secs(2));
        let slow = client.health_check(&fake.public_key()).await.unwrap_err();
        assert_eq!(slow.label(), "unreachable");
        assert!(slow.reason().contains("no answer"), "{}", slow.reason());
        assert_eq!(
            label(client.process_data(&expected, &policy(), now_ms).await),
            "unreachable"
        );
        fake.set_delay(Duration::ZERO);

        client
            .process_data(&expected, &policy(), now_ms)
            .await
            .unwrap();
        let url = fake.url();
        drop(fake);
        let gone = EnclaveClient::new(&url, Duration::from_millis(500)).unwrap();
        assert_eq!(
            label(gone.process_data(&expected, &policy(), now_ms).await),
            "unreachable"
        );
    }

    #[tokio::test]
    async fn attestation_document_is_fetched_and_verified() {
        let (fake, client, _) = setup().await;
        let bytes = client.get_attestation().await.unwrap();
        assert_eq!(bytes, weather_attestation());

        // The document's own PCR0..2 and key, as the chain would hold them.
        let doc = document::verify_document(&bytes, WEATHER_ATTESTATION_VALID_AT_MS).unwrap();
        let mut pcrs: Vec<Vec<u8>> = (0..3).map(|i| doc.pcr(i).unwrap().to_vec()).collect();
        let pk = doc.public_key.clone().unwrap();
        assert_eq!(pk.len(), 32);
        let expected = |pcrs: &[Vec<u8>]| {
            document::verify_enclave(
                &bytes,
                WEATHER_ATTESTATION_VALID_AT_MS,
                &document::Expected {
                    pcrs: [&pcrs[0], &pcrs[1], &pcrs[2]],
                    public_key: &pk,
                },
            )
        };
        assert_eq!(expected(&pcrs), Ok(doc));

        // Today the recorded certificates have expired.
        let err = document::verify_enclave(
            &bytes,
            now_ms(),
            &document::Expected {
                pcrs: [&pcrs[0], &pcrs[1], &pcrs[2]],
                public_key: &pk,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, DocumentError::CertificateNotValid { .. }),
            "{err}"
        );

        // One PCR byte off.
        pcrs[1][0] ^= 1;
        let err = expected(&pcrs).unwrap_err();
        assert!(
            matches!(err, DocumentError::PcrMismatch { index: 1, .. }),
            "{err}"
        );

        // Another document, none, not hex.
        fake.set_attestation_document(Some(vec![0xd2, 0x84]));
        assert_eq!(client.get_attestation().await.unwrap(), vec![0xd2, 0x84]);
        fake.set_attestation_document(None);
        assert_eq!(
            client.get_attestation().await.unwrap_err(),
            Rejection::EnclaveError {
                status: 400,
                message: "no attestation document".to_owned()
            }
        );
        assert_eq!(
            fake.calls()
                .get_attestation
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[tokio::test]
    async fn attestation_that_is_not_hex_is_malformed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/get_attestation",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"attestation": "zz"})) }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = EnclaveClient::new(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
        let err = client.get_attestation().await.unwrap_err();
        assert_eq!(err.label(), "malformed");
        assert!(err.reason().contains("not hex"), "{}", err.reason());
        server.abort();
    }
}
