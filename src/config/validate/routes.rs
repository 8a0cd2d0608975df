//! `[[routes]]`: names, prefixes, methods, the upstream named, and each route's auth,
//! rate limit and pagination rules.

#[allow(unused_imports)]
use super::*;

pub(super) fn methods(loc: &mut Locator, list: &[Spanned<String>]) -> Vec<Method> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    let mut out = Vec::new();
    for m in list {
        let text = m.get_ref();
        if !KNOWN.contains(&text.as_str()) {
            loc.push(
                span(m),
                format!(
                    "unknown method {text:?}: use upper-case names such as \"GET\" or \"POST\""
                ),
            );
            continue;
        }
        if let Ok(method) = Method::from_bytes(text.as_bytes()) {
            out.push(method);
        }
    }
    out
}

pub(super) fn routes(
    loc: &mut Locator,
    sections: &[Spanned<RouteSection>],
    upstreams: &[Arc<Upstream>],
    have_store: bool,
    have_auth: bool,
) -> Vec<Arc<Route>> {
    let by_name: HashMap<&str, usize> = upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.index))
        .collect();
    let mut names = HashSet::new();
    let mut prefixes = HashMap::new();
    let mut out = Vec::new();
    for (index, section) in sections.iter().enumerate() {
        let r = section.get_ref();
        let name = r.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            loc.push(
                span(&r.name),
                format!("route name {name:?} must be non-empty and use only letters, digits, '_' and '-' (it becomes a metric label)"),
            );
        }
        if name == "unmatched" {
            loc.push(
                span(&r.name),
                "route name \"unmatched\" is reserved for requests that match no route",
            );
        }
        if !names.insert(name.clone()) {
            loc.push(
                span(&r.name),
                format!("duplicate route name {name:?}: route names must be unique"),
            );
        }
        let prefix = r.path_prefix.get_ref().clone();
        if !prefix.starts_with('/') {
            loc.push(
                span(&r.path_prefix),
                format!("path_prefix {prefix:?} must start with '/'"),
            );
        }
        let route_methods = methods(loc, &r.methods);
        let method_key: Vec<String> = {
            let mut m: Vec<String> = route_methods.iter().map(|m| m.to_string()).collect();
            m.sort();
            m
        };
        if let Some(other) = prefixes.insert((prefix.clone(), method_key), name.clone()) {
            loc.push(
                span(&r.path_prefix),
                format!("path_prefix {prefix:?} is already used by route {other:?} for the same methods"),
            );
        }
        let upstream = match by_name.get(r.upstream.get_ref().as_str()) {
            Some(i) => *i,
            None => {
                let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                loc.push(
                    span(&r.upstream),
                    format!(
                        "route {name:?} names upstream {:?}, which is not defined: define [upstreams.{}] or use one of: {}",
                        r.upstream.get_ref(),
                        r.upstream.get_ref(),
                        if known.is_empty() { "(none defined)".to_string() } else { known.join(", ") }
                    ),
                );
                0
            }
        };
        let auth = r.auth.as_ref().map(|a| *a.get_ref()).unwrap_or(false);
        if auth && !have_auth {
            if let Some(a) = &r.auth {
                loc.push(
                    span(a),
                    "auth = true needs an [auth] section with a keys_file",
                );
            }
        }
        let rate_limit = r
            .rate_limit
            .as_ref()
            .map(|rl| rate_limit_rule(loc, rl, have_store));
        let pagination = r
            .pagination
            .as_ref()
            .map(|p| pagination_rule(loc, p.get_ref()));
        let ai = r.ai.as_ref().map(|a| ai_route(loc, a.get_ref()));
        let token_limit = r
            .token_limit
            .as_ref()
            .map(|t| token_limit_rule(loc, t, ai.is_some(), have_store));
        out.push(Arc::new(Route {
            name,
            index,
            path_prefix: prefix,
            methods: route_methods,
            upstream,
            upstream_name: r.upstream.get_ref().clone(),
            auth,
            rate_limit,
            pagination,
            ai,
            token_limit,
        }));
    }
    // Longest prefix first; among equal prefixes, routes restricted to methods first so a
    // method-specific route wins over a catch-all one.
    out.sort_by(|a, b| {
        b.path_prefix
            .len()
            .cmp(&a.path_prefix.len())
            .then_with(|| a.methods.is_empty().cmp(&b.methods.is_empty()))
            .then_with(|| a.index.cmp(&b.index))
    });
    out
}

pub(super) fn rate_limit_rule(
    loc: &mut Locator,
    rl: &Spanned<RateLimitSection>,
    have_store: bool,
) -> RateLimitRule {
    let s = rl.get_ref();
    let key = limit_key(loc, &s.key);
    let rps = *s.requests_per_second.get_ref();
    if !(rps > 0.0 && rps.is_finite() && rps <= 1_000_000.0) {
        loc.push(
            span(&s.requests_per_second),
            format!("requests_per_second must be greater than 0 and at most 1000000, got {rps}"),
        );
    }
    let default_burst = rps.ceil().clamp(1.0, 1_000_000.0) as i64;
    let burst = int_in(loc, &s.burst, default_burst, 1, 1_000_000, "burst") as u32;
    let (scope, expected_replicas) = limit_scope(loc, &s.scope, &s.expected_replicas, have_store);
    RateLimitRule {
        key,
        requests_per_second: if rps > 0.0 && rps.is_finite() {
            rps
        } else {
            1.0
        },
        burst,
        scope,
        expected_replicas,
    }
}

/// A limit's `scope` (global needs the store) and `expected_replicas`.
fn limit_scope(
    loc: &mut Locator,
    scope: &Option<Spanned<RateLimitScope>>,
    expected_replicas: &Option<Spanned<i64>>,
    have_store: bool,
) -> (RateLimitScope, u32) {
    let chosen_scope = chosen(scope, RateLimitScope::Local);
    if chosen_scope == RateLimitScope::Global && !have_store {
        if let Some(sc) = scope {
            loc.push(
                span(sc),
                "scope = \"global\" needs a [rate_limit_store] section with a redis_url",
            );
        }
    }
    let replicas = int_in(loc, expected_replicas, 1, 1, 10_000, "expected_replicas") as u32;
    (chosen_scope, replicas)
}

/// A limit's `key`: `client_ip` (the default), `api_key`, `header:<Name>` or `global`.
fn limit_key(loc: &mut Locator, key: &Option<Spanned<String>>) -> RateLimitKey {
    match key {
        None => RateLimitKey::ClientIp,
        Some(k) => match k.get_ref().as_str() {
            "client_ip" => RateLimitKey::ClientIp,
            "api_key" => RateLimitKey::ApiKey,
            "global" => RateLimitKey::Global,
            other => match other.strip_prefix("header:") {
                Some(h) => match HeaderName::from_str(h) {
                    Ok(name) => RateLimitKey::Header(name),
                    Err(_) => {
                        loc.push(span(k), format!("{h:?} is not a valid header name"));
                        RateLimitKey::Global
                    }
                },
                None => {
                    loc.push(
                        span(k),
                        format!("unknown rate limit key {other:?}: use client_ip, api_key, header:<Name> or global"),
                    );
                    RateLimitKey::Global
                }
            },
        },
    }
}

/// `[routes.ai]`: the API, the models allowed as labels, the conversation header.
pub(super) fn ai_route(loc: &mut Locator, a: &AiSection) -> AiRoute {
    let api = match a.api.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("openai") => AiApi::Openai,
        Some("anthropic") => AiApi::Anthropic,
        Some(other) => {
            if let Some(s) = &a.api {
                loc.push(
                    span(s),
                    format!("unknown api {other:?}: use \"openai\" (chat completions and responses) or \"anthropic\" (messages)"),
                );
            }
            AiApi::Openai
        }
    };
    let mut models: Vec<Arc<str>> = Vec::new();
    for m in &a.models {
        let name = m.get_ref();
        let fine = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
        if !fine {
            loc.push(
                span(m),
                format!("model {name:?} must be 1-128 characters of letters, digits and . _ : / @ - (it becomes a metric label)"),
            );
        } else if name == "other" {
            loc.push(
                span(m),
                "model \"other\" is the label of every model not listed: leave it out",
            );
        } else if models.iter().any(|k| &**k == name) {
            loc.push(span(m), format!("model {name:?} is listed twice"));
        } else {
            models.push(Arc::from(name.as_str()));
        }
    }
    let conversation_header = match &a.conversation_header {
        None => HeaderName::from_static("x-conversation-id"),
        Some(h) => HeaderName::from_str(h.get_ref()).unwrap_or_else(|_| {
            loc.push(
                span(h),
                format!("{:?} is not a valid header name", h.get_ref()),
            );
            HeaderName::from_static("x-conversation-id")
        }),
    };
    AiRoute {
        api,
        models,
        conversation_header,
    }
}

/// `[routes.token_limit]`: needs `[routes.ai]` (the API says where usage is read) and,
/// for `scope = "global"`, the rate-limit store.
pub(super) fn token_limit_rule(
    loc: &mut Locator,
    t: &Spanned<TokenLimitSection>,
    have_ai: bool,
    have_store: bool,
) -> TokenLimitRule {
    let s = t.get_ref();
    if !have_ai {
        loc.push(
            span(t),
            "[routes.token_limit] needs [routes.ai] on the same route: its api says where max_tokens and usage are read (add `[routes.ai]` with `api = \"openai\"` or `\"anthropic\"`)",
        );
    }
    let key = limit_key(loc, &s.key);
    let tpm = int_in(
        loc,
        &Some(s.tokens_per_minute.clone()),
        1,
        1,
        1_000_000_000_000,
        "tokens_per_minute",
    ) as u64;
    let burst = int_in(loc, &s.burst, tpm as i64, 1, 1_000_000_000_000, "burst") as u64;
    let default_reservation = int_in(
        loc,
        &s.default_reservation,
        1000,
        0,
        1_000_000_000,
        "default_reservation",
    ) as u64;
    let (scope, expected_replicas) = limit_scope(loc, &s.scope, &s.expected_replicas, have_store);
    TokenLimitRule {
        key,
        tokens_per_minute: tpm,
        burst,
        scope,
        default_reservation,
        expected_replicas,
    }
}

pub(super) fn pagination_rule(loc: &mut Locator, p: &PaginationSection) -> PaginationRule {
    let methods = match &p.methods {
        None => vec![Method::GET],
        Some(list) => methods(loc, list),
    };
    let limit_param = match &p.limit_param {
        None => "limit".to_string(),
        Some(l) => {
            let v = l.get_ref();
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                loc.push(span(l), format!("limit_param {v:?} must be a plain query parameter name (letters, digits, '_', '-', '.')"));
            }
            v.clone()
        }
    };
    let default_limit = int_in(loc, &p.default_limit, 20, 1, 1_000_000_000, "default_limit") as u64;
    let max_limit = int_in(
        loc,
        &p.max_limit,
        100.max(default_limit as i64),
        1,
        1_000_000_000,
        "max_limit",
    ) as u64;
    if max_limit < default_limit {
        let at = p
            .max_limit
            .as_ref()
            .map(span)
            .or_else(|| p.default_limit.as_ref().map(span))
            .unwrap_or(0..0);
        loc.push(
            at,
            format!("max_limit ({max_limit}) must be at least default_limit ({default_limit})"),
        );
    }
    let on_exceed = chosen(&p.on_exceed, OnExceed::Clamp);
    let max_response_bytes = int_in(
        loc,
        &p.max_response_bytes,
        1_048_576,
        1,
        i64::MAX,
        "max_response_bytes",
    ) as u64;
    PaginationRule {
        methods,
        limit_param,
        default_limit,
        max_limit,
        on_exceed,
        max_response_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn with_route(lines: &str) -> String {
        format!("{GOOD}{lines}\n")
    }

    fn second_route(name: &str, prefix: &str) -> String {
        format!("{GOOD}\n[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"agents\"\n")
    }

    #[test]
    fn names_are_labels_and_unique() {
        let t = second_route("has space", "/x");
        assert_problem_at(
            &t,
            "\"has space\"",
            "must be non-empty and use only letters",
        );
        let t = second_route("unmatched", "/x");
        assert_problem_at(&t, "\"unmatched\"", "reserved");
        let t = second_route("all", "/x");
        assert_problem(&t, "13:8", "duplicate route name");
    }

    #[test]
    fn prefixes_and_methods() {
        let t = second_route("other", "x");
        assert_problem_at(&t, "\"x\"", "must start with '/'");
        let t = second_route("other", "/");
        assert_problem(&t, "14:15", "already used by route \"all\"");
        assert_clean(&with_route("methods = [\"GET\", \"POST\"]"));
        let t = with_route("methods = [\"get\"]");
        assert_problem_at(&t, "\"get\"", "unknown method");
    }

    #[test]
    fn the_upstream_must_be_defined() {
        let t = GOOD.replace("upstream = \"agents\"", "upstream = \"agnets\"");
        assert_problem(
            &t,
            "10:12",
            "which is not defined: define [upstreams.agnets] or use one of: agents",
        );
    }

    #[test]
    fn auth_needs_a_keys_file() {
        let t = with_route("auth = true");
        assert_problem_at(&t, "true", "needs an [auth] section");
    }

    #[test]
    fn rate_limits() {
        assert_clean(&with_route(
            "rate_limit = { requests_per_second = 2.5, key = \"header:x-tenant\", burst = 5 }",
        ));
        let t = with_route("rate_limit = { requests_per_second = 0 }");
        assert_problem_at(&t, "0 }", "requests_per_second must be greater than 0");
        let t = with_route("rate_limit = { requests_per_second = 1, key = \"cookie\" }");
        assert_problem_at(&t, "\"cookie\"", "unknown rate limit key");
        let t = with_route("rate_limit = { requests_per_second = 1, key = \"header:bad name\" }");
        assert_problem_at(&t, "\"header:bad name\"", "not a valid header name");
        let t = with_route("rate_limit = { requests_per_second = 1, scope = \"global\" }");
        assert_problem_at(&t, "\"global\"", "needs a [rate_limit_store] section");
        let t = with_route("rate_limit = { requests_per_second = 1, scope = \"planet\" }");
        assert_problem_at(&t, "\"planet\"", "expected `local` or `global`");
    }

    #[test]
    fn pagination() {
        let t = format!("{GOOD}\n[routes.pagination]\ndefault_limit = 50\nmax_limit = 10\n");
        assert_problem(
            &t,
            "14:13",
            "max_limit (10) must be at least default_limit (50)",
        );
        let t = format!("{GOOD}\n[routes.pagination]\nlimit_param = \"a&b\"\n");
        assert_problem_at(&t, "\"a&b\"", "must be a plain query parameter name");
        let t = format!("{GOOD}\n[routes.pagination]\non_exceed = \"truncate\"\n");
        assert_problem_at(&t, "\"truncate\"", "expected `clamp` or `reject`");
    }
}
