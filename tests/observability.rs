//! Observability: W3C trace propagation, OTLP span export to a real receiver that decodes
//! protobuf, the JSON access log, redaction, /metrics and label cardinality.

mod common;

use std::time::Duration;

use common::otlp::OtlpReceiver;
use common::prom;
use common::*;
use futures_util::StreamExt;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continues_an_incoming_trace_and_exports_server_and_client_spans() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let trace = format!(
        "otlp_endpoint = \"{}\"\nservice_name = \"gw-under-test\"",
        rx.endpoint()
    );
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
    let r = client()
        .get(gw.url("/echo/1?x=1"))
        .header("traceparent", PARENT)
        .header("tracestate", "vendor=abc,other=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let upstream_tp = v["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(
        v["headers"]["tracestate"], "vendor=abc,other=1",
        "tracestate passes unchanged"
    );

    let spans = rx.wait_spans(2).await;
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("a server span");
    let client_span = spans
        .iter()
        .find(|s| s.span.kind == 3)
        .expect("a client span");
    assert_eq!(server.service, "gw-under-test");
    assert_eq!(server.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        server.parent_id(),
        "00f067aa0ba902b7",
        "the incoming span is the parent"
    );
    assert_eq!(client_span.trace_id(), server.trace_id());
    assert_eq!(
        client_span.parent_id(),
        server.span_id(),
        "the upstream call is a child of the gateway span"
    );
    // the agent saw the same trace, with the client span as its parent
    assert_eq!(
        upstream_tp,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            client_span.span_id()
        )
    );

    assert_eq!(server.span.name, "GET /echo");
    assert_eq!(server.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        server.attr("network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(server.attr("url.path").as_deref(), Some("/echo/1"));
    assert_eq!(server.attr("http.route").as_deref(), Some("/echo"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attr("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(server.attr("agentgate.backend"), Some(b.addr.to_string()));
    assert_eq!(server.attr("agentgate.retries").as_deref(), Some("0"));
    assert_eq!(
        server.attr("agentgate.rate_limited").as_deref(),
        Some("false")
    );
    assert!(server.attr("server.port").is_some());
    assert_eq!(
        client_span.attr("server.port"),
        Some(b.addr.port().to_string())
    );
    assert_eq!(
        client_span.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(server.span.end_time_unix_nano >= client_span.span.end_time_unix_nano);
    assert!(client_span.span.start_time_unix_nano >= server.span.start_time_unix_nano);

    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(log[0]["span_id"], server.span_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_traceparents_start_new_traces() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &traced_config(&b.addr.to_string(), "sample_ratio = 1.0"),
    );
    let c = client();
    let invalid = [
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // upper case
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  // short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  // short parent id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // v00 with extra field
        "garbage",
        "",
    ];
    for tp in invalid {
        let r = c
            .get(gw.url("/echo"))
            .header("traceparent", tp)
            .header("tracestate", "a=1")
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        let seen = v["headers"]["traceparent"].as_str().unwrap();
        assert_eq!(seen.len(), 55, "{tp:?} -> {seen}");
        assert!(
            !seen.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{tp:?} was continued"
        );
        assert!(seen.starts_with("00-") && seen.ends_with("-01"), "{seen}");
        assert!(
            v["headers"].get("tracestate").is_none(),
            "tracestate of a rejected context is dropped"
        );
    }
    // and no traceparent at all: a fresh one, different every time
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let v = get_json(&c, gw.url("/echo")).await;
        ids.insert(v["headers"]["traceparent"].as_str().unwrap()[3..35].to_string());
    }
    assert_eq!(ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_decisions_are_respected() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let trace = format!("otlp_endpoint = \"{}\"\nsample_ratio = 0.0", rx.endpoint());
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
    let c = client();
    // an unsampled parent stays unsampled, and new traces are not sampled at ratio 0
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let v: serde_json::Value = c
        .get(gw.url("/echo"))
        .header("traceparent", unsampled)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .ends_with("-00"));
    let v = get_json(&c, gw.url("/echo")).await;
    assert!(v["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .ends_with("-00"));
    // a sampled parent is exported even at ratio 0
    let _ = c
        .get(gw.url("/echo"))
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    // A second sampled request on another trace marks an export that came after every
    // request above had finished: had the unsampled ones been recorded, they would be
    // in it or before it.
    let marker = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let _ = c
        .get(gw.url("/echo"))
        .header("traceparent", marker)
        .send()
        .await
        .unwrap();
    let spans = wait_for(Duration::from_secs(10), "the marker's spans", || {
        let spans = rx.spans();
        async move {
            spans
                .iter()
                .any(|s| s.trace_id() == "0af7651916cd43dd8448eb211c80319c")
                .then_some(spans)
        }
    })
    .await;
    assert_eq!(
        spans.len(),
        4,
        "only the two sampled requests were exported: {spans:?}"
    );
    assert!(spans
        .iter()
        .all(|s| s.trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736"
            || s.trace_id() == "0af7651916cd43dd8448eb211c80319c"));
    // The access log carries each request's decision as traceparent's flags.
    let flags: Vec<String> = gw
        .access_log_lines(4)
        .iter()
        .map(|l| l["trace_flags"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(flags, ["00", "00", "01", "01"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_fails_traffic() {
    let b = Backend::start("b").await;
    let dead = free_addr();
    let trace = format!("otlp_endpoint = \"http://{dead}/v1/traces\"");
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
    let c = client();
    let statuses: Vec<u16> = futures_util::stream::iter(0..200)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url("/echo"));
            async move { c.get(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    wait_for(
        Duration::from_secs(15),
        "dropped spans to be counted",
        || {
            let (c, url) = (c.clone(), gw.admin_url("/metrics"));
            async move {
                let m = parse_metrics(&c.get(url).send().await.ok()?.text().await.ok()?);
                (metric_value(&m, "agentgate_spans_dropped_total", &[]) >= 1.0).then_some(())
            }
        },
    )
    .await;
}

const FIELDS: [&str; 24] = [
    "ts",
    "level",
    "msg",
    "request_id",
    "trace_id",
    "span_id",
    "trace_flags",
    "route",
    "method",
    "path",
    "protocol",
    "status",
    "upstream",
    "backend",
    "duration_ms",
    "upstream_first_byte_ms",
    "bytes_in",
    "bytes_out",
    "client_ip",
    "retries",
    "rate_limited",
    "pagination",
    "error",
    "key_id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_have_every_field_for_success_404_and_502() {
    let b = Backend::start("b").await;
    let dead = free_addr();
    let body = format!(
        "{}\n[upstreams.dead]\nbackends = [\"{dead}\"]\nretries = 0\n[upstreams.dead.health]\ninterval = \"60s\"\n\n[[routes]]\nname = \"broken\"\npath_prefix = \"/broken\"\nupstream = \"dead\"\n",
        traced_config(&b.addr.to_string(), "")
    );
    let gw = Gateway::start("", &body);
    let c = client();
    let ok = c
        .post(gw.url("/echo/a?token=s3cret&x=1"))
        .header("x-request-id", "req-1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok_len = ok.bytes().await.unwrap().len();
    assert_eq!(
        c.get(gw.url("/nope"))
            .header("x-request-id", "req-2")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let bad = c
        .get(gw.url("/broken"))
        .header("x-request-id", "req-3")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 502);
    assert_eq!(bad.headers()["x-request-id"], "req-3");
    assert!(bad.headers()["server-timing"]
        .to_str()
        .unwrap()
        .starts_with("gateway;dur="));

    let log = gw.wait_access_log(3);
    for line in &log {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), FIELDS.len(), "exactly the SPEC fields: {line}");
        for f in FIELDS {
            assert!(line.get(f).is_some(), "{f} missing in {line}");
        }
        assert_eq!(line["msg"], "request");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(line["level"], "info");
        let ts = line["ts"].as_str().unwrap();
        assert_eq!(ts.len(), 27, "RFC 3339 with microseconds: {ts}");
        assert!(ts.ends_with('Z'));
        assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(line["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(line["trace_flags"], "01", "sampled at ratio 1.0: {line}");
        assert_eq!(line["client_ip"], "127.0.0.1");
    }
    let by_id = |id: &str| log.iter().find(|l| l["request_id"] == id).unwrap().clone();
    let s = by_id("req-1");
    assert_eq!(s["route"], "conversations");
    assert_eq!(s["method"], "POST");
    assert_eq!(s["path"], "/echo/a?token=REDACTED&x=1");
    assert_eq!(s["status"], 200);
    assert_eq!(s["upstream"], "agents");
    assert_eq!(s["backend"], b.addr.to_string());
    assert_eq!(s["bytes_in"], 5);
    assert_eq!(s["bytes_out"], ok_len);
    assert_eq!(s["retries"], 0);
    assert_eq!(s["rate_limited"], false);
    assert!(s["error"].is_null());
    assert!(s["upstream_first_byte_ms"].as_f64().unwrap() > 0.0);
    assert!(s["duration_ms"].as_f64().unwrap() >= s["upstream_first_byte_ms"].as_f64().unwrap());
    let nf = by_id("req-2");
    assert_eq!(nf["route"], "unmatched");
    assert_eq!(nf["status"], 404);
    assert_eq!(nf["error"], "route_not_found");
    assert!(
        nf["upstream"].is_null()
            && nf["backend"].is_null()
            && nf["upstream_first_byte_ms"].is_null()
    );
    assert!(nf["bytes_out"].as_u64().unwrap() > 0);
    let bg = by_id("req-3");
    assert_eq!(bg["route"], "broken");
    assert_eq!(bg["status"], 502);
    assert_eq!(bg["error"], "upstream_unavailable");
    assert_eq!(bg["upstream"], "dead");
    assert_eq!(bg["backend"], dead.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_random_paths_add_no_series() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), ""));
    let c = client();
    for _ in 0..7 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(
            c.post(gw.url("/echo"))
                .body("x")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        c.get(gw.url("/warm-up-unmatched"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    gw.metrics_text_when(
        "agentgate_http_requests_total",
        &[("route", "conversations"), ("method", "POST")],
        3.0,
    )
    .await;
    let text = gw
        .metrics_text_when(
            "agentgate_http_requests_total",
            &[("route", "unmatched")],
            1.0,
        )
        .await;
    let m = parse_metrics(&text);
    let count = |method: &str, status: &str| {
        metric_value(
            &m,
            "agentgate_http_requests_total",
            &[
                ("route", "conversations"),
                ("method", method),
                ("status", status),
            ],
        )
    };
    assert_eq!(count("GET", "200"), 7.0);
    assert_eq!(count("POST", "200"), 3.0);
    assert_eq!(
        metric_value(
            &m,
            "agentgate_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_http_request_duration_seconds_count",
            &[("route", "conversations"), ("status_class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_upstream_requests_total",
            &[("upstream", "agents"), ("outcome", "success")]
        ),
        10.0
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_gateway_overhead_seconds_count",
            &[("route", "conversations")]
        ),
        10.0
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_upstream_first_byte_seconds_count",
            &[("route", "conversations"), ("upstream", "agents")]
        ),
        10.0
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_http_requests_in_flight",
            &[("route", "conversations")]
        ),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(text.contains("agentgate_http_request_duration_seconds_bucket{route=\"conversations\",status_class=\"2xx\",le=\"120\"}"), "latency buckets reach 120 s");
    let series_before = m.len();

    // 10,000 requests to random paths and methods: counted as unmatched, no new series
    let statuses: Vec<u16> = futures_util::stream::iter(0..10_000u32)
        .map(|i| {
            let c = c.clone();
            let url = gw.url(&format!("/random/{i}/{}", i.wrapping_mul(2654435761)));
            async move {
                c.get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 404));
    let text = gw
        .metrics_text_when(
            "agentgate_http_requests_total",
            &[("route", "unmatched")],
            10_001.0,
        )
        .await;
    let m = parse_metrics(&text);
    assert_eq!(
        metric_value(
            &m,
            "agentgate_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        10_001.0
    );
    assert_eq!(m.len(), series_before, "random paths added series");
}

/// The standard `process_*` series, against what /proc says of the gateway's pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_describe_the_gateway_process() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), ""));
    let m = gw.metrics().await;
    let value = |name: &str| metric_value(&m, name, &[]);
    let pid = gw.child.as_ref().unwrap().id();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    assert!(
        (value("process_open_fds") - fds).abs() <= 8.0,
        "{} vs {fds}",
        value("process_open_fds")
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    let rss = value("process_resident_memory_bytes");
    assert!(
        rss > 1e6 && (rss - rss_kb * 1024.0).abs() < rss * 0.5,
        "{rss} vs {rss_kb} kB"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && now - started < 120.0,
        "started {started}, now {now}"
    );
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
}

/// OpenMetrics on request, with each latency bucket's exemplar naming the trace of a
/// sampled request; a real Prometheus with exemplar storage scrapes it and answers
/// the exemplar query with those trace ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_exemplars_link_latency_buckets_to_traces() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &traced_config(&b.addr.to_string(), "sample_ratio = 1.0"),
    );
    let c = client();
    let mut traces = Vec::new();
    for i in 0..5 {
        let v = get_json(&c, gw.url(&format!("/echo/{i}"))).await;
        traces.push(v["headers"]["traceparent"].as_str().unwrap()[3..35].to_string());
    }
    let r = c
        .get(gw.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(!text.contains("\n\n"), "no blank lines in OpenMetrics");
    assert!(
        text.contains("# TYPE agentgate_http_requests counter\n"),
        "counter families lose _total"
    );
    let exemplar_line = text
        .lines()
        .find(|l| {
            l.starts_with("agentgate_http_request_duration_seconds_bucket")
                && l.contains("# {trace_id=\"")
        })
        .unwrap_or_else(|| panic!("no exemplar in\n{text}"));
    let id = exemplar_line.split("trace_id=\"").nth(1).unwrap()[..32].to_string();
    assert!(traces.contains(&id), "{id} is one of {traces:?}");
    // The plain text format has none (its parsers do not know them).
    let plain = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert!(plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(!plain.text().await.unwrap().contains("trace_id"));

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("none.yml");
    std::fs::write(&rules, "groups: []\n").unwrap();
    let prom = prom::prometheus_with(&[gw.admin], &rules, &["--enable-feature=exemplar-storage"]);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600;
    let found = wait_for(Duration::from_secs(30), "exemplars in Prometheus", || {
        let url = prom.url(&format!(
            "/api/v1/query_exemplars?query=agentgate_http_request_duration_seconds_bucket&start={start}&end={}",
            start + 1200
        ));
        let c = c.clone();
        async move {
            let v: serde_json::Value = c.get(url).send().await.ok()?.json().await.ok()?;
            let ids: Vec<String> = v["data"]
                .as_array()?
                .iter()
                .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e["labels"]["trace_id"].as_str().map(String::from))
                .collect();
            (!ids.is_empty()).then_some(ids)
        }
    })
    .await;
    assert!(
        found.iter().all(|id| traces.contains(id)),
        "{found:?} vs {traces:?}"
    );
    // and the scrape itself was healthy (every family parsed)
    let up: serde_json::Value = c
        .get(prom.url("/api/v1/query?query=up"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
}
