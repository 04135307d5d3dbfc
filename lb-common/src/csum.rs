//! Incremental Internet checksum updates, shared by the XDP program (which
//! rewrites addresses and ports) and its tests.
//!
//! The update follows RFC 1624, equation 3:
//! `HC' = ~(~HC + ~m + m')`, summed over the 16-bit words that change.
//!
//! Checksums and words are handled as big-endian numbers, the way they sit
//! in the packet, so the result is written back with `to_be_bytes`.
//!
//! [`diff`] is the other form the kernel's checksum helpers take (tc's
//! `bpf_l3_csum_replace`/`bpf_l4_csum_replace` with size 0): the 32-bit
//! one's-complement sum `~m + m'` of the words that change, in the
//! kernel's `__wsum` convention (words read in memory order).

/// Adds the 16-bit big-endian words of `bytes` (`N` even) to `sum`, either
/// as they are or one's-complemented (`negate`, for the words going away).
#[expect(
    clippy::inline_always,
    reason = "the verifier must see constant lengths; no BPF-to-BPF calls per packet"
)]
#[inline(always)]
fn add_words<const N: usize>(mut sum: u64, bytes: &[u8; N], negate: bool) -> u64 {
    let mut i = 0;
    while i + 1 < N {
        let word = u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        sum += u64::from(if negate { !word } else { word });
        i += 2;
    }
    sum
}

/// Folds a 64-bit one's-complement sum into 16 bits.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn fold(mut sum: u64) -> u16 {
    // Sums here stay far below 2^32: three folds always end with no carry.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// An accumulating checksum update: start from the old checksum, replace
/// any number of fields, then [`Update::finish`].
#[derive(Clone, Copy)]
pub struct Update {
    sum: u64,
}

impl Update {
    /// Starts from the checksum currently in the packet.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    pub const fn new(check: u16) -> Self {
        Self {
            sum: (!check) as u64,
        }
    }

    /// Accounts for `old` being replaced by `new` (same even length).
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub fn replace<const N: usize>(self, old: &[u8; N], new: &[u8; N]) -> Self {
        Self {
            sum: add_words(add_words(self.sum, old, true), new, false),
        }
    }

    /// Accounts for one 16-bit word changing.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub fn replace_word(self, old: u16, new: u16) -> Self {
        self.replace(&old.to_be_bytes(), &new.to_be_bytes())
    }

    /// The new checksum.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    pub const fn finish(self) -> u16 {
        !fold(self.sum)
    }
}

/// The checksum difference of `old` being replaced by `new` (`N` even), as
/// the kernel's `__wsum`: the one's-complement sum of the complemented old
/// and the new 16-bit words, read in memory (native) order, folded into 32
/// bits. Adding it to a checksum's unfolded sum and folding gives the same
/// result as [`Update::replace`].
#[expect(
    clippy::inline_always,
    reason = "the verifier must see constant lengths; no BPF-to-BPF calls per packet"
)]
#[inline(always)]
pub fn diff<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i + 1 < N {
        sum += u64::from(!u16::from_ne_bytes([old[i], old[i + 1]]));
        sum += u64::from(u16::from_ne_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    // At most 2 * N / 2 words of 16 bits: far below 2^48; two folds end
    // with no carry.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::{Update, diff};

    /// The Internet checksum of `bytes`, computed from scratch.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for pair in bytes.chunks(2) {
            sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn byte(&mut self) -> u8 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 24) as u8
        }

        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut out = [0u8; N];
            for b in &mut out {
                *b = self.byte();
            }
            out
        }
    }

    /// Replacing 4- and 16-byte fields and single words anywhere in a
    /// buffer gives the checksum a full recomputation gives.
    #[test]
    fn incremental_equals_recomputed() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..5000 {
            let len = 40 + 2 * usize::from(rng.byte() % 40);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Some rounds start from extreme contents (all zero / all ones).
            if round % 7 == 0 {
                buf.fill(if round % 2 == 0 { 0 } else { 0xff });
            }
            let mut update = Update::new(checksum(&buf));
            let at4 = 2 * usize::from(rng.byte() % 4);
            let old: [u8; 4] = buf[at4..at4 + 4].try_into().unwrap();
            let new = rng.bytes::<4>();
            buf[at4..at4 + 4].copy_from_slice(&new);
            update = update.replace(&old, &new);
            let at16 = 8 + 2 * usize::from(rng.byte() % 8);
            let old: [u8; 16] = buf[at16..at16 + 16].try_into().unwrap();
            let new = rng.bytes::<16>();
            buf[at16..at16 + 16].copy_from_slice(&new);
            update = update.replace(&old, &new);
            let old = u16::from_be_bytes([buf[36], buf[37]]);
            let new = u16::from_be_bytes(rng.bytes::<2>());
            buf[36..38].copy_from_slice(&new.to_be_bytes());
            update = update.replace_word(old, new);
            let got = update.finish();
            let want = checksum(&buf);
            // 0x0000 and 0xffff are the same one's-complement number; they can
            // differ only when the data sums to zero.
            assert!(
                got == want || (got ^ want == 0xffff && (got == 0 || want == 0)),
                "round {round}: incremental {got:#06x}, recomputed {want:#06x}"
            );
        }
    }

    /// Applying [`diff`] the way the kernel does (`csum_fold(diff +
    /// ~check)`, in memory order) gives the checksum [`Update`] gives.
    #[test]
    fn diff_matches_update() {
        let mut rng = Rng(0x0bad_cafe_f00d_d00d);
        for _ in 0..5000 {
            let check = u16::from_be_bytes(rng.bytes::<2>());
            let old = rng.bytes::<16>();
            let new = rng.bytes::<16>();
            let want = Update::new(check).replace(&old, &new).finish();
            // The kernel: *sum = csum_fold(csum_add(diff, ~csum_unfold(*sum))),
            // on the checksum as it sits in memory.
            let in_memory = u16::from_ne_bytes(check.to_be_bytes());
            let mut sum = u64::from(diff(&old, &new)) + u64::from(!in_memory);
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let got = u16::from_be_bytes((!(sum as u16)).to_ne_bytes());
            assert!(
                got == want || (got ^ want == 0xffff && (got == 0 || want == 0)),
                "diff {got:#06x}, update {want:#06x}"
            );
        }
    }
}
