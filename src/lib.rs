#![doc = include_str!("../README.md")]
//!
//! This facade re-exports the process group (`chorus_backend`), the rendezvous layer
//! (`chorus_bootstrap`) and the reduce kernels (`chorus_kernels`).
#![deny(missing_docs)]
pub use chorus_backend::*;
pub use chorus_bootstrap as bootstrap;
pub use chorus_kernels as kernels;
