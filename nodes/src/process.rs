//! What every long-running `shoal` process shares: logging, the shutdown signal, the
//! listen-address file.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::cli::LogFormat;
use crate::error::CliError;
use crate::metrics::{MetricsServer, MetricsSource};

/// Name of the file a node writes its bound address to, inside its data directory.
pub const LISTEN_ADDR_FILE: &str = "listen.addr";

/// Name of the file a node with `--metrics-listen` writes its metrics address to.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";

/// Logs to stderr, filtered by `RUST_LOG` (default `default_filter`), as text or one JSON
/// object per line. Text has colours only when stderr is a terminal and `NO_COLOR` is unset,
/// so log files and pipes get plain text; JSON never has any.
pub fn init_tracing(default_filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(log_colours(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .try_init(),
    };
}

/// Starts the metrics endpoint if `listen` is set (installing core's metrics sink first, so
/// that nothing the node does before the first scrape goes uncounted) and records its
/// address in `DIR/metrics.addr`.
pub fn start_metrics(
    listen: Option<&str>,
    data_dir: &Path,
    source: impl FnOnce() -> MetricsSource,
) -> Result<Option<MetricsServer>, CliError> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    crate::metrics::install_sink();
    let server = MetricsServer::start(listen, source())?;
    let addr = server.local_addr();
    write_atomically(&data_dir.join(METRICS_ADDR_FILE), &format!("{addr}\n"))?;
    tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
    Ok(Some(server))
}

/// Whether logs are coloured: on a terminal, unless `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>).
fn log_colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// A receiver that yields once SIGINT, SIGTERM or SIGHUP arrives. Call once per process.
pub fn shutdown_signal() -> Result<async_channel::Receiver<()>, CliError> {
    let (tx, rx) = async_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(|e| CliError::Node(format!("cannot install the signal handler: {e}")))?;
    Ok(rx)
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename).
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), CliError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| CliError::io("cannot write", path, e))
}

/// Records the address a node actually listens on (`DIR/listen.addr`), for tools and tests
/// that started it on port 0.
pub fn write_listen_addr(data_dir: &Path, addr: SocketAddr) -> Result<PathBuf, CliError> {
    let path = data_dir.join(LISTEN_ADDR_FILE);
    write_atomically(&path, &format!("{addr}\n"))?;
    Ok(path)
}

/// Creates `dir` (and parents).
pub fn ensure_dir(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::io("cannot create", dir, e))
}

#[cfg(test)]
mod tests {
    use super::log_colours;
    use std::ffi::OsStr;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(
            !log_colours(false, None),
            "a pipe or a log file gets plain text"
        );
    }
}
