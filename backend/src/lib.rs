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
pub mod algo;
pub mod api;
pub mod engine;
pub mod error;
pub mod group;
pub mod memory;
pub mod membership;
pub mod options;
pub mod sys;
pub mod transport;

pub use api::buffer::Element;
pub use api::{Issued, Mode, ProcessGroup};
pub use api::DeviceGroup;
pub use api::p2p_types::P2pRequest;
pub use chorus_kernels::{DType, ReduceOp};
pub use engine::p2p::OpBuffer;
pub use engine::work::Work;
pub use error::{ChorusError, ErrorKind, Result};
pub use options::{DevicePath, FailurePolicy, Options};
