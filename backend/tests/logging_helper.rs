//! The opt-in helper installs a stderr logger filtered by `CHORUS_LOG` when the program has no
//! subscriber: `target=level` entries and a bare level, bad entries skipped. Its own binary: the
//! global subscriber is per process.
use tracing::Level;

#[test]
fn chorus_log_filters_by_target_and_level() {
    std::env::set_var("CHORUS_LOG", "warn,chorus_backend=debug,chorus_kernels=loud");
    assert!(chorus_backend::logging::install_stderr_logger(), "no subscriber was installed, so the helper installs one");
    assert!(!chorus_backend::logging::install_stderr_logger(), "once per process");
    assert!(tracing::enabled!(target: "chorus_backend::engine", Level::DEBUG));
    assert!(!tracing::enabled!(target: "chorus_backend::engine", Level::TRACE));
    assert!(tracing::enabled!(target: "chorus_bootstrap::client", Level::WARN));
    assert!(!tracing::enabled!(target: "chorus_bootstrap::client", Level::INFO));
    assert!(!tracing::enabled!(target: "chorus_kernels", Level::INFO), "the bad entry is skipped");
}
