//! Configuration: the TOML file model (`file`), its validation (`validate`) into the
//! runtime model (`model`) the gateway runs on, and located errors (`error`).

pub mod duration;
pub mod endpoint;
pub mod env;
pub mod error;
pub mod file;
pub mod keys;
pub mod model;
pub mod read;
pub mod redacted;
pub mod tls;
pub mod validate;

use std::path::{Path, PathBuf};

pub use endpoint::Endpoint;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use error::{file_error, Locator};

/// Where `run` looks for its config when no `--config` is given.
pub fn default_config_path() -> PathBuf {
    std::env::var_os("AGENTGATE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config/agentgate.toml"))
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(path, format!("cannot read config file: {e}")))?;
    parse(path, &text)
}

/// Parses and validates config text; `path` names it in errors and anchors relative paths.
/// Every problem is reported, unknown keys and wrong types included, in line order.
/// `${NAME}` references are expanded from the process environment first.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    parse_with(path, text, |name| std::env::var(name).ok(), None)
}

/// `check --strict`: [`load`], and every backend name must resolve to an address now.
pub fn load_strict(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(path, format!("cannot read config file: {e}")))?;
    let resolve = |n: &BackendName| -> Option<String> {
        use std::net::ToSocketAddrs;
        match (n.host.as_str(), n.port).to_socket_addrs() {
            Ok(addrs) if addrs.len() > 0 => None,
            Ok(_) => Some(format!("backend {}:{} resolves to no address", n.host, n.port)),
            Err(e) => Some(format!(
                "backend {}:{} does not resolve ({e}); `run` would start and keep trying every resolve_interval",
                n.host, n.port
            )),
        }
    };
    parse_with(path, &text, |name| std::env::var(name).ok(), Some(&resolve))
}

/// [`parse`] with the variables looked up by `lookup`, and backend names resolved by
/// `resolve` when given.
pub fn parse_with(
    path: &Path,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    resolve: Option<&validate::Resolve>,
) -> Result<Config, ConfigErrors> {
    let expansion = env::expand(text, &lookup);
    let (parsed, problems) = read::deserialize_all::<file::FileConfig>(&expansion.text);
    let as_written = Locator::new(path, text);
    let loc = Locator::expanded(path, text, &expansion);
    let mut errors: Vec<ConfigError> = expansion
        .problems
        .iter()
        .map(|(span, message)| as_written.error_at(span.clone(), message.clone()))
        .collect();
    errors.extend(
        problems
            .into_iter()
            .map(|(span, message)| loc.error_at(span, explain_parse_error(&message))),
    );
    if let Some(parsed) = parsed {
        let source = validate::Source {
            path,
            text,
            expansion: &expansion,
            resolve,
            env: &lookup,
        };
        match validate::validate(&source, parsed) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(e) => errors.extend(e.0),
        }
    }
    // An error may quote a value; one from the environment is shown as its reference.
    for e in &mut errors {
        e.message = expansion.secrets.hide(&e.message);
    }
    Err(in_line_order(path, errors))
}

/// The config file's errors by line and column, each error about another file (the keys
/// file) right after the error that named that file; duplicates once.
fn in_line_order(path: &Path, errors: Vec<ConfigError>) -> ConfigErrors {
    let mut anchor = (0, 0);
    let mut keyed: Vec<((usize, usize), usize, ConfigError)> = errors
        .into_iter()
        .enumerate()
        .map(|(seq, e)| {
            if e.file == path {
                anchor = (e.line, e.column);
            }
            (anchor, seq, e)
        })
        .collect();
    keyed.sort_by_key(|(at, seq, _)| (*at, *seq));
    let mut out: Vec<ConfigError> = Vec::with_capacity(keyed.len());
    for (_, _, e) in keyed {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    ConfigErrors(out)
}

/// serde's messages name the problem; add what to do about the most common ones.
fn explain_parse_error(message: &str) -> String {
    let message = message.trim_end();
    if message.starts_with("unknown field") {
        format!(
            "{message} (check the spelling; unknown keys are errors so typos never pass silently)"
        )
    } else {
        message.to_string()
    }
}

/// What `agentgate check` prints about span export: the settings in force after the
/// environment, which variables gave which, and what was ignored.
pub fn trace_summary(config: &Config) -> String {
    let t = &config.trace;
    let mut out = match &t.otlp_endpoint {
        Some(url) => format!(
            "trace export: {} {} (compression {}, timeout {}{}, {} header{}), service {:?}",
            t.protocol.as_str(),
            redacted::redact_url(url),
            t.compression.as_str(),
            duration::format_duration(t.timeout),
            t.ca_file
                .as_ref()
                .map(|p| format!(", ca_file {}", p.display()))
                .unwrap_or_default(),
            t.headers.len(),
            if t.headers.len() == 1 { "" } else { "s" },
            t.service_name,
        ),
        None => "trace export: off (no otlp_endpoint)".to_string(),
    };
    let ratio = match t.sampler {
        Sampler::TraceIdRatio | Sampler::ParentbasedTraceIdRatio => format!(" {}", t.sample_ratio),
        _ => String::new(),
    };
    out.push_str(&format!("\ntrace sampler: {}{ratio}", t.sampler.as_str()));
    for (key, var) in &t.from_env {
        out.push_str(&format!("\n  {key} from {var}"));
    }
    for w in &t.env_warnings {
        out.push_str(&format!("\n  warning: {w}"));
    }
    out
}

/// A one-line summary printed by `agentgate check`.
pub fn summary(config: &Config) -> String {
    let backends: usize = config.upstreams.iter().map(|u| u.backends.len()).sum();
    let names: usize = config.upstreams.iter().map(|u| u.names.len()).sum();
    let by_name = if names > 0 {
        format!(" + {names} by name")
    } else {
        String::new()
    };
    format!(
        "{} routes, {} upstreams ({} backends{by_name}), {} alerts; listen {}, admin {}",
        config.routes.len(),
        config.upstreams.len(),
        backends,
        config.alerts.len(),
        config.server.listen,
        config.server.admin_listen
    )
}
