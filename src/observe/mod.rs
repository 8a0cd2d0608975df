//! Observability primitives: metrics, the access log, the process log and its redactor,
//! trace context and span export. They know the config, never a request's state: the
//! proxy's `observer` records a finished request with them.

pub mod access_log;
pub mod collector;
pub mod histogram;
pub mod json;
pub mod line_writer;
pub mod logger;
pub mod metrics;
pub mod otlp;
pub mod per_config;
pub mod process;
pub mod process_trace;
pub mod redact;
pub mod shards;
pub mod spans;
pub mod trace_context;
