//! `[trace]`, with the standard `OTEL_*` environment filling what the file leaves
//! unset (the OpenTelemetry specification's meanings). A key the file writes is checked
//! like every other key and wins; an environment value that cannot be used is ignored
//! with a warning (`check` prints it, `run` logs it), so a stray variable never stops
//! a gateway from starting.

use std::path::Path;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use super::{positive_duration_or, relative_to, span, Locator};
use crate::config::file::TraceSection;
use crate::config::model::{OtlpCompression, OtlpProtocol, Sampler, TraceSettings};
use crate::config::Endpoint;

/// Looks up an environment variable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Resource keys the gateway sets from its own settings.
const SERVICE_NAME: &str = "service.name";

pub(super) fn trace_settings(
    loc: &mut Locator,
    s: &TraceSection,
    config_path: &Path,
    env: Env<'_>,
) -> TraceSettings {
    let defaults = TraceSettings::default();
    let mut from = FromEnv {
        env,
        used: Vec::new(),
        warnings: Vec::new(),
    };

    let protocol = match &s.protocol {
        Some(p) => *p.get_ref(),
        None => from
            .var2(
                "protocol",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            )
            .and_then(|(var, v)| {
                from.parse_or_warn(
                    var,
                    &v,
                    v.parse::<OtlpProtocol>().ok(),
                    "http/protobuf or grpc",
                )
            })
            .unwrap_or(defaults.protocol),
    };

    let otlp_endpoint = endpoint(loc, s, protocol, &mut from);

    let compression = match &s.compression {
        Some(c) => *c.get_ref(),
        None => from
            .var2(
                "compression",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            )
            .and_then(|(var, v)| {
                from.parse_or_warn(var, &v, v.parse::<OtlpCompression>().ok(), "gzip or none")
            })
            .unwrap_or(defaults.compression),
    };

    let timeout = match &s.timeout {
        Some(_) => positive_duration_or(loc, &s.timeout, defaults.timeout, "timeout"),
        None => from
            .var2(
                "timeout",
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            )
            .and_then(|(var, v)| {
                let ms = v.trim().parse::<u64>().ok().filter(|ms| *ms > 0);
                from.parse_or_warn(var, &v, ms, "a whole number of milliseconds above 0")
            })
            .map(Duration::from_millis)
            .unwrap_or(defaults.timeout),
    };

    let headers = match &s.headers {
        Some(h) => file_headers(loc, h.get_ref()),
        None => from
            .var2(
                "headers",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_EXPORTER_OTLP_HEADERS",
            )
            .map(|(var, v)| from.headers(var, &v))
            .unwrap_or_default(),
    };

    let tls = otlp_endpoint
        .as_ref()
        .is_some_and(|e| e.starts_with("https://"));
    let ca_file = match s.ca_file.as_ref().filter(|f| !f.get_ref().is_empty()) {
        Some(f) => {
            let path = relative_to(config_path, f.get_ref());
            if otlp_endpoint.is_some() && !tls {
                loc.push(
                    span(f),
                    "ca_file applies to an https:// collector: write otlp_endpoint as https://",
                );
            }
            if let Err(e) = crate::config::tls::load_certificates(&path) {
                loc.push(span(f), format!("ca_file: {e}"));
            }
            Some(path)
        }
        None => from
            .var2(
                "ca_file",
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            )
            .and_then(|(var, v)| {
                let path = std::path::PathBuf::from(&v);
                match crate::config::tls::load_certificates(&path) {
                    Ok(_) => Some(path),
                    Err(e) => {
                        from.warn(format!("{var} ignored ({e}); the system roots are used"));
                        None
                    }
                }
            }),
    };

    let (service_name, resource_attributes) = resource(loc, s, &mut from);

    let sampler = match &s.sampler {
        Some(v) => *v.get_ref(),
        None => from
            .var("sampler", "OTEL_TRACES_SAMPLER")
            .and_then(|(var, v)| {
                from.parse_or_warn(
                    var,
                    &v,
                    v.trim().parse::<Sampler>().ok(),
                    "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                )
            })
            .unwrap_or(defaults.sampler),
    };
    let sample_ratio = match &s.sample_ratio {
        Some(r) => {
            let v = *r.get_ref();
            if (0.0..=1.0).contains(&v) {
                v
            } else {
                loc.push(
                    span(r),
                    format!("sample_ratio must be between 0.0 and 1.0, got {v}"),
                );
                1.0
            }
        }
        None if matches!(
            sampler,
            Sampler::TraceIdRatio | Sampler::ParentbasedTraceIdRatio
        ) =>
        {
            from.var("sample_ratio", "OTEL_TRACES_SAMPLER_ARG")
                .and_then(|(var, v)| {
                    let ratio = v
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r));
                    from.parse_or_warn(var, &v, ratio, "a number from 0.0 to 1.0")
                })
                .unwrap_or(1.0)
        }
        None => 1.0,
    };

    // OTEL_SDK_DISABLED turns export off whatever the file says.
    let disabled =
        (from.env)("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let otlp_endpoint = if disabled {
        from.used.push(("otlp_endpoint", "OTEL_SDK_DISABLED"));
        None
    } else {
        otlp_endpoint
    };

    TraceSettings {
        otlp_endpoint,
        protocol,
        headers,
        compression,
        timeout,
        ca_file,
        service_name,
        resource_attributes,
        sampler,
        sample_ratio,
        from_env: from.used,
        env_warnings: from.warnings,
    }
}

/// The URL batches go to: the file's as written; else `..._TRACES_ENDPOINT` as is;
/// else `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL to which http/protobuf adds
/// `/v1/traces` (gRPC takes it as is).
fn endpoint(
    loc: &mut Locator,
    s: &TraceSection,
    protocol: OtlpProtocol,
    from: &mut FromEnv<'_>,
) -> Option<String> {
    if let Some(e) = &s.otlp_endpoint {
        let text = e.get_ref();
        if text.is_empty() {
            return None;
        }
        let example = match protocol {
            OtlpProtocol::HttpProtobuf => "\"http://127.0.0.1:4318/v1/traces\"",
            OtlpProtocol::Grpc => "\"http://127.0.0.1:4317\"",
        };
        return match Endpoint::parse(text) {
            Err(problem) => {
                loc.push(
                    span(e),
                    format!("otlp_endpoint: {problem}; write the URL of an OTLP {} receiver, e.g. {example}", protocol.as_str()),
                );
                None
            }
            Ok(parsed) if protocol == OtlpProtocol::Grpc && parsed.path != "/" => {
                loc.push(
                    span(e),
                    format!("otlp_endpoint: a gRPC endpoint has no path (the service's path is fixed), got {:?}; write e.g. {example}, or set protocol = \"http/protobuf\" for an OTLP/HTTP URL", parsed.path),
                );
                None
            }
            Ok(_) => Some(text.clone()),
        };
    }
    let (var, url) = match from.var("otlp_endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(found) => found,
        None => {
            let (var, base) = from.var("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT")?;
            let url = match protocol {
                OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                OtlpProtocol::Grpc => base,
            };
            (var, url)
        }
    };
    match Endpoint::parse(url.trim()) {
        Ok(_) => Some(url.trim().to_string()),
        Err(problem) => {
            from.used.retain(|(key, _)| *key != "otlp_endpoint");
            from.warn(format!("{var} ignored: {problem}"));
            None
        }
    }
}

/// `service.name` and the other resource attributes: the file's, then
/// `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(
    loc: &mut Locator,
    s: &TraceSection,
    from: &mut FromEnv<'_>,
) -> (String, Vec<(String, String)>) {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut env_service = None;
    if let Some((var, v)) = from.var("resource_attributes", "OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in from.pairs(var, &v) {
            if k == SERVICE_NAME {
                env_service = Some(v);
            } else {
                attrs.push((k, v));
            }
        }
    }
    if let Some(file) = &s.resource_attributes {
        for (k, v) in file.get_ref() {
            if k == SERVICE_NAME {
                loc.push(
                    span(v),
                    "resource_attributes: service.name comes from service_name; set that instead",
                );
                continue;
            }
            attrs.retain(|(key, _)| key != k);
            attrs.push((k.clone(), v.get_ref().clone()));
        }
    }
    let service_name = match &s.service_name {
        Some(n) if !n.get_ref().is_empty() => n.get_ref().clone(),
        Some(n) => {
            loc.push(span(n), "service_name must not be empty");
            TraceSettings::default().service_name
        }
        None => match from.var("service_name", "OTEL_SERVICE_NAME") {
            Some((_, v)) if !v.trim().is_empty() => v.trim().to_string(),
            _ => match env_service {
                Some(v) => {
                    from.used.push(("service_name", "OTEL_RESOURCE_ATTRIBUTES"));
                    v
                }
                None => TraceSettings::default().service_name,
            },
        },
    };
    (service_name, attrs)
}

/// Headers written in the file: each name and value must be sendable.
fn file_headers(
    loc: &mut Locator,
    h: &std::collections::BTreeMap<String, toml::Spanned<String>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in h {
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(lower.as_bytes()).is_err() {
            loc.push(
                span(value),
                format!("headers: {name:?} is not a valid header name"),
            );
        } else if HeaderValue::from_str(value.get_ref()).is_err() {
            loc.push(
                span(value),
                format!("headers: the value of {name:?} has characters a header cannot carry"),
            );
        } else {
            out.push((lower, value.get_ref().clone()));
        }
    }
    out
}

/// Reads variables, remembering which settings they gave and what could not be used.
struct FromEnv<'a> {
    env: Env<'a>,
    used: Vec<(&'static str, &'static str)>,
    warnings: Vec<String>,
}

impl FromEnv<'_> {
    /// `var` when it is set and not empty (the specification treats empty as unset).
    fn var(&mut self, key: &'static str, var: &'static str) -> Option<(&'static str, String)> {
        let v = (self.env)(var).filter(|v| !v.trim().is_empty())?;
        self.used.push((key, var));
        Some((var, v))
    }

    /// The signal-specific variable, else the general one.
    fn var2(
        &mut self,
        key: &'static str,
        specific: &'static str,
        general: &'static str,
    ) -> Option<(&'static str, String)> {
        self.var(key, specific).or_else(|| self.var(key, general))
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// `parsed`, or a warning that `var` was ignored (and the setting's default used).
    fn parse_or_warn<T>(
        &mut self,
        var: &'static str,
        raw: &str,
        parsed: Option<T>,
        expected: &str,
    ) -> Option<T> {
        if parsed.is_none() {
            self.used.retain(|(_, v)| *v != var);
            self.warn(format!(
                "{var}={raw:?} ignored: expected {expected}; the default is used"
            ));
        }
        parsed
    }

    /// `key=value,key2=value2` with percent-encoded values (W3C baggage style, as the
    /// specification writes `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`).
    /// A malformed entry is skipped with a warning.
    fn pairs(&mut self, var: &'static str, raw: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, entry) in raw.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let decoded = entry.split_once('=').and_then(|(k, v)| {
                let v = percent_encoding::percent_decode_str(v.trim())
                    .decode_utf8()
                    .ok()?;
                Some((k.trim().to_string(), v.into_owned()))
            });
            match decoded {
                Some((k, v)) if !k.is_empty() => out.push((k, v)),
                _ => self.warn(format!(
                    "{var}: entry {} ({entry:?}) ignored: write key=value pairs separated by commas",
                    i + 1
                )),
            }
        }
        out
    }

    fn headers(&mut self, var: &'static str, raw: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in self.pairs(var, raw) {
            let lower = k.to_ascii_lowercase();
            if HeaderName::from_bytes(lower.as_bytes()).is_err()
                || HeaderValue::from_str(&v).is_err()
            {
                self.warn(format!(
                    "{var}: header {k:?} ignored: not a valid header name and value"
                ));
            } else {
                out.push((lower, v));
            }
        }
        if out.is_empty() {
            self.used.retain(|(_, v)| *v != var);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::config::model::{OtlpCompression, OtlpProtocol, Sampler};
    use std::path::Path;
    use std::time::Duration;

    fn with_env(text: &str, vars: &[(&str, &str)]) -> crate::config::TraceSettings {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        crate::config::parse_with(Path::new("t.toml"), text, lookup, None)
            .expect("valid")
            .trace
    }

    #[test]
    fn the_environment_fills_what_the_file_leaves_unset() {
        let t = with_env(
            GOOD,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-api-key=abc%20def, tenant = t1",
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                ("OTEL_SERVICE_NAME", "edge"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,service.name=ignored",
                ),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ],
        );
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            t.headers,
            vec![
                ("x-api-key".into(), "abc def".into()),
                ("tenant".into(), "t1".into())
            ]
        );
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert_eq!(t.compression, OtlpCompression::None);
        assert_eq!(t.service_name, "edge");
        assert_eq!(
            t.resource_attributes,
            vec![("deployment.environment".into(), "prod".into())]
        );
        assert_eq!((t.sampler, t.sample_ratio), (Sampler::TraceIdRatio, 0.25));
        assert!(t.env_warnings.is_empty(), "{:?}", t.env_warnings);
        assert!(t
            .from_env
            .contains(&("otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT")));
    }

    #[test]
    fn the_signal_variable_wins_and_grpc_takes_the_endpoint_as_is() {
        let t = with_env(
            GOOD,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        assert_eq!(t.otlp_endpoint.as_deref(), Some("https://traces:4317"));
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        let t = with_env(
            GOOD,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        assert_eq!(t.otlp_endpoint.as_deref(), Some("http://general:4317"));
    }

    #[test]
    fn a_key_in_the_file_wins_over_its_variable() {
        let text = format!(
            "{GOOD}\n[trace]\notlp_endpoint = \"http://file:4318/v1/traces\"\nservice_name = \"file\"\nsample_ratio = 0.5\ntimeout = \"3s\"\ncompression = \"gzip\"\nheaders = {{ \"X-Key\" = \"k\" }}\n"
        );
        let t = with_env(
            &text,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_SERVICE_NAME", "env"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=b"),
            ],
        );
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("http://file:4318/v1/traces")
        );
        assert_eq!(t.service_name, "file");
        assert_eq!(t.sample_ratio, 0.5);
        assert_eq!(t.timeout, Duration::from_secs(3));
        assert_eq!(t.compression, OtlpCompression::Gzip);
        assert_eq!(t.headers, vec![("x-key".into(), "k".into())]);
        assert!(t.from_env.is_empty(), "{:?}", t.from_env);
    }

    #[test]
    fn sdk_disabled_turns_export_off_whatever_the_file_says() {
        let text = format!("{GOOD}\n[trace]\notlp_endpoint = \"http://file:4318/v1/traces\"\n");
        let t = with_env(&text, &[("OTEL_SDK_DISABLED", "true")]);
        assert_eq!(t.otlp_endpoint, None);
        let t = with_env(&text, &[("OTEL_SDK_DISABLED", "false")]);
        assert!(t.otlp_endpoint.is_some());
    }

    #[test]
    fn unusable_variables_are_ignored_with_a_warning() {
        let t = with_env(
            GOOD,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue,x-ok=1,bad name=2"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
                ("OTEL_TRACES_SAMPLER", "sometimes"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent.pem"),
            ],
        );
        assert_eq!(t.otlp_endpoint, None);
        assert_eq!(t.headers, vec![("x-ok".into(), "1".into())]);
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert_eq!(t.sampler, Sampler::ParentbasedTraceIdRatio);
        assert_eq!(t.ca_file, None);
        let w = t.env_warnings.join("\n");
        for needle in [
            "OTEL_EXPORTER_OTLP_ENDPOINT ignored",
            "OTEL_EXPORTER_OTLP_HEADERS: entry 1 (\"novalue\") ignored",
            "header \"bad name\" ignored",
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" ignored",
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\" ignored",
            "OTEL_TRACES_SAMPLER=\"sometimes\" ignored",
            "OTEL_EXPORTER_OTLP_CERTIFICATE ignored",
        ] {
            assert!(w.contains(needle), "{needle} in {w}");
        }
    }

    #[test]
    fn file_rules() {
        let t = format!("{GOOD}\n[trace]\notlp_endpoint = \"grpc://c:4317\"\n");
        assert_problem_at(&t, "\"grpc://c:4317\"", "is not an http:// or https:// URL");
        let t = format!(
            "{GOOD}\n[trace]\nprotocol = \"grpc\"\notlp_endpoint = \"http://c:4317/v1/traces\"\n"
        );
        assert_problem_at(
            &t,
            "\"http://c:4317/v1/traces\"",
            "a gRPC endpoint has no path",
        );
        let t = format!("{GOOD}\n[trace]\nprotocol = \"http/json\"\n");
        assert_problem_at(&t, "\"http/json\"", "unknown variant");
        let t = format!("{GOOD}\n[trace]\notlp_endpoint = \"http://c:4318/v1/traces\"\nca_file = \"/etc/hostname\"\n");
        assert_problem_at(
            &t,
            "\"/etc/hostname\"",
            "ca_file applies to an https:// collector",
        );
        let t = format!("{GOOD}\n[trace]\nheaders = {{ \"bad name\" = \"hv1\" }}\n");
        assert_problem_at(&t, "\"hv1\"", "is not a valid header name");
        let t =
            format!("{GOOD}\n[trace]\nresource_attributes = {{ \"service.name\" = \"sn1\" }}\n");
        assert_problem_at(&t, "\"sn1\"", "service.name comes from service_name");
        let t = format!("{GOOD}\n[trace]\ntimeout = \"0s\"\n");
        assert_problem_at(&t, "\"0s\"", "timeout must be greater than zero");
        let t = format!("{GOOD}\n[trace]\nsample_ratio = 1.5\n");
        assert_problem_at(&t, "1.5", "sample_ratio must be between 0.0 and 1.0");
        assert_clean(&format!(
            "{GOOD}\n[trace]\notlp_endpoint = \"https://collector.example:4317\"\nprotocol = \"grpc\"\nsampler = \"parentbased_always_off\"\nresource_attributes = {{ \"deployment.environment\" = \"prod\" }}\n"
        ));
    }
}
