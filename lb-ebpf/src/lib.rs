//! Exists only so that `lb-userspace` can name this crate as a build
//! dependency (which makes cargo rebuild the kernel object when it changes).
#![no_std]
