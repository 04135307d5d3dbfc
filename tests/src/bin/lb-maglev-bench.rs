//! How long a `policy: spread` table takes: building it with
//! `lb_userspace::policy::maglev::build` (1000 backends, 65537 slots) and writing it
//! into a real `maglev` BPF map (the embedded object loaded standalone, no
//! pins, nothing attached), slot by slot as the controller does, as a diff
//! after one backend joined, and with one `BPF_MAP_UPDATE_BATCH` (which aya
//! 0.14 does not expose; a raw `bpf(2)` here).
//!
//! Run as root from a release build (`cargo xtask bench xdp` does); prints a
//! markdown table on stdout.
//!
//! ```text
//! lb-maglev-bench [--backends N (1000)] [--size PRIME (65537)] [--reps N (5)]
//! ```

use std::{
    fmt::Write as _,
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    process::ExitCode,
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, IterableMap as _, MapData},
};
use lb_common::{MaglevKey, map_names};
use lb_userspace::{
    kernel::ebpf_object::EBPF_OBJECT,
    policy::maglev::{MaglevBackend, build, is_prime},
};

/// `BPF_MAP_UPDATE_BATCH`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The service id the bench writes its table under.
const SERVICE: u32 = 7;

fn main() -> ExitCode {
    let (mut backends, mut size, mut reps) = (1000u32, 65537u32, 5usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u32>().ok());
        match (pair[0].as_str(), value) {
            ("--backends", Some(v)) if (1..=4000).contains(&v) => backends = v,
            ("--size", Some(v)) if is_prime(v) => size = v,
            ("--reps", Some(v)) if (1..=50).contains(&v) => reps = v as usize,
            _ => {
                eprintln!(
                    "usage: lb-maglev-bench [--backends 1..=4000] [--size PRIME] [--reps 1..=50]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut out = format!(
        "\n### Maglev table: {backends} backends (weight 1), {size} slots, min / median of {reps}\n\n\
         | step | min | median | notes |\n|---|---:|---:|---|\n"
    );
    let all = make_backends(backends + 1);
    let current = &all[..backends as usize];

    let (fresh, table) = time(reps, || build(current, size, None).expect("build"));
    row(&mut out, "build, fresh (no previous table)", &fresh, "");
    let (rebuild, _) = time(reps, || {
        build(current, size, Some(&table)).expect("rebuild")
    });
    row(
        &mut out,
        "rebuild, same backends, with previous",
        &rebuild,
        "",
    );
    let (added_t, added) = time(reps, || build(&all, size, Some(&table)).expect("add"));
    let moved = moved_count(&table, &added);
    row(
        &mut out,
        "rebuild, one backend added",
        &added_t,
        &format!("{moved} slots moved"),
    );
    let (removed_t, removed) = time(reps, || {
        build(&current[1..], size, Some(&table)).expect("remove")
    });
    row(
        &mut out,
        "rebuild, one backend removed",
        &removed_t,
        &format!("{} slots moved", moved_count(&table, &removed)),
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let _ = writeln!(
            out,
            "| map writes | – | – | skipped: not root (loading BPF maps needs root) |"
        );
    } else if EBPF_OBJECT.is_empty() {
        let _ = writeln!(
            out,
            "| map writes | – | – | skipped: built without the eBPF object (AYA_BUILD_SKIP) |"
        );
    } else if let Err(e) = map_writes(&mut out, reps, &table, &added) {
        let _ = writeln!(out, "| map writes | – | – | failed: {e:#} |");
    }
    print!("{out}");
    ExitCode::SUCCESS
}

fn make_backends(n: u32) -> Vec<MaglevBackend> {
    (1..=n)
        .map(|id| MaglevBackend {
            id,
            key: format!("10.{}.{}.1:6443", id / 256, id % 256).into_bytes(),
            weight: 1,
        })
        .collect()
}

/// Runs `f` `reps` times; the sorted durations and the last result.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut durations = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let start = Instant::now();
        let value = f();
        durations.push(start.elapsed());
        last = Some(value);
    }
    durations.sort();
    (durations, last.expect("reps ≥ 1"))
}

fn row(out: &mut String, step: &str, durations: &[Duration], notes: &str) {
    let min = durations.first().copied().unwrap_or_default();
    let median = durations
        .get(durations.len() / 2)
        .copied()
        .unwrap_or_default();
    let _ = writeln!(out, "| {step} | {} | {} | {notes} |", ms(min), ms(median));
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// How many slots changed owner.
fn moved_count(old: &[u32], new: &[u32]) -> usize {
    old.iter().zip(new).filter(|(a, b)| a != b).count()
}

fn map_writes(out: &mut String, reps: usize, table: &[u32], added: &[u32]) -> anyhow::Result<()> {
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
    let map = ebpf
        .take_map(map_names::MAGLEV)
        .ok_or_else(|| anyhow::anyhow!("no maglev map in the object"))?;
    let mut maglev: HashMap<MapData, MaglevKey, u32> = HashMap::try_from(map)?;
    let fd = maglev.map().fd().as_fd().as_raw_fd();
    let key = |slot: usize| MaglevKey {
        service_id: SERVICE,
        slot: slot as u32,
    };
    let slots = table.len();

    let mut inserts = Vec::new();
    let mut overwrites = Vec::new();
    let mut diffs = Vec::new();
    let mut deletes = Vec::new();
    let mut batches = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        for (slot, &id) in table.iter().enumerate() {
            maglev.insert(key(slot), id, 0)?;
        }
        inserts.push(start.elapsed());

        let start = Instant::now();
        for (slot, &id) in table.iter().enumerate() {
            maglev.insert(key(slot), id, 0)?;
        }
        overwrites.push(start.elapsed());

        let start = Instant::now();
        let mut written = 0;
        for (slot, (&old, &new)) in table.iter().zip(added).enumerate() {
            if old != new {
                maglev.insert(key(slot), new, 0)?;
                written += 1;
            }
        }
        diffs.push(start.elapsed());
        debug_assert!(written > 0);

        let start = Instant::now();
        let read = maglev.iter().flatten().count();
        reads.push(start.elapsed());
        anyhow::ensure!(read == slots, "read back {read} of {slots} slots");

        let start = Instant::now();
        for slot in 0..slots {
            maglev.remove(&key(slot))?;
        }
        deletes.push(start.elapsed());

        let keys: Vec<MaglevKey> = (0..slots).map(key).collect();
        let start = Instant::now();
        let done = update_batch(fd, &keys, table)?;
        batches.push(start.elapsed());
        anyhow::ensure!(done == slots, "batch wrote {done} of {slots}");
        let read = maglev.iter().flatten().count();
        anyhow::ensure!(read == slots, "after batch: {read} of {slots} slots");
        for slot in 0..slots {
            maglev.remove(&key(slot))?;
        }
    }
    let changed = moved_count(table, added);
    for (step, durations, notes) in [
        (
            "map: insert every slot into an empty map (1 syscall each)",
            &mut inserts,
            format!("{slots} × BPF_MAP_UPDATE_ELEM"),
        ),
        (
            "map: overwrite every slot",
            &mut overwrites,
            format!("{slots} × BPF_MAP_UPDATE_ELEM"),
        ),
        (
            "map: write the diff after one backend joined",
            &mut diffs,
            format!("{changed} × BPF_MAP_UPDATE_ELEM"),
        ),
        (
            "map: one BPF_MAP_UPDATE_BATCH of every slot into an empty map",
            &mut batches,
            "raw bpf(2); aya 0.14 has no batch API".to_owned(),
        ),
        (
            "map: read every slot back (aya iter)",
            &mut reads,
            "get_next_key + lookup per slot".to_owned(),
        ),
        (
            "map: delete every slot",
            &mut deletes,
            format!("{slots} × BPF_MAP_DELETE_ELEM"),
        ),
    ] {
        durations.sort();
        row(out, step, durations, &notes);
    }
    Ok(())
}

/// `bpf_attr` for the batch commands, padded to a size the kernel accepts.
#[repr(C, align(8))]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `BPF_MAP_UPDATE_BATCH` of `keys[i] → values[i]`; how many the kernel wrote.
fn update_batch(fd: RawFd, keys: &[MaglevKey], values: &[u32]) -> io::Result<usize> {
    assert_eq!(keys.len(), values.len());
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: `attr` is a live `union bpf_attr` prefix for the batch commands
    // (`struct { in_batch, out_batch, keys, values, count, map_fd,
    // elem_flags, flags }`); `keys` and `values` point at `count` entries of
    // the map's key and value sizes that outlive the call; the kernel writes
    // back only `count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            (&raw mut attr).cast::<u8>(),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr.count as usize)
}
