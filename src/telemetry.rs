//! The tracing subscriber: pretty for people, JSON for log pipelines. `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rtc=warn,rtc_ice=warn,rtc_dtls=warn"));
    // Colour only for a person at a terminal; files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    // try_init: tests start several servers in one process and only the first installs it.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
