//! `cargo xtask run`: setup, build, then exec daas-lb so that Ctrl-C and
//! SIGTERM go straight to it.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, ensure};

use crate::{
    cargo::{Workspace, build_daas_lb},
    process::{is_root, log},
    setup,
};

pub(crate) fn run(release: bool, args: &[String]) -> Result<()> {
    ensure!(
        is_root(),
        "`cargo xtask run` needs root (daas-lb loads and attaches eBPF programs); run \
         `sudo -E cargo xtask run` (if sudo resets PATH: `sudo -E env \"PATH=$PATH\" cargo \
         xtask run`)"
    );
    setup::run()?;
    let workspace = Workspace::locate()?;
    let bin = build_daas_lb(&workspace, release)?;

    let mut cmd = Command::new(&bin);
    cmd.arg("run");
    if !has_config(args) {
        cmd.arg("--demo");
    }
    cmd.args(args);
    log("run", format_args!("exec {cmd:?}"));
    // Only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("running {cmd:?}"))
}

/// Whether the arguments choose a config file (`--config X`/`--config=X`).
fn has_config(args: &[String]) -> bool {
    args.iter()
        .any(|arg| arg == "--config" || arg.starts_with("--config="))
}
