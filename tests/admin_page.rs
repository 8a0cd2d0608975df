//! The admin page (`GET /` on the admin listener) and the JSON it polls
//! (`/api/overview`): the JSON against /metrics under traffic, and the page in a real
//! headless Chromium: the token form, every route, backend and alert of the config, a
//! killed backend turning unhealthy within the health interval plus one refresh, and a
//! screenshot under target/ for a person to look at.

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "page-secret-4242";

fn config(b1: &str, b2: &str, llm: &str) -> String {
    format!(
        r#"[upstreams.agents]
backends = ["{b1}", "{b2}"]
balance = "round_robin"
retries = 0

[upstreams.agents.health]
path = "/healthz"
interval = "300ms"
timeout = "200ms"
unhealthy_after = 1
eject_after = 0

[upstreams.llm]
backends = ["{llm}"]

[[routes]]
name = "conversations"
path_prefix = "/echo"
upstream = "agents"

[[routes]]
name = "errors"
path_prefix = "/status"
upstream = "agents"

[[routes]]
name = "chat"
path_prefix = "/v1/chat"
upstream = "llm"

[routes.ai]
models = ["demo-mini"]

[[alerts]]
name = "AgentErrors"
route = "errors"
signal = "error_ratio"
above = 0.5
window = "1m"

[[alerts]]
name = "SlowFirstToken"
route = "chat"
signal = "time_to_first_token_p99"
above = 10
window = "1m"
"#
    )
}

/// histogram_quantile over one route's request-duration buckets, summed over status
/// classes, as Prometheus computes it.
fn quantile_from_metrics(m: &[(String, f64)], route: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (series, v) in m {
        if !series_matches(
            series,
            "agentgate_http_request_duration_seconds_bucket",
            &[("route", route)],
        ) {
            continue;
        }
        let le = series
            .split("le=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some(entry) => entry.1 += v,
            None => buckets.push((le, *v)),
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in &buckets {
        if *count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (count - prev.1);
        }
        prev = (*le, *count);
    }
    prev.0
}

async fn overview(c: &reqwest::Client, gw: &Gateway, token: Option<&str>) -> reqwest::Response {
    let mut req = c.get(gw.admin_url("/api/overview"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_agrees_with_metrics_under_traffic() {
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let llm = DemoAgent::start_llm("llm", "2ms", "20ms");
    let gw = Gateway::start(
        &format!("admin_token = \"{TOKEN}\""),
        &config(
            &b1.addr.to_string(),
            &b2.addr.to_string(),
            &llm.addr.to_string(),
        ),
    );
    let c = client();
    assert_eq!(overview(&c, &gw, None).await.status(), 401);
    assert_eq!(overview(&c, &gw, Some("wrong")).await.status(), 401);
    for i in 0..30 {
        let path = if i % 6 == 5 { "/status/500" } else { "/echo/x" };
        c.get(gw.url(path)).send().await.unwrap();
    }
    for _ in 0..2 {
        let r = c
            .post(gw.url("/v1/chat/completions?tokens=5"))
            .json(&json!({"model": "demo-mini", "stream": true, "stream_options": {"include_usage": true},
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap();
    }
    // A refused reload and a good one.
    let good = gw.config_text();
    gw.rewrite_config(&good.replace("balance = \"round_robin\"", "balance = \"fastest\""));
    assert_eq!(gw.reload_as(Some(TOKEN)).await.0, 422);
    gw.rewrite_config(&good);
    assert_eq!(gw.reload_as(Some(TOKEN)).await.0, 200);

    // Both sides are read until they agree: requests are recorded after their response.
    let scrape = || async {
        let text = c
            .get(gw.admin_url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metrics(&text)
    };
    let (o, m) = wait_for(
        Duration::from_secs(10),
        "overview and metrics to agree",
        || async {
            let m = scrape().await;
            let o: Value = overview(&c, &gw, Some(TOKEN)).await.json().await.ok()?;
            let routes = &o["routes"];
            let agree = ["conversations", "errors", "chat"].iter().all(|r| {
                find(routes, r)["requests_last_minute"].as_f64()
                    == Some(metric_value(
                        &m,
                        "agentgate_http_requests_total",
                        &[("route", r)],
                    ))
            });
            agree.then_some((o, m))
        },
    )
    .await;
    let routes = &o["routes"];
    let errors = find(routes, "errors");
    assert_eq!(errors["requests_last_minute"], 5);
    assert_eq!(
        errors["errors_last_minute"].as_f64().unwrap(),
        metric_value(
            &m,
            "agentgate_http_requests_total",
            &[("route", "errors"), ("status", "500")]
        )
    );
    assert_eq!(errors["error_ratio"], 1.0);
    let conv = find(routes, "conversations");
    assert_eq!(conv["errors_last_minute"], 0);
    let spark_sum: u64 = conv["spark"]["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(spark_sum, 25, "the sparkline holds the minute's requests");
    assert!(conv["requests_per_second"].as_f64().unwrap() > 0.0);
    let p99 = conv["latency_p99_ms"].as_f64().unwrap() / 1000.0;
    let want = quantile_from_metrics(&m, "conversations", 0.99);
    assert!(
        (p99 - want).abs() <= want * 0.01 + 1e-6,
        "p99 {p99} against /metrics {want}"
    );
    let chat = find(routes, "chat");
    assert_eq!(chat["ai"], true);
    let tokens = metric_value(&m, "agentgate_gen_ai_tokens_total", &[("route", "chat")]);
    assert_eq!(chat["tokens_last_minute"].as_f64().unwrap(), tokens);
    assert!(chat["ttft_p99_ms"].as_f64().unwrap() >= 20.0);
    assert!(conv.get("ttft_p99_ms").is_none(), "TTFT only for AI routes");

    let agents = find(&o["upstreams"], "agents");
    assert!(agents["concurrency_limit"].is_null(), "no cap configured");
    for b in [&b1, &b2] {
        let label = b.addr.to_string();
        let row = find(&agents["backends"], &label);
        assert_eq!(row["health"], "healthy");
        assert_eq!(
            metric_value(
                &m,
                "agentgate_upstream_backend_healthy",
                &[("backend", &label)]
            ),
            1.0
        );
        assert_eq!(
            row["requests"].as_f64().unwrap(),
            metric_value(
                &m,
                "agentgate_upstream_requests_total",
                &[("backend", &label)]
            ),
            "requests sent to {label}"
        );
        assert_eq!(row["in_flight"], 0);
    }
    // The evaluator runs every second: the page shows what it decided.
    let alerts = wait_for(
        Duration::from_secs(5),
        "AgentErrors to fire on the page",
        || async {
            let o: Value = overview(&c, &gw, Some(TOKEN)).await.json().await.ok()?;
            (find(&o["alerts"], "AgentErrors")["state"] == "firing").then_some(o["alerts"].clone())
        },
    )
    .await;
    assert_eq!(find(&alerts, "AgentErrors")["value"], 1.0);
    assert_eq!(find(&alerts, "SlowFirstToken")["state"], "inactive");
    let reloads = o["reloads"].as_array().unwrap();
    assert_eq!(reloads[0]["result"], "success", "newest first");
    assert_eq!(reloads[1]["result"], "failure");
    assert!(
        reloads[1]["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown variant `fastest`"),
        "{}",
        reloads[1]
    );
    assert_eq!(o["config"]["admin_token"], true);
    assert!(!o.to_string().contains(TOKEN), "the token is never shown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser() {
    let b1 = Backend::start("b1").await;
    let mut b2 = Backend::start("b2").await;
    let llm = DemoAgent::start_llm("llm", "2ms", "10ms");
    let gw = Gateway::start(
        &format!("admin_token = \"{TOKEN}\""),
        &config(
            &b1.addr.to_string(),
            &b2.addr.to_string(),
            &llm.addr.to_string(),
        ),
    );
    let c = client();
    // Served compressed, small, and with nothing from elsewhere allowed.
    let r = reqwest::Client::builder()
        .no_gzip()
        .build()
        .unwrap()
        .get(gw.admin_url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(r.bytes().await.unwrap().len() < 100 * 1024);
    for _ in 0..6 {
        c.get(gw.url("/echo/x")).send().await.unwrap();
    }

    let browser = Browser::start().await;
    let page = gw.admin_url("/");
    browser.goto(&page).await;
    // Without the token: the form, and no data.
    browser
        .wait_js(
            Duration::from_secs(10),
            "the token form",
            "return !document.getElementById('login').hidden",
        )
        .await;
    let rows = browser
        .eval(
            "return document.querySelectorAll('[data-route]').length",
            json!([]),
        )
        .await;
    assert_eq!(rows, 0);
    browser.type_into("#token", "not-the-token").await;
    browser.click("#login button").await;
    browser
        .wait_js(
            Duration::from_secs(10),
            "the refusal",
            "return document.getElementById('login-error').textContent.includes('refused')",
        )
        .await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#login button").await;
    let routes = browser
        .wait_js(
            Duration::from_secs(10),
            "the routes on the page",
            "const r = [...document.querySelectorAll('[data-route]')].map(e => e.dataset.route); return r.length ? r : null",
        )
        .await;
    assert_eq!(routes, json!(["conversations", "errors", "chat"]));
    let backends = browser
        .eval("return [...document.querySelectorAll('[data-backend]')].map(e => [e.dataset.backend, e.dataset.health])", json!([]))
        .await;
    assert_eq!(
        backends,
        json!([
            [format!("agents/{}", b1.addr), "healthy"],
            [format!("agents/{}", b2.addr), "healthy"],
            [format!("llm/{}", llm.addr), "healthy"]
        ])
    );
    let alerts = browser
        .eval(
            "return [...document.querySelectorAll('[data-alert]')].map(e => e.dataset.alert)",
            json!([]),
        )
        .await;
    assert_eq!(alerts, json!(["AgentErrors", "SlowFirstToken"]));
    let text = browser
        .eval("return document.body.innerText", json!([]))
        .await;
    assert!(text.as_str().unwrap().contains("/v1/chat"), "{text}");
    // The token stays in the tab, never in the URL.
    let (href, kept) = (
        browser.eval("return location.href", json!([])).await,
        browser
            .eval(
                "return sessionStorage.getItem('agentgate-admin-token')",
                json!([]),
            )
            .await,
    );
    assert_eq!(href, json!(page));
    assert_eq!(kept, json!(TOKEN));

    // A backend dies: the page shows it unhealthy within one failed check (300 ms
    // interval, 200 ms timeout) plus one refresh (1 s), with room for a loaded machine.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    browser.screenshot(&target.join("admin-page.png")).await;
    let killed_at = Instant::now();
    b2.stop();
    let selector = format!("[data-backend=\"agents/{}\"]", b2.addr);
    browser
        .wait_js(
            Duration::from_secs(10),
            "the killed backend to show unhealthy",
            &format!("const e = document.querySelector('{selector}'); return e && e.dataset.health === 'unhealthy'"),
        )
        .await;
    let took = killed_at.elapsed();
    assert!(
        took <= Duration::from_millis(300 + 200 + 1000 + 1500),
        "took {took:?}"
    );
    browser
        .screenshot(&target.join("admin-page-backend-down.png"))
        .await;
    drop(browser);

    // Another browser (another tab's storage) starts at the form again.
    let fresh = Browser::start().await;
    fresh.goto(&page).await;
    fresh
        .wait_js(
            Duration::from_secs(10),
            "the token form",
            "return !document.getElementById('login').hidden",
        )
        .await;
}
