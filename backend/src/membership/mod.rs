//! Membership: views `(epoch, active ranks)` decided in the store by compare-and-set, failure
//! detection, and agreement after a failure, so every rank sees the same sequence of views and
//! survivors return identical results. `member` is one rank's state and protocol steps,
//! `recovery` the rounds' records and rules, `view` the view records, `join` a replacement's
//! records, `liveness` failure detection, `threads` the heartbeat and attendant threads.
pub mod join;
pub mod liveness;
pub mod marks;
pub mod member;
pub mod recovery;
pub mod threads;
mod view;

#[cfg(test)]
mod admission_tests;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod member_tests;

pub use view::{View, ViewStore};
