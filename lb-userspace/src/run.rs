//! `daas-lb run`: wires config, data plane, controller, health checks, the
//! HTTP endpoints and the control socket together, reloads on SIGHUP (or
//! `daas-lb reload`), and tears everything down on SIGINT/SIGTERM.

use std::{path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    task::JoinSet,
};
use tracing::{error, info, warn};

use crate::{
    api::{self, Api, LoadConfig},
    config::{Config, DaemonDataplane},
    controller::Controller,
    kernel::{AttachReport, dataplane::Dataplane, mounts, xdp_settings},
};

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A YAML file.
    File(PathBuf),
    /// The embedded demo.
    Demo,
}

/// Options of `daas-lb run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Config file or demo.
    pub source: ConfigSource,
    /// Overrides `cgroup` from the config.
    pub cgroup: Option<PathBuf>,
    /// Overrides `bpffs_dir` from the config.
    pub bpffs_dir: Option<PathBuf>,
    /// Overrides `control_socket` from the config.
    pub control_socket: Option<PathBuf>,
}

impl RunOptions {
    /// The command line's overrides applied to `config`.
    fn apply_overrides(&self, config: &mut Config) {
        if let Some(cgroup) = &self.cgroup {
            config.cgroup = Some(cgroup.clone());
        }
        if let Some(dir) = &self.bpffs_dir {
            config.bpffs_dir.clone_from(dir);
        }
        if let Some(socket) = &self.control_socket {
            config.control_socket.clone_from(socket);
        }
    }

    /// How a reload reads the configuration again.
    fn config_loader(&self) -> LoadConfig {
        let options = self.clone();
        Arc::new(move || {
            let ConfigSource::File(path) = &options.source else {
                anyhow::bail!("the demo configuration is built in and cannot be reloaded");
            };
            let mut config = Config::load(path)?;
            warn_about(&config, path);
            options.apply_overrides(&mut config);
            Ok((config, path.display().to_string()))
        })
    }
}

/// Logs the config's [warnings](Config::warnings), each a `warn!`.
fn warn_about(config: &Config, path: &std::path::Path) {
    for warning in config.warnings() {
        warn!(path = %path.display(), "{warning}");
    }
}

/// Runs until SIGINT/SIGTERM; returns after detaching everything.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal must never hit the default action (exit
    // without detaching) once anything is attached.
    let mut signals = Signals::install()?;
    let mut tasks = JoinSet::new();
    let (mut config, is_demo) = match &options.source {
        ConfigSource::File(path) => {
            let config = Config::load(path)?;
            warn_about(&config, path);
            (config, false)
        }
        ConfigSource::Demo => (start_demo(&mut tasks).await?, true),
    };
    options.apply_overrides(&mut config);
    if config.bpffs_dir.parent().is_none() {
        bail!(
            "bpffs_dir {} must be below a bpffs mount",
            config.bpffs_dir.display()
        );
    }

    // Bind the HTTP ports first: a busy port must fail before the kernel is touched.
    let api_listener = api::bind(config.api_addr, "the status API").await?;
    // Two listeners even when both ask for port 0: each serves its own routes.
    let metrics_listener = api::bind(config.metrics_addr, "the metrics endpoint").await?;
    // So is a second daemon on the same control socket. The guard removes
    // the socket file when `run` returns, also on an error.
    let (control_listener, control_socket) =
        api::control::bind(&config.control_socket, config.control_group.as_ref())?;
    // And a token file that does not load.
    let token = api::load_token(&config)?;

    let (dataplane, report, cgroup, fallback): (
        Option<Dataplane>,
        AttachReport,
        Option<PathBuf>,
        Option<String>,
    ) = match config.dataplane {
        DaemonDataplane::Proxy => {
            info!(
                "dataplane: proxy: no eBPF program is loaded; every service is proxied by the daemon"
            );
            warn_about_leftover_pins(&config.bpffs_dir);
            (None, AttachReport::default(), None, None)
        }
        mode => match load_ebpf(&config) {
            Ok((dataplane, report, cgroup)) => (Some(dataplane), report, Some(cgroup), None),
            Err(err) if mode == DaemonDataplane::Auto => {
                error!(
                    error = format!("{err:#}"),
                    "THE eBPF DATA PLANE COULD NOT START; dataplane: auto falls back to PROXY MODE: \
                     every service is proxied by the daemon on its VIP"
                );
                (
                    None,
                    AttachReport::default(),
                    None,
                    Some(format!("{err:#}")),
                )
            }
            Err(err) => return Err(err),
        },
    };
    // Boxed: the start's future holds the whole data plane.
    let controller = match Box::pin(Controller::start(config.clone(), dataplane, fallback)).await {
        Ok(c) => c,
        Err(err) => {
            // Only what this run loaded and pinned itself is removed (never
            // an earlier run's pins when no eBPF was loaded).
            if cgroup.is_some() && report.adopted.is_empty() {
                let _ = crate::kernel::dataplane::cleanup(&config.bpffs_dir);
            }
            return Err(err);
        }
    };
    let api = Api::new(controller.clone(), &config, token, options.config_loader());
    let listeners = [
        ("api", api.api_router(), Listener::Tcp(api_listener)),
        (
            "metrics",
            api.metrics_router(),
            Listener::Tcp(metrics_listener),
        ),
        (
            "control",
            api.control_router(),
            Listener::Unix(control_listener),
        ),
    ];
    for (name, router, listener) in listeners {
        let refusals = Arc::clone(api.refusals());
        tasks.spawn(async move {
            let served = match listener {
                Listener::Tcp(l) => api::serve(l, name, router, refusals).await,
                Listener::Unix(l) => api::serve(l, name, router, refusals).await,
            };
            if let Err(err) = served {
                error!(
                    listener = name,
                    error = format!("{err:#}"),
                    "HTTP listener stopped"
                );
            }
        });
    }
    info!(
        api = %config.api_addr,
        metrics = %config.metrics_addr,
        control_socket = %control_socket.path().display(),
        changes_over_tcp = config.api_token_file.is_some(),
        services = config.services.len(),
        "daas-lb running"
    );
    #[cfg(not(feature = "demo"))]
    let _ = is_demo;
    #[cfg(feature = "demo")]
    if is_demo {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| "daas-lb".to_owned());
        if let Some(cgroup) = &cgroup {
            let text = crate::demo::instructions(&config, &config.bpffs_dir, cgroup, &binary);
            println!("{text}");
        }
    }

    signals.wait_for_stop(&api).await;
    tasks.shutdown().await;
    drop(control_socket);
    controller.shutdown().await?;
    if cgroup.is_some() {
        info!(pin_dir = %config.bpffs_dir.display(), "detached and unpinned; bye");
    } else {
        info!("proxies stopped; bye");
    }
    Ok(())
}

/// Warns when `pin_dir` holds an earlier eBPF run's pins: their programs
/// may still redirect VIPs in the kernel, which a daemon that loads no eBPF
/// does not undo (`daas-lb cleanup` does).
fn warn_about_leftover_pins(pin_dir: &std::path::Path) {
    let leftovers = std::fs::read_dir(pin_dir).map_or(0, Iterator::count);
    if leftovers > 0 {
        warn!(pin_dir = %pin_dir.display(), entries = leftovers, "dataplane: proxy, but an earlier eBPF run left pins here: its programs may still redirect VIPs in the kernel; run `daas-lb cleanup` to detach them");
    }
}

/// Loads and attaches the eBPF data plane as `config` says: the cgroup to
/// attach to, the bpffs mount, the programs and their links.
fn load_ebpf(config: &Config) -> anyhow::Result<(Dataplane, AttachReport, PathBuf)> {
    let cgroup = resolve_cgroup(config)?;
    if let Some(xdp) = &config.xdp {
        xdp_settings::warn_if_snat_ports_overlap(
            xdp,
            std::path::Path::new(xdp_settings::LOCAL_PORT_RANGE_FILE),
        );
    }
    mounts::ensure_bpffs(&config.bpffs_dir)?;
    let (dataplane, report) = Dataplane::start(&config.bpffs_dir, &cgroup, config.xdp.as_ref())
        .map_err(|err| {
            if is_permission_error(&err) {
                err.context(
                    "loading eBPF programs needs root with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN)",
                )
            } else {
                err
            }
        })?;
    info!(
        cgroup = %cgroup.display(),
        pin_dir = %config.bpffs_dir.display(),
        attached = ?report.attached,
        adopted = ?report.adopted,
        replaced = ?report.replaced,
        reused_maps = ?report.reused_maps,
        "programs attached"
    );
    if let Some(xdp) = &config.xdp {
        let hooks: Vec<String> = report
            .hooks
            .iter()
            .map(|h| format!("{}: {} {} ({})", h.interface, h.hook, h.mode, h.why))
            .collect();
        info!(
            hooks = ?hooks,
            xdp_attached = ?report.xdp.attached,
            xdp_adopted = ?report.xdp.adopted,
            xdp_replaced = ?report.xdp.replaced,
            xdp_detached = ?report.xdp.detached,
            tc_attached = ?report.tc.attached,
            tc_adopted = ?report.tc.adopted,
            tc_replaced = ?report.tc.replaced,
            tc_detached = ?report.tc.detached,
            snat_ports = %xdp.snat_ports,
            "forwarding for remote clients attached"
        );
    }
    Ok((dataplane, report, cgroup))
}

/// A bound listener, before it is served.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// The embedded demo's configuration, its backends and doubles started on `tasks`.
#[cfg(feature = "demo")]
async fn start_demo(tasks: &mut JoinSet<()>) -> anyhow::Result<Config> {
    let base = Config::from_yaml("services: []\n", "<demo>")?;
    crate::demo::start(base, tasks).await
}

/// Built without the `demo` feature: there is no demo to run.
#[cfg(not(feature = "demo"))]
#[expect(
    clippy::unused_async,
    reason = "the same signature as the demo build's start_demo"
)]
async fn start_demo(_tasks: &mut JoinSet<()>) -> anyhow::Result<Config> {
    bail!("this daas-lb was built without the `demo` feature; run it with --config FILE")
}

/// The cgroup to attach to: `cgroup` from the config (or `--cgroup`), else
/// the first cgroup2 mount. With no cgroup2 mounted at all (e.g. under `ip
/// netns exec`), cgroup2 is mounted first (see [`mounts::ensure_cgroup2`]).
fn resolve_cgroup(config: &Config) -> anyhow::Result<PathBuf> {
    let mounted = mounts::ensure_cgroup2()?;
    let Some(cgroup) = &config.cgroup else {
        return mounts::default_cgroup();
    };
    if mounted == mounts::Mount::MountedNow && !cgroup.exists() {
        bail!(
            "cgroup {} does not exist: no cgroup2 was mounted in this mount namespace (e.g. under \
             `ip netns exec`, which remounts /sys), so daas-lb mounted it on {} and cgroup paths \
             are relative to that mount (`/sys/fs/cgroup/unified/X` on a hybrid host is {}/X \
             here); pass --cgroup with that path",
            cgroup.display(),
            mounts::CGROUP2_MOUNT,
            mounts::CGROUP2_MOUNT
        );
    }
    Ok(cgroup.clone())
}

fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
            || cause.to_string().contains("Operation not permitted")
    })
}

/// The signals `run` handles.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Handles SIGHUP (reload) until SIGINT or SIGTERM arrives.
    async fn wait_for_stop(&mut self, api: &Api) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM: shutting down"); return; }
                _ = self.int.recv() => { info!("SIGINT: shutting down"); return; }
                _ = self.hup.recv() => reload(api).await,
            }
        }
    }
}

/// SIGHUP: re-reads the config file; a file that does not load or apply
/// leaves the running configuration as it was.
async fn reload(api: &Api) {
    info!("SIGHUP: reloading the configuration");
    match api.reload().await {
        Ok(path) => info!(path = %path, "configuration reloaded"),
        Err(err) => {
            error!(
                error = format!("{err:#}"),
                "configuration NOT reloaded; keeping the running one"
            );
        }
    }
}
