//! The backend table of `policy: spread`: weighted Maglev consistent hashing
//! (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016), rebuilt with minimal disruption.
//!
//! A pure module: no I/O, no clock, no randomness. [`build`] turns a set of
//! backends into a lookup table of `size` slots (`size` a prime) holding
//! backend ids; the kernel sends a flow whose hash is `h` to
//! `table[h % size]`.
//!
//! # Permutations
//!
//! Every backend prefers the slots in its own order, derived from its `key`
//! alone: `offset = h1(key) % size`, `skip = h2(key) % (size − 1) + 1`, and the
//! j-th slot it prefers is `(offset + j·skip) % size`. As `size` is prime and
//! `1 ≤ skip < size`, that order visits every slot exactly once.
//!
//! `h1` and `h2` are FNV-1a 64 over the key bytes, `h1` from the standard
//! offset basis `0xcbf2_9ce4_8422_2325` and `h2` from that basis with its
//! halves swapped, `0x8422_2325_cbf2_9ce4`; each result then goes through the
//! `fmix64` finalizer of `MurmurHash3`, because FNV-1a alone spreads a key's last
//! bytes poorly into the low bits that `% size` keeps. Both are implemented
//! here (not std's `DefaultHasher`, whose algorithm may change between Rust
//! versions), so a table depends only on its inputs: it is the same across
//! builds, machines and restarts. The `golden_*` tests pin it.
//!
//! # Weights: how many slots each backend owns
//!
//! Backends with weight 0 are drained: they own no slot. The others' slot
//! counts (their *quotas*) are apportioned by a divisor (highest-averages)
//! method: the slots are handed out one at a time, each to the backend with
//! the highest priority `w / d(c)`, where `c` is the number of slots it has
//! so far, `d(0) = 0` and `d(c) = c + ½` for `c ≥ 1`. That is Sainte-Laguë
//! (Webster) rounding — each count is `w_i / D` rounded to the nearest
//! integer for a common divisor `D ≈ Σw / size`, so backend `i` owns
//! `size · w_i / Σw` slots give or take about one — except that every backend
//! with a weight gets at least one slot (`d(0) = 0`; the size check leaves
//! room for that). Ties go to the backend whose key sorts first.
//!
//! A divisor method, unlike largest-remainder rounding, is *population
//! monotone*: removing, draining or lowering one backend never lowers
//! another backend's quota, and adding or raising one never raises another's.
//! That is what lets a rebuild move only the slots that must move (below).
//!
//! # Filling
//!
//! The order in which the apportionment hands out slots is also the fill
//! order: a weighted round robin. On each of its turns a backend takes the
//! next slot of its permutation that is still free (classic Maglev fills the
//! same way, with one turn per backend per round). A backend has exactly as
//! many turns as its quota, so every slot is filled and every count equals
//! its quota exactly.
//!
//! # Rebuilding from the previous table
//!
//! With `previous` (the table in the kernel, of the same size; one of another
//! size is ignored), each backend that still has a weight first keeps the
//! slots it owned there: all of them while they do not exceed its new quota,
//! otherwise the quota's worth that come first in its permutation. Slots of
//! removed or drained backends, the slots given up that way and slots holding
//! unknown ids are free; the backends below their quota take them in the same
//! weighted turn order (skipping the turns their kept slots used), each
//! walking its own permutation. Hence:
//!
//! - removing, draining or lowering backends moves only their slots (nobody
//!   else's quota drops, so everybody else keeps everything);
//! - adding or raising backends moves only what the new quotas take away
//!   from the others: adding one backend moves exactly its quota of slots.
//!
//! The result depends on the history: after rebuilds it generally differs
//! from a fresh build of the same backends (same counts, other slots). A
//! fresh build (`previous = None`) is classic Maglev, which moves more:
//! adding an 11th backend at 16381 slots changes the owner of 1.06× the
//! newcomer's quota, a 101st 2.26× (at 16381) or 1.60× (at 65537); with
//! `previous`, exactly 1× (`adding_a_backend_moves_only_its_share`).
//!
//! # Order
//!
//! Backends are sorted by `key` (bytewise) internally, so the order of the
//! `backends` slice does not matter; ids are only the values written into
//! the slots.
//!
//! # Cost
//!
//! The apportionment is `size` heap operations over the weighted backends;
//! the fill walks the permutations as classic Maglev does. 1,000 backends at
//! 65537 slots build in about 7 ms in a release build, with or without
//! `previous`.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap},
    fmt,
};

use lb_common::NO_BACKEND;

use crate::config::ServiceConfig;
pub use crate::config::is_prime;

/// The default table size (a prime; `maglev_table_size`'s default).
pub const DEFAULT_TABLE_SIZE: u32 = ServiceConfig::DEFAULT_MAGLEV_TABLE_SIZE;
/// The largest table size allowed (a prime).
pub const MAX_TABLE_SIZE: u32 = ServiceConfig::MAX_MAGLEV_TABLE_SIZE;

/// FNV-1a 64's standard offset basis: the seed of `h1` (the offset).
const H1_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// The standard offset basis with its halves swapped: the seed of `h2` (the skip).
const H2_BASIS: u64 = 0x8422_2325_cbf2_9ce4;
/// FNV-1a 64's prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Marks a slot nobody owns yet while filling.
const FREE: u32 = u32::MAX;

/// One backend in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// The id written into the slots it owns (never [`NO_BACKEND`]).
    pub id: u32,
    /// Stable key hashed for its permutation, e.g. the "ip:port" string bytes.
    pub key: Vec<u8>,
    /// Relative weight; 0 drains it (it owns no slot).
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not a prime.
    NotPrime {
        /// The size asked for.
        size: u32,
    },
    /// The size is above [`MAX_TABLE_SIZE`].
    TooLarge {
        /// The size asked for.
        size: u32,
    },
    /// Fewer slots than backends with a weight.
    TooSmall {
        /// The size asked for.
        size: u32,
        /// Backends with a weight above 0.
        backends: usize,
    },
    /// A backend uses the id [`NO_BACKEND`].
    ReservedId {
        /// Its key.
        key: Vec<u8>,
    },
    /// Two backends have the same id.
    DuplicateId {
        /// The id.
        id: u32,
        /// The keys of the two backends.
        keys: [Vec<u8>; 2],
    },
    /// Two backends have the same key.
    DuplicateKey {
        /// The key.
        key: Vec<u8>,
        /// The ids of the two backends.
        ids: [u32; 2],
    },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPrime { size } => write!(f, "maglev table size {size} is not a prime"),
            Self::TooLarge { size } => {
                write!(
                    f,
                    "maglev table size {size} is above the maximum {MAX_TABLE_SIZE}"
                )
            }
            Self::TooSmall { size, backends } => write!(
                f,
                "maglev table size {size} is smaller than the {backends} backends with a weight"
            ),
            Self::ReservedId { key } => write!(
                f,
                "backend \"{}\" has the reserved id {NO_BACKEND}",
                key.escape_ascii()
            ),
            Self::DuplicateId { id, keys: [a, b] } => write!(
                f,
                "backends \"{}\" and \"{}\" have the same id {id}",
                a.escape_ascii(),
                b.escape_ascii()
            ),
            Self::DuplicateKey { key, ids: [a, b] } => write!(
                f,
                "backends {a} and {b} have the same key \"{}\"",
                key.escape_ascii()
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Builds the table: `size` slots, each holding the id of the backend that
/// owns it, or [`NO_BACKEND`] everywhere when no backend has a weight.
///
/// `previous` is the table currently in use; when it has `size` slots the
/// new table keeps as many of its owners as the new quotas allow (see the
/// [module documentation](self)).
pub fn build(
    backends: &[MaglevBackend],
    size: u32,
    previous: Option<&[u32]>,
) -> Result<Vec<u32>, MaglevError> {
    validate(backends, size)?;
    let mut active: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if active.is_empty() {
        return Ok(vec![NO_BACKEND; size as usize]);
    }
    active.sort_unstable_by(|a, b| a.key.cmp(&b.key));

    let turns = turn_order(&active, size);
    let mut quotas = vec![0; active.len()];
    for &i in &turns {
        quotas[i as usize] += 1;
    }
    let mut permutations: Vec<_> = active
        .iter()
        .map(|b| Permutation::new(&b.key, size))
        .collect();
    let mut owners = vec![FREE; size as usize];
    let kept = match previous {
        Some(previous) if previous.len() == owners.len() => {
            keep_previous(&active, &permutations, &quotas, previous, &mut owners)
        }
        _ => vec![0; active.len()],
    };
    fill(&turns, &kept, &mut permutations, &mut owners);
    Ok(owners.into_iter().map(|i| active[i as usize].id).collect())
}

/// Checks the size and that ids and keys are unique and ids are not
/// [`NO_BACKEND`].
fn validate(backends: &[MaglevBackend], size: u32) -> Result<(), MaglevError> {
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge { size });
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime { size });
    }
    let mut ids: HashMap<u32, &[u8]> = HashMap::with_capacity(backends.len());
    let mut keys: HashMap<&[u8], u32> = HashMap::with_capacity(backends.len());
    for backend in backends {
        if backend.id == NO_BACKEND {
            return Err(MaglevError::ReservedId {
                key: backend.key.clone(),
            });
        }
        if let Some(other) = ids.insert(backend.id, &backend.key) {
            return Err(MaglevError::DuplicateId {
                id: backend.id,
                keys: [other.to_vec(), backend.key.clone()],
            });
        }
        if let Some(other) = keys.insert(&backend.key, backend.id) {
            return Err(MaglevError::DuplicateKey {
                key: backend.key.clone(),
                ids: [other, backend.id],
            });
        }
    }
    let weighted = backends.iter().filter(|b| b.weight > 0).count();
    if weighted > size as usize {
        return Err(MaglevError::TooSmall {
            size,
            backends: weighted,
        });
    }
    Ok(())
}

/// A backend's claim on the next slot during apportionment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    weight: u64,
    /// Slots it has so far.
    count: u64,
    /// Its index in the key order (lower wins ties).
    index: u32,
}

impl Ord for Claim {
    /// Higher priority is greater: `w / d(c)` with `d(0) = 0` (infinite
    /// priority) and `d(c) = c + ½`, compared exactly as `2w / (2c + 1)`;
    /// then the lower index.
    fn cmp(&self, other: &Self) -> Ordering {
        let by_priority = match (self.count, other.count) {
            (0, 0) => Ordering::Equal,
            (0, _) => Ordering::Greater,
            (_, 0) => Ordering::Less,
            // At most 2^32 · 2^18: no overflow.
            (a, b) => (self.weight * (2 * b + 1)).cmp(&(other.weight * (2 * a + 1))),
        };
        by_priority.then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Claim {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Who gets each of the `size` slots, in order (indexes into `active`): the
/// apportionment, which is also the fill order.
fn turn_order(active: &[&MaglevBackend], size: u32) -> Vec<u32> {
    let mut heap: BinaryHeap<Claim> = active
        .iter()
        .zip(0..)
        .map(|(b, index)| Claim {
            weight: u64::from(b.weight),
            count: 0,
            index,
        })
        .collect();
    let mut turns = Vec::with_capacity(size as usize);
    for _ in 0..size {
        let mut top = heap.peek_mut().expect("at least one backend has a weight");
        turns.push(top.index);
        top.count += 1;
    }
    turns
}

/// One backend's walk through its preferred slots.
#[derive(Debug, Clone)]
struct Permutation {
    offset: u32,
    skip: u32,
    /// The next slot to look at.
    next: u32,
    /// How many slots it has looked at (at most `size`).
    walked: u32,
}

impl Permutation {
    fn new(key: &[u8], size: u32) -> Self {
        let size = u64::from(size);
        let offset = (hash(H1_BASIS, key) % size) as u32;
        let skip = (hash(H2_BASIS, key) % (size - 1) + 1) as u32;
        Self {
            offset,
            skip,
            next: offset,
            walked: 0,
        }
    }

    /// Where `slot` comes in this order (0 = most preferred):
    /// `(slot − offset) · skip⁻¹ mod size`.
    fn rank(&self, slot: u32, inverse_skip: u64, size: u32) -> u64 {
        let size = u64::from(size);
        let distance = (u64::from(slot) + size - u64::from(self.offset)) % size;
        distance * inverse_skip % size
    }

    /// `skip⁻¹ mod size` (Fermat: `skip^(size − 2)`, as `size` is prime).
    fn inverse_skip(&self, size: u32) -> u64 {
        let size = u64::from(size);
        let mut base = u64::from(self.skip) % size;
        let mut exponent = size - 2;
        let mut result = 1;
        while exponent > 0 {
            if exponent & 1 == 1 {
                result = result * base % size;
            }
            base = base * base % size;
            exponent >>= 1;
        }
        result
    }

    /// Takes the next free slot of this order for `owner`.
    fn take(&mut self, owner: u32, owners: &mut [u32]) {
        let size = owners.len() as u32;
        while self.walked < size {
            let slot = self.next as usize;
            self.next += self.skip;
            if self.next >= size {
                self.next -= size;
            }
            self.walked += 1;
            if owners[slot] == FREE {
                owners[slot] = owner;
                return;
            }
        }
        unreachable!("a backend below its quota always finds a free slot");
    }
}

/// Keeps each backend's slots of `previous` up to its quota (the first ones
/// of its permutation when it owned more); returns how many each kept.
fn keep_previous(
    active: &[&MaglevBackend],
    permutations: &[Permutation],
    quotas: &[u32],
    previous: &[u32],
    owners: &mut [u32],
) -> Vec<u32> {
    let index_of: HashMap<u32, u32> = active.iter().map(|b| b.id).zip(0..).collect();
    let mut owned: Vec<Vec<u32>> = vec![Vec::new(); active.len()];
    for (slot, id) in (0..).zip(previous) {
        if let Some(&i) = index_of.get(id) {
            owned[i as usize].push(slot);
        }
    }
    let size = owners.len() as u32;
    let mut kept = Vec::with_capacity(active.len());
    for ((slots, permutation), (&quota, index)) in owned
        .iter_mut()
        .zip(permutations)
        .zip(quotas.iter().zip(0..))
    {
        if slots.len() > quota as usize {
            let inverse_skip = permutation.inverse_skip(size);
            slots.sort_by_cached_key(|&slot| permutation.rank(slot, inverse_skip, size));
            slots.truncate(quota as usize);
        }
        for &slot in slots.iter() {
            owners[slot as usize] = index;
        }
        kept.push(slots.len() as u32);
    }
    kept
}

/// Gives every free slot an owner: on each of its turns, a backend that has
/// used up its kept slots takes the next free slot of its permutation.
fn fill(turns: &[u32], kept: &[u32], permutations: &mut [Permutation], owners: &mut [u32]) {
    let mut used = vec![0; kept.len()];
    for &i in turns {
        let index = i as usize;
        used[index] += 1;
        if used[index] > kept[index] {
            permutations[index].take(i, owners);
        }
    }
}

/// `fmix64(fnv1a64(basis, key))`.
fn hash(basis: u64, key: &[u8]) -> u64 {
    fmix64(fnv1a64(basis, key))
}

/// FNV-1a 64 from the offset basis `basis`.
fn fnv1a64(basis: u64, key: &[u8]) -> u64 {
    key.iter().fold(basis, |h, &byte| {
        (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The 64-bit finalizer of `MurmurHash3`: every input bit affects every output bit.
const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;

    /// Sizes the property tests pick from.
    const SIZES: [u32; 3] = [1021, 4099, DEFAULT_TABLE_SIZE];

    fn backend(id: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            id,
            key: format!("10.{}.{}.{}:6443", id >> 16, (id >> 8) & 0xff, id & 0xff).into_bytes(),
            weight,
        }
    }

    fn weighted(weights: &[u32]) -> Vec<MaglevBackend> {
        (1..).zip(weights).map(|(id, &w)| backend(id, w)).collect()
    }

    fn equal(n: u32) -> Vec<MaglevBackend> {
        (1..=n).map(|id| backend(id, 1)).collect()
    }

    /// Slots per id.
    fn counts(table: &[u32]) -> HashMap<u32, u32> {
        let mut counts = HashMap::new();
        for &id in table {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// Slots whose owner differs.
    fn moved(before: &[u32], after: &[u32]) -> u32 {
        before.iter().zip(after).filter(|(a, b)| a != b).count() as u32
    }

    /// Slots that changed owner although their old owner was not `id`.
    fn moved_from_others(before: &[u32], after: &[u32], id: u32) -> usize {
        before
            .iter()
            .zip(after)
            .filter(|&(&a, &b)| a != id && a != b)
            .count()
    }

    /// The worst relative error |share − target| / target over the backends.
    fn worst_share_error(backends: &[MaglevBackend], table: &[u32]) -> f64 {
        let counts = counts(table);
        let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        backends
            .iter()
            .map(|b| {
                let target = f64::from(table.len() as u32) * f64::from(b.weight) / total;
                let got = f64::from(counts.get(&b.id).copied().unwrap_or(0));
                (got - target).abs() / target
            })
            .fold(0.0, f64::max)
    }

    fn sieve(limit: usize) -> Vec<bool> {
        let mut prime = vec![true; limit + 1];
        prime[0] = false;
        prime[1] = false;
        let mut i = 2;
        while i * i <= limit {
            if prime[i] {
                for multiple in (i * i..=limit).step_by(i) {
                    prime[multiple] = false;
                }
            }
            i += 1;
        }
        prime
    }

    #[test]
    fn is_prime_matches_known_values() {
        for n in [
            2,
            3,
            5,
            7,
            13,
            251,
            1021,
            4099,
            16381,
            65521,
            65537,
            4_294_967_291,
        ] {
            assert!(is_prime(n), "{n} is prime");
        }
        for n in [0, 1, 4, 9, 15, 25, 16383, 65535, 65536, 65539 * 3, u32::MAX] {
            assert!(!is_prime(n), "{n} is not prime");
        }
        let expected = sieve(70_000);
        for (n, &prime) in (0..).zip(&expected) {
            assert_eq!(is_prime(n), prime, "{n}");
        }
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(MAX_TABLE_SIZE));
    }

    #[test]
    fn golden_fnv1a64_matches_published_vectors() {
        assert_eq!(fnv1a64(H1_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(H1_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(H1_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pins the hashes and the algorithm: if this changes, every table in the
    /// field changes on upgrade and most flows move.
    #[test]
    fn golden_table_is_stable_across_builds() {
        let p = Permutation::new(b"10.0.0.1:6443", DEFAULT_TABLE_SIZE);
        assert_eq!((p.offset, p.skip), (15788, 13484));
        let table = build(&weighted(&[1, 2, 3]), 13, None).unwrap();
        assert_eq!(table, [3, 3, 2, 3, 2, 3, 2, 3, 1, 3, 1, 3, 2]);
        let weights: Vec<u32> = (1..=10).collect();
        let table = build(&weighted(&weights), DEFAULT_TABLE_SIZE, None).unwrap();
        let bytes: Vec<u8> = table.iter().flat_map(|id| id.to_le_bytes()).collect();
        assert_eq!(
            fnv1a64(H1_BASIS, &bytes),
            GOLDEN_DIGEST,
            "{:#x}",
            fnv1a64(H1_BASIS, &bytes)
        );
    }

    /// FNV-1a 64 of the little-endian table of 10 backends weighing 1..=10 at 16381 slots.
    const GOLDEN_DIGEST: u64 = 0xcb3a_a9fd_2c0f_cb7d;

    #[test]
    fn permutations_visit_every_slot_and_rank_inverts_them() {
        for size in [2, 3, 13, 1021] {
            for id in 1..20 {
                let mut p = Permutation::new(&backend(id, 1).key, size);
                let inverse_skip = p.inverse_skip(size);
                let mut seen = vec![false; size as usize];
                for j in 0..u64::from(size) {
                    let slot = p.next;
                    assert!(!seen[slot as usize], "size {size}: slot {slot} twice");
                    seen[slot as usize] = true;
                    assert_eq!(p.rank(slot, inverse_skip, size), j);
                    p.next = (p.next + p.skip) % size;
                }
            }
        }
    }

    #[test]
    fn no_weighted_backend_gives_an_empty_table() {
        assert_eq!(build(&[], 13, None).unwrap(), vec![NO_BACKEND; 13]);
        let drained = weighted(&[0, 0, 0]);
        assert_eq!(build(&drained, 13, None).unwrap(), vec![NO_BACKEND; 13]);
        let previous = build(&weighted(&[1, 1, 1]), 13, None).unwrap();
        assert_eq!(
            build(&drained, 13, Some(&previous)).unwrap(),
            vec![NO_BACKEND; 13]
        );
    }

    #[test]
    fn as_many_slots_as_backends_gives_each_one_slot() {
        let backends = weighted(&[1, 1000, 7, 1, 1]);
        let table = build(&backends, 5, None).unwrap();
        let mut ids = table.clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_tiny_weight_still_gets_a_slot() {
        let backends = weighted(&[1, 1_000_000]);
        let table = build(&backends, 13, None).unwrap();
        assert_eq!(counts(&table)[&1], 1);
        assert_eq!(counts(&table)[&2], 12);
    }

    #[test]
    fn shares_match_weights_within_one_percent() {
        let cases = [
            ("10 equal at 16381", equal(10), DEFAULT_TABLE_SIZE),
            (
                "1:2:3:4 at 16381",
                weighted(&[1, 2, 3, 4]),
                DEFAULT_TABLE_SIZE,
            ),
            ("100 equal at 65537", equal(100), MAX_TABLE_SIZE),
            (
                "100 weighted 1..=10 at 65537",
                weighted(&(0..100).map(|i| i % 10 + 1).collect::<Vec<_>>()),
                MAX_TABLE_SIZE,
            ),
        ];
        for (name, backends, size) in cases {
            let table = build(&backends, size, None).unwrap();
            assert!(table.iter().all(|&id| id != NO_BACKEND), "{name}");
            let error = worst_share_error(&backends, &table);
            eprintln!("{name}: worst relative share error {:.4}%", error * 100.0);
            assert!(error <= 0.01, "{name}: {error}");
        }
    }

    #[test]
    fn build_is_deterministic_and_ignores_backend_order() {
        let backends = weighted(&[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]);
        let table = build(&backends, DEFAULT_TABLE_SIZE, None).unwrap();
        assert_eq!(build(&backends, DEFAULT_TABLE_SIZE, None).unwrap(), table);
        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(build(&reversed, DEFAULT_TABLE_SIZE, None).unwrap(), table);
        let mut rotated = backends.clone();
        rotated.rotate_left(3);
        assert_eq!(build(&rotated, DEFAULT_TABLE_SIZE, None).unwrap(), table);
        // A rebuild with its own table as `previous` changes nothing.
        assert_eq!(
            build(&rotated, DEFAULT_TABLE_SIZE, Some(&table)).unwrap(),
            table
        );
    }

    #[test]
    fn previous_of_another_size_is_ignored() {
        let backends = equal(5);
        let fresh = build(&backends, 13, None).unwrap();
        let other = build(&equal(4), 11, None).unwrap();
        assert_eq!(build(&backends, 13, Some(&other)).unwrap(), fresh);
        assert_eq!(build(&backends, 13, Some(&[])).unwrap(), fresh);
    }

    #[test]
    fn adding_a_backend_moves_only_its_share() {
        for (n, size) in [
            (10, DEFAULT_TABLE_SIZE),
            (100, DEFAULT_TABLE_SIZE),
            (100, MAX_TABLE_SIZE),
        ] {
            let before = build(&equal(n), size, None).unwrap();
            let grown = equal(n + 1);
            let incremental = build(&grown, size, Some(&before)).unwrap();
            let fresh = build(&grown, size, None).unwrap();
            let quota = counts(&incremental)[&(n + 1)];
            let moved_incremental = moved(&before, &incremental);
            let moved_fresh = moved(&before, &fresh);
            eprintln!(
                "adding 1 to {n} at {size}: quota {quota}, moved with previous {moved_incremental} \
                 ({:.2}×), fresh build {moved_fresh} ({:.2}×)",
                f64::from(moved_incremental) / f64::from(quota),
                f64::from(moved_fresh) / f64::from(quota),
            );
            // Only the slots the newcomer takes change owner (the brief allowed
            // up to 1.5×); the fresh build is printed for comparison.
            assert_eq!(moved_incremental, quota);
            assert!(
                incremental
                    .iter()
                    .zip(&before)
                    .all(|(&a, &b)| a == b || a == n + 1)
            );
        }
    }

    #[test]
    fn raising_a_weight_moves_only_to_that_backend() {
        let mut backends = weighted(&[1, 2, 3, 4, 5]);
        let before = build(&backends, DEFAULT_TABLE_SIZE, None).unwrap();
        backends[1].weight = 6;
        let after = build(&backends, DEFAULT_TABLE_SIZE, Some(&before)).unwrap();
        let gained = counts(&after)[&2] - counts(&before)[&2];
        assert_eq!(moved(&before, &after), gained);
        assert!(after.iter().zip(&before).all(|(&a, &b)| a == b || a == 2));
    }

    #[test]
    fn unknown_ids_in_previous_are_refilled() {
        let backends = equal(4);
        let mut previous = build(&backends, 13, None).unwrap();
        previous[0] = 77;
        previous[1] = NO_BACKEND;
        let table = build(&backends, 13, Some(&previous)).unwrap();
        assert!(table.iter().all(|id| (1..=4).contains(id)));
        assert_eq!(counts(&table), counts(&build(&backends, 13, None).unwrap()));
        assert_eq!(table[2..], previous[2..]);
    }

    #[test]
    fn errors_name_the_problem() {
        let backends = equal(3);
        assert_eq!(
            build(&backends, 16383, None),
            Err(MaglevError::NotPrime { size: 16383 })
        );
        assert_eq!(
            build(&backends, 0, None),
            Err(MaglevError::NotPrime { size: 0 })
        );
        assert_eq!(
            build(&backends, 1, None),
            Err(MaglevError::NotPrime { size: 1 })
        );
        assert_eq!(
            build(&backends, 65539, None),
            Err(MaglevError::TooLarge { size: 65539 })
        );
        assert_eq!(
            build(&backends, 2, None),
            Err(MaglevError::TooSmall {
                size: 2,
                backends: 3
            })
        );
        // Drained backends do not need a slot.
        let mut drained = equal(3);
        drained[0].weight = 0;
        assert!(build(&drained, 2, None).is_ok());

        let mut same_id = equal(3);
        same_id[2].id = 1;
        let err = build(&same_id, 13, None).unwrap_err();
        assert_eq!(
            err,
            MaglevError::DuplicateId {
                id: 1,
                keys: [backend(1, 1).key, backend(3, 1).key],
            }
        );
        assert_eq!(
            err.to_string(),
            "backends \"10.0.0.1:6443\" and \"10.0.0.3:6443\" have the same id 1"
        );

        let mut same_key = equal(3);
        same_key[2].key = same_key[0].key.clone();
        let err = build(&same_key, 13, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backends 1 and 3 have the same key \"10.0.0.1:6443\""
        );

        let zero = [backend(NO_BACKEND, 1)];
        assert_eq!(
            build(&zero, 13, None).unwrap_err().to_string(),
            "backend \"10.0.0.0:6443\" has the reserved id 0"
        );
        assert_eq!(
            MaglevError::TooSmall {
                size: 2,
                backends: 3
            }
            .to_string(),
            "maglev table size 2 is smaller than the 3 backends with a weight"
        );
    }

    #[test]
    fn rebuild_time_for_1000_backends_at_65537_slots() {
        let mut backends: Vec<_> = (1..=1000).map(|id| backend(id, id % 7 + 1)).collect();
        let start = Instant::now();
        let before = build(&backends, MAX_TABLE_SIZE, None).unwrap();
        let fresh = start.elapsed();

        backends.remove(500);
        let start = Instant::now();
        let shrunk = build(&backends, MAX_TABLE_SIZE, Some(&before)).unwrap();
        let remove = start.elapsed();

        backends.push(backend(5000, 3));
        let start = Instant::now();
        let grown = build(&backends, MAX_TABLE_SIZE, Some(&shrunk)).unwrap();
        let add = start.elapsed();

        eprintln!(
            "1000 backends at {MAX_TABLE_SIZE} slots: fresh build {fresh:?}, rebuild after a \
             removal {remove:?}, rebuild after an addition {add:?}"
        );
        assert_eq!(moved_from_others(&before, &shrunk, 501), 0);
        assert!(
            grown
                .iter()
                .zip(&shrunk)
                .all(|(&a, &b)| a == b || a == 5000)
        );
        for elapsed in [fresh, remove, add] {
            assert!(elapsed.as_secs() < 5, "{elapsed:?}");
        }
    }

    /// Backends with random weights (`1..=max_weight`) and a prime size.
    fn random_backends(
        n: std::ops::RangeInclusive<usize>,
        max_weight: u32,
    ) -> impl Strategy<Value = (Vec<MaglevBackend>, u32)> {
        (
            proptest::collection::vec(1..=max_weight, n),
            proptest::sample::select(SIZES.as_slice()),
        )
            .prop_map(|(weights, size)| (weighted(&weights), size))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_slot_is_filled_and_counts_do_not_depend_on_previous(
            (backends, size) in random_backends(1..=50, 20),
            drained in proptest::collection::vec(any::<bool>(), 50),
            garbage in proptest::collection::vec(0u32..60, 1021),
        ) {
            let mut backends = backends;
            for (backend, &drained) in backends.iter_mut().zip(&drained).skip(1) {
                if drained {
                    backend.weight = 0;
                }
            }
            let table = build(&backends, size, None).unwrap();
            prop_assert!(table.iter().all(|&id| id != NO_BACKEND));
            let expected = counts(&table);
            for b in &backends {
                prop_assert_eq!(expected.contains_key(&b.id), b.weight > 0);
            }
            // Any previous table (of the right size or not) gives the same counts.
            let rebuilt = build(&backends, size, Some(&garbage)).unwrap();
            prop_assert_eq!(counts(&rebuilt), expected.clone());
            let mut resized = garbage.clone();
            resized.resize(size as usize, 3);
            let rebuilt = build(&backends, size, Some(&resized)).unwrap();
            prop_assert_eq!(counts(&rebuilt), expected);
        }

        #[test]
        fn shares_stay_within_one_percent_with_100_slots_per_backend(
            (backends, size) in random_backends(1..=16, 10),
        ) {
            let table = build(&backends, size, None).unwrap();
            let total: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
            let counts = counts(&table);
            for b in &backends {
                let target = f64::from(size) * f64::from(b.weight) / total;
                if target >= 100.0 {
                    let error = (f64::from(counts[&b.id]) - target).abs() / target;
                    prop_assert!(error <= 0.01, "{:?}: {} for {}", b, counts[&b.id], target);
                }
            }
        }

        #[test]
        fn removing_a_backend_moves_only_its_slots(
            ((backends, size), removed) in random_backends(2..=50, 5)
                .prop_flat_map(|(b, size)| {
                    let n = b.len();
                    (Just((b, size)), 0..n)
                }),
            shuffle in any::<u64>(),
        ) {
            let before = build(&backends, size, None).unwrap();
            let mut rest = backends.clone();
            let gone = rest.remove(removed);
            let by = (shuffle % rest.len() as u64) as usize;
            rest.rotate_left(by);
            let after = build(&rest, size, Some(&before)).unwrap();
            prop_assert_eq!(moved_from_others(&before, &after, gone.id), 0);
            prop_assert!(after.iter().all(|&id| id != gone.id && id != NO_BACKEND));
        }

        #[test]
        fn draining_or_lowering_a_backend_moves_only_its_slots(
            ((backends, size), changed) in random_backends(2..=50, 5)
                .prop_flat_map(|(b, size)| {
                    let n = b.len();
                    (Just((b, size)), 0..n)
                }),
            new_weight in 0u32..5,
        ) {
            let before = build(&backends, size, None).unwrap();
            let mut changed_backends = backends.clone();
            let target = &mut changed_backends[changed];
            target.weight = new_weight.min(target.weight);
            let id = target.id;
            let after = build(&changed_backends, size, Some(&before)).unwrap();
            prop_assert_eq!(moved_from_others(&before, &after, id), 0);
            if new_weight == 0 {
                prop_assert!(after.iter().all(|&owner| owner != id));
            }
        }

        #[test]
        fn adding_a_backend_moves_exactly_its_quota(
            (backends, size) in random_backends(1..=50, 5),
            weight in 1u32..=5,
        ) {
            let before = build(&backends, size, None).unwrap();
            let mut grown = backends.clone();
            grown.push(backend(1000, weight));
            let after = build(&grown, size, Some(&before)).unwrap();
            let quota = counts(&after)[&1000];
            prop_assert_eq!(moved(&before, &after), quota);
        }

        /// Each step's `previous` is the last step's table, so history matters.
        #[test]
        fn chains_of_changes_move_only_the_changed_backends_slots(
            initial in proptest::collection::vec(0u32..=5, 1..=30),
            changes in proptest::collection::vec(change(), 1..=20),
        ) {
            let size = 1021;
            let mut backends = weighted(&initial);
            let mut next_id = 1000;
            let mut table = build(&backends, size, None).unwrap();
            for change in changes {
                let id = match change {
                    Change::Add(weight) => {
                        next_id += 1;
                        backends.push(backend(next_id, weight));
                        next_id
                    }
                    Change::Remove(i) => backends.remove(i % backends.len()).id,
                    Change::Weight(i, weight) => {
                        let i = i % backends.len();
                        backends[i].weight = weight;
                        backends[i].id
                    }
                };
                if backends.is_empty() {
                    backends.push(backend(next_id + 1, 1));
                    next_id += 1;
                    table = build(&backends, size, None).unwrap();
                    continue;
                }
                let after = build(&backends, size, Some(&table)).unwrap();
                let fresh = build(&backends, size, None).unwrap();
                prop_assert_eq!(counts(&after), counts(&fresh));
                // Either only the changed backend's slots moved (it shrank), or
                // only slots moving to it did (it grew).
                let shrank = moved_from_others(&table, &after, id) == 0;
                let grew = table.iter().zip(&after).all(|(&a, &b)| a == b || b == id);
                prop_assert!(shrank || grew, "{:?}", change);
                table = after;
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Change {
        Add(u32),
        Remove(usize),
        Weight(usize, u32),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (1u32..=5).prop_map(Change::Add),
            any::<usize>().prop_map(Change::Remove),
            (any::<usize>(), 0u32..=5).prop_map(|(i, w)| Change::Weight(i, w)),
        ]
    }
}
