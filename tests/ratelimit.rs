//! Rate limiting: local GCRA limits with standard headers, independent keys, bounded key
//! state, and global limits shared by three gateway processes through a real Redis.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;

fn config(backend: &str, limit: &str) -> String {
    format!(
        r#"[upstreams.u]
backends = ["{backend}"]

[[routes]]
name = "limited"
path_prefix = "/"
upstream = "u"

[routes.rate_limit]
{limit}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_rate_then_429_with_headers() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &b.addr.to_string(),
            "key = \"client_ip\"\nrequests_per_second = 5.0\nburst = 10",
        ),
    );
    let c = client();
    let started = Instant::now();
    let mut ok = 0;
    let mut first_429 = None;
    for _ in 0..30 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(r.headers()["ratelimit-limit"], "10");
                assert!(r.headers().contains_key("ratelimit-remaining"));
                assert!(r.headers().contains_key("ratelimit-reset"));
            }
            429 => {
                if first_429.is_none() {
                    first_429 = Some(r);
                }
            }
            s => panic!("unexpected {s}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // the burst, plus what refilled while the loop ran
    let allowed_max = 10.0 + (elapsed * 5.0).ceil() + 1.0;
    assert!(
        ok >= 10 && (ok as f64) <= allowed_max,
        "{ok} passed in {elapsed:.2}s"
    );
    let r = first_429.expect("some requests are limited");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "retry-after is at least 1");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(
        b.targets().iter().filter(|t| *t == "/x").count(),
        ok,
        "limited requests never reach the agent"
    );

    // about 5 per second afterwards: wait for the budget the 429 promised
    tokio::time::sleep(Duration::from_millis(retry * 1000)).await;
    assert_eq!(
        c.get(gw.url("/x")).send().await.unwrap().status(),
        200,
        "retry-after is true to its word"
    );

    let m = gw.metrics().await;
    assert!(metric_value(&m, "agentgate_rate_limited_total", &[("route", "limited")]) >= 1.0);
    let log = gw.access_log();
    assert!(log
        .iter()
        .any(|l| l["rate_limited"] == true && l["status"] == 429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_have_independent_budgets() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &b.addr.to_string(),
            "key = \"header:x-tenant\"\nrequests_per_second = 0.5\nburst = 3",
        ),
    );
    let c = client();
    let statuses = |tenant: &'static str| {
        let c = c.clone();
        let url = gw.url("/x");
        async move {
            let mut out = Vec::new();
            for _ in 0..5 {
                out.push(
                    c.get(&url)
                        .header("x-tenant", tenant)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
            }
            out
        }
    };
    assert_eq!(statuses("acme").await, vec![200, 200, 200, 429, 429]);
    assert_eq!(statuses("globex").await, vec![200, 200, 200, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_that_never_triggers_only_adds_headers() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &b.addr.to_string(),
            "key = \"global\"\nrequests_per_second = 10000.0\nburst = 10000",
        ),
    );
    let c = client();
    for _ in 0..50 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "10000");
    }
}

fn global_config(backend: &str, redis: &str, on_unavailable: &str) -> String {
    format!(
        r#"[upstreams.u]
backends = ["{backend}"]

[[routes]]
name = "shared"
path_prefix = "/"
upstream = "u"

[routes.rate_limit]
key = "global"
requests_per_second = 20.0
burst = 20
scope = "global"
expected_replicas = 3

[rate_limit_store]
redis_url = "{redis}"
on_unavailable = "{on_unavailable}"
timeout = "100ms"
"#
    )
}

async fn admitted_over(gateways: &[&Gateway], window: Duration) -> (u64, u64) {
    let c = client();
    let deadline = Instant::now() + window;
    let mut ok = 0;
    let mut limited = 0;
    let mut i = 0;
    while Instant::now() < deadline {
        let gw = gateways[i % gateways.len()];
        i += 1;
        match c.get(gw.url("/x")).send().await.unwrap().status().as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
        if i > 20_000 {
            break;
        }
    }
    (ok, limited)
}

async fn wait_store_up(gw: &Gateway, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    wait_for(
        Duration::from_secs(10),
        "the store state in metrics",
        || {
            let url = gw.admin_url("/metrics");
            async move {
                let text = client().get(url).send().await.ok()?.text().await.ok()?;
                (metric_value(&parse_metrics(&text), "agentgate_rate_limit_store_up", &[]) == want)
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_global_limit() {
    let redis = Redis::start();
    let b = Backend::start("b").await;
    let cfg = global_config(&b.addr.to_string(), &redis.url(), "local");
    let gws = [
        Gateway::start("", &cfg),
        Gateway::start("", &cfg),
        Gateway::start("", &cfg),
    ];
    for gw in &gws {
        wait_store_up(gw, true).await;
    }
    let window = Duration::from_secs(4);
    let started = Instant::now();
    let (ok, limited) = admitted_over(&[&gws[0], &gws[1], &gws[2]], window).await;
    let elapsed = started.elapsed().as_secs_f64();
    // one shared bucket: burst + rate x time, whatever the replica count
    let expected = 20.0 + 20.0 * elapsed;
    let error = (ok as f64 - expected).abs() / expected;
    assert!(limited > 0, "the load exceeded the limit");
    assert!(
        error <= 0.10,
        "admitted {ok} in {elapsed:.2}s, expected about {expected:.0} ({:.1}% off)",
        error * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_applies_on_unavailable_then_recovers() {
    let mut redis = Redis::start();
    let b = Backend::start("b").await;
    let gw_local = Gateway::start(
        "",
        &global_config(&b.addr.to_string(), &redis.url(), "local"),
    );
    let gw_deny = Gateway::start(
        "",
        &global_config(&b.addr.to_string(), &redis.url(), "deny"),
    );
    let gw_allow = Gateway::start(
        "",
        &global_config(&b.addr.to_string(), &redis.url(), "allow"),
    );
    for gw in [&gw_local, &gw_deny, &gw_allow] {
        wait_store_up(gw, true).await;
    }
    redis.kill();
    let c = client();
    // the first request after the outage may be the one that finds it
    for gw in [&gw_local, &gw_deny, &gw_allow] {
        let _ = c.get(gw.url("/x")).send().await.unwrap();
        wait_store_up(gw, false).await;
    }
    // deny: every request refused
    for _ in 0..5 {
        assert_eq!(c.get(gw_deny.url("/x")).send().await.unwrap().status(), 429);
    }
    // allow: every request admitted
    for _ in 0..40 {
        assert_eq!(
            c.get(gw_allow.url("/x")).send().await.unwrap().status(),
            200
        );
    }
    // local: this instance's share, rate / replicas with burst / replicas (20/3 -> 6)
    let (ok, limited) = admitted_over(&[&gw_local], Duration::from_millis(1500)).await;
    assert!(limited > 0 && ok <= 6 + 12, "local share admitted {ok}");
    let log = gw_local.wait_stderr("is unreachable");
    assert_eq!(
        log.matches("is unreachable").count(),
        1,
        "logged once per transition"
    );

    redis.restart();
    for gw in [&gw_local, &gw_deny, &gw_allow] {
        wait_store_up(gw, true).await;
    }
    // deny answers 200 again once the store is back: no restart, no reload
    wait_for(Duration::from_secs(5), "deny to recover by itself", || {
        let (c, url) = (c.clone(), gw_deny.url("/x"));
        async move { (c.get(url).send().await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    gw_local.wait_stderr("reachable: global limits are shared again");
}

#[tokio::test]
async fn a_store_that_refuses_authentication_says_so_once_in_the_log() {
    let redis = Redis::start_with_password("s3cret-pass");
    let b = Backend::start("b").await;
    let cfg = global_config(&b.addr.to_string(), &redis.url(), "local");
    let gw = Gateway::start("", &cfg);
    // Down from the start: the metric alone is not enough, the log must say why.
    const STORE: &str = "rate limit store redis://";
    let text = gw.wait_stderr(STORE);
    let line = text.lines().find(|l| l.contains(STORE)).unwrap_or_default();
    assert!(line.contains("unreachable"), "{line}");
    assert!(
        line.to_ascii_lowercase().contains("auth"),
        "the reason names the refused authentication: {line}"
    );
    wait_store_up(&gw, false).await;
    // Requests go on under on_unavailable = "local", and the log does not repeat itself.
    let c = client();
    for _ in 0..5 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let count = gw.stderr().matches(STORE).count();
    assert_eq!(count, 1, "one line per state change:\n{}", gw.stderr());
}

/// `rediss://` with a password from the environment and the server verified against
/// `ca_file`: two replicas share the budget over TLS; a store whose certificate is not
/// trusted stays down, says why once, and the password never reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_store_with_a_password_from_the_environment() {
    let certs = tempfile::tempdir().unwrap();
    let ca = common::tls::Ca::new("redis ca");
    let leaf = ca.leaf(
        certs.path(),
        "redis",
        &["localhost"],
        &[common::tls::loopback()],
    );
    let ca_file = ca.write(certs.path(), "ca.pem");
    let redis = Redis::start_tls(&leaf.cert_file, &leaf.key_file, "tls-pass-7731");
    let b = Backend::start("b").await;
    let url = format!(
        "rediss://:${{AGENTGATE_TEST_REDIS_PASSWORD}}@{}",
        redis.addr
    );
    let cfg = global_config(&b.addr.to_string(), &url, "deny").replace(
        "on_unavailable",
        &format!("ca_file = \"{}\"\non_unavailable", ca_file.display()),
    );
    let env = [("AGENTGATE_TEST_REDIS_PASSWORD", "tls-pass-7731")];
    let gws = [
        Gateway::start_with_env("", &cfg, &env),
        Gateway::start_with_env("", &cfg, &env),
    ];
    for gw in &gws {
        wait_store_up(gw, true).await;
    }
    let (ok, limited) = admitted_over(&[&gws[0], &gws[1]], Duration::from_secs(2)).await;
    assert!(limited > 0 && ok >= 20, "{ok} admitted, {limited} limited");
    assert!(
        ok < 20 + 20 * 4,
        "one shared budget over TLS: {ok} admitted"
    );

    // Another CA: the certificate is refused, the store stays down (deny).
    let other = common::tls::Ca::new("other").write(certs.path(), "other.pem");
    let untrusted = cfg.replace(&ca_file.display().to_string(), &other.display().to_string());
    let gw = Gateway::start_with_env("", &untrusted, &env);
    let line = gw.wait_stderr("rate limit store rediss://");
    assert!(line.contains("unreachable"), "{line}");
    wait_store_up(&gw, false).await;
    // deny: nothing is admitted while the store cannot be trusted.
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        429
    );
    for g in gws.iter().chain([&gw]) {
        assert!(!g.stderr().contains("tls-pass-7731"), "{}", g.stderr());
    }
}
