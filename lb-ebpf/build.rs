//! Rebuilds the kernel programs when bpf-linker changes (it is the linker, so
//! cargo does not track it on its own).

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found on PATH: {err}"),
    }
}
