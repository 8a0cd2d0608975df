//! `[upstreams.NAME]`: backends, balancing, timeouts, retries and health checks.

#[allow(unused_imports)]
use super::*;

pub(super) fn upstreams(
    loc: &mut Locator,
    sections: &std::collections::BTreeMap<String, Spanned<UpstreamSection>>,
    config_path: &Path,
    strict: Option<&Resolve>,
) -> Vec<Arc<Upstream>> {
    let mut out = Vec::new();
    for (name, section) in sections {
        let table_span = span(section);
        let s = section.get_ref();
        let mut backends = Vec::new();
        let mut names = Vec::new();
        if s.backends.get_ref().is_empty() {
            loc.push(
                span(&s.backends),
                format!("upstream {name:?} has no backends: list at least one \"IP:PORT\" or \"HOST:PORT\""),
            );
        }
        let mut seen = HashSet::new();
        let mut seen_names = HashSet::new();
        for b in s.backends.get_ref() {
            match parse_backend(b.get_ref()) {
                Ok(Backend::Addr(addr)) => {
                    if !seen.insert(addr) {
                        loc.push(span(b), format!("backend {addr} is listed twice"));
                    } else {
                        backends.push(BackendAddr::literal(addr));
                    }
                }
                Ok(Backend::Name(n)) => {
                    if !seen_names.insert(n.clone()) {
                        loc.push(
                            span(b),
                            format!("backend {}:{} is listed twice", n.host, n.port),
                        );
                    } else {
                        if let Some(why) = strict.and_then(|resolve| resolve(&n)) {
                            loc.push(span(b), why);
                        }
                        names.push(n);
                    }
                }
                Err(e) => loc.push(span(b), e),
            }
        }
        let resolve_interval = positive_duration_or(
            loc,
            &s.resolve_interval,
            Upstream::DEFAULT_RESOLVE_INTERVAL,
            "resolve_interval",
        );
        let balance = chosen(&s.balance, Upstream::DEFAULT_BALANCE);
        let connect_timeout = positive_duration_or(
            loc,
            &s.connect_timeout,
            Upstream::DEFAULT_CONNECT_TIMEOUT,
            "connect_timeout",
        );
        let first_byte_timeout = positive_duration_or(
            loc,
            &s.first_byte_timeout,
            Upstream::DEFAULT_FIRST_BYTE_TIMEOUT,
            "first_byte_timeout",
        );
        let idle_timeout = positive_duration_or(
            loc,
            &s.idle_timeout,
            Upstream::DEFAULT_IDLE_TIMEOUT,
            "idle_timeout",
        );
        let retries = int_in(
            loc,
            &s.retries,
            Upstream::DEFAULT_RETRIES as i64,
            0,
            10,
            "retries",
        ) as u32;
        let retry_budget = match &s.retry_budget {
            None => Upstream::DEFAULT_RETRY_BUDGET,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                loc.push(
                    span(r),
                    format!(
                        "retry_budget is a share of requests from 0.0 to 1.0 (0.2: at most one retry for every five requests, plus 3 a second), got {}",
                        r.get_ref()
                    ),
                );
                Upstream::DEFAULT_RETRY_BUDGET
            }
        };
        let (max_in_flight, queue_timeout, adaptive_concurrency) = concurrency(loc, s);
        let h = s.health.as_ref();
        let protocol = chosen(&s.protocol, Upstream::DEFAULT_PROTOCOL);
        let tls = upstream_tls(loc, s, protocol, config_path);
        let health = health_settings(loc, h.unwrap_or(&HealthSection::default()));
        if let Some(grpc) = h.and_then(|h| h.grpc.as_ref()) {
            if *grpc.get_ref() && !protocol.is_h2() {
                loc.push(
                    span(grpc),
                    "the gRPC health protocol runs over HTTP/2: set protocol = \"h2\" or \"h2c\" on this upstream",
                );
            }
        }
        let _ = table_span;
        out.push(Arc::new(Upstream {
            name: name.clone(),
            index: out.len(),
            backends,
            names,
            resolve_interval,
            balance,
            connect_timeout,
            first_byte_timeout,
            idle_timeout,
            retries,
            retry_budget,
            max_in_flight,
            queue_timeout,
            adaptive_concurrency,
            health,
            protocol,
            tls,
        }));
    }
    out
}

enum Backend {
    Addr(SocketAddr),
    Name(BackendName),
}

/// `IP:PORT`, `[IPv6]:PORT`, or `HOST:PORT` with a DNS name.
fn parse_backend(text: &str) -> Result<Backend, String> {
    if let Ok(addr) = parse_socket_addr(text) {
        return Ok(Backend::Addr(addr));
    }
    let problem = || {
        format!("invalid backend {text:?}: write \"IP:PORT\" (\"127.0.0.1:9001\", \"[::1]:9001\") or \"HOST:PORT\" (\"agents.internal:9001\")")
    };
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(problem)?;
    let port: u16 = port.parse().map_err(|_| problem())?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if port == 0 || host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(problem());
    }
    Ok(Backend::Name(BackendName {
        host: host.to_ascii_lowercase(),
        port,
    }))
}

/// TLS to the agents: on with `tls = true` or `protocol = "h2"`; the name and CA keys
/// are errors without it (they would silently do nothing).
fn upstream_tls(
    loc: &mut Locator,
    s: &UpstreamSection,
    protocol: UpstreamProtocol,
    config_path: &Path,
) -> Option<UpstreamTls> {
    let asked = s.tls.as_ref().map(|t| *t.get_ref());
    if protocol == UpstreamProtocol::H2c && asked == Some(true) {
        if let Some(t) = &s.tls {
            loc.push(
                span(t),
                "h2c is cleartext HTTP/2: for HTTP/2 over TLS write protocol = \"h2\"",
            );
        }
    }
    if protocol == UpstreamProtocol::H2 && asked == Some(false) {
        if let Some(t) = &s.tls {
            loc.push(
                span(t),
                "protocol = \"h2\" is HTTP/2 over TLS: remove tls = false, or write protocol = \"h2c\" for cleartext",
            );
        }
    }
    let on = protocol == UpstreamProtocol::H2 || asked == Some(true);
    if !on {
        for key in [&s.tls_server_name, &s.ca_file].into_iter().flatten() {
            loc.push(
                span(key),
                "this key applies only to TLS: set tls = true (or protocol = \"h2\") on this upstream",
            );
        }
        return None;
    }
    let server_name = s
        .tls_server_name
        .as_ref()
        .map(|n| n.get_ref().trim().to_string())
        .filter(|n| !n.is_empty());
    if let (Some(n), Some(name)) = (&s.tls_server_name, &server_name) {
        if name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
            loc.push(
                span(n),
                format!("tls_server_name {name:?} is not a host name: write the name the agents' certificate carries, e.g. \"agents.internal\""),
            );
        }
    }
    let mut ca_file = None;
    let mut ca = None;
    if let Some(f) = s.ca_file.as_ref().filter(|f| !f.get_ref().is_empty()) {
        let path = relative_to(config_path, f.get_ref());
        match crate::config::tls::load_certificates(&path) {
            Ok(certs) => ca = Some(Arc::new(certs.into_boxed_slice())),
            Err(e) => loc.push(span(f), format!("ca_file: {e}")),
        }
        ca_file = Some(path);
    }
    Some(UpstreamTls {
        server_name,
        ca_file,
        ca,
    })
}

pub(super) fn health_settings(loc: &mut Locator, h: &HealthSection) -> HealthSettings {
    let d = HealthSettings::default();
    let path = match &h.path {
        None => d.path.clone(),
        Some(p) => {
            // Empty turns active checks off (passive ejection still runs).
            if !p.get_ref().is_empty() && !p.get_ref().starts_with('/') {
                loc.push(
                    span(p),
                    "health path must start with '/' (or be empty to turn active checks off)",
                );
            }
            p.get_ref().clone()
        }
    };
    let interval = positive_duration_or(loc, &h.interval, d.interval, "interval");
    let timeout = positive_duration_or(loc, &h.timeout, d.timeout, "timeout");
    if let Some(t) = &h.timeout {
        if timeout > interval {
            loc.push(
                span(t),
                "health timeout must not be longer than the interval",
            );
        }
    }
    let grpc = chosen(&h.grpc, d.grpc);
    if let (true, Some(p)) = (grpc, &h.path) {
        if !p.get_ref().is_empty() {
            loc.push(
                span(p),
                "grpc = true checks grpc.health.v1.Health/Check, not a path: remove path",
            );
        }
    }
    HealthSettings {
        grpc,
        path,
        interval,
        timeout,
        unhealthy_after: int_in(
            loc,
            &h.unhealthy_after,
            d.unhealthy_after.into(),
            1,
            1000,
            "unhealthy_after",
        ) as u32,
        healthy_after: int_in(
            loc,
            &h.healthy_after,
            d.healthy_after.into(),
            1,
            1000,
            "healthy_after",
        ) as u32,
        eject_after: int_in(
            loc,
            &h.eject_after,
            d.eject_after.into(),
            0,
            1000,
            "eject_after",
        ) as u32,
        eject_for: positive_duration_or(loc, &h.eject_for, d.eject_for, "eject_for"),
        max_eject_for: positive_duration_or(
            loc,
            &h.max_eject_for,
            d.max_eject_for,
            "max_eject_for",
        ),
    }
}

/// `max_in_flight`, `queue_timeout` and `[adaptive_concurrency]`.
fn concurrency(
    loc: &mut Locator,
    s: &UpstreamSection,
) -> (u32, Duration, Option<AdaptiveConcurrency>) {
    let max_in_flight = int_in(loc, &s.max_in_flight, 0, 0, 1_000_000, "max_in_flight") as u32;
    let queue_timeout = duration_or(loc, &s.queue_timeout, Duration::ZERO);
    let adaptive = s.adaptive_concurrency.as_ref().map(|a| {
        let a_ref = a.get_ref();
        let min_limit = int_in(loc, &a_ref.min_limit, 4, 1, 1_000_000, "min_limit") as u32;
        let max_limit = int_in(loc, &a_ref.max_limit, 1000, 1, 1_000_000, "max_limit") as u32;
        if min_limit > max_limit {
            loc.push(
                span(a),
                format!("adaptive_concurrency: min_limit ({min_limit}) is above max_limit ({max_limit})"),
            );
        }
        if max_in_flight > 0 && min_limit > max_in_flight {
            loc.push(
                span(a),
                format!("adaptive_concurrency: min_limit ({min_limit}) is above max_in_flight ({max_in_flight}), which caps the adaptive limit"),
            );
        }
        AdaptiveConcurrency {
            min_limit,
            max_limit: max_limit.max(min_limit),
        }
    });
    if let Some(q) = &s.queue_timeout {
        if !queue_timeout.is_zero() && max_in_flight == 0 && adaptive.is_none() {
            loc.push(
                span(q),
                "queue_timeout waits for a slot under a cap: set max_in_flight or [adaptive_concurrency] on this upstream",
            );
        }
    }
    (max_in_flight, queue_timeout, adaptive)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn with_upstream(lines: &str) -> String {
        GOOD.replace(
            "backends = [\"127.0.0.1:9001\"]\n",
            &format!("backends = [\"127.0.0.1:9001\"]\n{lines}\n"),
        )
    }

    #[test]
    fn backends() {
        let t = GOOD.replace("[\"127.0.0.1:9001\"]", "[]");
        assert_problem_at(&t, "[]", "no backends");
        let t = GOOD.replace(
            "\"127.0.0.1:9001\"",
            "\"127.0.0.1:9001\", \"127.0.0.1:9001\"",
        );
        assert_problem(&t, "5:31", "listed twice");
        // A name is a backend too; garbage is not.
        assert_clean(&GOOD.replace("127.0.0.1:9001", "localhost:9001"));
        assert_clean(&GOOD.replace("127.0.0.1:9001", "agents.default.svc.cluster.local:80"));
        for bad in [
            "localhost",
            "local host:9001",
            "-bad.example:9001",
            "a..b:9001",
            "x:0",
            "x:99999",
            "http://x:9001",
        ] {
            let t = GOOD.replace("127.0.0.1:9001", bad);
            assert_problem_at(&t, &format!("\"{bad}\""), "invalid backend");
        }
        let t = GOOD.replace("\"127.0.0.1:9001\"", "\"a.test:1\", \"A.test:1\"");
        assert_problem(&t, "5:25", "listed twice");
        let t = GOOD.replace(
            "127.0.0.1:9001\"]",
            "127.0.0.1:9001\"]\nresolve_interval = \"0s\"",
        );
        assert_problem_at(&t, "\"0s\"", "resolve_interval must be greater than zero");
    }

    #[test]
    fn balance_retries_and_timeouts() {
        assert_clean(&with_upstream(
            "balance = \"round_robin\"\nretries = 0\nconnect_timeout = \"250ms\"",
        ));
        let t = with_upstream("balance = \"fastest\"");
        assert_problem_at(
            &t,
            "\"fastest\"",
            "expected one of `round_robin`, `random`, `least_in_flight`, `peak_ewma`",
        );
        assert_clean(&with_upstream("balance = \"peak_ewma\""));
        let t = with_upstream("retries = 11");
        assert_problem_at(&t, "11", "retries must be between 0 and 10");
        let t = with_upstream("retry_budget = 1.5");
        assert_problem_at(
            &t,
            "1.5",
            "retry_budget is a share of requests from 0.0 to 1.0",
        );
        assert_clean(&with_upstream("retry_budget = 0.5"));
        let t = with_upstream("connect_timeout = \"10 sec\"");
        assert_problem_at(&t, "\"10 sec\"", "invalid duration");
        let t = with_upstream("idle_timeout = \"0ms\"");
        assert_problem_at(&t, "\"0ms\"", "idle_timeout must be greater than zero");
    }

    #[test]
    fn concurrency_caps() {
        assert_clean(&with_upstream("max_in_flight = 64\nqueue_timeout = \"2s\""));
        assert_clean(&with_upstream(
            "max_in_flight = 64\nadaptive_concurrency = { min_limit = 4, max_limit = 200 }",
        ));
        let t = with_upstream("max_in_flight = -1");
        assert_problem_at(&t, "-1", "max_in_flight must be between 0 and 1000000");
        let t = with_upstream("queue_timeout = \"2s\"");
        assert_problem_at(&t, "\"2s\"", "queue_timeout waits for a slot under a cap: set max_in_flight or [adaptive_concurrency]");
        let t = with_upstream("adaptive_concurrency = { min_limit = 50, max_limit = 10 }");
        assert_problem_at(&t, "{ min_limit", "min_limit (50) is above max_limit (10)");
        let t = with_upstream("max_in_flight = 8\nadaptive_concurrency = { min_limit = 16 }");
        assert_problem_at(
            &t,
            "{ min_limit",
            "above max_in_flight (8), which caps the adaptive limit",
        );
        let t = with_upstream("adaptive_concurrency = { min = 1 }");
        assert_problem_at(&t, "min", "unknown field `min`");
        let t = with_upstream("health = { max_eject_for = \"0s\" }");
        assert_problem_at(&t, "\"0s\"", "max_eject_for must be greater than zero");
    }

    #[test]
    fn health_checks() {
        assert_clean(&with_upstream("health = { path = \"\" }"));
        let t = with_upstream("health = { path = \"healthz\" }");
        assert_problem_at(&t, "\"healthz\"", "health path must start with '/'");
        let t = with_upstream("health = { interval = \"1s\", timeout = \"2s\" }");
        assert_problem_at(&t, "\"2s\"", "must not be longer than the interval");
        let t = with_upstream("health = { eject_after = 1001 }");
        assert_problem_at(&t, "1001", "eject_after must be between 0 and 1000");
    }

    #[test]
    fn protocol_and_tls_keys_agree() {
        assert_clean(&with_upstream("protocol = \"h2c\""));
        assert_clean(&with_upstream(
            "protocol = \"h2\"\ntls_server_name = \"agents.internal\"",
        ));
        assert_clean(&with_upstream("tls = true"));
        let t = with_upstream("protocol = \"http2\"");
        assert_problem_at(&t, "\"http2\"", "expected one of `http1`, `h2`, `h2c`");
        let t = with_upstream("protocol = \"h2c\"\ntls = true");
        assert_problem_at(&t, "true", "h2c is cleartext HTTP/2");
        let t = with_upstream("protocol = \"h2\"\ntls = false");
        assert_problem_at(&t, "false", "protocol = \"h2\" is HTTP/2 over TLS");
        let t = with_upstream("tls_server_name = \"agents.internal\"");
        assert_problem_at(&t, "\"agents.internal\"", "applies only to TLS");
        let t = with_upstream("tls = true\ntls_server_name = \"https://agents\"");
        assert_problem_at(&t, "\"https://agents\"", "is not a host name");
        let t = with_upstream("tls = true\nca_file = \"/nonexistent/ca.pem\"");
        assert_problem_at(&t, "\"/nonexistent/ca.pem\"", "ca_file: cannot read");
    }

    #[test]
    fn the_grpc_health_check_needs_http2_and_no_path() {
        assert_clean(&with_upstream(
            "protocol = \"h2c\"\nhealth = { grpc = true }",
        ));
        let t = with_upstream("health = { grpc = true }");
        assert_problem_at(&t, "true", "runs over HTTP/2");
        let t = with_upstream("protocol = \"h2c\"\nhealth = { grpc = true, path = \"/healthz\" }");
        assert_problem_at(&t, "\"/healthz\"", "not a path: remove path");
    }
}
