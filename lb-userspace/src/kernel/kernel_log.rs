//! The kernel programs' log: aya-log's ring buffer (`AYA_LOGS`, see
//! `lb_common::kernel_log`) read with [`aya_log::EbpfLogger`], each record
//! passed on to `tracing` under the target [`TARGET`], so that
//! `RUST_LOG=daas_lb::kernel=debug` shows them next to the daemon's own
//! lines. The programs write records only while the `kernel_log` map says
//! so (written by the controller); with logging off this reader waits on
//! an empty ring.

use anyhow::Context as _;
use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Level, Log, Metadata, Record};
use tracing::{debug, error, info, trace, warn};

/// The `tracing` target of every kernel record.
pub const TARGET: &str = "daas_lb::kernel";

/// Passes aya-log's records on to `tracing` (target [`TARGET`], the
/// record's level; `program` is the kernel module that wrote it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ToTracing;

impl Log for ToTracing {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        // Filtering is tracing's (`RUST_LOG`); the kernel filters by
        // `kernel_log` before it writes.
        true
    }

    fn log(&self, record: &Record<'_>) {
        let program = record.target();
        let message = record.args();
        match record.level() {
            Level::Error => error!(target: TARGET, program, "{message}"),
            Level::Warn => warn!(target: TARGET, program, "{message}"),
            Level::Info => info!(target: TARGET, program, "{message}"),
            Level::Debug => debug!(target: TARGET, program, "{message}"),
            Level::Trace => trace!(target: TARGET, program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of the kernel programs' log records.
pub type KernelLogReader = EbpfLogger<ToTracing>;

/// Takes aya-log's ring buffer out of the loaded object.
pub fn reader(ebpf: &mut Ebpf) -> anyhow::Result<KernelLogReader> {
    EbpfLogger::init_with_logger(ebpf, ToTracing).with_context(|| {
        format!(
            "taking aya-log's ring buffer {} out of the eBPF object",
            lb_common::kernel_log::RING
        )
    })
}
