//! The FFI layer: the only place in the backend with `unsafe`. Shared-memory mappings, futexes and
//! process liveness, each behind a safe wrapper whose contract is documented here.
pub mod futex;
pub mod shm;
pub mod pod;
pub mod proc;
