//! `daas-lb`: the command line. Everything it does lives in the library.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{
    config::Config,
    dataplane,
    run::{self, ConfigSource, RunOptions},
    status,
};
use tracing_subscriber::EnvFilter;

/// eBPF load balancer for K3s agent nodes: connects sockets aimed at a
/// service VIP straight to the selected backend.
#[derive(Debug, Parser)]
#[command(version, about)]
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
    },
    /// Show services, servers, states, selection and counters of a running controller.
    Status {
        /// Address of the controller's API (`api_addr` in the config).
        #[arg(long, default_value = "127.0.0.1:9465")]
        api: SocketAddr,
        /// Print the raw JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace a service's server list on a running controller (saved in its
    /// state file; SIGHUP goes back to the config file's list).
    SetServers {
        /// Address of the controller's API (`api_addr` in the config).
        #[arg(long, default_value = "127.0.0.1:9465")]
        api: SocketAddr,
        /// The service's name.
        service: String,
        /// The new servers, `IP:port` each (none = an empty list).
        servers: Vec<String>,
    },
    /// Detach and unpin what a crashed run left behind.
    Cleanup {
        /// bpffs directory of that run.
        #[arg(long, default_value = Config::DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
    },
    /// Validate a config file and exit (0 = valid).
    CheckConfig {
        /// YAML config file.
        #[arg(long)]
        config: PathBuf,
    },
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
        } => {
            let source = match (config, demo) {
                (Some(path), _) => ConfigSource::File(path),
                (None, _) => ConfigSource::Demo,
            };
            let options = RunOptions {
                source,
                cgroup,
                bpffs_dir,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run::run(options))
        }
        Command::Status { api, json } => {
            let status = status::fetch(api)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.to_table());
            }
            Ok(())
        }
        Command::SetServers {
            api,
            service,
            servers,
        } => {
            let service = status::put_servers(api, &service, &servers)?;
            print!(
                "{}",
                status::Status {
                    services: vec![service],
                    xdp: None,
                    registry: None,
                }
                .to_table()
            );
            Ok(())
        }
        Command::Cleanup { bpffs_dir } => dataplane::cleanup(&bpffs_dir),
        Command::CheckConfig { config } => {
            let parsed = Config::load(&config)?;
            println!(
                "{}: valid ({} services)",
                config.display(),
                parsed.services.len()
            );
            Ok(())
        }
    }
}
