//! Spawning commands (errors name the command line), finding programs on
//! PATH, the root check and the `[tag] message` progress lines.

use std::{
    env,
    fmt::Display,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, ensure};

/// Prints a progress line, `[tag] message`, on stderr.
pub(crate) fn log(tag: &str, message: impl Display) {
    eprintln!("[{tag}] {message}");
}

/// Runs `cmd` with inherited stdio (its output streams through) and fails
/// unless it exits successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    ensure!(status.success(), "running {cmd:?}: {status}");
    Ok(())
}

/// Runs `cmd`, capturing its output; fails (with its stderr) unless it exits
/// successfully. Returns stdout.
pub(crate) fn stdout(cmd: &mut Command) -> Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        status.success(),
        "running {cmd:?}: {status}: {}",
        String::from_utf8_lossy(&stderr).trim()
    );
    String::from_utf8(stdout).with_context(|| format!("running {cmd:?}: stdout is not UTF-8"))
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`), where `cargo install` puts
/// bpf-linker and rustup puts its proxies.
pub(crate) fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::home_dir().map(|home| home.join(".cargo")))?;
    Some(home.join("bin"))
}

/// Puts [`cargo_bin_dir`] first on this process's PATH, so that every child
/// (and every program lookup) finds bpf-linker even when the caller's PATH
/// (e.g. under sudo) lacks it. Call before any thread is spawned.
pub(crate) fn put_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return;
    }
    let Ok(joined) = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))) else {
        return;
    };
    // SAFETY: called at the start of `main`, before xtask spawns any thread,
    // so nothing reads the environment concurrently.
    unsafe { env::set_var("PATH", joined) };
}

/// Finds an executable on PATH, or in the sbin directories that a non-root
/// PATH often lacks (bpftool and ip live there on Debian).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs with effective uid 0.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether we run in CI (`CI=true`, as CI systems and `.ci/run` set it).
pub(crate) fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}
