//! `[rate_limit_store]`, `[auth]` and `[alerting]`: the Redis store, the keys file, the
//! alert notifier.

#[allow(unused_imports)]
use super::*;

pub(super) fn rate_limit_store(
    loc: &mut Locator,
    s: &RateLimitStoreSection,
    config_path: &Path,
) -> RateLimitStore {
    // The Redis client's own parser is the authority on what it can connect to: a URL it
    // refuses at startup would otherwise leave the store down for the process's life.
    let url = s.redis_url.get_ref();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        loc.push(
            span(&s.redis_url),
            format!(
                "redis_url must start with redis:// or rediss:// (TLS) (got {:?})",
                redact_url(url)
            ),
        );
    } else if let Err(e) = redis::Client::open(url.as_str()) {
        loc.push(
            span(&s.redis_url),
            format!(
                "redis_url {:?} is not a Redis URL the client can use ({e}): write redis://[user:password@]host:port[/db]",
                redact_url(url)
            ),
        );
    }
    let (ca_file, ca_pem) = match s.ca_file.as_ref().filter(|f| !f.get_ref().is_empty()) {
        None => (None, None),
        Some(f) => {
            if !url.starts_with("rediss://") {
                loc.push(
                    span(f),
                    "ca_file applies to a TLS store only: write the URL as rediss://",
                );
            }
            let path = relative_to(config_path, f.get_ref());
            // Checked as certificates here; handed to the Redis client as PEM.
            let pem = crate::config::tls::load_certificates(&path)
                .map_err(|e| loc.push(span(f), format!("ca_file: {e}")))
                .ok()
                .and_then(|_| std::fs::read(&path).ok())
                .map(Arc::new);
            (Some(path), pem)
        }
    };
    let on_unavailable = chosen(&s.on_unavailable, OnUnavailable::Local);
    let timeout = positive_duration_or(loc, &s.timeout, RateLimitStore::DEFAULT_TIMEOUT, "timeout");
    RateLimitStore {
        redis_url: url.clone(),
        ca_file,
        ca_pem,
        on_unavailable,
        timeout,
    }
}

pub(super) fn auth_settings(
    loc: &mut Locator,
    a: &Spanned<AuthSection>,
    config_path: &Path,
) -> Option<AuthSettings> {
    let s = a.get_ref();
    let path = relative_to(config_path, s.keys_file.get_ref());
    match crate::config::keys::load_keys_file(&path) {
        Ok(keys) => Some(AuthSettings {
            keys_file: path,
            keys,
        }),
        Err(errors) => {
            loc.push(
                span(&s.keys_file),
                format!(
                    "keys_file {:?} is not usable (see the errors that follow)",
                    s.keys_file.get_ref()
                ),
            );
            loc.errors.extend(errors.0);
            None
        }
    }
}

pub(super) fn alerting_settings(
    loc: &mut Locator,
    s: Option<&Spanned<AlertingSection>>,
) -> AlertingSettings {
    let default = AlertingSection::default();
    let s = s.map(|s| s.get_ref()).unwrap_or(&default);
    let evaluation_interval = positive_duration_or(
        loc,
        &s.evaluation_interval,
        AlertingSettings::default().evaluation_interval,
        "evaluation_interval",
    );
    let webhook_url = match &s.webhook_url {
        Some(u) if !u.get_ref().is_empty() => {
            if !u.get_ref().starts_with("http://") {
                loc.push(span(u), "webhook_url must be an http:// URL (for example Alertmanager's http://127.0.0.1:9093/api/v2/alerts)");
                None
            } else {
                Some(u.get_ref().clone())
            }
        }
        _ => None,
    };
    AlertingSettings {
        evaluation_interval,
        webhook_url,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn the_redis_url_is_one_the_client_can_use() {
        let t = format!("{GOOD}\n[rate_limit_store]\nredis_url = \"redis://127.0.0.1:notaport\"\n");
        assert_problem(&t, "13:13", "not a Redis URL");
        assert_clean(&t.replace(":notaport", ":6379"));
        let t = format!("{GOOD}\n[rate_limit_store]\nredis_url = \"http://u:secret@127.0.0.1\"\n");
        assert_problem(&t, "13:13", "must start with redis://");
        assert!(
            !problems(&t).iter().any(|p| p.contains("secret")),
            "the password is never shown"
        );
        let t = format!("{GOOD}\n[rate_limit_store]\nredis_url = \"redis://127.0.0.1:6379\"\non_unavailable = \"panic\"\n");
        assert_problem_at(&t, "\"panic\"", "expected one of `local`, `allow`, `deny`");
    }

    #[test]
    fn the_keys_file_must_be_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys.toml");
        std::fs::write(&keys, "[[keys]]\nid = \"a\"\nsha256 = \"nothex\"\n").expect("write");
        let t = format!(
            "{GOOD}\n[auth]\nkeys_file = {:?}\n",
            keys.display().to_string()
        );
        let found = problems(&t);
        assert!(found[0].starts_with("13:13: keys_file"), "{found:#?}");
        assert!(
            found[1].contains("sha256 must be 64 hex characters"),
            "{found:#?}"
        );
    }

    #[test]
    fn the_webhook_is_plain_http() {
        let t = format!("{GOOD}\n[alerting]\nwebhook_url = \"https://am.example/api/v2/alerts\"\nevaluation_interval = \"0s\"\n");
        assert_problem_at(&t, "\"https:", "webhook_url must be an http:// URL");
        assert_problem_at(
            &t,
            "\"0s\"",
            "evaluation_interval must be greater than zero",
        );
    }

    #[test]
    fn a_ca_file_needs_a_tls_store() {
        let store = |url: &str, ca: &str| {
            format!("{GOOD}\n[rate_limit_store]\nredis_url = \"{url}\"\nca_file = \"{ca}\"\n")
        };
        let t = store("redis://127.0.0.1:6379", "/nonexistent.pem");
        assert_problem_at(&t, "\"/nonexistent.pem\"", "rediss://");
        assert_problem_at(&t, "\"/nonexistent.pem\"", "ca_file: cannot read");
    }
}
