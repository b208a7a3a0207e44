//! The operating-system layer: shared-memory mappings, futexes, process liveness and plain-old-data
//! byte views, each behind a safe wrapper whose contract is documented here. One of the backend's
//! named exceptions to `#![deny(unsafe_code)]` (with `transport::rdma::ffi` and `api::device_group`).
#![allow(unsafe_code)]
pub mod futex;
pub mod shm;
pub mod pod;
pub mod proc;
pub mod lend;
pub mod sched;
