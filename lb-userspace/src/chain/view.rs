//! What discovery knows about the registry: the nodes by key and whether
//! the view is current.

use std::collections::BTreeMap;

use sui_sdk_types::Address;

use super::registry::{Node, RegistryEvent};

/// The registry as last read from the chain (published on a watch channel
/// by [`super::discovery::Discovery`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryView {
    /// The registered nodes by node address (all of them: the stake filter
    /// is applied by the consumer).
    pub nodes: BTreeMap<Address, Node>,
    /// Whether `nodes` was read from the chain (a full sync succeeded); false
    /// until then, and `nodes` is empty.
    pub synced: bool,
    /// The last error talking to the full node, cleared by the next success.
    pub last_error: Option<String>,
}

impl RegistryView {
    /// Applies one registry event: registered and updated insert or replace
    /// the node, removed deletes it (a no-op when absent). Returns whether
    /// `nodes` changed.
    pub fn apply(&mut self, event: &RegistryEvent) -> bool {
        match event {
            RegistryEvent::Registered { node, info } | RegistryEvent::Updated { node, info } => {
                self.nodes.insert(*node, info.clone()).as_ref() != Some(info)
            }
            RegistryEvent::Removed { node } => self.nodes.remove(node).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(byte: u8) -> Address {
        Address::new([byte; Address::LENGTH])
    }

    fn node(stake: u64) -> Node {
        Node {
            operator: address(9),
            endpoint: "node.example".to_owned(),
            stake,
            sui_rpc: String::new(),
            nautilus_url: String::new(),
            enclave_id: Address::ZERO,
        }
    }

    #[test]
    fn apply_registers_updates_and_removes() {
        let mut view = RegistryView::default();
        assert!(view.apply(&RegistryEvent::Registered {
            node: address(1),
            info: node(5)
        }));
        assert!(view.apply(&RegistryEvent::Registered {
            node: address(2),
            info: node(6)
        }));
        assert_eq!(view.nodes.len(), 2);
        // The same value again changes nothing.
        assert!(!view.apply(&RegistryEvent::Updated {
            node: address(1),
            info: node(5)
        }));
        assert!(view.apply(&RegistryEvent::Updated {
            node: address(1),
            info: node(50)
        }));
        assert_eq!(view.nodes[&address(1)].stake, 50);
        assert!(view.apply(&RegistryEvent::Removed { node: address(2) }));
        assert!(!view.apply(&RegistryEvent::Removed { node: address(2) }));
        assert_eq!(view.nodes.keys().copied().collect::<Vec<_>>(), [address(1)]);
        // An update of an unknown node inserts it (a missed register).
        assert!(view.apply(&RegistryEvent::Updated {
            node: address(3),
            info: node(7)
        }));
        assert_eq!(view.nodes.len(), 2);
        // apply leaves the bookkeeping fields alone.
        assert_eq!((view.synced, view.last_error), (false, None));
    }
}
