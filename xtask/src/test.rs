//! `cargo xtask test`: unit tests, then the privileged integration tests
//! (lb-tests), which drive a real daas-lb binary and therefore need root.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::{
    cargo::{SELECTION, Workspace, build_daas_lb},
    process::{in_ci, is_root, log, run},
    setup,
};

const TAG: &str = "test";

pub(crate) fn test(test_args: &[String]) -> Result<()> {
    let root = is_root();
    if !root && in_ci() {
        bail!(
            "CI=true but not running as root: the integration tests load eBPF programs and \
             need root (run `sudo -E cargo xtask test`)"
        );
    }
    let start = Instant::now();
    setup::run()?;
    let workspace = Workspace::locate()?;
    if !root {
        skipped_banner();
    }

    // Same package selection for every step (see `SELECTION`).
    let unit_start = Instant::now();
    let mut unit = workspace.cargo(["test"]);
    unit.args(SELECTION).args(["--lib", "--bins"]);
    if !test_args.is_empty() {
        unit.arg("--").args(test_args);
    }
    run(&mut unit)?;
    let unit_secs = unit_start.elapsed().as_secs_f64();
    log(TAG, format_args!("unit tests passed in {unit_secs:.1}s"));

    if !root {
        skipped_banner();
        log(
            TAG,
            format_args!(
                "done in {:.1}s: unit tests passed ({unit_secs:.1}s), integration tests SKIPPED \
                 (not root)",
                start.elapsed().as_secs_f64()
            ),
        );
        return Ok(());
    }

    let build_start = Instant::now();
    let bin = build_daas_lb(&workspace, false)?;
    let build_secs = build_start.elapsed().as_secs_f64();

    let integration_start = Instant::now();
    let mut integration = workspace.cargo(["test"]);
    integration
        .args(SELECTION)
        .args(["--test", "*", "--", "--test-threads=2"])
        .args(test_args)
        .env("DAAS_LB_BIN", &bin)
        .env("RUST_BACKTRACE", "1");
    run(&mut integration)?;
    let integration_secs = integration_start.elapsed().as_secs_f64();

    log(
        TAG,
        format_args!(
            "all passed in {:.1}s: unit tests {unit_secs:.1}s, daas-lb build {build_secs:.1}s, \
             integration tests {integration_secs:.1}s",
            start.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

fn skipped_banner() {
    let rule = "*".repeat(72);
    log(TAG, &rule);
    log(
        TAG,
        "NOT ROOT: the integration tests (lb-tests) are SKIPPED, only unit tests run.",
    );
    log(
        TAG,
        "They load and attach eBPF programs; run them with `sudo -E cargo xtask test`.",
    );
    log(TAG, &rule);
}
