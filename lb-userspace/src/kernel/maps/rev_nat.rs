//! The `rev_nat` map: (socket cookie, backend address) → the VIP the
//! socket connected through. The kernel writes it; the controller reads it
//! to tell connections through a VIP from direct ones.

use aya::maps::{HashMap, MapData};
use lb_common::{RevNatKey, RevNatValue};

/// The `rev_nat` map.
pub struct RevNat(pub(super) HashMap<MapData, RevNatKey, RevNatValue>);

impl RevNat {
    /// The VIP a socket was connected through, if the kernel recorded one.
    pub fn get(&self, key: &RevNatKey) -> Option<RevNatValue> {
        self.0.get(key, 0).ok()
    }
}
