//! The nightly toolchain (aya-build compiles the kernel programs with
//! `cargo +nightly`) and its components: rust-src for `-Z build-std=core`,
//! rustfmt and clippy for `cargo xtask lint`/`fmt`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, anyhow};

use super::{Progress, doing, ok};
use crate::process::{run, stdout};

/// The toolchain name aya-build (and xtask) use: `cargo +nightly ...`.
const NIGHTLY: &str = "nightly";
/// Commit date of the nightly this project is tested with, as `rustc -vV`
/// reports it: rustc 1.97.0-nightly (e50aa6fba 2026-05-19), LLVM 22.1.4,
/// which bpf-linker's `llvm-22` feature matches.
const TESTED_DATE: &str = "2026-05-19";
/// rustup's name for that nightly: channels are named after the day they
/// were published, one day after the commit (`nightly-2026-05-19` is
/// rustc 9eb3be26b from 2026-05-18).
const TESTED_TOOLCHAIN: &str = "nightly-2026-05-20";

/// What `rustc +nightly -vV` and `--print sysroot` report.
pub(super) struct Nightly {
    pub(super) release: String,
    pub(super) commit_date: String,
    pub(super) llvm_version: String,
    pub(super) sysroot: PathBuf,
}

impl Nightly {
    /// The LLVM major version, e.g. 22.
    pub(super) fn llvm_major(&self) -> Option<u32> {
        self.llvm_version.split('.').next()?.parse().ok()
    }
}

/// Makes sure `rustc +nightly` works; installs the tested nightly when it
/// does not.
pub(super) fn ensure_nightly(progress: &mut Progress) -> Result<Nightly> {
    const ITEM: &str = "nightly toolchain";
    let nightly = match query() {
        Ok(nightly) => nightly,
        Err(e) => {
            doing(
                ITEM,
                format_args!("missing ({e:#}); installing {TESTED_TOOLCHAIN}"),
            );
            install()?;
            query().with_context(|| {
                format!(
                    "`rustc +{NIGHTLY}` still fails after installing {TESTED_TOOLCHAIN}: \
                     aya-build runs `cargo +{NIGHTLY}`, and rustup cannot give a dated \
                     toolchain the name `{NIGHTLY}`. Install the channel with `rustup \
                     toolchain install {NIGHTLY} --profile minimal --component rust-src` (its \
                     LLVM must be 22 for bpf-linker's llvm-22 feature), then rerun `cargo \
                     xtask setup`"
                )
            })?
        }
    };
    ok(
        ITEM,
        format_args!(
            "rustc {} {}, LLVM {}",
            nightly.release, nightly.commit_date, nightly.llvm_version
        ),
    );
    if nightly.commit_date != TESTED_DATE {
        progress.warn(format_args!(
            "`rustc +{NIGHTLY}` is from {} (LLVM {}), this project is tested with the one \
             from {TESTED_DATE} (rustup's {TESTED_TOOLCHAIN}, LLVM 22); suspect that first if \
             the eBPF build or bpf-linker breaks",
            nightly.commit_date, nightly.llvm_version
        ));
    }
    Ok(nightly)
}

fn query() -> Result<Nightly> {
    let verbose = stdout(Command::new("rustc").arg(format!("+{NIGHTLY}")).arg("-vV"))?;
    let field = |name: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`rustc +{NIGHTLY} -vV` printed no {name:?} line"))
    };
    let sysroot = stdout(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )?;
    Ok(Nightly {
        release: field("release")?,
        commit_date: field("commit-date")?,
        llvm_version: field("LLVM version")?,
        sysroot: PathBuf::from(sysroot.trim_end()),
    })
}

fn install() -> Result<()> {
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        TESTED_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))
    .context(
        "installing the nightly toolchain failed; rustup (https://rustup.rs) and network \
         access to static.rust-lang.org are needed",
    )
}

/// Makes sure the nightly has rust-src (required), rustfmt and clippy
/// (only lint/fmt need them: a failure to add them is a warning).
pub(super) fn ensure_components(nightly: &Nightly, progress: &mut Progress) -> Result<()> {
    const ITEM: &str = "nightly components";
    let sysroot = &nightly.sysroot;
    let has_rust_src = sysroot.join("lib/rustlib/src/rust/library/core").is_dir();
    let has = |bin: &str| sysroot.join("bin").join(bin).is_file();
    let tools: Vec<&str> = [("rustfmt", "rustfmt"), ("clippy", "cargo-clippy")]
        .into_iter()
        .filter(|&(_, bin)| !has(bin))
        .map(|(component, _)| component)
        .collect();
    if has_rust_src && tools.is_empty() {
        ok(ITEM, "rust-src, rustfmt, clippy present");
        return Ok(());
    }
    if !has_rust_src {
        doing(ITEM, "rust-src missing; adding it");
        add_components(&["rust-src"])?;
        anyhow::ensure!(
            sysroot.join("lib/rustlib/src/rust/library/core").is_dir(),
            "rustup added rust-src, but {} is still missing",
            sysroot.display()
        );
    }
    if !tools.is_empty() {
        doing(ITEM, format_args!("{} missing; adding", tools.join(", ")));
        if let Err(e) = add_components(&tools) {
            progress.warn(format_args!(
                "{e:#}; `cargo xtask lint` and `fmt` need them"
            ));
            return Ok(());
        }
    }
    ok(ITEM, "rust-src, rustfmt, clippy installed");
    Ok(())
}

fn add_components(components: &[&str]) -> Result<()> {
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(components)
        .args(["--toolchain", NIGHTLY]))
}
