//! The engine: runs plans over links. `comm` moves chunks with credits and sequence numbers,
//! `desc` is what every chunk says about its collective (the arguments ranks must agree on),
//! `exec` interprets a plan's steps, `queue` orders a group's operations (any thread may run
//! them), `worker` is the thread that runs them when nobody waits, `work` is their handle,
//! `p2p` progresses tagged point-to-point messages.
pub mod comm;
pub mod desc;
pub mod exec;
pub mod p2p;
pub mod queue;
pub mod spin;
pub mod tasks;
pub mod work;
pub mod worker;
