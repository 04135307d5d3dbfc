//! The kernel programs' object file, built by `build.rs` and embedded here.

use anyhow::bail;

/// The `lb-ebpf` ELF object (empty when the crate was built without bpf-linker).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The embedded object, or an error that says how to get a real one.
pub fn ebpf_object() -> anyhow::Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this daas-lb binary was built without its eBPF programs (bpf-linker was missing or \
             AYA_BUILD_SKIP was set); build it with `cargo xtask build`"
        );
    }
    Ok(EBPF_OBJECT)
}
