//! Issue 23: the library never installs a global `tracing` subscriber by itself, even with
//! `CHORUS_LOG` set, so the application's own `tracing_subscriber::fmt().init()` (which panics when
//! one is installed already) keeps working after group creation. Its own binary: the global
//! subscriber is per process.
use chorus_backend::{Options, ProcessGroup, ReduceOp};
use chorus_bootstrap::{MemStore, Store};
use std::sync::Arc;

#[test]
fn group_creation_leaves_the_subscriber_to_the_application() {
    std::env::set_var("CHORUS_LOG", "debug");
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let pg = ProcessGroup::new(store, 0, 1, Options::default().with_name("logging")).expect("a group of one");
    let mut v = vec![1.0f32; 4];
    pg.all_reduce(&mut v, ReduceOp::Sum).expect("all_reduce");
    pg.destroy();
    assert!(
        tracing_subscriber::fmt().with_writer(std::io::sink).try_init().is_ok(),
        "after group creation a global subscriber was already installed: the library installed one"
    );
    // The opt-in helper defers to the application's subscriber.
    assert!(!chorus_backend::logging::install_stderr_logger(), "the helper replaced the application's subscriber");
}
