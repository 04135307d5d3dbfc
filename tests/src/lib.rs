//! Test harness for daas-lb integration tests on the real kernel.
//!
//! Every test builds its own little world and tears it down on drop, also
//! when it panics: a network namespace with only loopback (no route out), a
//! child cgroup under the cgroup2 mount (the programs attach there, never to
//! the root), a bpffs pin directory, backend servers on threads, and the real
//! `daas-lb` binary as a child process. Clients run as separate processes
//! placed in the child cgroup.
//!
//! Privileged tests call [`privileged`] first: without root/bpffs/cgroup2 they
//! skip with a message, unless `CI=true`, where that is a failure.
//!
//! For the K3s scenarios: [`Node`] stands in for a K3s server (service
//! listener + HTTP health endpoint on its own `127.0.0.X`),
//! [`HeldConnection`] is a long-lived client connection through a VIP that
//! reports when it is closed under it, [`put_servers`] drives the server-list
//! API (on the control socket), [`metric`] reads Prometheus samples and [`closed_connection_logs`]
//! the daemon's `closed connections` log lines.
//!
//! The harness is split by concern; every public item is re-exported here,
//! so tests name it `lb_tests::NAME`:
//!
//! - `env`: privilege checks, unique names, the binaries under test, `sh`,
//!   the guards ([`NetNs`], [`TestCgroup`], [`PinDir`], [`TempDir`],
//!   [`TestEnv`]) and the daemon config that points into them
//!   ([`config_yaml`], [`API`], [`METRICS`], [`control_socket_in`]);
//! - `backends`: [`TcpBackend`], [`BulkBackend`], [`UdpBackend`] and [`Node`];
//! - `daemon`: [`Daemon`], the `daas-lb run` child process;
//! - `clients`: what `lb-test-client` prints and [`HeldConnection`];
//! - `inspect`: bpftool, status, metrics and log helpers, RFC 3339 times,
//!   [`put_servers`] and [`service_yaml`];
//! - `chain`: [`SuiChain`], the fake Sui full node;
//! - [`failover`]: a server dying under a stream of new connects (servers,
//!   kill modes, the client loop and its summary; `cargo xtask bench
//!   failover`);
//! - [`connects`]: the closed-loop connect client of `cargo xtask bench
//!   connect` and the percentiles of its latencies;
//! - [`proxies`]: HAProxy and the K3s-style proxy the benches compare
//!   daas-lb with;
//! - [`topology`]: routed namespaces for the XDP tests and benchmarks;
//! - [`xdp_fixture`]: packet fixtures for the XDP program;
//! - [`monitoring`]: the dashboard and alerting rules of
//!   `scripts/monitoring/` and a real Prometheus server to evaluate them.

mod backends;
mod chain;
mod clients;
pub mod connects;
mod daemon;
mod env;
pub mod failover;
mod inspect;
pub mod monitoring;
pub mod proxies;
pub mod topology;
pub mod xdp_fixture;

pub use backends::{
    BULK_IO_TIMEOUT, BULK_MAX, BulkBackend, HEALTH_PORT, Node, TcpBackend, UdpBackend, bulk_reply,
};
pub use chain::SuiChain;
pub use clients::{ClientOutcome, HeldConnection, HoldEvent, Received};
pub use daemon::Daemon;
pub use env::{
    API, METRICS, NOBODY, NetNs, PinDir, TempDir, TestCgroup, TestEnv, as_nobody,
    binary_for_nobody, cgroup2_root, client_bin, config_yaml, control_socket_in, curl_code,
    daas_lb_bin, privileged, sh, unique, write_config,
};
pub use inspect::{
    ClosedLog, Sample, bpftool, cgroup_link_programs, cgroup_links, cgroup_programs,
    closed_connection_logs, http_put, metric, parse_metrics, parse_rfc3339, put_servers, samples,
    server_addresses, service, service_yaml,
};

/// `12,345`: a count as the benches' tables print it.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
