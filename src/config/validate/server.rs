//! `[server]` and `[log]`: listeners, limits and timeouts, logging.

#[allow(unused_imports)]
use super::*;
use crate::config::tls::IdentityFile;

pub(super) fn server_settings(
    loc: &mut Locator,
    s: &ServerSection,
    config_path: &Path,
) -> ServerSettings {
    let d = ServerSettings::default();
    let listen = socket_addr(loc, &s.listen, d.listen);
    let admin_listen = socket_addr(loc, &s.admin_listen, d.admin_listen);
    if let (Some(a), Some(_)) = (&s.admin_listen, &s.listen) {
        if listen == admin_listen {
            loc.push(span(a), "admin_listen must differ from listen");
        }
    }
    let threads = int_in(loc, &s.threads, d.threads as i64, 1, 256, "threads") as usize;
    let grace_period = duration_or(loc, &s.grace_period, d.grace_period);
    let max_request_body_bytes = int_in(
        loc,
        &s.max_request_body_bytes,
        d.max_request_body_bytes as i64,
        1,
        i64::MAX,
        "max_request_body_bytes",
    ) as u64;
    let admin_token = s
        .admin_token
        .as_ref()
        .map(|t| t.get_ref().clone())
        .filter(|t| !t.is_empty());
    let mut trusted_proxies = Vec::new();
    for cidr in s.trusted_proxies.iter().flatten() {
        match parse_cidr(cidr.get_ref()) {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => loc.push(span(cidr), e),
        }
    }
    let header_timeout =
        positive_duration_or(loc, &s.header_timeout, d.header_timeout, "header_timeout");
    let body_timeout = positive_duration_or(loc, &s.body_timeout, d.body_timeout, "body_timeout");
    let max_connections = int_in(
        loc,
        &s.max_connections,
        d.max_connections as i64,
        0,
        10_000_000,
        "max_connections",
    ) as usize;
    let h2c = chosen(&s.h2c, d.h2c);
    let watch_config = chosen(&s.watch_config, d.watch_config);
    let ready_requires_backends = chosen(&s.ready_requires_backends, d.ready_requires_backends);
    let upgrade_sock = s
        .upgrade_sock
        .as_ref()
        .filter(|p| !p.get_ref().is_empty())
        .map(|p| relative_to(config_path, p.get_ref()));
    let tls = s
        .tls
        .as_ref()
        .and_then(|t| server_tls(loc, t.get_ref(), config_path));
    ServerSettings {
        h2c,
        watch_config,
        ready_requires_backends,
        upgrade_sock,
        tls,
        max_connections,
        listen,
        admin_listen,
        threads,
        grace_period,
        max_request_body_bytes,
        admin_token,
        trusted_proxies,
        header_timeout,
        body_timeout,
    }
}

/// `[server.tls]`: both files are read now, so a bad one is an error at its key.
fn server_tls(loc: &mut Locator, t: &ServerTlsSection, config_path: &Path) -> Option<ServerTls> {
    let cert_file = relative_to(config_path, t.cert_file.get_ref());
    let key_file = relative_to(config_path, t.key_file.get_ref());
    let min_version = chosen(&t.min_version, TlsVersion::V1_2);
    match crate::config::tls::acceptor(&cert_file, &key_file, min_version) {
        Ok(acceptor) => Some(ServerTls {
            cert_file,
            key_file,
            min_version,
            acceptor,
        }),
        Err((file, e)) => {
            let at = match file {
                IdentityFile::Cert => span(&t.cert_file),
                IdentityFile::Key => span(&t.key_file),
            };
            loc.push(at, e);
            None
        }
    }
}

pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = IpNet::from_str(text) {
        return Ok(net);
    }
    if let Ok(ip) = std::net::IpAddr::from_str(text) {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid CIDR {text:?}: write an address block such as \"10.0.0.0/8\" or a single address"
    ))
}

pub(super) fn log_settings(loc: &mut Locator, s: &LogSection, config_path: &Path) -> LogSettings {
    let format = chosen(&s.format, LogSettings::default().format);
    let level = chosen(&s.level, LogLevel::Info).filter();
    let access_log = match &s.access_log {
        None => AccessLogTarget::Stdout,
        Some(v) => match v.get_ref().as_str() {
            "stdout" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            "" => {
                loc.push(
                    span(v),
                    "access_log is empty: use stdout, off or a file path",
                );
                AccessLogTarget::Off
            }
            path => AccessLogTarget::File(relative_to(config_path, path)),
        },
    };
    let redact_headers = match &s.redact_headers {
        None => LogSettings::default().redact_headers,
        Some(list) => list
            .iter()
            .filter_map(|h| match HeaderName::from_str(h.get_ref()) {
                Ok(name) => Some(name.as_str().to_string()),
                Err(_) => {
                    loc.push(
                        span(h),
                        format!("{:?} is not a valid header name", h.get_ref()),
                    );
                    None
                }
            })
            .collect(),
    };
    let redact_query_params = match &s.redact_query_params {
        None => LogSettings::default().redact_query_params,
        Some(list) => list.iter().map(|p| p.get_ref().clone()).collect(),
    };
    LogSettings {
        format,
        level,
        access_log,
        redact_headers,
        redact_query_params,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn with_server(lines: &str) -> String {
        GOOD.replace("[server]\n", &format!("[server]\n{lines}\n"))
    }

    #[test]
    fn listen_and_admin_listen() {
        let t = GOOD.replace("127.0.0.1:18080", "127.0.0.1:99999");
        assert_problem_at(&t, "\"127.0.0.1:99999\"", "invalid address");
        let t = with_server("admin_listen = \"127.0.0.1:18080\"");
        assert_problem_at(
            &t,
            "\"127.0.0.1:18080\"",
            "admin_listen must differ from listen",
        );
    }

    #[test]
    fn threads_and_body_limits_have_ranges() {
        let t = with_server("threads = 0");
        assert_problem_at(&t, "0", "threads must be between 1 and 256");
        let t = with_server("max_request_body_bytes = -5");
        assert_problem_at(&t, "-5", "max_request_body_bytes must be between");
    }

    #[test]
    fn timeouts_are_humantime_durations_above_zero() {
        assert_clean(&with_server(
            "header_timeout = \"1m30s\"\nbody_timeout = \"1.5s\"",
        ));
        let t = with_server("header_timeout = \"0s\"");
        assert_problem_at(&t, "\"0s\"", "header_timeout must be greater than zero");
        let t = with_server("body_timeout = \"ten\"");
        assert_problem_at(&t, "\"ten\"", "invalid duration");
        let t = with_server("grace_period = 10");
        assert_problem_at(&t, "10", "invalid type");
    }

    #[test]
    fn max_connections_is_a_count_or_zero() {
        assert_clean(&with_server("max_connections = 0"));
        assert_clean(&with_server("max_connections = 5000"));
        let t = with_server("max_connections = -1");
        assert_problem_at(&t, "-1", "max_connections must be between 0 and 10000000");
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        assert_clean(&with_server("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]"));
        let t = with_server("trusted_proxies = [\"10.0.0.0/33\"]");
        assert_problem_at(&t, "\"10.0.0.0/33\"", "invalid CIDR");
    }

    #[test]
    fn log_settings() {
        let t = format!("{GOOD}\n[log]\nformat = \"xml\"\n");
        assert_problem_at(
            &t,
            "\"xml\"",
            "unknown variant `xml`, expected `json` or `pretty`",
        );
        let t = format!("{GOOD}\n[log]\nlevel = \"loud\"\n");
        assert_problem_at(&t, "\"loud\"", "unknown variant `loud`");
        let t = format!("{GOOD}\n[log]\naccess_log = \"\"\n");
        assert_problem_at(&t, "\"\"", "access_log is empty");
        let t = format!("{GOOD}\n[log]\nredact_headers = [\"bad header\"]\n");
        assert_problem_at(&t, "\"bad header\"", "not a valid header name");
    }

    #[test]
    fn edge_keys() {
        assert_clean(&with_server(
            "h2c = true\nupgrade_sock = \"/run/agentgate/upgrade.sock\"",
        ));
        let t = with_server("h2c = \"yes\"");
        assert_problem_at(&t, "\"yes\"", "invalid type");
        let t = format!("{GOOD}\n[server.tls]\ncert_file = \"/nonexistent/gw.crt\"\nkey_file = \"/nonexistent/gw.key\"\n");
        assert_problem_at(&t, "\"/nonexistent/gw.crt\"", "cannot read");
        let t = format!("{GOOD}\n[server.tls]\ncert_file = \"a.crt\"\n");
        assert_problem(&t, "12:1", "missing field `key_file`");
    }
}
