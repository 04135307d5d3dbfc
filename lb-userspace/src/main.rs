//! `daas-lb`: the command line. Everything it does lives in the library.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{
    api::{
        client::{self, Endpoint},
        status,
    },
    config::{Config, KernelLog},
    kernel::{dataplane, kernel_log::TARGET as KERNEL_LOG_TARGET},
    run::{self, ConfigSource, RunOptions},
};
use tracing_subscriber::EnvFilter;

/// eBPF load balancer for K3s agent nodes: connects sockets aimed at a
/// service VIP straight to the selected backend.
#[derive(Debug, Parser)]
#[command(name = "daas-lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and attach the kernel programs, health-check servers and keep the
    /// maps pointing at the selected backends until SIGINT/SIGTERM.
    Run {
        /// YAML config file.
        #[arg(long, required_unless_present = "demo", conflicts_with = "demo")]
        config: Option<PathBuf>,
        /// Run the embedded demo (three echo backends per VIP on loopback).
        #[arg(long)]
        demo: bool,
        /// cgroup v2 directory to attach to (default: config, then the first cgroup2 mount).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// bpffs directory for pins (default: config, then /sys/fs/bpf/daas-lb).
        #[arg(long)]
        bpffs_dir: Option<PathBuf>,
        /// Control socket (default: config, then /run/daas-lb/control.sock).
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Show services, servers, states, selection and counters of a running controller.
    Status {
        /// Address of the controller's API (`api_addr` in the config).
        #[arg(long, default_value = "127.0.0.1:9465")]
        api: SocketAddr,
        /// Print the raw JSON document instead of a table.
        #[arg(long, conflicts_with = "wide")]
        json: bool,
        /// Print every field (perf, rep, raw scores, whole check reasons)
        /// instead of fitting 100 columns.
        #[arg(long)]
        wide: bool,
    },
    /// Replace a service's server list on a running controller (saved in its
    /// state file; a reload goes back to the config file's list). Needs root
    /// (or `control_group`): it talks to the control socket.
    SetServers {
        #[command(flatten)]
        target: ControlTarget,
        /// The service's name.
        service: String,
        /// The new servers, `IP:port` each (none = an empty list).
        servers: Vec<String>,
    },
    /// Set what a running controller's kernel programs log until its next
    /// reload (which goes back to the config's `kernel_log`): `off`, `warn`
    /// (refused connects, failed and stalled dials) or `debug` (also
    /// suspect skips and XDP drops). The records appear in the daemon's
    /// log under the target `daas_lb::kernel`. Needs root (or
    /// `control_group`): it talks to the control socket.
    KernelLog {
        #[command(flatten)]
        target: ControlTarget,
        /// `off`, `warn` or `debug`.
        level: KernelLog,
    },
    /// Make a running controller re-read its config file (as SIGHUP does);
    /// prints the config's errors and exits 1 if it does not load or apply,
    /// in which case the running configuration stays.
    Reload {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Detach and unpin what a crashed run left behind, and list it. Fails,
    /// removing nothing, when the directory is missing, not on bpffs, holds
    /// anything daas-lb does not create, or a running daas-lb uses it.
    Cleanup {
        /// bpffs directory of that run.
        #[arg(long, default_value = Config::DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
    /// Validate a config file and exit (0 = valid).
    CheckConfig {
        /// YAML config file.
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        /// YAML config file (the same as FILE).
        #[arg(long, value_name = "FILE", conflicts_with = "file")]
        config: Option<PathBuf>,
    },
}

/// Where `set-servers`, `kernel-log` and `reload` send their change.
#[derive(Debug, clap::Args)]
struct ControlTarget {
    /// The daemon's control socket (`control_socket` in its config).
    #[arg(long, default_value = Config::DEFAULT_CONTROL_SOCKET, conflicts_with = "api")]
    socket: PathBuf,
    /// Send the change over TCP to `api_addr` instead; the daemon must have
    /// `api_token_file`, and `--token-file` must hold the same token.
    #[arg(long, requires = "token_file")]
    api: Option<SocketAddr>,
    /// File with the bearer token for `--api`.
    #[arg(long, requires = "api")]
    token_file: Option<PathBuf>,
}

impl ControlTarget {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        match (&self.api, &self.token_file) {
            (Some(addr), Some(file)) => Endpoint::tcp_with_token_file(*addr, file),
            _ => Ok(Endpoint::Socket(self.socket.clone())),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            demo,
            cgroup,
            bpffs_dir,
            control_socket,
        } => {
            let source = match (config, demo) {
                (Some(path), _) => ConfigSource::File(path),
                (None, _) => ConfigSource::Demo,
            };
            let options = RunOptions {
                source,
                cgroup,
                bpffs_dir,
                control_socket,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::run(options))
        }
        Command::Status { api, json, wide } => {
            let status = client::fetch_status(api)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else if wide {
                print!("{}", status.render(status::Layout::Wide));
            } else {
                print!("{}", status.to_table());
            }
            Ok(())
        }
        Command::SetServers {
            target,
            service,
            servers,
        } => {
            let service = client::put_servers(&target.endpoint()?, &service, &servers)?;
            print!(
                "{}",
                status::Status {
                    services: vec![service],
                    xdp: None,
                    registry: None,
                    kernel_log: KernelLog::Off,
                    k3s: Vec::new(),
                    dataplane: status::DataplaneStatus::default(),
                }
                .to_table()
            );
            Ok(())
        }
        Command::KernelLog { target, level } => {
            let level = client::put_kernel_log(&target.endpoint()?, level)?;
            println!("kernel log: {level} (tracing target {KERNEL_LOG_TARGET})");
            Ok(())
        }
        Command::Reload { target } => {
            let path = client::reload(&target.endpoint()?)?;
            println!("reloaded {path}");
            Ok(())
        }
        Command::Cleanup { bpffs_dir } => {
            print!("{}", dataplane::cleanup_leftovers(&bpffs_dir)?);
            Ok(())
        }
        Command::CheckConfig { file, config } => {
            let config = file
                .or(config)
                .context("check-config needs a config file")?;
            let parsed = Config::load(&config)?;
            let warnings = parsed.warnings();
            for warning in &warnings {
                eprintln!("warning: {}: {warning}", config.display());
            }
            println!(
                "{}: valid ({} services, {} warnings)",
                config.display(),
                parsed.services.len(),
                warnings.len()
            );
            Ok(())
        }
    }
}
