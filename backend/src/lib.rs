//! The chorus process group: memory registry, transports, algorithms, engine and the public API.
//!
//! ```no_run
//! use chorus_backend::{Options, ProcessGroup, ReduceOp};
//! // Under chorus-run, torchrun or SLURM:
//! let pg = ProcessGroup::from_env(Options::default())?;
//! let mut grads = vec![1.0f32; 1024];
//! pg.all_reduce(&mut grads, ReduceOp::Sum)?;
//! assert_eq!(grads[0], pg.size() as f32);
//! # Ok::<(), chorus_backend::ChorusError>(())
//! ```
//!
//! `unsafe` code is denied in this crate except where it meets foreign code, each exception named
//! where it is granted: `sys` (shared memory, futexes, process liveness, plain-old-data views),
//! `transport::rdma::ffi` (libibverbs and libcuda through `dlopen`), `api::device_group` and
//! `api::staged` (CUDA device pointers and streams handed in by the caller), and `api::scope`
//! (caller memory lent to queued operations until they complete).
//!
//! The `cuda` feature (default) adds the GPU collectives: `DeviceGroup` and
//! `ProcessGroup::device_group`, the device-pointer collectives on the path `ProcessGroup::device_route`
//! decides (`DeviceOps`, `DeviceStage`), and RDMA registration of GPU memory. Without it the crate
//! builds without cudarc; the host API is the same, the GPU items are absent, and registering GPU
//! memory for RDMA fails with an error that says so. [`DevicePath`] and [`memory::Location`] stay:
//! they are plain data.
//!
//! The layers below the API (`engine`, `group`, `sys`, `transport`) are private. The `internals`
//! feature makes them public for this crate's own integration tests (the RDMA protocol and transport
//! tests drive them directly); it is not part of the supported API.
#![deny(unsafe_code)]
// Every item of the supported API is documented; the `internals` feature opens undocumented layers to this crate's own tests.
#![cfg_attr(not(feature = "internals"), deny(missing_docs))]

pub mod logging;
pub mod memory;

#[cfg(feature = "internals")]
pub mod algo;
#[cfg(not(feature = "internals"))]
pub(crate) mod algo;
pub(crate) mod api;
pub(crate) mod error;
#[cfg(feature = "internals")]
pub mod membership;
#[cfg(not(feature = "internals"))]
pub(crate) mod membership;
pub(crate) mod options;

#[cfg(feature = "internals")]
pub mod engine;
#[cfg(not(feature = "internals"))]
pub(crate) mod engine;
#[cfg(feature = "internals")]
pub mod group;
#[cfg(not(feature = "internals"))]
pub(crate) mod group;
#[cfg(feature = "internals")]
pub mod sys;
#[cfg(not(feature = "internals"))]
pub(crate) mod sys;
#[cfg(feature = "internals")]
pub mod transport;
// Parts of the RDMA transport (the memory-registration cache, some wire and protocol items) are
// driven only by the internals tests until the verbs path uses them.
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
pub(crate) mod transport;

pub use api::buffer::{as_bytes, as_bytes_mut, Element};
pub use api::{Creation, Issued, Mode, OpScope, ProcessGroup, ScopedWork};
#[cfg(feature = "cuda")]
pub use api::{DeviceGroup, DeviceOps, DeviceRoute, DeviceStage, HostReason};
pub use api::p2p_types::P2pRequest;
pub use chorus_kernels::{DType, ReduceOp};
pub use engine::p2p::OpBuffer;
pub use engine::work::{OpError, OpInfo, Outcome, Work};
pub use membership::marks::ResumePoint;
pub use error::{ChorusError, ErrorKind, Result};
pub use options::{DevicePath, FailurePolicy, Options, RdmaOptions, TimeoutKnob};
