//! The `daas-lb run` child process under test: start, stop, restart, its
//! status document, metrics (and the counters in them) and log, and bounded
//! waits on them.
//!
//! Every wait has a deadline and panics with the daemon's log when it runs
//! out or the daemon exits early; the child is killed on drop.

use std::{
    fs::{self, File},
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use lb_userspace::api::status::Status;

use crate::{
    env::{METRICS, control_socket_in, daas_lb_bin, unique},
    inspect::{ClosedLog, closed_connection_logs, metric},
    topology,
};

/// How a [`Daemon`] gets into its network namespace.
#[derive(Debug, Clone)]
enum Netns {
    /// `setns` to this namespace file right before exec.
    SetNs(PathBuf),
    /// `ip netns exec NAME`.
    IpNetnsExec(String),
}

/// A running `daas-lb run` child process; killed (SIGKILL) on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    log_dir: PathBuf,
    /// The network namespace it runs in and how it gets there (`None`: the caller's).
    netns: Option<Netns>,
    /// The file it sees as `/etc/hosts` (`None`: the host's), see
    /// [`topology::private_hosts_on_exec`].
    hosts: Option<PathBuf>,
    /// Variables set in its environment besides the test's own.
    env: Vec<(String, String)>,
    /// Where its status API listens.
    pub api: SocketAddr,
    /// Its metrics endpoint ([`METRICS`]).
    pub metrics: SocketAddr,
    /// Its control socket: `<log_dir>/run/control.sock`, where
    /// [`config_yaml`](crate::config_yaml) puts it.
    pub control: PathBuf,
}

impl Daemon {
    /// Starts `daas-lb run` with `args`, logging to `log_dir/daemon-<unique>.log`.
    pub fn spawn(args: &[&str], log_dir: &Path, api: SocketAddr) -> Self {
        Self::spawn_with(args, log_dir, api, None, None, &[])
    }

    /// Like [`Daemon::spawn`], with `env` set in its environment (and in
    /// every [`Daemon::relaunch`]'s).
    pub fn spawn_with_env(
        args: &[&str],
        log_dir: &Path,
        api: SocketAddr,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_with(args, log_dir, api, None, None, env)
    }

    /// Like [`Daemon::spawn`], in a mount namespace of its own where `hosts`
    /// is bind-mounted over `/etc/hosts` (see
    /// [`topology::private_hosts_on_exec`]); so is every
    /// [`Daemon::relaunch`]. Rewriting `hosts` in place (same inode)
    /// changes what the daemon's resolver answers; the host's `/etc/hosts`
    /// is never touched.
    pub fn spawn_with_hosts(args: &[&str], log_dir: &Path, api: SocketAddr, hosts: &Path) -> Self {
        Self::spawn_with(args, log_dir, api, None, Some(hosts.to_path_buf()), &[])
    }

    /// Like [`Daemon::spawn`], in the network namespace at `netns` (e.g.
    /// `/run/netns/NAME`, see [`topology::enter_netns_on_exec`]); so is
    /// every [`Daemon::relaunch`].
    pub fn spawn_in_netns(args: &[&str], log_dir: &Path, api: SocketAddr, netns: &Path) -> Self {
        Self::spawn_with(
            args,
            log_dir,
            api,
            Some(Netns::SetNs(netns.to_path_buf())),
            None,
            &[],
        )
    }

    /// Like [`Daemon::spawn`], as `ip netns exec NAME daas-lb run ARGS...`:
    /// in the named namespace and, unlike [`Daemon::spawn_in_netns`], in the
    /// new mount namespace `ip` makes, with a fresh sysfs on `/sys` (no
    /// bpffs, no cgroup2 mounted under it); so is every [`Daemon::relaunch`].
    pub fn spawn_with_ip_netns_exec(
        args: &[&str],
        log_dir: &Path,
        api: SocketAddr,
        name: &str,
    ) -> Self {
        Self::spawn_with(
            args,
            log_dir,
            api,
            Some(Netns::IpNetnsExec(name.to_owned())),
            None,
            &[],
        )
    }

    fn spawn_with(
        args: &[&str],
        log_dir: &Path,
        api: SocketAddr,
        netns: Option<Netns>,
        hosts: Option<PathBuf>,
        env: &[(&str, &str)],
    ) -> Self {
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (child, log) = Self::launch(&args, log_dir, netns.as_ref(), hosts.as_deref(), &env);
        Self {
            child: Some(child),
            log,
            args,
            log_dir: log_dir.to_path_buf(),
            netns,
            hosts,
            env,
            api,
            metrics: METRICS,
            control: control_socket_in(log_dir),
        }
    }

    fn launch(
        args: &[String],
        log_dir: &Path,
        netns: Option<&Netns>,
        hosts: Option<&Path>,
        env: &[(String, String)],
    ) -> (Child, PathBuf) {
        let log = log_dir.join(unique("daemon")).with_extension("log");
        let log_file = File::create(&log).expect("create daemon log");
        let mut command = match netns {
            None => Command::new(daas_lb_bin()),
            Some(Netns::SetNs(path)) => {
                let mut command = Command::new(daas_lb_bin());
                topology::enter_netns_on_exec(&mut command, path);
                command
            }
            // `ip netns exec` execs the program (no fork): the child's pid is daas-lb's.
            Some(Netns::IpNetnsExec(name)) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name]).arg(daas_lb_bin());
                command
            }
        };
        if let Some(hosts) = hosts {
            topology::private_hosts_on_exec(&mut command, hosts);
        }
        let child = command
            .arg("run")
            .args(args)
            // The kernel programs' records at every level: they are there
            // only while `kernel_log` is on (off unless a test sets it).
            .env("RUST_LOG", "info,daas_lb::kernel=debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn daas-lb");
        (child, log)
    }

    /// Stops it with SIGTERM; it must exit 0 within 10 s. Returns its log.
    pub fn stop(&mut self) -> String {
        self.signal(libc::SIGTERM);
        let exit = self.wait_exit(Duration::from_secs(10));
        let log = self.log();
        assert!(
            exit.success(),
            "daas-lb exited with {exit} on SIGTERM:\n{log}"
        );
        log
    }

    /// Starts it again, after [`Daemon::stop`], with the same arguments.
    /// [`Daemon::log`] shows the new run's log from then on.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "daas-lb is still running");
        let (child, log) = Self::launch(
            &self.args,
            &self.log_dir,
            self.netns.as_ref(),
            self.hosts.as_deref(),
            &self.env,
        );
        self.child = Some(child);
        self.log = log;
    }

    /// [`Daemon::stop`], then [`Daemon::relaunch`]; returns the previous run's log.
    pub fn restart(&mut self) -> String {
        let previous = self.stop();
        self.relaunch();
        previous
    }

    /// The status document now (panics if the API does not answer).
    pub fn status(&self) -> Status {
        lb_userspace::api::client::fetch_status(self.api)
            .unwrap_or_else(|e| panic!("GET /status: {e:#}\nlog:\n{}", self.log()))
    }

    /// `GET /metrics` on its metrics address.
    pub fn metrics(&self) -> String {
        lb_userspace::api::client::get(self.metrics, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics: {e:#}\nlog:\n{}", self.log()))
    }

    /// Counter `name` now: the sum of its samples that carry all of `labels`
    /// (see [`metric`]). Panics, with the scrape, if there is no such sample.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.metrics();
        metric(&text, name, labels).map_or_else(
            || panic!("no sample {name}{labels:?} in GET /metrics:\n{text}"),
            |value| value as u64,
        )
    }

    /// Polls `GET /metrics` until [counter](Daemon::counter) `name` with
    /// `labels` is at least `at_least` (or panics after `within`, or when
    /// the daemon exits); returns its value then.
    pub fn wait_counter(
        &mut self,
        within: Duration,
        name: &str,
        labels: &[(&str, &str)],
        at_least: u64,
    ) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let value = lb_userspace::api::client::get(self.metrics, "/metrics")
                .ok()
                .and_then(|text| metric(&text, name, labels))
                .map(|value| value as u64);
            if let Some(value) = value
                && value >= at_least
            {
                return value;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!(
                    "daas-lb exited early ({code}) waiting for {name}{labels:?} >= {at_least}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {name}{labels:?} >= {at_least} (last \
                 {value:?}); log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many lines of its log contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Polls the log until at least `count` lines contain `needle` (or
    /// panics after `within`); returns those lines.
    pub fn wait_log(&mut self, within: Duration, needle: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            let lines: Vec<String> = log
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= count {
                return lines;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!("daas-lb exited early ({code}) waiting for {needle:?} in its log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {count} log lines with {needle:?}; log:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `closed connections` lines of its log so far.
    pub fn closed_connections(&self) -> Vec<ClosedLog> {
        closed_connection_logs(&self.log())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/status` until `ready` accepts it (or panics after `within`).
    pub fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        ready: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(code)) = child.try_wait()
            {
                panic!(
                    "daas-lb exited early ({code}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Ok(status) = lb_userspace::api::client::fetch_status(self.api) {
                if ready(&status) {
                    return status;
                }
                last = Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {within:?} waiting for {what}; last status {last:?}\nlog:\n{}",
            self.log()
        );
    }

    /// Waits until every server of every service has a finished check.
    pub fn wait_checked(&mut self) -> Status {
        self.wait_for(Duration::from_secs(10), "first health checks", |s| {
            s.services
                .iter()
                .all(|svc| svc.servers.iter().all(|srv| srv.last_check.is_some()))
        })
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            let rc = unsafe { libc::kill(child.id() as i32, signal) };
            assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
        }
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon already reaped");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daas-lb did not exit within {within:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
