//! Loading the kernel programs, pinning their maps and links under the bpffs
//! directory, adopting what a crashed controller left behind, and detaching
//! everything again.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/daas-lb`):
//! `<map name>` for each map of `lb_common::map_names`,
//! `links/<program name>` for each cgroup link and `links/xdp@<interface>`
//! or `links/tc@<interface>` for each interface's XDP or tcx link
//! ([`crate::kernel::links`]). A pinned link keeps its
//! program attached after the controller exits; the pinned maps keep the
//! selected backends. A new `run` finds both: it reuses the maps (their
//! contents included) and swaps the new programs into the existing links with
//! `BPF_LINK_UPDATE`, so there is never a second attachment nor a moment
//! without one.

use std::{
    collections::BTreeMap,
    fs::{self, File, TryLockError},
    io,
    ops::ControlFlow,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapInfo, MapType},
    programs::{CgroupAttachMode, CgroupSockAddr, SchedClassifier, SockOps, Xdp, links::FdLink},
    util::nr_cpus,
};
use lb_common::{
    flow_stat, map_names,
    maps::{self, MapKind, MapSpec},
    program_names,
};
use tracing::{debug, info, warn};

use super::{
    AttachReport, HookInUse, bpf_sys,
    ebpf_object::ebpf_object,
    if_addrs,
    kernel_log::{self, KernelLogReader},
    links::{self, Interface, LinkKind},
    maps::{Flows, Maps},
    mounts::{self, BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC},
    xdp_settings::{self, xdp_config_entry},
};
use crate::{config::XdpSettings, policy};

/// `BPF_PROG_LOAD` attempts: the verifier gives up with `EAGAIN` when a
/// signal (e.g. `SIGCHLD`) arrives while it works, which a busy process sees
/// now and then.
const LOAD_ATTEMPTS: u32 = 20;

/// Runs a program load (`load`, e.g. `|| program.load()`), again while it
/// fails with `EAGAIN` (`LOAD_ATTEMPTS` attempts in all): the verifier
/// gives up that way whenever a signal is pending, e.g. a `SIGCHLD` from a
/// child of another thread delivered to the loading one. libbpf retries the
/// same way; aya does not. Any other outcome is returned as it is.
///
/// # Errors
///
/// The load's error, when it is not `EAGAIN` or the attempts ran out.
pub fn load_retrying(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Sub-directory of the pin directory that holds the links.
const LINKS_DIR: &str = "links";

/// The kernel's map type for a kind of `lb_common::maps`.
const fn map_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::Hash => MapType::Hash,
        MapKind::LruHash => MapType::LruHash,
        MapKind::Array => MapType::Array,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::RingBuf => MapType::RingBuf,
    }
}

/// How a map the kernel describes (`info`) differs from the shape `spec`
/// declares in `lb_common::maps`, one line per difference (none: same shape).
fn shape_differences(spec: &MapSpec, info: &MapInfo) -> Vec<String> {
    let mut differences = Vec::new();
    let expected = map_type(spec.kind);
    match info.map_type() {
        Ok(actual) if actual == expected => {}
        actual => differences.push(format!("type {actual:?}, expected {expected:?}")),
    }
    for (what, actual, expected) in [
        ("key size", info.key_size(), spec.key_size),
        ("value size", info.value_size(), spec.value_size),
        ("max_entries", info.max_entries(), spec.max_entries),
        ("flags", info.map_flags(), spec.flags),
    ] {
        if actual != expected {
            differences.push(format!("{what} {actual}, expected {expected}"));
        }
    }
    differences
}

/// The loaded programs and their maps.
pub struct Dataplane {
    pin_dir: PathBuf,
    /// Every map, typed; only the controller writes them.
    pub maps: Maps,
    /// The reader of the programs' aya-log records (taken by the
    /// controller, which drains it into its log).
    pub kernel_log: Option<KernelLogReader>,
    /// The hook in use on each interface of the `xdp` block (empty without one).
    pub hooks: Vec<HookInUse>,
    // Keeps the program fds open for the lifetime of the controller.
    ebpf: Ebpf,
    // flock on the pin directory: one controller per directory.
    _lock: File,
}

/// Where the cgroup programs' links are pinned, and the cgroup they attach to.
struct CgroupLinks<'a> {
    dir: PathBuf,
    cgroup_dir: &'a File,
    cgroup_id: u64,
}

impl CgroupLinks<'_> {
    /// Attaches the loaded program `name` (`prog_fd`) to the cgroup through
    /// the link pinned under its name: an earlier run's link on the same
    /// cgroup gets the new program swapped in (`BPF_LINK_UPDATE`: never a
    /// moment without it, never a second attachment); a link on another
    /// cgroup is replaced; otherwise `attach` makes a new link, which is
    /// pinned.
    fn attach(
        &self,
        name: &'static str,
        prog_fd: BorrowedFd<'_>,
        report: &mut AttachReport,
        attach: impl FnOnce(&File) -> anyhow::Result<FdLink>,
    ) -> anyhow::Result<()> {
        let link_pin = self.dir.join(name);
        if link_pin.exists() {
            let link = bpf_sys::obj_get(&link_pin)?;
            let info = bpf_sys::link_info(link.as_fd())
                .with_context(|| format!("reading link {}", link_pin.display()))?;
            if info.link_type == bpf_sys::LINK_TYPE_CGROUP && info.cgroup_id == self.cgroup_id {
                bpf_sys::link_update(link.as_fd(), prog_fd)
                    .with_context(|| format!("swapping {name} into link {}", link_pin.display()))?;
                info!(program = name, link_id = info.id, "adopted existing link");
                report.adopted.push(name);
                return Ok(());
            }
            warn!(
                program = name,
                link_id = info.id,
                "pinned link is attached to another cgroup; replacing it"
            );
            fs::remove_file(&link_pin)
                .with_context(|| format!("unpinning {}", link_pin.display()))?;
            drop(link);
            report.replaced.push(name);
        }
        // With a bpf_link the kernel always allows other programs next to
        // ours (link attach flags must be 0, i.e. `Single`).
        let link = attach(self.cgroup_dir).with_context(|| {
            format!("attaching {name} to the cgroup (a bpf_link needs kernel >= 5.7)")
        })?;
        link.pin(&link_pin)
            .with_context(|| format!("pinning link {}", link_pin.display()))?;
        report.attached.push(name);
        Ok(())
    }
}

impl Dataplane {
    /// Loads the programs, pins/reuses the maps and attaches (or adopts) the
    /// links on `cgroup`, and, with an `xdp` block, the XDP or tc link on
    /// each of its interfaces (without one, the per-interface links of an
    /// earlier run are detached). Then fills `if_addrs` and writes
    /// `xdp_config`.
    ///
    /// The hook of each interface is decided first (device facts, then
    /// `policy::hook`): a refused request fails the start before anything
    /// is loaded.
    pub fn start(
        pin_dir: &Path,
        cgroup: &Path,
        xdp: Option<&XdpSettings>,
    ) -> anyhow::Result<(Self, AttachReport)> {
        let object = ebpf_object()?;
        let interfaces = xdp.map(links::resolve).transpose()?;
        let decisions = interfaces.as_deref().map(links::decide_all).transpose()?;
        // The pin directory may not exist yet: check where it would be created.
        let existing = pin_dir.ancestors().find(|p| p.exists()).unwrap_or(pin_dir);
        check_fs_magic(
            existing,
            BPF_FS_MAGIC,
            "bpffs (mount it with `mount -t bpf bpf /sys/fs/bpf`)",
        )?;
        let cgroup_dir =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        check_fs_magic(cgroup, CGROUP2_SUPER_MAGIC, "a cgroup v2 directory")?;
        let cgroup_id = bpf_sys::cgroup_id(&cgroup_dir)?;

        let links_dir = pin_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir)
            .with_context(|| format!("creating pin directory {}", links_dir.display()))?;
        let lock = lock_pin_dir(pin_dir)?;
        let had_links = program_names::ALL
            .iter()
            .any(|name| links_dir.join(name).exists())
            || LinkKind::ALL
                .iter()
                .map(|kind| links::pinned_links(&links_dir, *kind))
                .collect::<anyhow::Result<Vec<_>>>()?
                .iter()
                .any(|pins| !pins.is_empty());

        let mut report = AttachReport::default();
        let result =
            Self::load_and_attach(pin_dir, &cgroup_dir, cgroup_id, object, lock, &mut report)
                .and_then(|mut dataplane| {
                    dataplane.start_xdp(xdp, interfaces.as_deref(), decisions, &mut report)?;
                    Ok(dataplane)
                });
        match result {
            Ok(dataplane) => Ok((dataplane, report)),
            Err(err) => {
                if !had_links {
                    // A fresh start that failed half way: leave nothing behind.
                    if let Err(cleanup_err) = cleanup(pin_dir) {
                        warn!(
                            error = format!("{cleanup_err:#}"),
                            "cleanup after failed start"
                        );
                    }
                }
                Err(err)
            }
        }
    }

    fn load_and_attach(
        pin_dir: &Path,
        cgroup_dir: &File,
        cgroup_id: u64,
        object: &[u8],
        lock: File,
        report: &mut AttachReport,
    ) -> anyhow::Result<Self> {
        let pin_paths: Vec<(&'static str, PathBuf)> = map_names::ALL
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        for spec in &maps::MAPS {
            if reuse_or_drop_pinned_map(&pin_dir.join(spec.name), spec)? {
                report.reused_maps.push(spec.name);
            }
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the eBPF object")?;
        let kernel_log = kernel_log::reader(&mut ebpf)?;

        let links = CgroupLinks {
            dir: pin_dir.join(LINKS_DIR),
            cgroup_dir,
            cgroup_id,
        };
        // Loads program `$name` as a `$kind` and attaches it through its link.
        macro_rules! load_and_link {
            ($name:expr, $kind:ty, $what:literal) => {{
                let name = $name;
                let program: &mut $kind = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the eBPF object"))?
                    .try_into()
                    .with_context(|| format!("program {name} is not a {}", $what))?;
                load_retrying(|| program.load())
                    .with_context(|| format!("loading program {name} (verifier)"))?;
                let prog_fd = program.fd().context("program fd")?.try_clone()?;
                links.attach(name, prog_fd.as_fd(), report, |cgroup| {
                    let id = program.attach(cgroup, CgroupAttachMode::Single)?;
                    Ok(program.take_link(id)?.try_into()?)
                })?;
            }};
        }
        for name in program_names::ALL {
            load_and_link!(name, CgroupSockAddr, "cgroup sock_addr program");
        }
        load_and_link!(program_names::SOCK_OPS, SockOps, "sock_ops program");

        let nr_cpus = nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
        let mut maps = Maps::take(&mut ebpf, nr_cpus)?;
        align_flow_stats(&mut maps.flows, &report.reused_maps)?;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            maps,
            kernel_log: Some(kernel_log),
            hooks: Vec::new(),
            ebpf,
            _lock: lock,
        })
    }

    /// Loads `lb_xdp` and `lb_tc` (always, so that a kernel that cannot
    /// verify them fails the start), attaches one of them to each of
    /// `interfaces` as `decisions` say (or detaches every per-interface link
    /// when XDP is not configured), fills `if_addrs` and writes `xdp_config`
    /// last, which is what makes the programs start forwarding.
    fn start_xdp(
        &mut self,
        xdp: Option<&XdpSettings>,
        interfaces: Option<&[Interface]>,
        decisions: Option<Vec<policy::hook::Decision>>,
        report: &mut AttachReport,
    ) -> anyhow::Result<()> {
        let (xdp_program, tc_program) = {
            let [Some(xdp_program), Some(tc_program)] =
                self.ebpf
                    .programs_mut()
                    .fold([None, None], |mut found, (name, program)| {
                        if name == program_names::XDP {
                            found[0] = Some(program);
                        } else if name == program_names::TC {
                            found[1] = Some(program);
                        }
                        found
                    })
            else {
                bail!(
                    "program {} or {} missing from the eBPF object",
                    program_names::XDP,
                    program_names::TC
                );
            };
            let xdp_program: &mut Xdp = xdp_program
                .try_into()
                .with_context(|| format!("program {} is not an XDP program", program_names::XDP))?;
            let tc_program: &mut SchedClassifier = tc_program
                .try_into()
                .with_context(|| format!("program {} is not a tc classifier", program_names::TC))?;
            (xdp_program, tc_program)
        };
        load_retrying(|| xdp_program.load())
            .with_context(|| format!("loading program {} (verifier)", program_names::XDP))?;
        load_retrying(|| tc_program.load())
            .with_context(|| format!("loading program {} (verifier)", program_names::TC))?;
        let links_dir = self.pin_dir.join(LINKS_DIR);
        if let (Some(_), Some(interfaces), Some(decisions)) = (xdp, interfaces, decisions) {
            let mut programs = links::Programs {
                xdp: xdp_program,
                tc: tc_program,
            };
            links::attach_all(&mut programs, &links_dir, interfaces, decisions, report)?;
            self.hooks.clone_from(&report.hooks);
            let wanted = if_addrs::read().context("reading the interfaces' addresses")?;
            self.maps.if_addrs.sync(&wanted)?;
        } else {
            for kind in LinkKind::ALL {
                let detached = links::detach_except(&links_dir, kind, &[])?;
                if !detached.is_empty() {
                    info!(
                        interfaces = ?detached,
                        "no xdp block: detached the per-interface links of an earlier run"
                    );
                }
                match kind {
                    LinkKind::Xdp => report.xdp.detached = detached,
                    LinkKind::Tc => report.tc.detached = detached,
                }
            }
            self.maps.if_addrs.sync(&BTreeMap::new())?;
        }
        let drop_orphans = xdp.is_some_and(|settings| {
            let local_ports =
                xdp_settings::read_local_port_range(Path::new(xdp_settings::LOCAL_PORT_RANGE_FILE));
            let bound = xdp_settings::bound_ports_in(
                settings.snat_ports,
                Path::new(xdp_settings::PROC_NET),
            );
            if !bound.is_empty() {
                warn!(
                    snat_ports = %settings.snat_ports,
                    ports = ?bound,
                    "sockets listen on (or are bound to) ports of xdp.snat_ports: packets to them \
                     are passed, not dropped as orphaned replies; move snat_ports away from them"
                );
            }
            xdp_settings::orphans_droppable(settings, local_ports, &bound)
        });
        let generation = self
            .maps
            .xdp_config
            .set(xdp_config_entry(xdp, drop_orphans))?;
        debug!(hop_gen = generation, "xdp_config written");
        Ok(())
    }

    /// The bpffs directory this data plane is pinned under.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Detaches the programs and removes every pin (graceful shutdown).
    pub fn shutdown(self) -> anyhow::Result<()> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        cleanup(&pin_dir).map(drop)
    }
}

/// Takes an exclusive `flock` on the pin directory, so a second controller
/// with the same directory fails instead of fighting over the maps. The lock
/// goes away with the process, also after SIGKILL.
fn lock_pin_dir(pin_dir: &Path) -> anyhow::Result<File> {
    let dir = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    match dir.try_lock() {
        Ok(()) => Ok(dir),
        Err(TryLockError::WouldBlock) => bail!(
            "another daas-lb is running with bpffs_dir {} (stop it first, or use another --bpffs-dir)",
            pin_dir.display()
        ),
        Err(TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("locking {}", pin_dir.display()))
        }
    }
}

/// Makes the `flow_stats` counts fit the `flows` map when only one of the
/// two was kept from an earlier run (`reused`: the maps kept), before any
/// program of this run can write them: entries found in a kept `flows`
/// count as created (an upgrade that brings `flow_stats`), and a new
/// `flows` starts the counts from zero. Otherwise evictions would be
/// misjudged by the entries nobody counted.
fn align_flow_stats(flows: &mut Flows, reused: &[&str]) -> anyhow::Result<()> {
    let kept = |name: &str| reused.contains(&name);
    match (kept(map_names::FLOWS), kept(map_names::FLOW_STATS)) {
        (true, false) => {
            let mut entries = 0u64;
            flows.walk(1024, |chunk| {
                entries += chunk.len() as u64;
                ControlFlow::Continue(())
            })?;
            flows.stats_mut().set(flow_stat::CREATED, entries)?;
            info!(
                entries,
                "flow_stats is new: the flows already in the table count as created"
            );
        }
        (false, true) => {
            for index in 0..flow_stat::COUNT {
                flows.stats_mut().set(index, 0)?;
            }
            debug!("flows is new: the flow_stats counts start from zero");
        }
        _ => {}
    }
    Ok(())
}

/// Reuses a pinned map if it has the shape `lb_common::maps` declares;
/// removes it otherwise. Returns whether it will be reused.
fn reuse_or_drop_pinned_map(path: &Path, spec: &MapSpec) -> anyhow::Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let info = MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?
        .info()
        .with_context(|| format!("reading info of {}", path.display()))?;
    let differences = shape_differences(spec, &info);
    if differences.is_empty() {
        return Ok(true);
    }
    warn!(
        map = spec.name,
        differences = differences.join("; "),
        "pinned map has another layout (left by a different daas-lb version); recreating it"
    );
    fs::remove_file(path).with_context(|| format!("removing stale pin {}", path.display()))?;
    Ok(false)
}

fn check_fs_magic(path: &Path, magic: i64, what: &str) -> anyhow::Result<()> {
    let actual = mounts::fs_magic(path).with_context(|| format!("expected {what}"))?;
    if actual != magic {
        bail!("{} is not {what}", path.display());
    }
    Ok(())
}

/// What [`cleanup`] found and removed under a pin directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The pin directory.
    pub pin_dir: PathBuf,
    /// Links unpinned, which detached their programs: `links/<program>`
    /// for the cgroup links, `links/xdp@<interface>` and
    /// `links/tc@<interface>` for the per-interface ones.
    pub links: Vec<String>,
    /// Maps unpinned (by name).
    pub maps: Vec<String>,
    /// Whether the directory itself was removed (it stays when it holds
    /// files daas-lb did not create).
    pub removed_dir: bool,
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.pin_dir.display();
        if self.links.is_empty() {
            writeln!(f, "{dir}: no links pinned (nothing was attached)")?;
        } else {
            writeln!(
                f,
                "{dir}: detached and unpinned {} link(s): {}",
                self.links.len(),
                self.links.join(", ")
            )?;
        }
        if self.maps.is_empty() {
            writeln!(f, "{dir}: no maps pinned")?;
        } else {
            writeln!(
                f,
                "{dir}: unpinned {} map(s): {}",
                self.maps.len(),
                self.maps.join(", ")
            )?;
        }
        if self.removed_dir {
            writeln!(f, "{dir}: removed")
        } else {
            writeln!(f, "{dir}: kept (it holds files daas-lb did not create)")
        }
    }
}

/// Detaches and unpins everything a run left under `pin_dir` (links first,
/// so traffic stops being redirected before the maps go away). Only names
/// daas-lb creates are removed; the directory itself goes if it is empty.
/// Returns an error only for failures other than "not found".
pub fn cleanup(pin_dir: &Path) -> anyhow::Result<Cleanup> {
    let links_dir = pin_dir.join(LINKS_DIR);
    let mut report = Cleanup {
        pin_dir: pin_dir.to_path_buf(),
        ..Cleanup::default()
    };
    for name in program_names::ALL
        .iter()
        .chain(std::iter::once(&program_names::SOCK_OPS))
    {
        if remove_if_exists(&links_dir.join(name))? {
            report.links.push(format!("{LINKS_DIR}/{name}"));
        }
    }
    for kind in LinkKind::ALL {
        for interface in links::detach_except(&links_dir, kind, &[])? {
            report.links.push(format!(
                "{LINKS_DIR}/{}",
                links::link_pin_name(kind, &interface)
            ));
        }
    }
    remove_dir_if_exists(&links_dir)?;
    for name in map_names::ALL {
        if remove_if_exists(&pin_dir.join(name))? {
            report.maps.push((*name).to_owned());
        }
    }
    report.removed_dir = remove_dir_if_exists(pin_dir)?;
    info!(
        pin_dir = %pin_dir.display(),
        links = report.links.len(),
        maps = report.maps.len(),
        "removed pins"
    );
    Ok(report)
}

/// `daas-lb cleanup`: [`cleanup`] of a pin directory a run left behind,
/// after making sure it is one. Removes nothing, and fails, when `pin_dir`
/// does not exist, is not a directory on bpffs, holds anything daas-lb does
/// not create or nothing at all, or is in use by a running daas-lb (which
/// holds its lock).
pub fn cleanup_leftovers(pin_dir: &Path) -> anyhow::Result<Cleanup> {
    let not_ours = "not a daas-lb pin directory; nothing removed";
    if !pin_dir.is_dir() {
        if pin_dir.exists() {
            bail!("{} is not a directory: {not_ours}", pin_dir.display());
        }
        bail!(
            "{} does not exist: no run left pins there (or --bpffs-dir is not the bpffs_dir of \
             the run to clean up); nothing removed",
            pin_dir.display()
        );
    }
    if mounts::fs_magic(pin_dir)? != BPF_FS_MAGIC {
        bail!("{} is not on bpffs: {not_ours}", pin_dir.display());
    }
    let entries = pin_dir_entries(pin_dir)?;
    let links_dir = pin_dir.join(LINKS_DIR);
    let links = if entries.iter().any(|e| e == LINKS_DIR) {
        pin_dir_entries(&links_dir)?
    } else {
        Vec::new()
    };
    let foreign: Vec<String> = entries
        .iter()
        .filter(|e| *e != LINKS_DIR && !map_names::ALL.contains(&e.as_str()))
        .cloned()
        .chain(
            links
                .iter()
                .filter(|l| {
                    !program_names::ALL.contains(&l.as_str())
                        && *l != program_names::SOCK_OPS
                        && LinkKind::ALL
                            .iter()
                            .all(|kind| links::pinned_interface(*kind, l).is_none())
                })
                .map(|l| format!("{LINKS_DIR}/{l}")),
        )
        .collect();
    if !foreign.is_empty() {
        bail!(
            "{} holds entries daas-lb does not create ({}): {not_ours}",
            pin_dir.display(),
            foreign.join(", ")
        );
    }
    if entries.is_empty() {
        bail!("{} is empty: {not_ours}", pin_dir.display());
    }
    let _lock = lock_pin_dir(pin_dir).context(
        "cleanup would detach a running daas-lb's programs; stop it first (a stopped daas-lb \
         removes its pins itself)",
    )?;
    cleanup(pin_dir)
}

/// The names in directory `dir`, sorted.
fn pin_dir_entries(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

fn remove_if_exists(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes the directory `path` if it is there and empty; whether it was
/// removed now.
fn remove_dir_if_exists(path: &Path) -> anyhow::Result<bool> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => {
            warn!(dir = %path.display(), "not removing directory: it holds files daas-lb did not create");
            Ok(false)
        }
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya::maps::Map;

    use super::*;

    /// Whether `test` can load the embedded eBPF object here: it needs root
    /// and an object built with bpf-linker. Otherwise it is skipped with a
    /// message, except under `CI=true`, where that is a failure: CI must
    /// never skip silently.
    fn can_load_object(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let why = if unsafe { libc::geteuid() } != 0 {
            "not running as root".to_owned()
        } else if let Err(err) = ebpf_object() {
            format!("{err:#}")
        } else {
            return true;
        };
        let ci = std::env::var("CI").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        assert!(!ci, "{test}: cannot run under CI=true: {why}");
        eprintln!("skipping {test}: {why} (set CI=true to make this a failure)");
        false
    }

    /// The kernel's description of a map the loader created.
    fn loaded_info(map: &Map) -> Option<MapInfo> {
        match map {
            Map::HashMap(data)
            | Map::LruHashMap(data)
            | Map::Array(data)
            | Map::PerCpuArray(data)
            | Map::RingBuf(data) => Some(data.info().expect("BPF_OBJ_GET_INFO_BY_FD")),
            _ => None,
        }
    }

    /// The built object holds exactly the maps of `lb_common::maps::MAPS`
    /// (names included, which the kernel crate cannot check at compile
    /// time), and the kernel creates each with exactly the table's type,
    /// key size, value size, `max_entries` and flags, i.e. a fresh run's pins
    /// pass `reuse_or_drop_pinned_map`. Only the maps are created; no
    /// program is loaded or attached.
    #[test]
    fn object_maps_match_the_map_table() {
        if !can_load_object("object_maps_match_the_map_table") {
            return;
        }
        let object = ebpf_object().expect("checked above");
        let ebpf = EbpfLoader::new()
            .load(object)
            .unwrap_or_else(|err| panic!("loading the eBPF object: {err:#}"));

        // Outside the table: aya-log's ring buffer (see
        // `lb_common::kernel_log::RING`), which must be there, and the
        // loader's own maps for the object's data sections (`.rodata*`: the
        // log records' constant strings), which are never pinned.
        let mut in_object: BTreeSet<&str> = ebpf
            .maps()
            .map(|(name, _)| name)
            .filter(|name| !name.starts_with('.'))
            .collect();
        assert!(
            in_object.remove(lb_common::kernel_log::RING),
            "aya-log's ring buffer {} is missing from the object",
            lb_common::kernel_log::RING
        );
        let in_table: BTreeSet<&str> = maps::MAPS.iter().map(|spec| spec.name).collect();
        assert_eq!(
            in_object, in_table,
            "the object's maps (left) and lb_common::maps::MAPS (right) differ"
        );

        let mut mismatches = Vec::new();
        for spec in &maps::MAPS {
            let map = ebpf.map(spec.name).expect("the sets are equal");
            match loaded_info(map) {
                Some(info) => {
                    for difference in shape_differences(spec, &info) {
                        mismatches.push(format!("{}: {difference}", spec.name));
                    }
                }
                None => mismatches.push(format!(
                    "{}: the object declares a map kind lb_common::maps::MapKind does not have",
                    spec.name
                )),
            }
        }
        assert!(
            mismatches.is_empty(),
            "maps in the object differ from lb_common::maps:\n{}",
            mismatches.join("\n")
        );
    }
}
