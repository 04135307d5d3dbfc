//! `cargo xtask lint` (clippy on the host crates and on the kernel crate for
//! the bpf target, then the rustfmt check) and `cargo xtask fmt`.
//!
//! rustfmt.toml uses unstable options, so formatting goes through nightly
//! rustfmt. Stable `cargo fmt --check` also passes on its output (stable
//! ignores the unstable options, whose effect it preserves), so only the
//! nightly check runs.

use std::time::Instant;

use anyhow::Result;

use crate::{
    cargo::{SELECTION, Workspace},
    process::{log, run},
    setup,
};

const TAG: &str = "lint";

/// The target the kernel crate is checked for (aya-build's bpfel default).
const BPF_TARGET: &str = "bpfel-unknown-none";

pub(crate) fn lint() -> Result<()> {
    let start = Instant::now();
    setup::run()?;
    let workspace = Workspace::locate()?;

    // Same package selection as `cargo xtask test` (so the build script
    // results are shared), then xtask on its own.
    log(TAG, "clippy: host crates");
    let host_clippy = |selection: &[&str]| {
        let mut cmd = workspace.cargo(["clippy"]);
        cmd.args(selection)
            .args(["--all-targets", "--", "-D", "warnings"]);
        run(&mut cmd)
    };
    host_clippy(&SELECTION)?;
    host_clippy(&["-p", "xtask"])?;

    log(TAG, format_args!("clippy: lb-ebpf for {BPF_TARGET}"));
    let mut bpf_clippy = workspace.cargo([
        "+nightly",
        "clippy",
        "-p",
        "lb-ebpf",
        "--target",
        BPF_TARGET,
        "-Z",
        "build-std=core",
        "--bins",
        "--",
        "-D",
        "warnings",
    ]);
    bpf_clippy
        // What aya-build passes when it builds the programs for this host.
        .env(
            "RUSTFLAGS",
            format!("--cfg bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        // It would take precedence over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // Other RUSTFLAGS than the host build's: keep its artifacts apart so
        // neither invalidates the other.
        .env("CARGO_TARGET_DIR", workspace.target_dir.join("bpf-clippy"));
    run(&mut bpf_clippy)?;

    log(TAG, "rustfmt --check (nightly)");
    run(&mut workspace.cargo(["+nightly", "fmt", "--all", "--", "--check"]))?;

    log(
        TAG,
        format_args!("all passed in {:.1}s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}

pub(crate) fn fmt() -> Result<()> {
    run(&mut Workspace::locate()?.cargo(["+nightly", "fmt", "--all"]))
}
