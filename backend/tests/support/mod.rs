//! The in-process harness of the API tests: every rank a thread of this process, over one
//! in-memory store.
use chorus_backend::{Options, ProcessGroup};
use chorus_bootstrap::{MemStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// Runs `f` on `n` ranks of a group named `name` (one host); each rank's result, in rank order.
pub fn run<F>(n: usize, name: &str, f: F) -> Vec<chorus_backend::Result<()>>
where
    F: Fn(ProcessGroup) -> chorus_backend::Result<()> + Send + Sync + 'static,
{
    // Threads of one process on a busy machine: a starved heartbeat is not a dead rank.
    std::env::set_var("CHORUS_HEARTBEAT_TIMEOUT_MS", "30000");
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let (store, f) = (store.clone(), f.clone());
            let opts = Options::default().with_timeout(Duration::from_secs(30)).with_name(name).with_host_id("host");
            std::thread::spawn(move || f(ProcessGroup::new(store, r, n, opts)?))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread panicked")).collect()
}
