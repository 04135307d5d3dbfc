//! Builds the kernel programs (`lb-ebpf`) with aya-build and leaves the object
//! in `$OUT_DIR/lb-ebpf`, where `src/ebpf_object.rs` embeds it.
//!
//! Without bpf-linker (or with `AYA_BUILD_SKIP=1`) an empty stub object is
//! written instead, so `cargo check`, `cargo clippy` and the unit tests work
//! on any machine; a binary built that way refuses to load with a message
//! that says how to build it for real (`cargo xtask build`).

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const OUT_DIR: &str = "OUT_DIR";
const AYA_BUILD_SKIP: &str = "AYA_BUILD_SKIP";
const EBPF_PACKAGE: &str = "lb-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={AYA_BUILD_SKIP}");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os(OUT_DIR).context("OUT_DIR not set")?);
    let stub = out_dir.join(EBPF_PACKAGE);

    let skip = env::var(AYA_BUILD_SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let linker = find_on_path("bpf-linker");
    if skip || linker.is_none() {
        let why = if skip {
            format!("{AYA_BUILD_SKIP} is set")
        } else {
            "bpf-linker is not on PATH (run `cargo xtask setup`)".to_owned()
        };
        println!("cargo:warning=not building the eBPF programs: {why}; embedding an empty stub");
        fs::write(&stub, []).with_context(|| format!("writing {}", stub.display()))?;
        return Ok(());
    }
    if let Some(linker) = linker {
        println!("cargo:rerun-if-changed={}", linker.display());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not in the workspace"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF programs with aya-build")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
