//! Which backend a new connection or flow of a service gets: the
//! controller's selection, or with `policy: spread` the Maglev table slot of
//! a per-connection hash. Shared by the socket programs (hash of the socket
//! cookie) and XDP (hash of the flow).

use lb_common::{MaglevKey, NO_BACKEND, SERVICE_SPREAD, Service};

use crate::maps::MAGLEV;

/// The backend for a new connection: with [`SERVICE_SPREAD`] the slot
/// `hash() % table_size` of the service's table (the selected backend while
/// that slot is empty), otherwise the selected backend (and `hash` is never
/// computed).
#[expect(
    clippy::inline_always,
    reason = "one flat program per hook keeps verifier state small and avoids BPF-to-BPF calls"
)]
#[inline(always)]
pub(crate) fn pick(service: &Service, hash: impl FnOnce() -> u64) -> u32 {
    if service.flags & SERVICE_SPREAD == 0 {
        return service.backend_id;
    }
    let Some(slot) = hash().checked_rem(u64::from(service.table_size)) else {
        return service.backend_id;
    };
    let key = MaglevKey {
        service_id: service.id,
        slot: slot as u32,
    };
    match MAGLEV.get_ptr(key) {
        // SAFETY: pointer from a successful lookup, copied at once.
        Some(id) => match unsafe { id.read() } {
            NO_BACKEND => service.backend_id,
            id => id,
        },
        None => service.backend_id,
    }
}
