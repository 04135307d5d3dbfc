//! The userspace proxy data plane.

pub mod connect;
