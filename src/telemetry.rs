//! Logging setup: `tracing-subscriber` with `RUST_LOG` (or `[logging] level`), text or JSON
//! lines; Pingora's `log` records are bridged in.
//!
//! Each paid request logs one line with target `x402_gateway::payment` and the fields `route`,
//! `outcome`, `reason`, `payer`, `amount`, `network`, `transaction`, `status`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(c: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&c.level));
    // Colours only on a terminal: files, journald and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match c.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
