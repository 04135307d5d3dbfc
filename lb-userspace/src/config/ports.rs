//! Deterministic per-chain ports: every node of one chain derives the same
//! p2p, rpc and gRPC ports from the chain id alone, so a service can say
//! `port: { from_chain_id: "<id>", kind: grpc }` instead of a number
//! (the scheme `LoadBalancer` peer discovery uses).
//!
//! `port = base + (first 8 bytes of SHA-256(chain id), big-endian) mod 1000`
//! with base 30100 (p2p), 30200 (rpc) or 30300 (grpc).

use std::fmt;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Which of a chain's derived ports (`discovery.port.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainPortKind {
    /// Peer-to-peer, base 30100.
    P2p,
    /// JSON/HTTP RPC, base 30200.
    Rpc,
    /// gRPC, base 30300.
    Grpc,
}

crate::config::config_words!(pub ChainPortKind, "chain port kind", {
    P2p => "p2p",
    Rpc => "rpc",
    Grpc => "grpc",
});

impl ChainPortKind {
    /// The lowest port of this kind; derived ports lie in `base..base + 1000`.
    pub const fn base(self) -> u16 {
        match self {
            Self::P2p => 30100,
            Self::Rpc => 30200,
            Self::Grpc => 30300,
        }
    }
}

/// How many ports each kind spreads over.
const SPREAD: u64 = 1000;

/// The port of `kind` for the chain `chain_id` (hashed as UTF-8 bytes, as
/// written).
pub fn chain_port(chain_id: &str, kind: ChainPortKind) -> u16 {
    let digest = Sha256::digest(chain_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let offset = u64::from_be_bytes(first) % SPREAD;
    // `offset` < 1000, so the sum stays below 31300.
    kind.base() + u16::try_from(offset).unwrap_or_default()
}

impl fmt::Debug for ChainPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.port())
    }
}

/// A port derived from a chain id (`discovery.port: { from_chain_id, kind }`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChainPort {
    /// The chain id as written (`from_chain_id`).
    #[serde(rename = "from_chain_id")]
    pub chain_id: String,
    /// Which port (`kind`).
    pub kind: ChainPortKind,
}

impl ChainPort {
    /// The derived port number.
    pub fn port(&self) -> u16 {
        chain_port(&self.chain_id, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with
    // python3 -c 'import hashlib,sys; v=int.from_bytes(hashlib.sha256(sys.argv[1].encode()).digest()[:8],"big"); print(v, v%1000)' <id>
    #[test]
    fn ports_match_independently_computed_values() {
        // sha256("35834a8a")[..8] = 4950062201627608857, mod 1000 = 857
        assert_eq!(chain_port("35834a8a", ChainPortKind::P2p), 30957);
        assert_eq!(chain_port("35834a8a", ChainPortKind::Rpc), 31057);
        assert_eq!(chain_port("35834a8a", ChainPortKind::Grpc), 31157);
        // 13068684146873831104 mod 1000 = 104
        assert_eq!(chain_port("4c78adac", ChainPortKind::P2p), 30204);
        assert_eq!(chain_port("4c78adac", ChainPortKind::Rpc), 30304);
        assert_eq!(chain_port("4c78adac", ChainPortKind::Grpc), 30404);
        // 6345003304138321568 mod 1000 = 568
        assert_eq!(chain_port("sui-mainnet", ChainPortKind::Grpc), 30868);
        // 4236666687999861571 mod 1000 = 571
        assert_eq!(
            chain_port(
                "4btiuiMPvEENsttpZC7CZ53DruC3MAgfznDbASZ7DR6S",
                ChainPortKind::P2p
            ),
            30671
        );
    }

    #[test]
    fn ports_stay_in_their_kind_s_range() {
        for id in ["a", "b", "testnet", "localnet-1", "0xff"] {
            for kind in [ChainPortKind::P2p, ChainPortKind::Rpc, ChainPortKind::Grpc] {
                let port = chain_port(id, kind);
                assert!(
                    (kind.base()..kind.base() + 1000).contains(&port),
                    "{id} {kind}: {port}"
                );
            }
        }
    }

    #[test]
    fn kinds_parse_from_their_words() {
        assert_eq!("grpc".parse::<ChainPortKind>(), Ok(ChainPortKind::Grpc));
        let error = "http".parse::<ChainPortKind>().unwrap_err();
        assert!(error.contains("p2p, rpc or grpc"), "{error}");
        let port = ChainPort {
            chain_id: "35834a8a".to_owned(),
            kind: ChainPortKind::Rpc,
        };
        assert_eq!(port.port(), 31057);
        assert_eq!(format!("{port:?}"), "rpc:31057");
    }
}
