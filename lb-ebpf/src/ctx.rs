//! Reading and writing the socket address a `sock_addr` program sees.
//!
//! The verifier only accepts 4-byte accesses to these context fields, so
//! every access is a single volatile `u32` load or store (LLVM must not merge
//! two of them into one 8-byte access). The context holds addresses as
//! network-order words and the port in network order; the maps hold bytes
//! and host-order ports, converted here.

use aya_ebpf::{EbpfContext as _, bindings::bpf_sock_addr, programs::SockAddrContext};
use lb_common::{AF_INET, AF_INET6, AddrBytes};

/// The address a socket call is about.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    /// Address words as in `bpf_sock_addr` (network order; IPv4 in word 0).
    pub(crate) words: [u32; 4],
    /// Port, host order.
    pub(crate) port: u16,
    /// `AF_INET` or `AF_INET6` (the socket's family).
    pub(crate) family: u8,
}

/// Word 2 (network order) of a v4-mapped IPv6 address `::ffff:a.b.c.d`.
const V4_MAPPED_WORD2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl SockAddr {
    /// Whether this is an IPv6 address of the form `::ffff:a.b.c.d`.
    pub(crate) const fn is_v4_mapped(&self) -> bool {
        self.family == AF_INET6
            && self.words[0] == 0
            && self.words[1] == 0
            && self.words[2] == V4_MAPPED_WORD2
    }

    /// The map form of the address; a v4-mapped address becomes IPv4.
    pub(crate) const fn key_bytes(&self) -> AddrBytes {
        if self.is_v4_mapped() {
            words_to_bytes([self.words[3], 0, 0, 0])
        } else {
            words_to_bytes(self.words)
        }
    }

    /// The address as the socket holds it.
    pub(crate) const fn bytes(&self) -> AddrBytes {
        words_to_bytes(self.words)
    }

    /// The socket form of a map address; `mapped` writes an IPv4 address as
    /// `::ffff:a.b.c.d` (for a dual-stack IPv6 socket).
    pub(crate) const fn words_of(bytes: AddrBytes, mapped: bool) -> [u32; 4] {
        let words = bytes_to_words(bytes);
        if mapped {
            [0, 0, V4_MAPPED_WORD2, words[0]]
        } else {
            words
        }
    }
}

const fn words_to_bytes(words: [u32; 4]) -> AddrBytes {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        bytes[i] = words[i / 4].to_ne_bytes()[i % 4];
        i += 1;
    }
    bytes
}

const fn bytes_to_words(bytes: AddrBytes) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]);
        i += 1;
    }
    words
}

fn raw(ctx: &SockAddrContext) -> *mut bpf_sock_addr {
    ctx.as_ptr().cast()
}

/// The socket's protocol (`IPPROTO_TCP`, `IPPROTO_UDP`, ...).
pub(crate) fn protocol(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the kernel passes a valid `bpf_sock_addr` context; `protocol` is
    // a readable 4-byte field for every sock_addr attach type.
    unsafe { core::ptr::addr_of!((*raw(ctx)).protocol).read_volatile() }
}

/// Reads the user address (`user_ip4`/`user_ip6` and `user_port`).
pub(crate) fn read(ctx: &SockAddrContext, family: u8) -> SockAddr {
    let sa = raw(ctx);
    let mut words = [0u32; 4];
    // SAFETY: `sa` is the kernel's context; user_ip4, user_ip6[i] and user_port
    // are readable 4-byte fields for the connect/sendmsg/recvmsg/getpeername hooks.
    let port = unsafe {
        if family == AF_INET {
            words[0] = core::ptr::addr_of!((*sa).user_ip4).read_volatile();
        } else {
            words[0] = core::ptr::addr_of!((*sa).user_ip6[0]).read_volatile();
            words[1] = core::ptr::addr_of!((*sa).user_ip6[1]).read_volatile();
            words[2] = core::ptr::addr_of!((*sa).user_ip6[2]).read_volatile();
            words[3] = core::ptr::addr_of!((*sa).user_ip6[3]).read_volatile();
        }
        core::ptr::addr_of!((*sa).user_port).read_volatile()
    };
    SockAddr {
        words,
        // The port sits in network order in the low 16 bits of the word.
        port: u16::from_be(port as u16),
        family,
    }
}

/// Writes the user address back; `to.family` must be the socket's family.
pub(crate) fn write(ctx: &SockAddrContext, to: &SockAddr) {
    let sa = raw(ctx);
    // SAFETY: the same fields are writable 4-byte fields for these hooks.
    unsafe {
        if to.family == AF_INET {
            core::ptr::addr_of_mut!((*sa).user_ip4).write_volatile(to.words[0]);
        } else {
            core::ptr::addr_of_mut!((*sa).user_ip6[0]).write_volatile(to.words[0]);
            core::ptr::addr_of_mut!((*sa).user_ip6[1]).write_volatile(to.words[1]);
            core::ptr::addr_of_mut!((*sa).user_ip6[2]).write_volatile(to.words[2]);
            core::ptr::addr_of_mut!((*sa).user_ip6[3]).write_volatile(to.words[3]);
        }
        core::ptr::addr_of_mut!((*sa).user_port).write_volatile(u32::from(to.port.to_be()));
    }
}

/// The socket cookie (stable id of the socket for its lifetime).
pub(crate) fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: bpf_get_socket_cookie accepts the sock_addr context pointer.
    unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Makes the rejected socket call fail with `-errno` instead of `EPERM`.
pub(crate) fn set_errno(errno: i32) {
    // SAFETY: bpf_set_retval is available to cgroup connect/sendmsg programs
    // (kernel >= 5.18) and only changes the syscall's return value.
    unsafe {
        aya_ebpf::helpers::bpf_set_retval(-errno);
    }
}
