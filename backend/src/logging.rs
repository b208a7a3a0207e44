//! Logging. The library only emits `tracing` events and spans (targets `chorus_backend::…`,
//! `chorus_bootstrap::…`, `chorus_kernels::…`; every collective has a span, and at `debug` a rank
//! says what it waits for); it never installs a subscriber by itself, so an application's own
//! `tracing_subscriber::fmt().init()` keeps working and decides what is shown (e.g.
//! `RUST_LOG=chorus_backend=debug` with an `EnvFilter`).
//!
//! A program without a subscriber of its own can ask for one with [`install_stderr_logger`]: the
//! C ABI (and so torch) does at group creation, which is what makes `CHORUS_LOG` work there.

/// Installs, once per process, a stderr logger filtered by `CHORUS_LOG` (e.g. `debug`,
/// `chorus_backend=trace`; the filter applies to every target) when that variable is set and no
/// global subscriber is installed yet. Returns whether this call installed it.
pub fn install_stderr_logger() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut installed = false;
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("CHORUS_LOG") {
            installed = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init()
                .is_ok();
        }
    });
    installed
}
