//! Following K3s's own agent load balancers (the `k3s` block): one task
//! watches `<k3s data_dir>/agent/etc` with inotify, reads each followed
//! balancer's state file (K3s's `lbConfig` JSON, parsed by [`persist`]) on
//! every change and every `reread_interval`, resolves the file's
//! `ServerURL` and hands each changed reading to the controller thread,
//! which applies it like `PUT /services/{name}/servers`: servers that went
//! away take the removal path, new ones are checked first.
//!
//! Invariants:
//! - K3s's files are only read, never written; daas-lb's own state files
//!   stay in its own `data_dir`.
//! - A balancer's service exists only once its file has been read well;
//!   until then connects to its address reach K3s's own proxy.
//! - A file that disappears or cannot be used (half written, invalid)
//!   leaves the last good list in place; the reason shows in the status and
//!   the log (once per change).
//!
//! K3s writes the files in place (`os.WriteFile`: truncate, then write), so
//! a read can see a half-written file; reads wait [`SETTLE`] after the last
//! event, and a half-written file is re-read at the next event (the write's
//! close) or tick.

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::{
    events::{Controller, Event},
    persist, reconcile,
    runtime::State,
};
use crate::{
    api::status::K3sFileStatus,
    config::{Config, K3sBalancerSpec, K3sSettings, ServerTarget, parse_server},
};

/// How long the watcher waits after a file event for more before reading.
const SETTLE: Duration = Duration::from_millis(100);
/// How often watching K3s's directory is retried while it cannot be watched
/// (e.g. before K3s created it).
const WATCH_RETRY: Duration = Duration::from_secs(2);
/// How long resolving a `ServerURL` host name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One reading of a balancer's state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reading {
    /// There is no file (K3s has not started the balancer, or it was removed).
    Missing,
    /// The file cannot be used; why, naming the file.
    Invalid(String),
    /// A good file.
    List(K3sList),
}

/// What a good file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct K3sList {
    /// `ServerURL` as written.
    pub(super) server_url: String,
    /// `ServerURL`'s address (its host name resolved to the VIP's family).
    pub(super) default_server: Option<SocketAddr>,
    /// `ServerAddresses`.
    pub(super) servers: Vec<SocketAddr>,
}

/// The followed balancers, as the controller thread knows them.
#[derive(Default)]
pub(super) struct K3sState {
    /// The watcher task.
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    /// Per service name: the balancer, the last good list (if any) and the
    /// file's state now.
    pub(super) balancers: BTreeMap<String, Followed>,
}

/// One followed balancer.
pub(super) struct Followed {
    pub(super) spec: K3sBalancerSpec,
    /// The last good list; `None` until the file was read well once.
    pub(super) list: Option<K3sList>,
    /// The last reading's problem (missing file, invalid file, list refused).
    pub(super) problem: Option<String>,
}

impl K3sState {
    /// Stops the watcher.
    pub(super) fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Adds the followed balancers' services (with their last good lists)
    /// to `config`, which has none of them (a reload's new config).
    pub(super) fn merge_into(&self, config: &mut Config) {
        for followed in self.balancers.values() {
            if let Some(list) = &followed.list {
                config.services.push(
                    followed
                        .spec
                        .service(list.servers.clone(), list.default_server),
                );
            }
        }
    }

    /// The file behind `service`, if it follows one.
    pub(super) fn file_of(&self, service: &str) -> Option<&Path> {
        self.balancers.get(service).map(|f| f.spec.file.as_path())
    }

    /// The files' states for the status document.
    pub(super) fn status(&self) -> Vec<K3sFileStatus> {
        self.balancers
            .values()
            .map(|followed| K3sFileStatus {
                balancer: followed.spec.balancer.to_string(),
                service: followed.spec.name.clone(),
                file: followed.spec.file.display().to_string(),
                vip: followed.spec.vip.to_string(),
                server_url: followed.list.as_ref().map(|l| l.server_url.clone()),
                problem: followed.problem.clone(),
            })
            .collect()
    }
}

/// Starts the watcher.
pub(super) fn start(state: &mut State, controller: &Controller, settings: &K3sSettings) {
    state.k3s.balancers = settings
        .specs()
        .into_iter()
        .map(|spec| {
            let followed = Followed {
                spec: spec.clone(),
                list: None,
                problem: Some("not read yet".to_owned()),
            };
            (spec.name, followed)
        })
        .collect();
    info!(dir = %settings.state_dir().display(), balancers = ?settings.balancers, "following K3s's load balancers");
    state.k3s.task = Some(
        state
            .runtime
            .spawn(watch(controller.clone(), settings.clone())),
    );
}

/// The watcher: reads every followed file at start, after each burst of
/// file events in K3s's directory and every `reread_interval`, and hands
/// each changed reading to the controller, in order.
async fn watch(controller: Controller, settings: K3sSettings) {
    let dir = settings.state_dir();
    let specs = settings.specs();
    let mut last: BTreeMap<String, Reading> = BTreeMap::new();
    let mut inotify: Option<Inotify> = None;
    let mut watch_error: Option<String> = None;
    loop {
        if inotify.is_none() {
            match Inotify::watch(&dir) {
                Ok(watcher) => {
                    if watch_error.take().is_some() {
                        info!(dir = %dir.display(), "watching K3s's directory again");
                    }
                    inotify = Some(watcher);
                }
                Err(err) => {
                    let message = format!("{err:#}");
                    if watch_error.as_ref() != Some(&message) {
                        warn!(error = %message, retry = ?settings.reread_interval.min(WATCH_RETRY), "cannot watch K3s's directory (yet); reading its files and retrying the watch periodically");
                    }
                    watch_error = Some(message);
                }
            }
        }
        for spec in &specs {
            let reading = read(spec).await;
            if last.get(&spec.name) == Some(&reading) {
                continue;
            }
            log_reading(spec, &reading);
            last.insert(spec.name.clone(), reading.clone());
            controller
                .tell(Event::K3sFile {
                    service: spec.name.clone(),
                    reading,
                })
                .await;
        }
        let Some(watcher) = &mut inotify else {
            // Try to watch again soon: the directory may appear any time.
            tokio::time::sleep(settings.reread_interval.min(WATCH_RETRY)).await;
            continue;
        };
        tokio::select! {
            woke = watcher.wait() => {
                if let Err(err) = woke {
                    warn!(error = format!("{err:#}"), dir = %dir.display(), "watching K3s's directory failed; watching it anew");
                    inotify = None;
                    continue;
                }
                // A burst of events (truncate, write, close): read once it settles.
                loop {
                    match tokio::time::timeout(SETTLE, watcher.wait()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            inotify = None;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep(settings.reread_interval) => {}
        }
    }
}

/// Logs a changed reading.
fn log_reading(spec: &K3sBalancerSpec, reading: &Reading) {
    match reading {
        Reading::Missing => {
            info!(service = %spec.name, file = %spec.file.display(), "no K3s state file; the service keeps its last list (or, before the first, is not installed: K3s's own proxy serves its address)");
        }
        Reading::Invalid(reason) => {
            warn!(service = %spec.name, error = %reason, "K3s state file not used; the service keeps its last good list");
        }
        Reading::List(list) => {
            info!(service = %spec.name, server_url = %list.server_url, default_server = ?list.default_server, servers = ?list.servers, "K3s state file read");
        }
    }
}

/// Reads one balancer's file and resolves its `ServerURL`.
async fn read(spec: &K3sBalancerSpec) -> Reading {
    let file = spec.file.clone();
    let vip_is_ipv4 = spec.vip.is_ipv4();
    let parsed = tokio::task::spawn_blocking(move || {
        let Some(state) = persist::read_file(&file)? else {
            return Ok(None);
        };
        let servers = persist::addresses(&file, &state, vip_is_ipv4, Config::MAX_BACKENDS)?;
        Ok(Some((state.server_url, servers)))
    })
    .await;
    let (server_url, servers) = match parsed {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return Reading::Missing,
        Ok(Err(reason)) => return Reading::Invalid(reason),
        Err(err) => {
            return Reading::Invalid(format!("{}: reading failed: {err}", spec.file.display()));
        }
    };
    let default_server = if server_url.is_empty() {
        None
    } else {
        match default_of(&server_url, spec.vip).await {
            Ok(address) => Some(address),
            Err(reason) => {
                return Reading::Invalid(format!("{}: ServerURL: {reason}", spec.file.display()));
            }
        }
    };
    Reading::List(K3sList {
        server_url,
        default_server,
        servers,
    })
}

/// The address of a `ServerURL`: its IP, or its host name resolved to the
/// VIP's family (the first address).
async fn default_of(server_url: &str, vip: SocketAddr) -> Result<SocketAddr, String> {
    match parse_server(server_url)? {
        ServerTarget::Address(address) if address.is_ipv4() == vip.is_ipv4() => Ok(address),
        ServerTarget::Address(address) => Err(format!(
            "{address} is not of the VIP's address family ({vip})"
        )),
        ServerTarget::Name { host, port } => {
            let lookup = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host((host.as_str(), port)),
            )
            .await
            .map_err(|_| format!("resolving {host:?} timed out"))?
            .map_err(|err| format!("cannot resolve {host:?}: {err}"))?;
            let found: Vec<IpAddr> = lookup.map(|a| a.ip()).collect();
            found
                .iter()
                .find(|ip| ip.is_ipv4() == vip.is_ipv4())
                .map(|ip| SocketAddr::new(*ip, port))
                .ok_or_else(|| {
                    format!(
                        "{host:?} resolves to no address of the VIP's family ({vip}): {found:?}"
                    )
                })
        }
    }
}

/// Applies a reading of `service`'s file: a good list becomes the
/// service's servers and default server (the service is added at its first
/// good list); a missing or invalid file keeps the last good list.
pub(super) fn apply_reading(state: &mut State, service: &str, reading: Reading) {
    let Some(followed) = state.k3s.balancers.get_mut(service) else {
        return;
    };
    let list = match reading {
        Reading::Missing => {
            followed.problem = Some(format!(
                "{}: no such file; keeping the last good list",
                followed.spec.file.display()
            ));
            return;
        }
        Reading::Invalid(reason) => {
            followed.problem = Some(format!("{reason}; keeping the last good list"));
            return;
        }
        Reading::List(list) => list,
    };
    let spec = followed.spec.clone();
    let other_vips: Vec<SocketAddr> = state
        .config
        .services
        .iter()
        .filter(|s| s.name != service)
        .map(|s| s.vip)
        .chain(std::iter::once(spec.vip))
        .collect();
    // A server that is a VIP would loop: never balance to it; port 0 or an
    // unspecified address cannot be connected to.
    let unusable = |server: &SocketAddr| server.port() == 0 || server.ip().is_unspecified();
    let servers: Vec<SocketAddr> = list
        .servers
        .iter()
        .copied()
        .filter(|server| {
            if unusable(server) {
                warn!(service, %server, file = %spec.file.display(), "K3s lists a server that cannot be connected to (port 0 or unspecified address); skipped");
                return false;
            }
            let is_vip = other_vips.contains(server);
            if is_vip {
                warn!(service, %server, file = %spec.file.display(), "K3s lists a VIP of daas-lb as a server; skipped (it would loop)");
            }
            !is_vip
        })
        .collect();
    let default_server = list.default_server.filter(|server| {
        if unusable(server) {
            warn!(service, %server, file = %spec.file.display(), "K3s's ServerURL cannot be connected to (port 0 or unspecified address); no default server");
            return false;
        }
        let is_vip = other_vips.contains(server);
        if is_vip {
            warn!(service, %server, file = %spec.file.display(), "K3s's ServerURL is a VIP of daas-lb; no default server (it would loop)");
        }
        !is_vip
    });
    let mut config = state.config.clone();
    let fresh = spec.service(servers, default_server);
    match config.services.iter_mut().find(|s| s.name == service) {
        Some(running) => *running = fresh,
        None => config.services.push(fresh),
    }
    let applied = reconcile::apply(state, config);
    let Some(followed) = state.k3s.balancers.get_mut(service) else {
        return;
    };
    match applied {
        Ok(()) => {
            info!(service, servers = ?list.servers, default_server = ?list.default_server, "servers from K3s's state file applied");
            followed.problem = None;
            followed.list = Some(list);
        }
        Err(err) => {
            let message = format!("{err:#}");
            warn!(service, error = %message, "servers from K3s's state file not applied; keeping the last good list");
            followed.problem = Some(format!("list not applied: {message}"));
        }
    }
}

/// An inotify instance watching one directory for files written, created,
/// renamed or removed in it.
struct Inotify {
    fd: AsyncFd<OwnedFd>,
}

impl Inotify {
    /// Watches `dir` (which must exist).
    fn watch(dir: &Path) -> anyhow::Result<Self> {
        // SAFETY: plain syscall without pointers; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.as_os_str().as_encoded_bytes())
            .with_context(|| format!("{}: path contains a NUL byte", dir.display()))?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF
            | libc::IN_ONLYDIR;
        // SAFETY: `fd` is an inotify descriptor and `path` a NUL-terminated
        // string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{}: inotify_add_watch", dir.display()));
        }
        let wanted = tokio::io::Interest::READABLE;
        // SAFETY: `fd` is an open inotify descriptor the `AsyncFd` owns
        // (an `OwnedFd`): it stays open and the same until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, wanted) }
            .map_err(|err| anyhow::anyhow!("registering the inotify descriptor: {err}"))?;
        Ok(Self { fd })
    }

    /// Waits for events and drains them. An error, or the directory itself
    /// removed or moved, means the watch is gone.
    async fn wait(&mut self) -> anyhow::Result<()> {
        let mut buffer = [0_u8; 4096];
        loop {
            let mut ready = self.fd.readable().await.context("waiting for inotify")?;
            // SAFETY: `buffer` is writable for its whole length.
            let read = unsafe {
                libc::read(
                    ready.get_inner().as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    ready.clear_ready();
                    continue;
                }
                return Err(err).context("reading inotify events");
            }
            let read = usize::try_from(read).unwrap_or(0);
            if gone(&buffer[..read]) {
                anyhow::bail!("the watched directory was removed or moved");
            }
            return Ok(());
        }
    }
}

/// Whether the events in `bytes` say the watched directory itself is gone.
fn gone(bytes: &[u8]) -> bool {
    let header = size_of::<libc::inotify_event>();
    let mut offset = 0;
    // Bounded by the buffer: each event is at least a header long.
    while offset + header <= bytes.len() {
        // SAFETY: `offset + header` is within `bytes`; the read is unaligned.
        let event: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(bytes[offset..].as_ptr().cast()) };
        if event.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0 {
            return true;
        }
        offset += header + event.len as usize;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn gone_sees_the_directory_removed() {
        let header = size_of::<libc::inotify_event>();
        let mut bytes = vec![0_u8; header];
        let event = libc::inotify_event {
            wd: 1,
            mask: libc::IN_DELETE_SELF,
            cookie: 0,
            len: 0,
        };
        // SAFETY: `bytes` holds exactly one header.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), event) };
        assert!(gone(&bytes));
        let modified = libc::inotify_event {
            mask: libc::IN_CLOSE_WRITE,
            ..event
        };
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), modified) };
        assert!(!gone(&bytes));
    }

    #[test]
    fn a_followed_service_is_merged_with_its_last_list() {
        let settings = K3sSettings {
            data_dir: PathBuf::from("/var/lib/rancher/k3s"),
            program: "k3s".to_owned(),
            lb_server_port: 6444,
            ipv6: false,
            balancers: vec![crate::config::K3sBalancer::Supervisor],
            reread_interval: Duration::from_secs(10),
        };
        let spec = settings.specs().remove(0);
        assert_eq!(spec.name, "k3s-agent-load-balancer");
        assert_eq!(
            spec.file,
            PathBuf::from("/var/lib/rancher/k3s/agent/etc/k3s-agent-load-balancer.json")
        );
        assert_eq!(spec.vip, "127.0.0.1:6444".parse().unwrap());
        let server: SocketAddr = "10.0.0.1:6443".parse().unwrap();
        let mut state = K3sState::default();
        state.balancers.insert(
            spec.name.clone(),
            Followed {
                spec,
                list: Some(K3sList {
                    server_url: "https://10.0.0.1:6443".to_owned(),
                    default_server: Some(server),
                    servers: vec![server],
                }),
                problem: None,
            },
        );
        let mut config = Config::from_yaml("services: []\n", "test.yaml").unwrap();
        state.merge_into(&mut config);
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.services[0].servers, vec![server]);
        assert_eq!(config.services[0].default_server, Some(server));
        assert_eq!(
            state.file_of("k3s-agent-load-balancer"),
            Some(Path::new(
                "/var/lib/rancher/k3s/agent/etc/k3s-agent-load-balancer.json"
            ))
        );
    }
}
