//! The few `bpf(2)` commands aya 0.14 does not expose: for links, open a
//! pinned link, read which cgroup or interface (XDP, tcx) it is attached to, and swap its program
//! atomically (`BPF_LINK_UPDATE`), which is how a restarted controller adopts
//! the attachments of a crashed one without a moment of unbalanced traffic;
//! for maps, `BPF_MAP_LOOKUP_BATCH`, which reads many entries of a hash map
//! per system call (the flow collector's walk).

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `struct bpf_attr` is a union; 128 bytes cover every command used here.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    const fn new() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    fn get_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_ne_bytes(bytes)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    let size = size_of::<BpfAttr>() as libc::c_uint;
    // `attr` is laid out as `union bpf_attr` for `cmd`; the kernel writes
    // back into it only within `size` (the batch commands' `count`).
    // SAFETY: `attr` is a live, writable buffer of `size` bytes, and every
    // pointer the callers put in it is live for the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a pinned BPF object (here: a link).
pub(crate) fn obj_get(path: &Path) -> anyhow::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("pin path {} contains a NUL byte", path.display()))?;
    let mut attr = BpfAttr::new();
    // obj_get: { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr.put_u64(0, c_path.as_ptr() as u64);
    let fd =
        bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("BPF_OBJ_GET {}", path.display()))?;
    // SAFETY: on success BPF_OBJ_GET returns a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about a cgroup or XDP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    /// Link id (`bpftool link show` lists it).
    pub(crate) id: u32,
    /// Id of the program the link runs.
    pub(crate) prog_id: u32,
    /// `BPF_LINK_TYPE_*`: [`LINK_TYPE_CGROUP`], [`LINK_TYPE_XDP`] or [`LINK_TYPE_TCX`].
    pub(crate) link_type: u32,
    /// Cgroup links: id of the cgroup (its inode number on cgroup2).
    pub(crate) cgroup_id: u64,
    /// Cgroup links: `BPF_CGROUP_*` attach type.
    pub(crate) attach_type: u32,
    /// XDP and tcx links: the interface index (0 once the interface is gone).
    pub(crate) ifindex: u32,
}

/// `BPF_LINK_TYPE_CGROUP`.
pub(crate) const LINK_TYPE_CGROUP: u32 = 3;
/// `BPF_LINK_TYPE_XDP`.
pub(crate) const LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_TCX`.
pub(crate) const LINK_TYPE_TCX: u32 = 11;

/// Reads `struct bpf_link_info` of a link.
pub(crate) fn link_info(link: BorrowedFd<'_>) -> anyhow::Result<LinkInfo> {
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union {
    //   struct { __u64 cgroup_id; __u32 attach_type; } cgroup;
    //   struct { __u32 ifindex; } xdp;
    //   struct { __u32 ifindex; __u32 attach_type; } tcx; ... } } (8-aligned union at 16)
    #[repr(C, align(8))]
    struct Info([u8; 256]);
    let mut info = Info([0; 256]);
    let mut attr = BpfAttr::new();
    // info: { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, size_of::<Info>() as u32);
    attr.put_u64(8, info.0.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD on a link")?;
    let u32_at =
        |o: usize| u32::from_ne_bytes([info.0[o], info.0[o + 1], info.0[o + 2], info.0[o + 3]]);
    let mut cgroup_id = [0u8; 8];
    cgroup_id.copy_from_slice(&info.0[16..24]);
    Ok(LinkInfo {
        link_type: u32_at(0),
        id: u32_at(4),
        prog_id: u32_at(8),
        cgroup_id: u64::from_ne_bytes(cgroup_id),
        attach_type: u32_at(24),
        ifindex: u32_at(16),
    })
}

/// Atomically replaces the program a link runs.
pub(crate) fn link_update(link: BorrowedFd<'_>, new_prog: BorrowedFd<'_>) -> anyhow::Result<()> {
    let mut attr = BpfAttr::new();
    // link_update: { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, new_prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).context("BPF_LINK_UPDATE")?;
    Ok(())
}

/// What one [`map_lookup_batch`] call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Batch {
    /// Entries written to the key and value buffers.
    pub(crate) count: u32,
    /// Whether the walk reached the end of the map (`ENOENT`).
    pub(crate) done: bool,
}

/// One `BPF_MAP_LOOKUP_BATCH` on the hash map `map`: up to `max` entries
/// after the position `in_token` (`None`: from the start) are copied to
/// `keys` and `values`, and the next position to `out_token`.
///
/// The buffers are raw, as the kernel writes them: `keys` holds `max` keys
/// of `key_size` bytes (the map's), `values` `max` values of `value_size`,
/// and the tokens at least a key's size (hash maps use 4 bytes, a bucket
/// index); shorter buffers are refused before the call. Other errors are
/// the kernel's: `EINVAL` where the map type has no batch support,
/// `ENOSPC` when one bucket holds more than `max` entries.
pub(crate) fn map_lookup_batch(
    map: BorrowedFd<'_>,
    (key_size, value_size): (usize, usize),
    in_token: Option<&[u8]>,
    out_token: &mut [u8],
    (keys, values): (&mut [u8], &mut [u8]),
    max: u32,
) -> io::Result<Batch> {
    let entries = max as usize;
    let token_size = key_size.max(4);
    if keys.len() < entries * key_size
        || values.len() < entries * value_size
        || out_token.len() < token_size
        || in_token.is_some_and(|token| token.len() < token_size)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "BPF_MAP_LOOKUP_BATCH buffers too small for {max} entries of {key_size}+{value_size} bytes"
            ),
        ));
    }
    let mut attr = BpfAttr::new();
    // batch: { __aligned_u64 in_batch; __aligned_u64 out_batch;
    //   __aligned_u64 keys; __aligned_u64 values; __u32 count; __u32 map_fd;
    //   __u64 elem_flags; __u64 flags; }
    attr.put_u64(0, in_token.map_or(0, |token| token.as_ptr() as u64));
    attr.put_u64(8, out_token.as_mut_ptr() as u64);
    attr.put_u64(16, keys.as_mut_ptr() as u64);
    attr.put_u64(24, values.as_mut_ptr() as u64);
    attr.put_u32(32, max);
    attr.put_u32(36, map.as_raw_fd() as u32);
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(_) => Ok(Batch {
            count: attr.get_u32(32),
            done: false,
        }),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(Batch {
            count: attr.get_u32(32),
            done: true,
        }),
        Err(err) => Err(err),
    }
}

/// The cgroup id of a cgroup2 directory (its inode number).
pub(crate) fn cgroup_id(cgroup: &impl AsFd) -> anyhow::Result<u64> {
    let file = std::fs::File::from(cgroup.as_fd().try_clone_to_owned()?);
    let meta = file.metadata().context("fstat on the cgroup directory")?;
    Ok(std::os::unix::fs::MetadataExt::ino(&meta))
}
