//! Configuration: the TOML file model (`file`), its validation (`validate`) into the
//! runtime model (`model`) the gateway runs on, and located errors (`error`).

pub mod duration;
pub mod endpoint;
pub mod error;
pub mod file;
pub mod keys;
pub mod model;
pub mod redacted;
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
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let parsed: file::FileConfig = match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => {
            let loc = Locator::new(path, text);
            let err = loc.error_at(e.span().unwrap_or(0..0), explain_parse_error(e.message()));
            return Err(ConfigErrors(vec![err]));
        }
    };
    validate::validate(&validate::Source { path, text }, parsed)
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

/// A one-line summary printed by `agentgate check`.
pub fn summary(config: &Config) -> String {
    let backends: usize = config.upstreams.iter().map(|u| u.backends.len()).sum();
    format!(
        "{} routes, {} upstreams ({} backends), {} alerts; listen {}, admin {}",
        config.routes.len(),
        config.upstreams.len(),
        backends,
        config.alerts.len(),
        config.server.listen,
        config.server.admin_listen
    )
}
