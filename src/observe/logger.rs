//! The process's own log: the `log` crate (which pingora also uses) written as JSON lines
//! (or pretty lines) to stderr through the non-blocking line writer.

use std::sync::OnceLock;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};

use super::json;
use super::line_writer::{LineWriter, Sink};
use super::redact::Redactor;
use crate::config::{Config, LogFormat};

struct ProcessLogger {
    writer: ArcSwapOption<LineWriter>,
    format: std::sync::atomic::AtomicBool, // true = json
    /// What no record may carry (pingora's debug output prints headers and queries).
    redactor: ArcSwap<Redactor>,
}

static LOGGER: OnceLock<ProcessLogger> = OnceLock::new();

fn dropped() {
    metrics::counter!("agentgate_process_log_dropped_total").increment(1);
}

/// Installs the process logger once; later calls (reloads) change level, format and
/// what is redacted.
pub fn init(config: &Config) {
    let (format, level) = (config.log.format, config.log.level);
    let redactor = Redactor::new(
        &config.log.redact_headers,
        &config.log.redact_query_params,
        &[config.server.admin_token.as_deref().unwrap_or("")],
    );
    let logger = LOGGER.get_or_init(|| {
        let writer = LineWriter::start(Sink::Stderr, 1 << 20, dropped)
            .ok()
            .map(std::sync::Arc::new);
        ProcessLogger {
            writer: ArcSwapOption::new(writer),
            format: std::sync::atomic::AtomicBool::new(true),
            redactor: ArcSwap::from_pointee(Redactor::default()),
        }
    });
    logger.redactor.store(std::sync::Arc::new(redactor));
    logger.format.store(
        format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// Writes out what is queued (before the process exits).
pub fn flush() {
    if let Some(l) = LOGGER.get() {
        if let Some(w) = l.writer.load_full() {
            w.flush();
        }
    }
}

impl log::Log for ProcessLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(writer) = self.writer.load_full() else {
            return;
        };
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let formatted = record.args().to_string();
        let redactor = self.redactor.load();
        let message = redactor.redact(&formatted);
        let json_lines = self.format.load(std::sync::atomic::Ordering::Relaxed);
        writer.write_with(|line| {
            if json_lines {
                line.push(b'{');
                json::push_key(line, "ts");
                line.push(b'"');
                json::push_timestamp(line, SystemTime::now());
                line.push(b'"');
                json::field_str(line, "level", level);
                json::field_str(line, "msg", &message);
                json::field_str(line, "target", record.target());
                line.push(b'}');
            } else {
                json::push_timestamp(line, SystemTime::now());
                line.push(b' ');
                line.extend_from_slice(level.to_ascii_uppercase().as_bytes());
                line.push(b' ');
                line.extend_from_slice(message.as_bytes());
            }
        });
    }

    fn flush(&self) {
        flush();
    }
}

/// Writes one structured event (alerts, reloads) as a JSON line with extra fields.
pub fn event(level: log::Level, msg: &str, fields: &[(&str, &str)]) {
    if level > log::max_level() {
        return;
    }
    let Some(l) = LOGGER.get() else { return };
    let Some(writer) = l.writer.load_full() else {
        return;
    };
    let json_lines = l.format.load(std::sync::atomic::Ordering::Relaxed);
    writer.write_with(|line| {
        if !json_lines {
            json::push_timestamp(line, SystemTime::now());
            line.push(b' ');
            line.extend_from_slice(level.as_str().as_bytes());
            line.push(b' ');
            line.extend_from_slice(msg.as_bytes());
            for (k, v) in fields {
                line.push(b' ');
                line.extend_from_slice(k.as_bytes());
                line.push(b'=');
                line.extend_from_slice(v.as_bytes());
            }
            return;
        }
        line.push(b'{');
        json::push_key(line, "ts");
        line.push(b'"');
        json::push_timestamp(line, SystemTime::now());
        line.push(b'"');
        json::field_str(line, "level", &level.as_str().to_ascii_lowercase());
        json::field_str(line, "msg", msg);
        for (k, v) in fields {
            json::field_str(line, k, v);
        }
        line.push(b'}');
    });
}
