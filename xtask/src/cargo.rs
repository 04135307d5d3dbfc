//! Where the workspace and its target directory are, `cargo` commands run
//! from the workspace root, and building daas-lb (`cargo xtask build`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    process::{log, run},
    setup,
};

/// The daas-lb binary's name (lb-userspace's `[[bin]]`).
const DAAS_LB: &str = "daas-lb";

/// The workspace root and its target directory (honours `CARGO_TARGET_DIR` and
/// cargo config, because cargo itself reports it).
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    pub(crate) target_dir: PathBuf,
}

impl Workspace {
    pub(crate) fn locate() -> Result<Self> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let metadata = cargo_metadata::MetadataCommand::new()
            .manifest_path(&manifest)
            .no_deps()
            .exec()
            .with_context(|| format!("running cargo metadata for {}", manifest.display()))?;
        Ok(Self {
            root: metadata.workspace_root.into_std_path_buf(),
            target_dir: metadata.target_directory.into_std_path_buf(),
        })
    }

    /// `cargo ARGS...` in the workspace root.
    pub(crate) fn cargo<const N: usize>(&self, args: [&str; N]) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&self.root).args(args);
        cmd
    }

    /// `path` relative to the workspace root when it is inside it.
    pub(crate) fn display<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

/// `cargo xtask build`: setup, then build daas-lb.
pub(crate) fn build(release: bool) -> Result<PathBuf> {
    setup::run()?;
    build_daas_lb(&Workspace::locate()?, release)
}

/// The packages every build and test step selects: everything but the
/// kernel crate (bpf target only) and xtask (running now; it has no tests).
/// One selection means cargo resolves features once, so lb-userspace (whose
/// build script compiles the eBPF object, ~30 s cold) is built once, not
/// once per command.
pub(crate) const SELECTION: [&str; 5] =
    ["--workspace", "--exclude", "lb-ebpf", "--exclude", "xtask"];

/// Builds the binaries (daas-lb, lb-test-client) of [`SELECTION`]; returns daas-lb.
pub(crate) fn build_daas_lb(workspace: &Workspace, release: bool) -> Result<PathBuf> {
    let start = Instant::now();
    let mut cmd = workspace.cargo(["build"]);
    cmd.args(SELECTION).arg("--bins");
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let bin = daas_lb_path(workspace, release)?;
    let profile = if release { "release" } else { "debug" };
    log(
        "build",
        format_args!(
            "{DAAS_LB} ({profile}) built in {:.1}s: {}",
            start.elapsed().as_secs_f64(),
            workspace.display(&bin).display()
        ),
    );
    Ok(bin)
}

/// Where `cargo build` leaves daas-lb; an error if it is not there.
pub(crate) fn daas_lb_path(workspace: &Workspace, release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let bin = workspace.target_dir.join(profile).join(DAAS_LB);
    ensure!(
        bin.is_file(),
        "{} does not exist after the build",
        bin.display()
    );
    Ok(bin)
}
