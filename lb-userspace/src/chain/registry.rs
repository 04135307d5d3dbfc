//! Rust mirrors of the on-chain registry's Move types (module
//! `<package>::<module>`, see docs/registry.md) and the decoding of its
//! events.
//!
//! Every struct here has the same field order as its Move definition, so
//! serde's BCS encoding of the mirror is the Move value's BCS encoding: an
//! `address` (and a `UID`) is 32 raw bytes, a `String` a ULEB128 length and
//! UTF-8 bytes, a `u64` eight little-endian bytes.
//!
//! Events are matched on their parsed type (defining package, module, struct
//! name), never on the raw string nor on `Event.package_id` (the package of
//! the call that emitted it): an event of another package or module with the
//! same struct name is not ours.

use std::fmt;

use serde::{Deserialize, Serialize};
use sui_sdk_types::{Address, StructTag};

use crate::config::RegistrySettings;

/// `Node`: one registered node, the value type of the registry's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The operator's account.
    pub operator: Address,
    /// Where the node serves: `host` or `host:port` (host an IP literal or a
    /// DNS name).
    pub endpoint: String,
    /// The stake in MIST (1 SUI = 10^9 MIST).
    pub stake: u64,
    /// The URL of the node's own Sui full node (gRPC), `""` if none.
    pub sui_rpc: String,
    /// The node's Nautilus enclave URL, `""` if none.
    pub nautilus_url: String,
    /// The node's `Enclave` object, `0x0` if none.
    pub enclave_id: Address,
}

/// Event `NodeRegistered { node, info }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistered {
    /// The node's key in the table.
    pub node: Address,
    /// The node as registered.
    pub info: Node,
}

/// Event `NodeUpdated { node, info }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdated {
    /// The node's key in the table.
    pub node: Address,
    /// The node after the update.
    pub info: Node,
}

/// Event `NodeRemoved { node }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemoved {
    /// The node's key in the table.
    pub node: Address,
}

/// `sui::object::UID` (a wrapped `ID`, itself a wrapped address): 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uid(pub Address);

/// `sui::table::Table<K, V> { id: UID, size: u64 }`: the entries are dynamic
/// fields of `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The parent of the entries (the `parent` of `ListDynamicFields`).
    pub id: Uid,
    /// The number of entries.
    pub size: u64,
}

/// The shared `Registry { id: UID, nodes: Table<address, Node> }` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// The object's ID.
    pub id: Uid,
    /// The nodes, keyed by node address.
    pub nodes: Table,
}

/// `sui::dynamic_field::Field<K, V> { id: UID, name: K, value: V }`: one
/// table entry as an object (the entries of `Table<address, Node>` are
/// `Field<address, Node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field<K, V> {
    /// The field object's ID.
    pub id: Uid,
    /// The key.
    pub name: K,
    /// The value.
    pub value: V,
}

/// Where the registry lives: the package defining the types, the module,
/// and the shared `Registry` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// The package that defines the registry's types (after upgrades: the
    /// package ID that first introduced them).
    pub package: Address,
    /// The module name, e.g. `registry`.
    pub module: String,
    /// The shared `Registry` object.
    pub object: Address,
}

impl RegistryRef {
    /// The full-length type string of one of the module's structs, as a
    /// full node prints it: `0x<64 hex>::<module>::<name>`.
    pub fn type_string(&self, name: &str) -> String {
        format!("{}::{}::{name}", self.package, self.module)
    }

    /// Whether `tag` is the module's struct `name` (no type parameters).
    pub fn is_ours(&self, tag: &StructTag, name: &str) -> bool {
        *tag.address() == self.package
            && tag.module().as_str() == self.module
            && tag.name().as_str() == name
            && tag.type_params().is_empty()
    }
}

impl From<&RegistrySettings> for RegistryRef {
    fn from(settings: &RegistrySettings) -> Self {
        Self {
            package: settings.package,
            module: settings.module.clone(),
            object: settings.object,
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}::{} (object {})",
            self.package, self.module, self.object
        )
    }
}

/// One registry change, decoded from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// `NodeRegistered`.
    Registered {
        /// The node's key.
        node: Address,
        /// The node.
        info: Node,
    },
    /// `NodeUpdated`.
    Updated {
        /// The node's key.
        node: Address,
        /// The node after the update.
        info: Node,
    },
    /// `NodeRemoved`.
    Removed {
        /// The node's key.
        node: Address,
    },
}

impl RegistryEvent {
    /// The event's kind as a metric label: `registered`, `updated` or
    /// `removed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "registered",
            Self::Updated { .. } => "updated",
            Self::Removed { .. } => "removed",
        }
    }

    /// The node the event is about.
    pub fn node(&self) -> Address {
        match self {
            Self::Registered { node, .. } | Self::Updated { node, .. } | Self::Removed { node } => {
                *node
            }
        }
    }
}

/// The struct names of the registry's events.
const REGISTERED: &str = "NodeRegistered";
const UPDATED: &str = "NodeUpdated";
const REMOVED: &str = "NodeRemoved";

/// The registry's event struct names, in the order of their kinds.
pub const EVENT_NAMES: [&str; 3] = [REGISTERED, UPDATED, REMOVED];

/// Decodes one event: `Ok(None)` when its parsed type is not one of the
/// registry's events (another package, another module, another struct, or
/// a type string that does not parse); `Err(reason)` when it is ours but its
/// BCS contents do not decode exactly (malformed, truncated or trailing
/// bytes).
pub fn classify(
    event_type: &str,
    contents: &[u8],
    registry: &RegistryRef,
) -> Result<Option<RegistryEvent>, String> {
    let Ok(tag) = event_type.parse::<StructTag>() else {
        return Ok(None);
    };
    let decoded = if registry.is_ours(&tag, REGISTERED) {
        bcs::from_bytes::<NodeRegistered>(contents).map(|e| RegistryEvent::Registered {
            node: e.node,
            info: e.info,
        })
    } else if registry.is_ours(&tag, UPDATED) {
        bcs::from_bytes::<NodeUpdated>(contents).map(|e| RegistryEvent::Updated {
            node: e.node,
            info: e.info,
        })
    } else if registry.is_ours(&tag, REMOVED) {
        bcs::from_bytes::<NodeRemoved>(contents).map(|e| RegistryEvent::Removed { node: e.node })
    } else {
        return Ok(None);
    };
    decoded.map(Some).map_err(|e| {
        format!(
            "{}: malformed BCS ({} bytes): {e}",
            tag.name(),
            contents.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(byte: u8) -> Address {
        let mut bytes = [0; Address::LENGTH];
        bytes[0] = 0xa0;
        bytes[Address::LENGTH - 1] = byte;
        Address::new(bytes)
    }

    fn registry() -> RegistryRef {
        RegistryRef {
            package: address(1),
            module: "registry".to_owned(),
            object: address(2),
        }
    }

    fn node(stake: u64) -> Node {
        Node {
            operator: address(9),
            endpoint: "10.0.0.1:6443".to_owned(),
            stake,
            sui_rpc: "http://10.0.0.1:9000".to_owned(),
            nautilus_url: String::new(),
            enclave_id: Address::ZERO,
        }
    }

    #[test]
    fn type_strings_are_full_length() {
        let t = registry().type_string("NodeRegistered");
        let (addr, rest) = t.split_once("::").unwrap();
        assert_eq!(addr.len(), 2 + 64);
        assert_eq!(rest, "registry::NodeRegistered");
    }

    #[test]
    fn node_bcs_layout_matches_move() {
        let n = node(1_000_000_000);
        let bytes = bcs::to_bytes(&n).unwrap();
        let mut expected = address(9).as_bytes().to_vec();
        expected.push(13);
        expected.extend_from_slice(b"10.0.0.1:6443");
        expected.extend_from_slice(&1_000_000_000u64.to_le_bytes());
        expected.push(20);
        expected.extend_from_slice(b"http://10.0.0.1:9000");
        expected.push(0);
        expected.extend_from_slice(&[0; 32]);
        assert_eq!(bytes, expected);
        assert_eq!(bcs::from_bytes::<Node>(&bytes).unwrap(), n);
    }

    #[test]
    fn registry_and_field_round_trip() {
        let reg = Registry {
            id: Uid(address(2)),
            nodes: Table {
                id: Uid(address(3)),
                size: 7,
            },
        };
        let bytes = bcs::to_bytes(&reg).unwrap();
        assert_eq!(bytes.len(), 32 + 32 + 8);
        assert_eq!(bcs::from_bytes::<Registry>(&bytes).unwrap(), reg);
        let field = Field {
            id: Uid(address(4)),
            name: address(5),
            value: node(3),
        };
        let bytes = bcs::to_bytes(&field).unwrap();
        assert_eq!(
            bcs::from_bytes::<Field<Address, Node>>(&bytes).unwrap(),
            field
        );
    }

    #[test]
    fn classify_round_trips_our_events() {
        let reg = registry();
        let registered = NodeRegistered {
            node: address(5),
            info: node(10),
        };
        let updated = NodeUpdated {
            node: address(5),
            info: node(20),
        };
        let removed = NodeRemoved { node: address(5) };
        assert_eq!(
            classify(
                &reg.type_string("NodeRegistered"),
                &bcs::to_bytes(&registered).unwrap(),
                &reg
            ),
            Ok(Some(RegistryEvent::Registered {
                node: address(5),
                info: node(10)
            }))
        );
        let e = classify(
            &reg.type_string("NodeUpdated"),
            &bcs::to_bytes(&updated).unwrap(),
            &reg,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            e,
            RegistryEvent::Updated {
                node: address(5),
                info: node(20)
            }
        );
        assert_eq!(e.kind(), "updated");
        let e = classify(
            &reg.type_string("NodeRemoved"),
            &bcs::to_bytes(&removed).unwrap(),
            &reg,
        )
        .unwrap()
        .unwrap();
        assert_eq!(e, RegistryEvent::Removed { node: address(5) });
        assert_eq!((e.kind(), e.node()), ("removed", address(5)));
    }

    #[test]
    fn short_address_forms_are_the_same_type() {
        // The package 0x…01 with a leading a0 byte cannot be shortened, so
        // use a package that can: 0x2.
        let reg = RegistryRef {
            package: Address::TWO,
            ..registry()
        };
        let bytes = bcs::to_bytes(&NodeRemoved { node: address(5) }).unwrap();
        assert!(matches!(
            classify("0x2::registry::NodeRemoved", &bytes, &reg),
            Ok(Some(RegistryEvent::Removed { .. }))
        ));
    }

    #[test]
    fn other_package_module_or_struct_is_ignored() {
        let reg = registry();
        let bytes = bcs::to_bytes(&NodeRemoved { node: address(5) }).unwrap();
        let other_package = RegistryRef {
            package: address(7),
            ..registry()
        };
        let other_module = RegistryRef {
            module: "registry2".to_owned(),
            ..registry()
        };
        for event_type in [
            other_package.type_string("NodeRemoved"),
            other_module.type_string("NodeRemoved"),
            reg.type_string("NodeRemovedLater"),
            reg.type_string("Registry"),
            format!("{}<u64>", reg.type_string("NodeRemoved")),
            "not a type".to_owned(),
            String::new(),
        ] {
            assert_eq!(
                classify(&event_type, &bytes, &reg),
                Ok(None),
                "{event_type}"
            );
        }
        // Even with contents that are not valid for our types.
        assert_eq!(
            classify(&other_package.type_string("NodeRegistered"), &[1], &reg),
            Ok(None)
        );
    }

    #[test]
    fn malformed_or_trailing_bcs_is_an_error() {
        let reg = registry();
        let good = bcs::to_bytes(&NodeRegistered {
            node: address(5),
            info: node(10),
        })
        .unwrap();
        let t = reg.type_string("NodeRegistered");
        let truncated = classify(&t, &good[..good.len() - 1], &reg).unwrap_err();
        assert!(
            truncated.contains("NodeRegistered: malformed BCS"),
            "{truncated}"
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(classify(&t, &trailing, &reg).is_err());
        assert!(classify(&t, &[], &reg).is_err());
        // A string length pointing past the end.
        let mut bad = address(5).as_bytes().to_vec();
        bad.extend_from_slice(address(9).as_bytes());
        bad.push(200);
        assert!(classify(&t, &bad, &reg).is_err());
        // Invalid UTF-8 in the endpoint.
        let mut bad_utf8 = address(5).as_bytes().to_vec();
        bad_utf8.extend_from_slice(address(9).as_bytes());
        bad_utf8.extend_from_slice(&[1, 0xff]);
        bad_utf8.extend_from_slice(&good[64 + 1 + 13..]);
        assert!(classify(&t, &bad_utf8, &reg).is_err());
        let removed = bcs::to_bytes(&NodeRemoved { node: address(5) }).unwrap();
        assert!(classify(&reg.type_string("NodeRemoved"), &removed[..31], &reg).is_err());
    }
}
