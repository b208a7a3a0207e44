//! Logging. The library only emits `tracing` events and spans (targets `chorus_backend::…`,
//! `chorus_bootstrap::…`, `chorus_kernels::…`; every collective has a span, and at `debug` a rank
//! says what it waits for); it never installs a subscriber by itself, so an application's own
//! `tracing_subscriber::fmt().init()` keeps working and decides what is shown (e.g.
//! `RUST_LOG=chorus_backend=debug` with an `EnvFilter`).
//!
//! A program without a subscriber of its own can ask for one with [`install_stderr_logger`]: the
//! C ABI (and so torch) does at group creation, which is what makes `CHORUS_LOG` work there.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs, once per process, a stderr logger filtered by `CHORUS_LOG` (e.g. `debug`,
/// `chorus_backend=trace`; the filter applies to every target) when that variable is set and no
/// global subscriber is installed yet. Returns whether this call installed it.
///
/// The filter is a comma-separated list of `level`, `target=level` or `target` (every level of that
/// target and the modules below it), the target-and-level part of `RUST_LOG`'s syntax (no span or
/// field filters, no regular expressions). Entries that do not parse are ignored, each with a line on
/// stderr; with none left, errors are shown.
pub fn install_stderr_logger() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut installed = false;
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("CHORUS_LOG") {
            installed = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                // The filter below decides; the formatter's own level (`info` by default) would cap it.
                .with_max_level(LevelFilter::TRACE)
                .finish()
                .with(targets(&filter))
                .try_init()
                .is_ok();
        }
    });
    installed
}

/// `CHORUS_LOG`'s filter: its entries that parse (the others are reported on stderr and skipped);
/// errors only when none does.
fn targets(filter: &str) -> Targets {
    let mut targets = Targets::new();
    let mut any = false;
    for entry in filter.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.parse::<Targets>() {
            Ok(t) => {
                if let Some(level) = t.default_level() {
                    targets = targets.with_default(level);
                }
                targets = targets.with_targets(t);
                any = true;
            }
            Err(e) => eprintln!("chorus: ignoring `{entry}` in CHORUS_LOG: {e}"),
        }
    }
    if any { targets } else { targets.with_default(LevelFilter::ERROR) }
}

#[cfg(test)]
mod tests {
    use super::targets;
    use tracing::Level;

    #[test]
    fn a_bare_level_applies_to_every_target() {
        let t = targets("debug");
        assert!(t.would_enable("chorus_backend::engine", &Level::DEBUG));
        assert!(t.would_enable("chorus_kernels", &Level::INFO));
        assert!(!t.would_enable("chorus_backend", &Level::TRACE));
    }

    #[test]
    fn targets_and_levels_combine_and_bad_entries_are_skipped() {
        let t = targets("warn,chorus_backend=trace,chorus_bootstrap=nonsense=1");
        assert!(t.would_enable("chorus_backend::group", &Level::TRACE));
        assert!(t.would_enable("chorus_kernels", &Level::WARN));
        assert!(!t.would_enable("chorus_kernels", &Level::INFO));
        assert!(!t.would_enable("chorus_bootstrap", &Level::INFO));
        let only = targets("chorus_backend=info");
        assert!(only.would_enable("chorus_backend::api", &Level::INFO));
        assert!(!only.would_enable("chorus_kernels", &Level::ERROR), "a target list without a level shows only its targets");
    }

    #[test]
    fn nothing_usable_shows_errors() {
        for filter in ["", "=", "chorus_backend=loud"] {
            let t = targets(filter);
            assert!(t.would_enable("anything", &Level::ERROR), "{filter:?}");
            assert!(!t.would_enable("anything", &Level::WARN), "{filter:?}");
        }
    }
}
