//! Rendezvous for chorus: a small key/value store (TCP server + client), torchrun/SLURM-compatible
//! environment parsing, listeners that bind before they publish, and the `chorus-run` launcher's
//! code ([`launch`]; the programs `chorus-run` and `chorus-store` are in the `chorus-tools` package).
//!
//! The client and the launcher are plain `std::net` + threads: bootstrap traffic is tiny and rare.
//! The store server is one `tokio` event-loop thread behind a synchronous API, so thousands of idle
//! or waiting clients cost no thread each (issue 17). Every blocking operation takes a deadline.

#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod env;
mod error;
pub mod launch;
pub mod listen;
pub mod protocol;
pub mod replicated;
pub mod server;
pub mod store;

pub use auth::JobSecret;
pub use client::StoreClient;
pub use error::{BootstrapError, Result};
pub use replicated::ReplicatedStore;
pub use server::StoreServer;
pub use store::{AfterRendezvous, MemStore, PrefixStore, Store};
