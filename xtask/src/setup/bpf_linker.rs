//! bpf-linker, built against the nightly's own shared libLLVM (so that the
//! bitcode rustc emits and the LLVM that links it always agree).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use super::{doing, ok, toolchain::Nightly};
use crate::process::{find_program, run, stdout};

/// The bpf-linker release this project uses.
pub(super) const VERSION: &str = "0.13.0";
/// The LLVM major version bpf-linker is built for (its `llvm-22` feature).
const LLVM_MAJOR: u32 = 22;

/// Installs bpf-linker unless a working one of the right version is on PATH.
/// One that fails to start counts as missing: after a nightly update its
/// rpath'd libLLVM is gone.
pub(super) fn ensure(nightly: &Nightly) -> Result<()> {
    let item = format!("bpf-linker {VERSION}");
    let why = match installed_version() {
        Ok(version) if version == VERSION => {
            ok(&item, "present");
            return Ok(());
        }
        Ok(version) => format!("found {version}"),
        Err(e) => format!("{e:#}"),
    };
    doing(
        &item,
        format_args!("{why}; installing with cargo install (about a minute)"),
    );
    let start = Instant::now();
    install(nightly)?;
    let version = installed_version().context("checking the bpf-linker just installed")?;
    ensure!(
        version == VERSION,
        "installed bpf-linker {VERSION}, but `bpf-linker --version` reports {version} \
         (is another bpf-linker earlier on PATH?)"
    );
    ok(
        &item,
        format_args!("installed in {:.0}s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// The version `bpf-linker --version` prints.
fn installed_version() -> Result<String> {
    if find_program("bpf-linker").is_none() {
        bail!("not installed");
    }
    let out = stdout(Command::new("bpf-linker").arg("--version"))
        .map_err(|e| anyhow!("fails to run: {e:#}"))?;
    // "bpf-linker 0.13.0"
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("unexpected `bpf-linker --version` output {out:?}"))
}

/// `cargo install bpf-linker` linked against the nightly's libLLVM, with an
/// rpath to it.
fn install(nightly: &Nightly) -> Result<()> {
    if nightly.llvm_major() != Some(LLVM_MAJOR) {
        bail!(
            "bpf-linker {VERSION} is built with its llvm-{LLVM_MAJOR} feature, but the nightly \
             has LLVM {}; install the tested nightly (see the warning above)",
            nightly.llvm_version
        );
    }
    let lib_dir = nightly.sysroot.join("lib");
    let lib = libllvm_file_name(&lib_dir)?;
    let lib_dir = lib_dir
        .to_str()
        .filter(|dir| !dir.contains(char::is_whitespace))
        .ok_or_else(|| {
            anyhow!(
                "{} cannot be passed in RUSTFLAGS (not UTF-8 or has whitespace)",
                lib_dir.display()
            )
        })?;
    let rustflags =
        format!("-C link-arg=-L{lib_dir} -C link-arg=-l:{lib} -C link-arg=-Wl,-rpath,{lib_dir}");
    run(Command::new("cargo")
        .args(["install", &format!("bpf-linker@{VERSION}")])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR},no-llvm-linking"))
        .arg("--force")
        .env("RUSTFLAGS", rustflags)
        // It would take precedence over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS"))
}

/// The file name of the nightly's shared libLLVM (`libLLVM-<ver>-rust-...so`).
fn libllvm_file_name(lib_dir: &Path) -> Result<String> {
    let read_error = || format!("reading {}", lib_dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(lib_dir).with_context(read_error)? {
        let name = entry.with_context(read_error)?.file_name();
        if let Some(name) = name.to_str()
            && name.starts_with("libLLVM-")
            && Path::new(name).extension().is_some_and(|ext| ext == "so")
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names.into_iter().next().ok_or_else(|| {
        anyhow!(
            "no libLLVM-*.so in {}; bpf-linker links against the nightly's own LLVM",
            lib_dir.display()
        )
    })
}
