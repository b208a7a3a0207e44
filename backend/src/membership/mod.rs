//! Membership: views `(epoch, active ranks)` decided in the store by compare-and-set, failure
//! detection, and agreement after a failure, so every rank sees the same sequence of views and
//! survivors return identical results.
pub mod join;
pub mod liveness;
pub mod recovery;
pub mod threads;
mod view;

#[cfg(test)]
mod crash_tests;

pub use view::{Request, View, ViewStore};
