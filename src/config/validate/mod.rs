//! Checks a parsed file and builds the runtime model, collecting every problem with its
//! location instead of stopping at the first. One module per section of the file, each
//! with unit tests of its rules; this one holds the entry point and the checks the
//! sections share.

mod alerts;
mod routes;
mod server;
mod services;
mod trace;
mod upstreams;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use ipnet::IpNet;
use toml::Spanned;

use super::duration::parse_duration;
use super::env::Expanded;
use super::error::{ConfigErrors, Locator};
use super::file::*;
use super::model::*;

/// Everything a validation needs besides the parsed file.
pub struct Source<'a> {
    pub path: &'a Path,
    /// The text as written (errors point into it).
    pub text: &'a str,
    /// The text the file model was read from, with its `${NAME}`s expanded.
    pub expansion: &'a Expanded,
    /// `check --strict`: resolves each backend name; `Some(why)` when it resolves to
    /// nothing.
    pub resolve: Option<&'a Resolve>,
    /// The environment `[trace]` reads its `OTEL_*` variables from.
    pub env: trace::Env<'a>,
}

/// Resolves a backend name for `check --strict`: `Some(why)` when it cannot.
pub type Resolve = dyn Fn(&BackendName) -> Option<String>;

pub fn validate(source: &Source<'_>, file: FileConfig) -> Result<Config, ConfigErrors> {
    let mut loc = Locator::expanded(source.path, source.text, source.expansion);
    let server = server::server_settings(&mut loc, &file.server, source.path);
    let log = server::log_settings(&mut loc, &file.log, source.path);
    let trace = trace::trace_settings(&mut loc, &file.trace, source.path, source.env);
    let upstreams = upstreams::upstreams(&mut loc, &file.upstreams, source.path, source.resolve);
    let rate_limit_store = file
        .rate_limit_store
        .as_ref()
        .map(|s| services::rate_limit_store(&mut loc, s.get_ref(), source.path));
    let auth = file
        .auth
        .as_ref()
        .and_then(|a| services::auth_settings(&mut loc, a, source.path));
    let routes = routes::routes(
        &mut loc,
        &file.routes,
        &upstreams,
        rate_limit_store.is_some(),
        auth.is_some(),
    );
    let alerting = services::alerting_settings(&mut loc, file.alerting.as_ref());
    let alerts = alerts::alerts(&mut loc, &file.alerts, &routes);

    let config = Config {
        path: source.path.to_path_buf(),
        server,
        log,
        trace,
        upstreams,
        routes,
        rate_limit_store,
        auth,
        alerting,
        alerts,
        secrets: source.expansion.secrets.clone(),
    };
    loc.into_result(config)
}

fn span<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

fn duration_or(loc: &mut Locator, v: &Option<Spanned<String>>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                loc.push(span(s), e);
                default
            }
        },
    }
}

/// A duration that must be above zero (a zero timeout or interval means nothing sensible).
fn positive_duration_or(
    loc: &mut Locator,
    v: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
) -> Duration {
    let d = duration_or(loc, v, default);
    if let Some(s) = v {
        if d.is_zero() && parse_duration(s.get_ref()).is_ok() {
            loc.push(span(s), format!("{what} must be greater than zero"));
            return default;
        }
    }
    d
}

fn int_in(
    loc: &mut Locator,
    v: &Option<Spanned<i64>>,
    default: i64,
    min: i64,
    max: i64,
    what: &str,
) -> i64 {
    match v {
        None => default,
        Some(s) => {
            let n = *s.get_ref();
            if n < min || n > max {
                loc.push(
                    span(s),
                    format!("{what} must be between {min} and {max}, got {n}"),
                );
                default
            } else {
                n
            }
        }
    }
}

fn socket_addr(loc: &mut Locator, v: &Option<Spanned<String>>, fallback: SocketAddr) -> SocketAddr {
    match v {
        None => fallback,
        Some(s) => parse_socket_addr(s.get_ref()).unwrap_or_else(|e| {
            loc.push(span(s), e);
            fallback
        }),
    }
}

pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        format!("invalid address {text:?}: write an IP address and a port, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\" (host names are not resolved)")
    })
}

/// The value the file chose, or the default (serde has checked the name already).
fn chosen<T: Copy>(v: &Option<Spanned<T>>, default: T) -> T {
    v.as_ref().map(|s| *s.get_ref()).unwrap_or(default)
}

/// Paths in the config are relative to the config file's folder, so a config and the
/// files it names move together.
fn relative_to(config_path: &Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        config_path.parent().map(|dir| dir.join(&p)).unwrap_or(p)
    }
}

pub use super::redacted::redact_url;

/// What the sections' unit tests share: a good file to vary, and its problems.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    /// Lines 1-10 (the fixture the binary's tests use too); a test appends sections
    /// from line 11 on.
    pub const GOOD: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/good.toml"
    ));

    /// Every problem of `text`, as `LINE:COL: message`, in the order reported.
    pub fn problems(text: &str) -> Vec<String> {
        match crate::config::parse(Path::new("t.toml"), text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .0
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        }
    }

    /// `text` has a problem at `at` (`LINE:COL`) whose message mentions `needle`.
    pub fn assert_problem(text: &str, at: &str, needle: &str) {
        let found = problems(text);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with(&format!("{at}: ")) && p.contains(needle)),
            "no problem at {at} mentioning {needle:?} in {found:#?}\nfor:\n{text}"
        );
    }

    /// `LINE:COL` of the first occurrence of `marker` in `text`.
    pub fn at(text: &str, marker: &str) -> String {
        let offset = text
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} not in the text"));
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        format!("{line}:{column}")
    }

    /// `text` has a problem at `marker` whose message mentions `needle`.
    pub fn assert_problem_at(text: &str, marker: &str, needle: &str) {
        assert_problem(text, &at(text, marker), needle);
    }

    pub fn assert_clean(text: &str) {
        let found = problems(text);
        assert!(found.is_empty(), "{found:#?}\nfor:\n{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;

    #[test]
    fn the_good_file_is_clean() {
        assert_clean(GOOD);
    }

    #[test]
    fn an_unknown_key_is_located_at_the_key() {
        assert_problem(
            &GOOD.replace("listen =", "lisen ="),
            "2:1",
            "unknown field `lisen`",
        );
    }

    #[test]
    fn a_syntax_error_is_located() {
        let found = problems("[server\nlisten = 1\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("1:"), "{found:?}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_line_order() {
        // Two unknown keys, a wrong type, a bad enum name, and three validation errors.
        let text = r#"[server]
lisen = "127.0.0.1:18080"
threads = "two"
bogus = 1

[upstreams.agents]
backends = ["nope"]
balance = "fastest"

[[routes]]
name = "all"
path_prefix = "no-slash"
upstream = "ghost"
"#;
        let found = problems(text);
        let lines: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(lines, ["2", "3", "4", "7", "8", "12", "13"], "{found:#?}");
        assert!(found[1].contains("invalid type"), "{found:#?}");
        assert!(found[4].contains("unknown variant `fastest`"), "{found:#?}");
        assert!(found[4].contains("least_in_flight"), "{found:#?}");
    }

    #[test]
    fn the_same_problem_is_reported_once() {
        let found = problems(&GOOD.replace("127.0.0.1:9001", "nope"));
        assert_eq!(found.len(), 1, "{found:#?}");
    }
}
