//! `cargo xtask install`: puts daas-lb where a Debian system expects it.
//!
//! Layout (with `--prefix /usr`, the default; `DESTDIR` in front of each):
//! - `/usr/bin/daas-lb` (0755): the release binary, eBPF object embedded;
//! - `/lib/systemd/system/daas-lb.service` (0644): `scripts/packaging/daas-lb.service`
//!   with `ExecStart`/`ExecReload` pointing at the installed binary;
//! - `/etc/daas-lb/config.yaml` (0644): `scripts/packaging/config.yaml`, a conffile:
//!   an existing one is never overwritten (the new default is always at
//!   `/usr/share/doc/daas-lb/examples/config.yaml`);
//! - `/usr/share/doc/daas-lb/README.md`, `k3s.md` (the K3s guide) and
//!   `examples/config.yaml` (0644);
//! - `/var/lib/daas-lb` (0700), the state directory (systemd's
//!   `StateDirectory=` creates it too).
//!
//! Another prefix (e.g. `/usr/local`) puts the unit under
//! `PREFIX/lib/systemd/system` (systemd reads `/usr/local/lib/systemd/system`)
//! and the docs under `PREFIX/share/doc`; the config stays in `/etc`.
//! Installing again replaces everything but an existing config file.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    cargo,
    process::{find_program, log, run},
};

const TAG: &str = "install";
/// The binary path written in `scripts/packaging/daas-lb.service`.
const UNIT_BINARY: &str = "/usr/bin/daas-lb";

/// What to install and where.
pub(crate) struct Options {
    /// Installation prefix (absolute), `/usr` by default.
    pub(crate) prefix: PathBuf,
    /// Staging root put in front of every path (`DESTDIR`); `None`: `/`.
    pub(crate) destdir: Option<PathBuf>,
    /// A daas-lb binary to install instead of building the release one.
    pub(crate) binary: Option<PathBuf>,
}

/// `cargo xtask install`.
pub(crate) fn install(options: &Options) -> Result<()> {
    ensure!(
        options.prefix.is_absolute(),
        "--prefix {} must be an absolute path",
        options.prefix.display()
    );
    let sources = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask's manifest directory has no parent")?
        .to_path_buf();
    let binary = match &options.binary {
        Some(binary) => {
            ensure!(
                binary.is_file(),
                "--binary {} is not a file",
                binary.display()
            );
            binary.clone()
        }
        None => cargo::build(true)?,
    };
    let root = options
        .destdir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/"));
    let at = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let prefix = &options.prefix;
    let bin = prefix.join("bin/daas-lb");
    let unit_dir = if prefix == Path::new("/usr") {
        PathBuf::from("/lib/systemd/system")
    } else {
        prefix.join("lib/systemd/system")
    };
    let doc_dir = prefix.join("share/doc/daas-lb");

    copy(&binary, &at(&bin), 0o755)?;

    let unit_source = sources.join("scripts/packaging/daas-lb.service");
    let unit = fs::read_to_string(&unit_source)
        .with_context(|| format!("reading {}", unit_source.display()))?;
    ensure!(
        unit.contains(&format!("ExecStart={UNIT_BINARY} ")),
        "{} has no `ExecStart={UNIT_BINARY} ...` line to point at the installed binary",
        unit_source.display()
    );
    let unit = unit.replace(UNIT_BINARY, &bin.display().to_string());
    write(&at(&unit_dir.join("daas-lb.service")), &unit, 0o644)?;

    let config_source = sources.join("scripts/packaging/config.yaml");
    copy(
        &config_source,
        &at(&doc_dir.join("examples/config.yaml")),
        0o644,
    )?;
    copy(
        &sources.join("README.md"),
        &at(&doc_dir.join("README.md")),
        0o644,
    )?;
    copy(
        &sources.join("docs/k3s.md"),
        &at(&doc_dir.join("k3s.md")),
        0o644,
    )?;
    let config = at(Path::new("/etc/daas-lb/config.yaml"));
    if config.exists() {
        log(
            TAG,
            format_args!(
                "kept the existing {} (the new default is {})",
                config.display(),
                at(&doc_dir.join("examples/config.yaml")).display()
            ),
        );
    } else {
        copy(&config_source, &config, 0o644)?;
    }
    let state = at(Path::new("/var/lib/daas-lb"));
    fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    set_mode(&state, 0o700)?;
    log(TAG, format_args!("{} (0700)", state.display()));

    if options.destdir.is_none() && Path::new("/run/systemd/system").is_dir() {
        if let Some(systemctl) = find_program("systemctl") {
            run(Command::new(systemctl).arg("daemon-reload"))?;
        }
        log(
            TAG,
            "done; start it with `systemctl enable --now daas-lb` (edit /etc/daas-lb/config.yaml \
             first: it balances nothing until you add services)",
        );
    } else {
        log(TAG, format_args!("done under {}", root.display()));
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    create_parent(to)?;
    if to.is_dir() {
        bail!("{} is a directory", to.display());
    }
    // Through a temporary name: a running binary is replaced, not rewritten.
    let staged = to.with_extension("daas-lb-new");
    fs::copy(from, &staged)
        .with_context(|| format!("copying {} to {}", from.display(), staged.display()))?;
    set_mode(&staged, mode)?;
    fs::rename(&staged, to)
        .with_context(|| format!("renaming {} to {}", staged.display(), to.display()))?;
    log(TAG, format_args!("{} ({mode:04o})", to.display()));
    Ok(())
}

fn write(to: &Path, contents: &str, mode: u32) -> Result<()> {
    create_parent(to)?;
    fs::write(to, contents).with_context(|| format!("writing {}", to.display()))?;
    set_mode(to, mode)?;
    log(TAG, format_args!("{} ({mode:04o})", to.display()));
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:04o} on {}", path.display()))
}
