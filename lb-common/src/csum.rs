//! Incremental Internet checksum updates, a word at a time, shared by the
//! forwarder's two hooks (XDP rewrites checksums itself, tc hands the
//! difference to the kernel's helpers) and their tests.
//!
//! The update follows RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`,
//! summed over the words that change ([`Delta`]).
//!
//! Words are handled as they sit in memory: a field is loaded with a
//! native-order load and the result stored the same way, never byte-swapped.
//! The Internet checksum does not depend on byte order (RFC 1071, section
//! 2(B)): the sum of native-order words, folded and stored natively, gives
//! the same bytes as the big-endian computation. A 32-bit word counts as its
//! two 16-bit halves (2^16 ≡ 1 modulo 0xffff), so a changed address is one
//! term, not two, and one load instead of four byte loads in the kernel
//! program. Every word must sit at an even offset of the checksummed data
//! (addresses, ports and the TTL/protocol word all do).

/// The one's-complement difference between old and new words (`~m + m'`
/// summed), kept unfolded.
///
/// Invariant: at most [`Delta::MAX_TERMS`] replacements, so the 64-bit sum
/// never overflows and [`fold16`] needs no loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delta(u64);

impl Delta {
    /// More replacements than any header rewrite makes (IPv6: 8 address
    /// words, a port word, a hop-limit word); each adds less than 2^33.
    pub const MAX_TERMS: u32 = 64;

    /// No change.
    pub const ZERO: Self = Self(0);

    /// Adds the replacement of 32-bit word `old` by `new`.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub const fn replace32(self, old: u32, new: u32) -> Self {
        Self(self.0 + (!old) as u64 + new as u64)
    }

    /// Adds the replacement of 16-bit word `old` by `new`.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub const fn replace16(self, old: u16, new: u16) -> Self {
        Self(self.0 + (!old) as u64 + new as u64)
    }

    /// Adds the replacement of address `old` by `new`, four words each.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub const fn replace_addr(self, old: [u32; 4], new: [u32; 4]) -> Self {
        self.replace32(old[0], new[0])
            .replace32(old[1], new[1])
            .replace32(old[2], new[2])
            .replace32(old[3], new[3])
    }

    /// Adds another difference.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self(self.0 + other.0)
    }

    /// Checksum field `check` (as it sits in memory) after the changes.
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub const fn apply(self, check: u16) -> u16 {
        !fold16(self.0 + (!check) as u64)
    }

    /// The difference in the kernel's 32-bit `__wsum` form, what tc's
    /// `bpf_l3_csum_replace`/`bpf_l4_csum_replace` take as `to` with
    /// `from = 0` (they add it to the checksum as it sits in memory).
    #[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
    #[inline(always)]
    #[must_use]
    pub const fn wsum(self) -> u32 {
        fold32(self.0)
    }
}

/// Folds a sum below 2^40 into 32 bits, end-around carries included.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn fold32(mut sum: u64) -> u32 {
    // < 2^40 → < 2^32 + 2^8 → < 2^32.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum as u32
}

/// Folds a sum below 2^40 into 16 bits, end-around carries included.
#[expect(clippy::inline_always, reason = "no BPF-to-BPF calls per packet")]
#[inline(always)]
const fn fold16(sum: u64) -> u16 {
    // < 2^32 → < 2^17 → at most 0x10000 → at most 0xffff.
    let mut sum = fold32(sum) as u64;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::Delta;

    /// The Internet checksum of `bytes`, computed from scratch (big-endian
    /// words, the RFC 1071 way).
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

    fn word32(buf: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap())
    }

    fn word16(buf: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(buf[at..at + 2].try_into().unwrap())
    }

    fn addr(buf: &[u8], at: usize) -> [u32; 4] {
        [0, 4, 8, 12].map(|i| word32(buf, at + i))
    }

    /// 0x0000 and 0xffff are the same one's-complement number; they can
    /// differ only when the data sums to zero.
    fn same(got: u16, want: u16) -> bool {
        got == want || (got ^ want == 0xffff && (got == 0 || want == 0))
    }

    /// Replacing 4- and 16-byte fields and a 16-bit word at even offsets,
    /// a native-order word at a time, and storing the checksum natively
    /// gives the bytes a full recomputation gives.
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
            // The checksum as it sits in memory (big-endian bytes), loaded
            // natively.
            let check = u16::from_ne_bytes(checksum(&buf).to_be_bytes());
            let mut delta = Delta::ZERO;
            let at4 = 2 * usize::from(rng.byte() % 4);
            let old = word32(&buf, at4);
            buf[at4..at4 + 4].copy_from_slice(&rng.bytes::<4>());
            delta = delta.replace32(old, word32(&buf, at4));
            let at16 = 8 + 2 * usize::from(rng.byte() % 8);
            let old = addr(&buf, at16);
            buf[at16..at16 + 16].copy_from_slice(&rng.bytes::<16>());
            delta = delta.replace_addr(old, addr(&buf, at16));
            let old = word16(&buf, 36);
            buf[36..38].copy_from_slice(&rng.bytes::<2>());
            delta = delta.replace16(old, word16(&buf, 36));
            let got = u16::from_be_bytes(delta.apply(check).to_ne_bytes());
            let want = checksum(&buf);
            assert!(
                same(got, want),
                "round {round}: incremental {got:#06x}, recomputed {want:#06x}"
            );
        }
    }

    /// Applying [`Delta::wsum`] the way the kernel does (`csum_fold(diff +
    /// ~check)`, in memory order) gives the checksum [`Delta::apply`] gives.
    #[test]
    fn wsum_matches_apply() {
        let mut rng = Rng(0x0bad_cafe_f00d_d00d);
        for _ in 0..5000 {
            let check = u16::from_ne_bytes(rng.bytes::<2>());
            let old = rng.bytes::<16>();
            let new = rng.bytes::<16>();
            let delta = Delta::ZERO.replace_addr(addr(&old, 0), addr(&new, 0));
            let want = delta.apply(check);
            // The kernel: *sum = csum_fold(csum_add(diff, ~csum_unfold(*sum))).
            let mut sum = u64::from(delta.wsum()) + u64::from(!check);
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let got = !(sum as u16);
            assert!(same(got, want), "wsum {got:#06x}, apply {want:#06x}");
        }
    }

    /// The most terms a rewrite makes, all at their largest, fold without
    /// losing a carry.
    #[test]
    fn largest_sums_fold() {
        let mut delta = Delta::ZERO;
        for _ in 0..Delta::MAX_TERMS {
            delta = delta.replace32(0, u32::MAX);
        }
        // Each term is 0xffff_ffff + 0xffff_ffff ≡ 0 (mod 0xffff).
        assert!(same(delta.apply(0x1234), 0x1234));
    }
}
