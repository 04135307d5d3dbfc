//! A fake Sui full node for the discovery and Nautilus tests, with the
//! tokio runtime it runs on.
//!
//! The fake is dropped before its runtime (field order), so its servers
//! stop on a live runtime.

use std::{
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use crate::daemon::Daemon;

/// An in-process fake Sui full node
/// ([`lb_userspace::demo::fake_node::FakeChain`]) and the tokio runtime it
/// (and any fake enclave started with [`SuiChain::block_on`]) runs on;
/// dropped in that order.
pub struct SuiChain {
    /// The fake full node (registry, checkpoints, objects).
    pub fake: lb_userspace::demo::fake_node::FakeChain,
    /// The runtime its services run on.
    pub runtime: tokio::runtime::Runtime,
}

impl SuiChain {
    /// Starts a fake full node of chain `chain_id`; call it after the test
    /// environment exists so it listens in the test's network namespace.
    pub fn start(chain_id: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let fake = runtime
            .block_on(lb_userspace::demo::fake_node::FakeChain::start(chain_id))
            .expect("start the fake Sui full node");
        Self { fake, runtime }
    }

    /// Another fake full node (a node's own `sui_rpc`) on the same runtime.
    pub fn another(&self, chain_id: &str) -> lb_userspace::demo::fake_node::FakeChain {
        self.runtime
            .block_on(lb_userspace::demo::fake_node::FakeChain::start(chain_id))
            .expect("start a second fake Sui full node")
    }

    /// Runs `future` to completion on the chain's runtime (e.g. starting a
    /// fake enclave, whose server then keeps running on it).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The `chain:` block for this registry, with `extra` lines (indented
    /// by two spaces) appended.
    pub fn yaml(&self, extra: &str) -> String {
        let r = self.fake.registry();
        format!(
            "chain:\n  sui_rpc_url: {}\n  registry: {{ package: \"{}\", module: {}, object: \"{}\" }}\n{extra}",
            self.fake.url(),
            r.package,
            r.module,
            r.object
        )
    }

    /// Waits until the daemon subscribed (to the registry's events or, in
    /// the fallback, to checkpoints; the fake counts a subscription once
    /// later checkpoints reach it).
    pub fn wait_subscribed(&self, daemon: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.fake.calls().subscribe.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the daemon never subscribed; log:\n{}",
                daemon.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}
