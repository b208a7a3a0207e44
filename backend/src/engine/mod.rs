//! The engine: runs plans over links. `comm` moves chunks with credits and sequence numbers,
//! `exec` interprets a plan's steps, `worker` orders operations and completes `Work` handles,
//! `p2p` progresses tagged point-to-point messages.
pub mod comm;
pub mod exec;
pub mod p2p;
pub mod signals;
pub mod tasks;
pub mod work;
pub mod worker;
