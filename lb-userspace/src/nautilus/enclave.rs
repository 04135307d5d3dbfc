//! Rust mirrors of Nautilus's on-chain objects (module `enclave::enclave`)
//! and reading them over gRPC.
//!
//! `Enclave<T>` holds a registered enclave's Ed25519 key and the
//! `EnclaveConfig<T>` version it was registered under; `EnclaveConfig<T>`
//! holds the expected PCRs and its current version. An enclave is current
//! iff both versions are equal (a PCR update bumps the config's version and
//! leaves older enclaves destroyable). The phantom `T` (the app's witness)
//! is not part of the BCS encoding.
//!
//! BCS layouts (fields in Move order), as `Object.contents` carries them:
//! - `Enclave<T>`: `id: 32 bytes | pk: ULEB len + bytes | config_version: u64 LE | owner: 32 bytes`
//! - `EnclaveConfig<T>`: `id: 32 | name: ULEB + UTF-8 | pcr0, pcr1, pcr2: ULEB + bytes each |
//!   capability_id: 32 | version: u64 LE`

use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sui_rpc::{
    Client,
    field::{FieldMask, FieldMaskUtil as _},
    proto::sui::rpc::v2 as proto,
};
use sui_sdk_types::{Address, StructTag};

use super::attestation::Rejection;
use crate::chain::registry::Uid;

/// `Enclave<T>`: a registered enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enclave {
    /// The object's ID.
    pub id: Uid,
    /// The enclave's Ed25519 public key (32 bytes).
    pub pk: Vec<u8>,
    /// The `EnclaveConfig` version it was registered under.
    pub config_version: u64,
    /// Who registered it.
    pub owner: Address,
}

/// `Pcrs(pcr0, pcr1, pcr2)`: SHA-384 measurements, 48 bytes each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pcrs(pub Vec<u8>, pub Vec<u8>, pub Vec<u8>);

/// `EnclaveConfig<T>`: what enclaves of one app must measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveConfig {
    /// The object's ID.
    pub id: Uid,
    /// A display name.
    pub name: String,
    /// The expected PCR0..2.
    pub pcrs: Pcrs,
    /// The `Cap<T>` allowed to update the PCRs.
    pub capability_id: Address,
    /// Bumped by every PCR update.
    pub version: u64,
}

impl Enclave {
    /// Whether the enclave was registered under `config`'s current version.
    pub fn is_current(&self, config: &EnclaveConfig) -> bool {
        self.config_version == config.version
    }

    /// The enclave's key if it is current under `config` and 32 bytes long.
    pub fn current_key(&self, config: &EnclaveConfig) -> Result<[u8; 32], Rejection> {
        if !self.is_current(config) {
            return Err(Rejection::NotCurrent {
                enclave_version: self.config_version,
                config_version: config.version,
            });
        }
        self.pk.as_slice().try_into().map_err(|_| {
            Rejection::Malformed(format!(
                "Enclave {} has a {}-byte key, expected 32",
                self.id.0,
                self.pk.len()
            ))
        })
    }
}

/// Reads the `Enclave<T>` object `id` (type checked: module `enclave`, struct
/// `Enclave`).
pub async fn fetch_enclave(
    client: &mut Client,
    id: Address,
    timeout: Duration,
) -> Result<Enclave, Rejection> {
    fetch_object(client, id, "Enclave", timeout)
        .await
        .map(|(value, _)| value)
}

/// Reads the `EnclaveConfig<T>` object `id` (type checked: module `enclave`,
/// struct `EnclaveConfig`).
pub async fn fetch_config(
    client: &mut Client,
    id: Address,
    timeout: Duration,
) -> Result<EnclaveConfig, Rejection> {
    fetch_object(client, id, "EnclaveConfig", timeout)
        .await
        .map(|(value, _)| value)
}

/// An enclave whose key may be trusted: current under the trusted config,
/// and of the same app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedEnclave {
    /// The node's `Enclave<T>`.
    pub enclave: Enclave,
    /// The trusted `EnclaveConfig<T>`.
    pub config: EnclaveConfig,
    /// `enclave.pk`.
    pub key: [u8; 32],
}

/// Reads the node's `Enclave<T>` (`enclave_id`) and the trusted
/// `EnclaveConfig<T>` (`config_id`) and checks that the enclave is of the
/// config's app (same defining package, same `T`) and current under it.
pub async fn fetch_trusted(
    client: &mut Client,
    enclave_id: Address,
    config_id: Address,
    timeout: Duration,
) -> Result<TrustedEnclave, Rejection> {
    let mut other = client.clone();
    let (config, enclave) = tokio::join!(
        fetch_object::<EnclaveConfig>(client, config_id, "EnclaveConfig", timeout),
        fetch_object::<Enclave>(&mut other, enclave_id, "Enclave", timeout),
    );
    let ((config, config_type), (enclave, enclave_type)) = (config?, enclave?);
    if enclave_type.address() != config_type.address()
        || enclave_type.type_params() != config_type.type_params()
    {
        return Err(Rejection::WrongApp {
            enclave: enclave_type.to_string(),
            config: config_type.to_string(),
        });
    }
    let key = enclave.current_key(&config)?;
    Ok(TrustedEnclave {
        enclave,
        config,
        key,
    })
}

/// `GetObject(id)` with read mask `object_type,contents`, then the type check
/// and the BCS decoding of the contents (trailing bytes rejected). Returns
/// the value and its full type.
async fn fetch_object<T: DeserializeOwned>(
    client: &mut Client,
    id: Address,
    name: &str,
    timeout: Duration,
) -> Result<(T, StructTag), Rejection> {
    let request = proto::GetObjectRequest::new(&id)
        .with_read_mask(FieldMask::from_paths(["object_type", "contents"]));
    let object = tokio::time::timeout(timeout, client.ledger_client().get_object(request))
        .await
        .map_err(|_| Rejection::Unreachable(format!("GetObject({id}): no answer in {timeout:?}")))?
        .map_err(|status| {
            if status.code() == tonic::Code::NotFound {
                Rejection::NoEnclave(format!("no {name} object {id} on chain"))
            } else {
                Rejection::Unreachable(format!(
                    "GetObject({id}): {:?}: {}",
                    status.code(),
                    status.message()
                ))
            }
        })?
        .into_inner()
        .object
        .ok_or_else(|| Rejection::Malformed(format!("GetObject({id}): no object")))?;
    let object_type = object.object_type.as_deref().unwrap_or_default();
    let tag = object_type
        .parse::<StructTag>()
        .ok()
        .filter(|tag| tag.module().as_str() == "enclave" && tag.name().as_str() == name)
        .ok_or_else(|| {
            Rejection::Malformed(format!(
                "object {id} has type {object_type:?}, expected <package>::enclave::{name}<…>"
            ))
        })?;
    let contents = object
        .contents
        .as_ref()
        .and_then(|c| c.value.as_deref())
        .ok_or_else(|| Rejection::Malformed(format!("GetObject({id}): no contents")))?;
    let value = bcs::from_bytes(contents)
        .map_err(|e| Rejection::Malformed(format!("object {id} ({name}): bad BCS: {e}")))?;
    Ok((value, tag))
}

/// The full type of an `Enclave<T>` whose `enclave` module is in `package`:
/// `0x<package>::enclave::Enclave<T>` with `T` = `app` (`module::OTW`, e.g.
/// `perf::PERF`, taken to be in `package` too; or a fully qualified
/// `0x…::module::OTW` when the app lives in another package, as Nautilus
/// apps do). What [`fetch_enclave`] accepts.
#[must_use]
pub fn enclave_type(package: Address, app: &str) -> String {
    enclave_module_type(package, "Enclave", app)
}

/// The full type of an `EnclaveConfig<T>`:
/// `0x<package>::enclave::EnclaveConfig<T>`, `app` as in [`enclave_type`].
/// What [`fetch_config`] accepts.
#[must_use]
pub fn enclave_config_type(package: Address, app: &str) -> String {
    enclave_module_type(package, "EnclaveConfig", app)
}

fn enclave_module_type(package: Address, name: &str, app: &str) -> String {
    if app.starts_with("0x") {
        format!("{package}::enclave::{name}<{app}>")
    } else {
        format!("{package}::enclave::{name}<{package}::{app}>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::fake_node::FakeChain;

    fn address(byte: u8) -> Address {
        let mut bytes = [0; Address::LENGTH];
        bytes[0] = 0x80;
        bytes[Address::LENGTH - 1] = byte;
        Address::new(bytes)
    }

    fn enclave(config_version: u64) -> Enclave {
        Enclave {
            id: Uid(address(1)),
            pk: vec![7; 32],
            config_version,
            owner: address(2),
        }
    }

    fn config(version: u64) -> EnclaveConfig {
        EnclaveConfig {
            id: Uid(address(3)),
            name: "perf".to_owned(),
            pcrs: Pcrs(vec![0xa0; 48], vec![0xa1; 48], vec![0xa2; 48]),
            capability_id: address(4),
            version,
        }
    }

    #[test]
    fn type_strings_are_struct_tags() {
        let package = address(0xee);
        let pkg = format!("0x80{}ee", "0".repeat(60));
        assert_eq!(package.to_string(), pkg);
        assert_eq!(
            enclave_type(package, "perf::PERF"),
            format!("{pkg}::enclave::Enclave<{pkg}::perf::PERF>")
        );
        assert_eq!(
            enclave_config_type(package, "perf::PERF"),
            format!("{pkg}::enclave::EnclaveConfig<{pkg}::perf::PERF>")
        );
        let app = format!("{}::weather::WEATHER", address(0xef));
        assert_eq!(
            enclave_type(package, &app),
            format!("{pkg}::enclave::Enclave<{app}>")
        );
        for (ty, name) in [
            (enclave_type(package, "perf::PERF"), "Enclave"),
            (enclave_config_type(package, &app), "EnclaveConfig"),
        ] {
            let tag: StructTag = ty.parse().unwrap();
            assert_eq!(*tag.address(), package);
            assert_eq!(tag.module().as_str(), "enclave");
            assert_eq!(tag.name().as_str(), name);
            assert_eq!(tag.type_params().len(), 1);
            assert_eq!(tag.to_string(), ty);
        }
    }

    #[test]
    fn bcs_layouts_match_move() {
        let bytes = bcs::to_bytes(&enclave(5)).unwrap();
        let mut want = address(1).as_bytes().to_vec();
        want.push(32);
        want.extend([7; 32]);
        want.extend(5u64.to_le_bytes());
        want.extend(address(2).as_bytes());
        assert_eq!(bytes, want);
        assert_eq!(bcs::from_bytes::<Enclave>(&bytes).unwrap(), enclave(5));

        let bytes = bcs::to_bytes(&config(2)).unwrap();
        let mut want = address(3).as_bytes().to_vec();
        want.push(4);
        want.extend(b"perf");
        for b in [0xa0, 0xa1, 0xa2] {
            want.push(48);
            want.extend([b; 48]);
        }
        want.extend(address(4).as_bytes());
        want.extend(2u64.to_le_bytes());
        assert_eq!(bytes, want);
        assert_eq!(bcs::from_bytes::<EnclaveConfig>(&bytes).unwrap(), config(2));
    }

    #[test]
    fn current_only_at_the_configs_version() {
        assert!(enclave(2).is_current(&config(2)));
        assert_eq!(enclave(2).current_key(&config(2)), Ok([7; 32]));
        assert!(!enclave(1).is_current(&config(2)));
        let old = enclave(1).current_key(&config(2)).unwrap_err();
        assert_eq!(
            old,
            Rejection::NotCurrent {
                enclave_version: 1,
                config_version: 2
            }
        );
        assert_eq!(old.label(), "not_current");
        let mut short = enclave(2);
        short.pk.pop();
        assert_eq!(
            short.current_key(&config(2)).unwrap_err().label(),
            "malformed"
        );
    }

    #[tokio::test]
    async fn fetches_both_objects_from_the_chain() {
        let chain = FakeChain::start("test-chain").await.unwrap();
        // The app in another package, as Nautilus apps are.
        let app = format!("{}::perf::PERF", address(0xef));
        chain.put_object(
            address(1),
            enclave_type(address(0xee), &app),
            bcs::to_bytes(&enclave(3)).unwrap(),
        );
        chain.put_object(
            address(3),
            enclave_config_type(address(0xee), &app),
            bcs::to_bytes(&config(3)).unwrap(),
        );
        let mut client = Client::new(chain.url()).unwrap();
        let timeout = Duration::from_secs(5);
        let e = fetch_enclave(&mut client, address(1), timeout)
            .await
            .unwrap();
        let c = fetch_config(&mut client, address(3), timeout)
            .await
            .unwrap();
        assert_eq!(e, enclave(3));
        assert_eq!(c, config(3));
        assert!(e.is_current(&c));
        // Republished (a bump), with the app in the enclave's package.
        chain.put_object(
            address(1),
            enclave_type(address(0xee), "perf::PERF"),
            bcs::to_bytes(&enclave(4)).unwrap(),
        );
        chain.put_object(
            address(3),
            enclave_config_type(address(0xee), "perf::PERF"),
            bcs::to_bytes(&config(4)).unwrap(),
        );
        let e = fetch_enclave(&mut client, address(1), timeout)
            .await
            .unwrap();
        assert_eq!(e, enclave(4));
        assert!(
            e.is_current(
                &fetch_config(&mut client, address(3), timeout)
                    .await
                    .unwrap()
            )
        );

        // Wrong type: the config asked for as an enclave.
        let wrong = fetch_enclave(&mut client, address(3), timeout)
            .await
            .unwrap_err();
        assert_eq!(wrong.label(), "malformed");
        assert!(
            wrong.reason().contains("enclave::Enclave"),
            "{}",
            wrong.reason()
        );
        // Bad BCS (trailing byte).
        let mut bytes = bcs::to_bytes(&enclave(3)).unwrap();
        bytes.push(0);
        chain.put_object(address(5), enclave_type(address(0xee), &app), bytes);
        assert_eq!(
            fetch_enclave(&mut client, address(5), timeout)
                .await
                .unwrap_err()
                .label(),
            "malformed"
        );
        // Missing object, unavailable node, slow node.
        assert_eq!(
            fetch_enclave(&mut client, address(9), timeout)
                .await
                .unwrap_err()
                .label(),
            "no_enclave"
        );
        chain.set_unavailable(true);
        assert_eq!(
            fetch_config(&mut client, address(3), timeout)
                .await
                .unwrap_err()
                .label(),
            "unreachable"
        );
        chain.set_unavailable(false);
        chain.set_delay(Duration::from_secs(2));
        let slow = fetch_config(&mut client, address(3), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(slow.label(), "unreachable");
        assert!(slow.reason().contains("no answer"), "{}", slow.reason());
    }
}
