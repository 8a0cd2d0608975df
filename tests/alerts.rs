//! Alerting: in-process rules against a real Alertmanager, `alerts export` through
//! promtool, and the shipped rules and dashboard evaluated by a real Prometheus that
//! scrapes the gateway.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::BIN;
use common::prom;
use common::*;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn exported_rules_pass_promtool() {
    let out = Command::new(BIN)
        .args(["alerts", "export", "--config"])
        .arg(repo("config/agentgate.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.contains("alert: AgentErrorRateHigh"));
    assert!(yaml.contains("for: 30s"));
    assert!(yaml.contains("histogram_quantile(0.99"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exported.yml");
    std::fs::write(&path, &yaml).unwrap();
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (`make test` installs it)");
    assert!(
        check.status.success(),
        "promtool: {}{}\n{yaml}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn shipped_rules_pass_their_unit_tests() {
    let dir = repo("dashboards/prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "agentgate-rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "agentgate-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

async fn alert_state(gw: &Gateway, name: &str) -> Option<(String, Option<f64>)> {
    let v: serde_json::Value = client()
        .get(gw.admin_url("/alerts"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let a = v["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)?
        .clone();
    Some((a["state"].as_str()?.to_string(), a["value"].as_f64()))
}

async fn wait_state(gw: &Gateway, name: &str, state: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    wait_for(timeout, &format!("alert {name} to be {state}"), || async {
        let (s, _) = alert_state(gw, name).await?;
        (s == state).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_burst_goes_pending_firing_resolved_and_reaches_alertmanager() {
    let am = prom::alertmanager();
    let b = Backend::start("b").await;
    let body = format!(
        r#"[upstreams.u]
backends = ["{}"]
[upstreams.u.health]
eject_after = 0

[[routes]]
name = "conversations"
path_prefix = "/"
upstream = "u"

[alerting]
evaluation_interval = "200ms"
webhook_url = "{}"

[[alerts]]
name = "AgentErrorRateHigh"
route = "conversations"
signal = "error_ratio"
above = 0.5
window = "2s"
for = "1s"
severity = "page"
summary = "More than half of agent requests fail"
"#,
        b.addr,
        am.url("/api/v2/alerts")
    );
    let gw = Gateway::start("", &body);
    let c = client();
    assert_eq!(
        alert_state(&gw, "AgentErrorRateHigh").await.unwrap().0,
        "inactive"
    );

    // errors for a few seconds: pending first, firing once `for` has passed
    let load = {
        let (c, url) = (c.clone(), gw.url("/status/500"));
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                let _ = c.get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_state(&gw, "AgentErrorRateHigh", "pending", Duration::from_secs(3)).await;
    let to_firing = wait_state(&gw, "AgentErrorRateHigh", "firing", Duration::from_secs(4)).await;
    assert!(
        to_firing >= Duration::from_millis(700),
        "fired before `for` passed: {to_firing:?}"
    );
    let (_, value) = alert_state(&gw, "AgentErrorRateHigh").await.unwrap();
    assert!(value.unwrap() > 0.5);

    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "agentgate_alert_firing",
            &[("alert", "AgentErrorRateHigh"), ("severity", "page")]
        ),
        1.0
    );

    // Alertmanager received it through its v2 API and lists it
    let listed = wait_for(
        Duration::from_secs(10),
        "alertmanager to list the alert",
        || {
            let (c, url) = (c.clone(), am.url("/api/v2/alerts"));
            async move {
                let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
                v.as_array()?
                    .iter()
                    .find(|a| a["labels"]["alertname"] == "AgentErrorRateHigh")
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(listed["labels"]["severity"], "page");
    assert_eq!(listed["labels"]["route"], "conversations");
    assert!(listed["labels"]["instance"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", gw.listen.port())));
    assert_eq!(
        listed["annotations"]["summary"],
        "More than half of agent requests fail"
    );
    assert!(listed["generatorURL"]
        .as_str()
        .unwrap()
        .ends_with("/alerts"));

    // errors stop, successes flow: the window clears and the alert resolves
    load.await.unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let _ = c.get(gw.url("/ok")).send().await;
        if alert_state(&gw, "AgentErrorRateHigh").await.unwrap().0 == "inactive" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_state(
        &gw,
        "AgentErrorRateHigh",
        "inactive",
        Duration::from_secs(4),
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "agentgate_alert_firing",
            &[("alert", "AgentErrorRateHigh")]
        ),
        0.0
    );
    wait_for(
        Duration::from_secs(10),
        "alertmanager to see it resolved",
        || {
            let (c, url) = (c.clone(), am.url("/api/v2/alerts?active=true"));
            async move {
                let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
                (!v.as_array()?
                    .iter()
                    .any(|a| a["labels"]["alertname"] == "AgentErrorRateHigh"))
                .then_some(())
            }
        },
    )
    .await;
    let events = gw.wait_stderr("\"state\":\"resolved\"");
    assert!(
        events.contains("\"msg\":\"alert\"")
            && events.contains("\"state\":\"firing\"")
            && events.contains("\"state\":\"resolved\""),
        "alerts are logged as JSON events"
    );
}

/// Every PromQL expression of the dashboard and the rules, against a real Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_and_rule_expression() {
    let b = Backend::start("b").await;
    let llm = DemoAgent::start_llm("llm", "5ms", "50ms");
    let dead = free_addr();
    let body = format!(
        r#"[upstreams.u]
backends = ["{b}"]

[upstreams.flaky]
backends = ["{dead}", "{b}"]
balance = "round_robin"
[upstreams.flaky.health]
interval = "60s"
eject_after = 0

[[routes]]
name = "conversations"
path_prefix = "/list"
upstream = "u"
[routes.pagination]
default_limit = 5
max_limit = 10

[[routes]]
name = "limited"
path_prefix = "/status"
upstream = "u"
[routes.rate_limit]
key = "global"
requests_per_second = 5.0
burst = 5

[[routes]]
name = "flaky"
path_prefix = "/flaky"
upstream = "flaky"

[upstreams.llm]
backends = ["{llm}"]

[[routes]]
name = "chat"
path_prefix = "/v1/chat"
upstream = "llm"
[routes.ai]
models = ["demo-mini"]
[routes.token_limit]
tokens_per_minute = 600000
burst = 100000

[[alerts]]
name = "AnyErrors"
signal = "error_ratio"
above = 0.0
window = "10s"
"#,
        b = b.addr,
        llm = llm.addr
    );
    let gw = Gateway::start("", &body);
    let rules = repo("dashboards/prometheus/agentgate-rules.yml");
    let prom = prom::prometheus(&[gw.admin], &rules);
    let c = client();
    wait_for(
        Duration::from_secs(15),
        "prometheus to scrape the gateway",
        || {
            let (c, url) = (
                c.clone(),
                prom.url("/api/v1/query?query=up%7Bjob%3D%22agentgate%22%7D%20%3D%3D%201"),
            );
            async move {
                let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
                (!v["data"]["result"].as_array()?.is_empty()).then_some(())
            }
        },
    )
    .await;
    // traffic that touches every panel: successes, 5xx, retries, 429s, pagination,
    // token streams
    let chat = serde_json::json!({"model": "demo-mini", "stream": true, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]});
    for round in 0..4 {
        for _ in 0..10 {
            c.get(gw.url("/list?limit=50")).send().await.unwrap();
            c.get(gw.url("/status/500")).send().await.unwrap();
            c.get(gw.url("/flaky/x")).send().await.unwrap();
        }
        let r = c
            .post(gw.url("/v1/chat/completions?tokens=5"))
            .json(&chat)
            .send()
            .await
            .unwrap();
        assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
        if round < 3 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    // Every request above (4 rounds of 31) is in what Prometheus scraped last.
    wait_for(
        Duration::from_secs(15),
        "prometheus to scrape the last round",
        || {
            let (c, url) = (
                c.clone(),
                prom.url("/api/v1/query?query=sum(agentgate_http_requests_total)"),
            );
            async move {
                let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
                let total: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
                (total >= 124.0).then_some(())
            }
        },
    )
    .await;

    let query = |expr: String| {
        let c = c.clone();
        let url = prom.url("/api/v1/query");
        async move {
            let v: serde_json::Value = c
                .get(url)
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("dashboards/grafana/agentgate.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} uses the datasource variable",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".+");
            let v = query(expr.clone()).await;
            assert_eq!(v["status"], "success", "{expr}: {v}");
            assert!(
                !v["data"]["result"].as_array().unwrap().is_empty(),
                "no data for panel {}: {expr}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 22);

    let text = std::fs::read_to_string(&rules).unwrap();
    let mut exprs = 0;
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if let Some(rest) = line.strip_prefix("expr:") {
            let mut expr = rest.trim().to_string();
            if expr == "|" {
                expr.clear();
                let indent = lines[i + 1].len() - lines[i + 1].trim_start().len();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty()
                        || lines[i + 1].len() - lines[i + 1].trim_start().len() >= indent)
                {
                    i += 1;
                    expr.push_str(lines[i].trim());
                    expr.push(' ');
                }
            }
            let v = query(expr.clone()).await;
            assert_eq!(v["status"], "success", "{expr}: {v}");
            exprs += 1;
        }
        i += 1;
    }
    assert_eq!(exprs, 26);
    // and Prometheus itself loaded and evaluated every rule without error
    let v = get_json(&c, prom.url("/api/v1/rules")).await;
    let groups = v["data"]["groups"].as_array().unwrap();
    let rules: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 26);
    for r in rules {
        assert_eq!(r["health"], "ok", "rule {} : {}", r["name"], r["lastError"]);
    }
}
