//! Verification of an AWS Nitro Enclaves attestation document, the
//! `GET /get_attestation` answer of a Nautilus enclave.
//!
//! The document is a `COSE_Sign1` structure (RFC 9052, optionally behind CBOR
//! tag 18): `[protected, unprotected, payload, signature]`. The rules follow
//! Sui's `nitro_attestation` native, so a document accepted here is one the
//! chain accepts at the same clock:
//!
//! - the protected header is exactly `{1: -35}` (ES384) and the signature 96
//!   bytes (`r || s`), an ECDSA P-384/SHA-384 signature of the CBOR array
//!   `["Signature1", protected, h'', payload]` by the leaf certificate's key;
//! - the payload (1..=16384 bytes) is a CBOR map with `module_id` (non-empty
//!   text), `digest` (`"SHA384"`), `timestamp` (ms), `pcrs` (at most 32
//!   entries of 32, 48 or 64 bytes), `certificate` (at most 1024 bytes),
//!   `cabundle` (1..=10 certificates, root first) and the optional
//!   `public_key` (1..=1024 bytes), `user_data` and `nonce` (at most 512);
//! - the chain leaf, `cabundle[n-1]`, …, `cabundle[0]` is signed link by link
//!   (ECDSA P-384/SHA-384), every certificate is valid at the caller's clock
//!   (always injected, never read here), issuers are CAs allowed to sign
//!   certificates within their path length, and `cabundle[0]` is the AWS
//!   Nitro Enclaves root G1 embedded below.
//!
//! [`verify_enclave`] adds what Nautilus' `register_enclave` checks: PCR0,
//! PCR1 and PCR2 equal the on-chain `EnclaveConfig` ones and `public_key` is
//! the on-chain `Enclave.pk`.

use std::{collections::BTreeMap, fmt};

use ciborium::Value;
use p384::ecdsa::{Signature, VerifyingKey, signature::Verifier as _};
use x509_parser::{
    certificate::X509Certificate,
    oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ECDSA_WITH_SHA384},
    prelude::FromDer as _,
    time::ASN1Time,
};

/// The AWS Nitro Enclaves root certificate G1, as published by AWS
/// (<https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>)
/// and embedded in the Sui framework. The SHA-256 of this exact text (no
/// final newline) is
/// `6eb9688305e4bbca67f44b59c29a0661ae930f09b5945b5d1d9ae01125c8d6c0`
/// (checked by a test).
pub const AWS_NITRO_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----";

/// CBOR tag of a `COSE_Sign1` structure.
const COSE_SIGN1_TAG: u64 = 18;
/// COSE algorithm identifier of ES384.
const COSE_ALG_ES384: i64 = -35;
/// Length of a raw P-384 ECDSA signature (`r || s`).
const SIGNATURE_LEN: usize = 96;
const MAX_PAYLOAD: usize = 16_384;
const MAX_PCRS: usize = 32;
const MAX_CERTIFICATE: usize = 1024;
const MAX_CABUNDLE: usize = 10;
const MAX_PUBLIC_KEY: usize = 1024;
const MAX_USER_DATA: usize = 512;

/// The verified contents of an attestation document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDocument {
    /// The enclave's id, e.g. `i-06e4b98c6549ff803-enc0196373b195fb723`.
    pub module_id: String,
    /// When the Nitro hypervisor produced the document, in ms since the epoch.
    pub timestamp_ms: u64,
    /// Platform configuration registers by index (SHA-384 values).
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The key the enclave asked to be attested (for Nautilus: its
    /// ephemeral Ed25519 public key, 32 bytes).
    pub public_key: Option<Vec<u8>>,
    /// Application data bound into the document.
    pub user_data: Option<Vec<u8>>,
    /// The requester's nonce.
    pub nonce: Option<Vec<u8>>,
}

impl AttestationDocument {
    /// PCR `index`, if present.
    #[must_use]
    pub fn pcr(&self, index: u8) -> Option<&[u8]> {
        self.pcrs.get(&index).map(Vec::as_slice)
    }
}

/// What the document must attest, from the chain (`EnclaveConfig.pcrs`,
/// `Enclave.pk`).
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// PCR0, PCR1 and PCR2.
    pub pcrs: [&'a [u8]; 3],
    /// The enclave's public key.
    pub public_key: &'a [u8],
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// Not a well-formed `COSE_Sign1` attestation document.
    Malformed(String),
    /// The COSE signature does not verify with the leaf certificate's key.
    BadSignature,
    /// The certificate chain does not verify.
    BadChain(String),
    /// A certificate is not valid at the given clock.
    CertificateNotValid {
        /// 0 = leaf, then the `cabundle` from the last entry to the root.
        position: usize,
        /// The certificate's subject.
        subject: String,
        /// The clock used, ms since the epoch.
        now_ms: u64,
    },
    /// PCR `index` differs from (or lacks) the expected value.
    PcrMismatch {
        /// The PCR index.
        index: u8,
        /// Hex of the expected value.
        expected: String,
        /// Hex of the attested value (empty if absent).
        actual: String,
    },
    /// The attested public key differs from (or lacks) the expected one.
    PublicKeyMismatch {
        /// Hex of the expected key.
        expected: String,
        /// Hex of the attested key (empty if absent).
        actual: String,
    },
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed attestation document: {why}"),
            Self::BadSignature => f.write_str("attestation document signature does not verify"),
            Self::BadChain(why) => write!(f, "attestation certificate chain: {why}"),
            Self::CertificateNotValid {
                position,
                subject,
                now_ms,
            } => write!(
                f,
                "attestation certificate {position} ({subject}) is not valid at {now_ms} ms"
            ),
            Self::PcrMismatch {
                index,
                expected,
                actual,
            } => write!(f, "PCR{index} is {actual:?}, expected {expected:?}"),
            Self::PublicKeyMismatch { expected, actual } => {
                write!(
                    f,
                    "attested public key is {actual:?}, expected {expected:?}"
                )
            }
        }
    }
}

impl std::error::Error for DocumentError {}

fn malformed(why: impl Into<String>) -> DocumentError {
    DocumentError::Malformed(why.into())
}

/// Verifies the COSE signature and the certificate chain of `document`
/// (raw CBOR bytes) at `now_ms` (ms since the epoch) and returns its
/// contents.
///
/// # Errors
/// [`DocumentError`] says which rule failed.
pub fn verify_document(document: &[u8], now_ms: u64) -> Result<AttestationDocument, DocumentError> {
    let cose = CoseSign1::parse(document)?;
    let payload = Payload::parse(&cose.payload)?;
    let leaf_key = verify_chain(&payload.certificate, &payload.cabundle, now_ms)?;
    cose.verify(&leaf_key)?;
    Ok(payload.document)
}

/// [`verify_document`], then checks PCR0..=2 and the public key against
/// `expected`.
///
/// # Errors
/// [`DocumentError`] says which rule failed.
pub fn verify_enclave(
    document: &[u8],
    now_ms: u64,
    expected: &Expected<'_>,
) -> Result<AttestationDocument, DocumentError> {
    let doc = verify_document(document, now_ms)?;
    for (index, want) in (0u8..).zip(expected.pcrs) {
        let got = doc.pcr(index).unwrap_or_default();
        if got != want {
            return Err(DocumentError::PcrMismatch {
                index,
                expected: hex::encode(want),
                actual: hex::encode(got),
            });
        }
    }
    let got = doc.public_key.as_deref().unwrap_or_default();
    if got != expected.public_key {
        return Err(DocumentError::PublicKeyMismatch {
            expected: hex::encode(expected.public_key),
            actual: hex::encode(got),
        });
    }
    Ok(doc)
}

/// The parts of a `COSE_Sign1` structure that matter here.
struct CoseSign1 {
    protected: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl CoseSign1 {
    fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let value: Value =
            ciborium::from_reader(bytes).map_err(|e| malformed(format!("CBOR: {e}")))?;
        let value = match value {
            Value::Tag(COSE_SIGN1_TAG, inner) => *inner,
            Value::Tag(tag, _) => return Err(malformed(format!("unexpected CBOR tag {tag}"))),
            other => other,
        };
        let Value::Array(items) = value else {
            return Err(malformed("COSE_Sign1 is not an array"));
        };
        let [protected, unprotected, payload, signature]: [Value; 4] =
            items.try_into().map_err(|items: Vec<Value>| {
                malformed(format!("COSE_Sign1 has {} items, not 4", items.len()))
            })?;
        let (
            Value::Bytes(protected),
            Value::Map(_),
            Value::Bytes(payload),
            Value::Bytes(signature),
        ) = (protected, unprotected, payload, signature)
        else {
            return Err(malformed("COSE_Sign1 items have the wrong types"));
        };
        let header: Value = ciborium::from_reader(protected.as_slice())
            .map_err(|e| malformed(format!("protected header: {e}")))?;
        let es384 = matches!(&header, Value::Map(entries)
            if matches!(entries.as_slice(), [(Value::Integer(k), Value::Integer(v))]
                if i128::from(*k) == 1 && i128::from(*v) == i128::from(COSE_ALG_ES384)));
        if !es384 {
            return Err(malformed(
                "protected header is not exactly {1: -35} (ES384)",
            ));
        }
        if payload.is_empty() || payload.len() > MAX_PAYLOAD {
            return Err(malformed(format!("payload of {} bytes", payload.len())));
        }
        if signature.len() != SIGNATURE_LEN {
            return Err(malformed(format!("signature of {} bytes", signature.len())));
        }
        Ok(Self {
            protected,
            payload,
            signature,
        })
    }

    /// Checks the signature of `["Signature1", protected, h'', payload]`.
    fn verify(&self, key: &VerifyingKey) -> Result<(), DocumentError> {
        let structure = Value::Array(vec![
            Value::Text("Signature1".to_owned()),
            Value::Bytes(self.protected.clone()),
            Value::Bytes(Vec::new()),
            Value::Bytes(self.payload.clone()),
        ]);
        let mut message = Vec::with_capacity(self.payload.len() + self.protected.len() + 32);
        ciborium::into_writer(&structure, &mut message)
            .map_err(|e| malformed(format!("Sig_structure: {e}")))?;
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| DocumentError::BadSignature)?;
        key.verify(&message, &signature)
            .map_err(|_| DocumentError::BadSignature)
    }
}

/// The decoded payload: the document and its certificates (DER).
struct Payload {
    document: AttestationDocument,
    certificate: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
}

impl Payload {
    fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let value: Value =
            ciborium::from_reader(bytes).map_err(|e| malformed(format!("payload CBOR: {e}")))?;
        let Value::Map(entries) = value else {
            return Err(malformed("payload is not a map"));
        };
        let mut fields = BTreeMap::new();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(malformed("payload key is not text"));
            };
            if fields.insert(key.clone(), value).is_some() {
                return Err(malformed(format!("duplicate payload key {key:?}")));
            }
        }
        let mut take = |key: &str| {
            fields
                .remove(key)
                .ok_or_else(|| malformed(format!("payload lacks {key:?}")))
        };
        let Value::Text(module_id) = take("module_id")? else {
            return Err(malformed("module_id is not text"));
        };
        if module_id.is_empty() {
            return Err(malformed("module_id is empty"));
        }
        if take("digest")? != Value::Text("SHA384".to_owned()) {
            return Err(malformed("digest is not \"SHA384\""));
        }
        let timestamp_ms = match take("timestamp")? {
            Value::Integer(t) => {
                u64::try_from(t).map_err(|_| malformed("timestamp out of range"))?
            }
            _ => return Err(malformed("timestamp is not an integer")),
        };
        let pcrs = parse_pcrs(take("pcrs")?)?;
        let certificate = bytes_field("certificate", take("certificate")?, 1, MAX_CERTIFICATE)?;
        let Value::Array(bundle) = take("cabundle")? else {
            return Err(malformed("cabundle is not an array"));
        };
        if bundle.is_empty() || bundle.len() > MAX_CABUNDLE {
            return Err(malformed(format!(
                "cabundle of {} certificates",
                bundle.len()
            )));
        }
        let cabundle = bundle
            .into_iter()
            .map(|cert| bytes_field("cabundle entry", cert, 1, MAX_CERTIFICATE))
            .collect::<Result<Vec<_>, _>>()?;
        let mut optional = |key: &str, max: usize| match fields.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => bytes_field(key, value, 1, max).map(Some),
        };
        let public_key = optional("public_key", MAX_PUBLIC_KEY)?;
        let user_data = optional("user_data", MAX_USER_DATA)?;
        let nonce = optional("nonce", MAX_USER_DATA)?;
        Ok(Self {
            document: AttestationDocument {
                module_id,
                timestamp_ms,
                pcrs,
                public_key,
                user_data,
                nonce,
            },
            certificate,
            cabundle,
        })
    }
}

fn bytes_field(name: &str, value: Value, min: usize, max: usize) -> Result<Vec<u8>, DocumentError> {
    match value {
        Value::Bytes(b) if (min..=max).contains(&b.len()) => Ok(b),
        Value::Bytes(b) => Err(malformed(format!("{name} of {} bytes", b.len()))),
        _ => Err(malformed(format!("{name} is not a byte string"))),
    }
}

fn parse_pcrs(value: Value) -> Result<BTreeMap<u8, Vec<u8>>, DocumentError> {
    let Value::Map(entries) = value else {
        return Err(malformed("pcrs is not a map"));
    };
    if entries.len() > MAX_PCRS {
        return Err(malformed(format!("{} PCRs", entries.len())));
    }
    let mut pcrs = BTreeMap::new();
    for (index, value) in entries {
        let index = match index {
            Value::Integer(i) => {
                u8::try_from(i).map_err(|_| malformed("PCR index out of range"))?
            }
            _ => return Err(malformed("PCR index is not an integer")),
        };
        let value = bytes_field("PCR", value, 32, 64)?;
        if ![32, 48, 64].contains(&value.len()) {
            return Err(malformed(format!("PCR{index} of {} bytes", value.len())));
        }
        if pcrs.insert(index, value).is_some() {
            return Err(malformed(format!("duplicate PCR{index}")));
        }
    }
    Ok(pcrs)
}

/// The DER of [`AWS_NITRO_ROOT_G1_PEM`].
fn root_der() -> Result<Vec<u8>, DocumentError> {
    x509_parser::pem::parse_x509_pem(AWS_NITRO_ROOT_G1_PEM.as_bytes())
        .map(|(_, pem)| pem.contents)
        .map_err(|e| DocumentError::BadChain(format!("embedded root: {e}")))
}

/// Verifies leaf, `cabundle[n-1]`, …, `cabundle[0]` (the AWS root) at
/// `now_ms` and returns the leaf's key.
fn verify_chain(
    leaf: &[u8],
    cabundle: &[Vec<u8>],
    now_ms: u64,
) -> Result<VerifyingKey, DocumentError> {
    let bad = |why: String| DocumentError::BadChain(why);
    if cabundle.first().map(Vec::as_slice) != Some(root_der()?.as_slice()) {
        return Err(bad(
            "cabundle[0] is not the AWS Nitro Enclaves root G1".to_owned()
        ));
    }
    let now = i64::try_from(now_ms / 1000)
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .ok_or_else(|| bad(format!("clock {now_ms} ms out of range")))?;
    let chain = std::iter::once(leaf)
        .chain(cabundle.iter().rev().map(Vec::as_slice))
        .enumerate()
        .map(|(position, der)| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            Ok(_) => Err(bad(format!("certificate {position} has trailing bytes"))),
            Err(e) => Err(bad(format!("certificate {position}: {e}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let keys = chain
        .iter()
        .enumerate()
        .map(|(position, cert)| {
            p384_key(cert).map_err(|why| bad(format!("certificate {position}: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (position, cert) in chain.iter().enumerate() {
        if !cert.validity().is_valid_at(now) {
            return Err(DocumentError::CertificateNotValid {
                position,
                subject: cert.subject().to_string(),
                now_ms,
            });
        }
        let key_usage = cert
            .key_usage()
            .map_err(|e| bad(format!("certificate {position} key usage: {e}")))?;
        if position == 0 {
            if key_usage.is_some_and(|ku| !ku.value.digital_signature()) {
                return Err(bad("leaf certificate may not sign".to_owned()));
            }
        } else {
            let constraints = cert
                .basic_constraints()
                .map_err(|e| bad(format!("certificate {position} basic constraints: {e}")))?;
            let Some(constraints) = constraints.filter(|bc| bc.value.ca) else {
                return Err(bad(format!("certificate {position} is not a CA")));
            };
            // Certificates between this CA and the leaf.
            let below = u32::try_from(position - 1).unwrap_or(u32::MAX);
            if constraints
                .value
                .path_len_constraint
                .is_some_and(|max| below > max)
            {
                return Err(bad(format!("certificate {position} path length exceeded")));
            }
            if !key_usage.is_some_and(|ku| ku.value.key_cert_sign()) {
                return Err(bad(format!(
                    "certificate {position} may not sign certificates"
                )));
            }
        }
        // The root (last) signs itself.
        let issuer = (position + 1).min(chain.len() - 1);
        if cert.issuer() != chain[issuer].subject() {
            return Err(bad(format!(
                "certificate {position} is not issued by certificate {issuer}"
            )));
        }
        if cert.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA384 {
            return Err(bad(format!(
                "certificate {position} is not signed with ecdsa-with-SHA384"
            )));
        }
        let signature = Signature::from_der(&cert.signature_value.data)
            .map_err(|_| bad(format!("certificate {position} signature is not DER ECDSA")))?;
        keys[issuer]
            .verify(cert.tbs_certificate.as_ref(), &signature)
            .map_err(|_| bad(format!("certificate {position} signature does not verify")))?;
    }
    Ok(keys[0])
}

/// The P-384 public key of `cert`.
fn p384_key(cert: &X509Certificate<'_>) -> Result<VerifyingKey, String> {
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err("key is not an EC key".to_owned());
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve != Some(OID_NIST_EC_P384) {
        return Err("key is not on P-384".to_owned());
    }
    VerifyingKey::from_sec1_bytes(&spki.subject_public_key.data)
        .map_err(|_| "invalid P-384 point".to_owned())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    /// A document recorded from a Nautilus weather enclave, copied from
    /// MystenLabs/nautilus (Apache-2.0); see testdata/README.md.
    const WEATHER_HEX: &str = include_str!("testdata/nautilus_weather_attestation.hex");
    /// A clock at which all its certificates are valid (2025-04-15 02:26:47 UTC).
    const RECORDED_AT_MS: u64 = 1_744_684_007_462;
    /// 2026-11-22 00:00 UTC: the leaf has long expired.
    const LATER_MS: u64 = 1_795_305_600_000;
    const PK: &str = "e8e62201dbe293b703c759f653107acbc2c911fa1d2e66f2c747bec95971a2af";

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.trim()).expect("hex")
    }

    fn weather() -> Vec<u8> {
        unhex(WEATHER_HEX)
    }

    fn expected_from(doc: &AttestationDocument) -> (Vec<Vec<u8>>, Vec<u8>) {
        let pcrs = (0..3).map(|i| doc.pcr(i).expect("pcr").to_vec()).collect();
        (pcrs, unhex(PK))
    }

    /// Replaces the first occurrence of `from` by `to` (same length).
    fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern present");
        bytes[at..at + to.len()].copy_from_slice(to);
    }

    #[test]
    fn embedded_root_is_the_published_one() {
        let digest = Sha256::digest(AWS_NITRO_ROOT_G1_PEM.as_bytes());
        assert_eq!(
            hex::encode(digest),
            "6eb9688305e4bbca67f44b59c29a0661ae930f09b5945b5d1d9ae01125c8d6c0"
        );
        let der = root_der().expect("root parses");
        let (_, cert) = X509Certificate::from_der(&der).expect("root DER");
        assert_eq!(
            cert.subject().to_string(),
            "C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves"
        );
    }

    #[test]
    fn recorded_document_verifies_at_its_time() {
        let doc = verify_document(&weather(), RECORDED_AT_MS).expect("verifies");
        assert_eq!(doc.module_id, "i-06e4b98c6549ff803-enc0196373b195fb723");
        assert_eq!(doc.timestamp_ms, 1_744_683_923_696);
        assert_eq!(doc.pcrs.len(), 16);
        assert_eq!(doc.pcr(0), doc.pcr(1));
        assert!(hex::encode(doc.pcr(0).expect("pcr0")).starts_with("cbe1afb6"));
        assert!(hex::encode(doc.pcr(2).expect("pcr2")).starts_with("21b9efbc"));
        assert_eq!(doc.public_key.as_deref(), Some(unhex(PK).as_slice()));
        assert_eq!(doc.user_data, None);
        assert_eq!(doc.nonce, None);

        let (pcrs, pk) = expected_from(&doc);
        let expected = Expected {
            pcrs: [&pcrs[0], &pcrs[1], &pcrs[2]],
            public_key: &pk,
        };
        assert_eq!(
            verify_enclave(&weather(), RECORDED_AT_MS, &expected),
            Ok(doc)
        );
    }

    #[test]
    fn recorded_document_is_expired_now() {
        let err = verify_document(&weather(), LATER_MS).expect_err("expired");
        assert!(
            matches!(
                err,
                DocumentError::CertificateNotValid {
                    position: 0,
                    now_ms: LATER_MS,
                    ..
                }
            ),
            "{err}"
        );
        // And not yet valid long before.
        let err = verify_document(&weather(), 1_600_000_000_000).expect_err("not yet valid");
        assert!(
            matches!(err, DocumentError::CertificateNotValid { .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_pcr_or_key_is_refused() {
        let doc = verify_document(&weather(), RECORDED_AT_MS).expect("verifies");
        let (mut pcrs, pk) = expected_from(&doc);
        pcrs[2][47] ^= 1;
        let expected = Expected {
            pcrs: [&pcrs[0], &pcrs[1], &pcrs[2]],
            public_key: &pk,
        };
        let err = verify_enclave(&weather(), RECORDED_AT_MS, &expected).expect_err("pcr");
        assert!(
            matches!(err, DocumentError::PcrMismatch { index: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("PCR2 is \"21b9efbc"), "{err}");

        let (pcrs, mut pk) = expected_from(&doc);
        pk[0] ^= 1;
        let expected = Expected {
            pcrs: [&pcrs[0], &pcrs[1], &pcrs[2]],
            public_key: &pk,
        };
        let err = verify_enclave(&weather(), RECORDED_AT_MS, &expected).expect_err("pk");
        assert!(
            matches!(err, DocumentError::PublicKeyMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn modified_pcr_in_the_document_breaks_the_signature() {
        let mut bytes = weather();
        let doc = verify_document(&bytes, RECORDED_AT_MS).expect("verifies");
        let pcr2 = doc.pcr(2).expect("pcr2").to_vec();
        let mut changed = pcr2.clone();
        changed[0] ^= 1;
        patch(&mut bytes, &pcr2, &changed);
        assert_eq!(
            verify_document(&bytes, RECORDED_AT_MS),
            Err(DocumentError::BadSignature)
        );
    }

    #[test]
    fn flipped_signature_byte_is_refused() {
        let mut bytes = weather();
        // The signature is the last item: the final 96 bytes.
        let last = bytes.len() - 10;
        bytes[last] ^= 0x01;
        assert_eq!(
            verify_document(&bytes, RECORDED_AT_MS),
            Err(DocumentError::BadSignature)
        );
    }

    #[test]
    fn tampered_certificates_are_refused() {
        let bytes = weather();
        let cose = CoseSign1::parse(&bytes).expect("cose");
        let payload = Payload::parse(&cose.payload).expect("payload");

        // A cabundle without the AWS root.
        let err = verify_chain(&payload.certificate, &payload.cabundle[1..], RECORDED_AT_MS)
            .expect_err("no root");
        assert!(matches!(err, DocumentError::BadChain(_)), "{err}");

        // A missing intermediate breaks a link.
        let mut short = payload.cabundle.clone();
        short.remove(2);
        let err = verify_chain(&payload.certificate, &short, RECORDED_AT_MS).expect_err("gap");
        assert_eq!(
            err,
            DocumentError::BadChain("certificate 1 is not issued by certificate 2".to_owned())
        );

        // One flipped bit in the leaf's signed part.
        let mut leaf = payload.certificate.clone();
        let at = leaf.len() / 2;
        leaf[at] ^= 0x01;
        assert_eq!(
            verify_chain(&leaf, &payload.cabundle, RECORDED_AT_MS).err(),
            Some(DocumentError::BadChain(
                "certificate 0 signature does not verify".to_owned()
            ))
        );
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bytes in [&[][..], &[0x80][..], &[0xa0][..], &[0xd2, 0x80][..]] {
            let err = verify_document(bytes, RECORDED_AT_MS).expect_err("malformed");
            assert!(
                matches!(err, DocumentError::Malformed(_)),
                "{bytes:?}: {err}"
            );
        }
        // Truncated.
        let bytes = weather();
        let err = verify_document(&bytes[..bytes.len() - 1], RECORDED_AT_MS).expect_err("short");
        assert!(matches!(err, DocumentError::Malformed(_)), "{err}");
        // Another algorithm in the protected header ({1: -7}, ES256).
        let mut bytes = weather();
        patch(
            &mut bytes,
            &[0xa1, 0x01, 0x38, 0x22],
            &[0xa1, 0x01, 0x26, 0x40],
        );
        let err = verify_document(&bytes, RECORDED_AT_MS).expect_err("alg");
        assert!(matches!(err, DocumentError::Malformed(_)), "{err}");
    }
}
