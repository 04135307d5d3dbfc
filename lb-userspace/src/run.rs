//! `daas-lb run`: wires config, data plane, controller, health checks and
//! the HTTP endpoints together, and tears everything down on SIGINT/SIGTERM.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    task::JoinSet,
};
use tracing::{error, info, warn};

use crate::{
    api, config::Config, controller::Controller, dataplane::Dataplane, demo, xdp_settings,
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
}

/// The first cgroup2 mount point in `/proc/mounts`.
pub fn default_cgroup() -> anyhow::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    first_cgroup2_mount(&mounts)
        .context("no cgroup2 filesystem is mounted (mount one, or pass --cgroup)")
}

fn first_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, mount_point, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
        (fs_type == "cgroup2").then(|| PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// Runs until SIGINT/SIGTERM; returns after detaching everything.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    // Handlers first: a signal must never hit the default action (exit
    // without detaching) once anything is attached.
    let mut signals = Signals::install()?;
    let mut tasks = JoinSet::new();
    let (mut config, is_demo) = match &options.source {
        ConfigSource::File(path) => (Config::load(path)?, false),
        ConfigSource::Demo => {
            let base = Config::from_yaml("services: []\n", "<demo>")?;
            (demo::start(base, &mut tasks).await?, true)
        }
    };
    if let Some(cgroup) = &options.cgroup {
        config.cgroup = Some(cgroup.clone());
    }
    if let Some(dir) = &options.bpffs_dir {
        config.bpffs_dir.clone_from(dir);
    }
    let cgroup = match &config.cgroup {
        Some(c) => c.clone(),
        None => default_cgroup()?,
    };
    if config.bpffs_dir.parent().is_none() {
        bail!(
            "bpffs_dir {} must be below a bpffs mount",
            config.bpffs_dir.display()
        );
    }

    // Bind the HTTP ports first: a busy port must fail before the kernel is touched.
    let api_listener = api::bind(config.api_addr, "the status API").await?;
    let metrics_listener = if config.metrics_addr == config.api_addr {
        None
    } else {
        Some(api::bind(config.metrics_addr, "the metrics endpoint").await?)
    };

    if let Some(xdp) = &config.xdp {
        xdp_settings::warn_if_snat_ports_overlap(
            xdp,
            std::path::Path::new(xdp_settings::LOCAL_PORT_RANGE_FILE),
        );
    }
    let (dataplane, report) = Dataplane::start(&config.bpffs_dir, &cgroup, config.xdp.as_ref())
        .map_err(|err| {
            if is_permission_error(&err) {
                err.context(
                    "loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)",
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
        info!(
            interfaces = ?xdp.interfaces,
            mode = %xdp.mode,
            attached = ?report.xdp_attached,
            adopted = ?report.xdp_adopted,
            replaced = ?report.xdp_replaced,
            detached = ?report.xdp_detached,
            snat_ports = %xdp.snat_ports,
            "XDP forwarding for remote clients attached"
        );
    }
    let controller = match Controller::new(config.clone(), dataplane) {
        Ok(c) => c,
        Err(err) => {
            if report.adopted.is_empty() {
                let _ = crate::dataplane::cleanup(&config.bpffs_dir);
            }
            return Err(err);
        }
    };
    {
        let c = controller.clone();
        let every = config.connection_poll_interval;
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                tokio::task::block_in_place(|| {
                    c.poll();
                    // XDP's SNAT sources follow address changes (no-op without `xdp`).
                    c.refresh_if_addrs();
                });
            }
        });
    }
    {
        let c = controller.clone();
        tasks.spawn(async move {
            if let Err(err) = api::serve(api_listener, c).await {
                error!(error = format!("{err:#}"), "status API stopped");
            }
        });
    }
    if let Some(listener) = metrics_listener {
        let c = controller.clone();
        tasks.spawn(async move {
            if let Err(err) = api::serve(listener, c).await {
                error!(error = format!("{err:#}"), "metrics endpoint stopped");
            }
        });
    }
    info!(api = %config.api_addr, metrics = %config.metrics_addr, services = config.services.len(), "daas-lb running");
    if is_demo {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| "daas-lb".to_owned());
        let text = demo::instructions(&config, &config.bpffs_dir, &cgroup, &binary);
        println!("{text}");
    }

    signals.wait_for_stop(&controller, &options).await;
    tasks.shutdown().await;
    controller.shutdown()?;
    info!(pin_dir = %config.bpffs_dir.display(), "detached and unpinned; bye");
    Ok(())
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
    async fn wait_for_stop(&mut self, controller: &Controller, options: &RunOptions) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { info!("SIGTERM: shutting down"); return; }
                _ = self.int.recv() => { info!("SIGINT: shutting down"); return; }
                _ = self.hup.recv() => reload(controller, options),
            }
        }
    }
}

/// SIGHUP: re-reads the config file; a file that does not load or apply
/// leaves the running configuration as it was.
fn reload(controller: &Controller, options: &RunOptions) {
    let ConfigSource::File(path) = &options.source else {
        warn!("SIGHUP: the demo configuration is built in and cannot be reloaded");
        return;
    };
    info!(path = %path.display(), "SIGHUP: reloading the configuration");
    let result = Config::load(path).and_then(|mut config| {
        if let Some(cgroup) = &options.cgroup {
            config.cgroup = Some(cgroup.clone());
        }
        if let Some(dir) = &options.bpffs_dir {
            config.bpffs_dir.clone_from(dir);
        }
        tokio::task::block_in_place(|| controller.reload(config))
    });
    match result {
        Ok(()) => info!(path = %path.display(), "configuration reloaded"),
        Err(err) => {
            error!(path = %path.display(), error = format!("{err:#}"), "configuration NOT reloaded; keeping the running one");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_cgroup2_mount() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                      cgroup2 /other cgroup2 rw 0 0\n";
        assert_eq!(
            first_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(first_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
