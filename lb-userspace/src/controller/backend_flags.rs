//! Keeps each backend slot's [`BACKEND_DOWN`](lb_common::BACKEND_DOWN) flag
//! in line with its server's state, so the XDP program moves the flows of a
//! failed or removed server to a usable backend.

use lb_common::Backend;
use tracing::{debug, warn};

use super::runtime::ServiceRuntime;
use crate::{
    kernel::dataplane::Dataplane,
    policy::map_ids::{backend_entry, backend_flags},
};

/// Rewrites the backend slots whose flags no longer match their server's
/// state (only those: usually none).
pub(super) fn sync(dataplane: &mut Option<Dataplane>, service: &mut ServiceRuntime) {
    // Without the kernel's data plane there is no slot to flag.
    let Some(dataplane) = dataplane.as_mut() else {
        return;
    };
    for entry in service.machine.servers() {
        let Some(runtime) = service.servers.get_mut(&entry.address) else {
            continue;
        };
        let flags = backend_flags(entry.state);
        if flags == runtime.backend_flags {
            continue;
        }
        let backend = Backend {
            flags,
            ..backend_entry(entry.address, service.id)
        };
        match dataplane.maps.backends.set(runtime.backend_id, backend) {
            Ok(()) => {
                debug!(service = %service.config.name, server = %entry.address, state = %entry.state, flags, "backend flags updated");
                runtime.backend_flags = flags;
            }
            Err(err) => {
                warn!(service = %service.config.name, server = %entry.address, error = format!("{err:#}"), "could not update the backend's flags; will retry on the next event");
            }
        }
    }
}
