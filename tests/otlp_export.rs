//! OTLP export the ecosystem's way (SPEC 7.4): gRPC and HTTP, plain and TLS, headers,
//! gzip, the resource, the standard OTEL_* environment and samplers, retries per the
//! OTLP specification, exporter health on /metrics and /readyz, and collectors that
//! hang, refuse or answer garbage without costing traffic anything. The receivers are
//! built on the official protobuf definitions (tests/common/otlp.rs).

mod common;

use std::time::Duration;

use common::otlp::{Answer, OtlpReceiver, Protocol, ReceivedSpan};
use common::tls::{loopback, Ca};
use common::*;

fn export_count(metrics: &[(String, f64)], result: &str) -> f64 {
    metric_value(
        metrics,
        "agentgate_otlp_exports_total",
        &[("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_plain_and_over_tls_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("otlp-test-ca");
    let leaf = ca.leaf(dir.path(), "collector", &["localhost"], &[loopback()]);
    let ca_file = ca.write(dir.path(), "ca.pem");
    let plain = OtlpReceiver::start_with(Protocol::Grpc, None).await;
    let tls = OtlpReceiver::start_with(Protocol::Grpc, Some(&leaf)).await;
    let b = Backend::start("b").await;
    for (rx, extra) in [
        (&plain, String::new()),
        (&tls, format!("ca_file = \"{}\"", ca_file.display())),
    ] {
        let trace = format!(
            "otlp_endpoint = \"{}\"\nprotocol = \"grpc\"\nheaders = {{ \"X-Api-Key\" = \"k1\" }}\nresource_attributes = {{ \"deployment.environment\" = \"test\" }}\n{extra}",
            rx.endpoint()
        );
        let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
        let r = client().get(gw.url("/echo/g")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let spans = rx.wait_spans(2).await;
        let server = spans
            .iter()
            .find(|s| s.span.kind == 2)
            .expect("server span");
        assert_eq!(server.span.name, "GET /echo");
        assert_eq!(server.service, "agentgate");
        assert_eq!(server.resource_attr("deployment.environment"), Some("test"));
        let request = &rx.requests()[0];
        assert!(request.decoded);
        assert_eq!(request.header("x-api-key"), Some("k1"), "{request:?}");
        assert_eq!(request.header("grpc-encoding"), Some("gzip"), "{request:?}");
        // (the receiver holds the spans a moment before the gateway reads its answer)
        gw.metrics_text_when(
            "agentgate_otlp_exports_total",
            &[("result", "success")],
            1.0,
        )
        .await;
        assert!(
            !gw.stderr().contains("k1"),
            "the header value never reaches a log"
        );
        let config = get_json(&client(), gw.admin_url("/config")).await;
        assert_eq!(config["trace"]["headers"]["x-api-key"], "REDACTED");
        assert_eq!(config["trace"]["protocol"], "grpc");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_over_tls_configured_by_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("otlp-test-ca");
    let leaf = ca.leaf(dir.path(), "collector", &["localhost"], &[loopback()]);
    let ca_file = ca.write(dir.path(), "ca.pem");
    let rx = OtlpReceiver::start_with(Protocol::Http, Some(&leaf)).await;
    let b = Backend::start("b").await;
    // The file says nothing about export: the environment does, as for any SDK.
    let base = format!("https://localhost:{}", rx.addr.port());
    let ca_path = ca_file.display().to_string();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_path.as_str()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=abc%20def,malformed-entry",
        ),
        ("OTEL_SERVICE_NAME", "env-service"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging"),
    ];
    let body = traced_config(&b.addr.to_string(), "");
    let gw = Gateway::start_with_env("", &body, &env);
    let r = client()
        .get(gw.url("/echo/h"))
        .header("user-agent", "otlp-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = rx.wait_spans(2).await;
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2)
        .expect("server span");
    assert_eq!(server.service, "env-service");
    assert_eq!(
        server.resource_attr("deployment.environment"),
        Some("staging")
    );
    assert_eq!(
        server.resource_attr("service.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(server.resource_attr("telemetry.sdk.language"), Some("rust"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(server.resource_attr("host.name"), Some(host.trim()));
    let instance = server.resource_attr("service.instance.id").unwrap();
    assert_eq!(instance.len(), 36, "{instance}");
    let request = &rx.requests()[0];
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(
        request.header("content-type"),
        Some("application/x-protobuf")
    );
    assert_eq!(request.header("x-api-key"), Some("abc def"));
    assert!(request.decoded, "the gzip body decodes as OTLP");
    // The malformed entry is reported once, and the rest is used.
    let stderr = gw.wait_stderr("OTEL_EXPORTER_OTLP_HEADERS: entry 2");
    let lines = stderr.lines().filter(|l| l.contains("malformed-entry"));
    assert_eq!(lines.count(), 1, "{stderr}");
    // /readyz says how export is going.
    // (the receiver may hold the spans a moment before the gateway reads its answer)
    let ready = wait_for(Duration::from_secs(10), "span_export ok", || async {
        let ready = get_json(&client(), gw.admin_url("/readyz")).await;
        (ready["span_export"]["state"] == "ok").then_some(ready)
    })
    .await;
    assert_eq!(ready["span_export"]["protocol"], "http/protobuf");
    // `check` shows what the environment did.
    let out = std::process::Command::new(gateway::BIN)
        .args(["check", "--config"])
        .arg(&gw.config_path)
        .envs(env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "trace export: http/protobuf {base}/v1/traces (compression gzip, timeout 10s, ca_file {ca_path}, 1 header), service \"env-service\""
        )),
        "{text}"
    );
    assert!(
        text.contains("trace sampler: parentbased_traceidratio 1"),
        "{text}"
    );
    assert!(
        text.contains("otlp_endpoint from OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{text}"
    );
    assert!(
        text.contains("warning: OTEL_EXPORTER_OTLP_HEADERS: entry 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_otlp_specification() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let trace = format!("otlp_endpoint = \"{}\"", rx.endpoint());
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
    rx.wait_started().await;
    rx.script(&[Answer::Http(503, None), Answer::Http(429, Some("2"))]);
    let c = client();
    assert_eq!(c.get(gw.url("/echo/1")).send().await.unwrap().status(), 200);
    let spans = rx.wait_spans(2).await;
    assert_eq!(spans.len(), 2, "the batch arrived once, whole");
    let requests = rx.request_exports();
    assert_eq!(requests.len(), 3, "503, then 429, then accepted");
    assert!(
        requests.iter().all(|r| r.spans == 2),
        "the same batch each time"
    );
    let backoff = requests[1].at - requests[0].at;
    let honoured = requests[2].at - requests[1].at;
    assert!(backoff >= Duration::from_millis(240), "backoff {backoff:?}");
    assert!(
        honoured >= Duration::from_millis(1950),
        "Retry-After: 2 waited {honoured:?}"
    );
    gw.metrics_text_when(
        "agentgate_otlp_exports_total",
        &[("result", "success")],
        1.0,
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(export_count(&m, "retried"), 2.0);
    // (the gateway's own spans, its start and the failing export, go in batches too)
    assert!(export_count(&m, "success") >= 1.0);
    assert_eq!(export_count(&m, "failed"), 0.0);
    assert!(metric_value(&m, "agentgate_otlp_last_success_timestamp_seconds", &[]) > 1.7e9);

    // 400 is not retryable: the batch is given up and its spans counted as dropped.
    rx.script(&[Answer::Http(400, None)]);
    assert_eq!(c.get(gw.url("/echo/2")).send().await.unwrap().status(), 200);
    gw.metrics_text_when("agentgate_otlp_exports_total", &[("result", "failed")], 1.0)
        .await;
    let m = gw.metrics().await;
    // the two request spans, and any of the gateway's own that shared the batch
    assert!(metric_value(&m, "agentgate_spans_dropped_total", &[]) >= 2.0);
    assert_eq!(export_count(&m, "retried"), 2.0, "no retry of a 400");
    // and export goes on with the next batch
    assert_eq!(c.get(gw.url("/echo/3")).send().await.unwrap().status(), 200);
    let spans = rx.wait_spans(4).await;
    assert!(spans
        .iter()
        .all(|s| s.attr("url.path").as_deref() != Some("/echo/2")));
    let stderr = gw.stderr();
    assert!(
        stderr.contains("\"event\":\"otlp_export_failing\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"event\":\"otlp_export_recovered\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_waits_for_its_retry_info() {
    let rx = OtlpReceiver::start_with(Protocol::Grpc, None).await;
    let b = Backend::start("b").await;
    let trace = format!("otlp_endpoint = \"{}\"\nprotocol = \"grpc\"", rx.endpoint());
    let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
    rx.wait_started().await;
    rx.script(&[Answer::Grpc(
        tonic::Code::Unavailable,
        Some(Duration::from_millis(1500)),
    )]);
    let c = client();
    assert_eq!(c.get(gw.url("/echo/1")).send().await.unwrap().status(), 200);
    rx.wait_spans(2).await;
    let requests = rx.request_exports();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(1450),
        "RetryInfo 1.5s waited {waited:?}"
    );
    // INVALID_ARGUMENT is permanent: dropped and counted, never retried.
    rx.script(&[Answer::Grpc(tonic::Code::InvalidArgument, None)]);
    assert_eq!(c.get(gw.url("/echo/2")).send().await.unwrap().status(), 200);
    gw.metrics_text_when("agentgate_otlp_exports_total", &[("result", "failed")], 1.0)
        .await;
    let m = gw.metrics().await;
    assert_eq!(export_count(&m, "retried"), 1.0);
    assert!(metric_value(&m, "agentgate_spans_dropped_total", &[]) >= 2.0);
    assert!(rx
        .spans()
        .iter()
        .all(|s| s.attr("url.path").as_deref() != Some("/echo/2")));
}

/// A collector that answers every request with bytes that are not HTTP, then closes.
async fn garbage_collector() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"\x00\xffSSH-2.0-garbage\r\n\r\n").await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_collectors_never_fail_traffic_and_are_logged_once() {
    let b = Backend::start("b").await;
    let hanging = OtlpReceiver::start().await;
    hanging.script(&[Answer::Hang; 16]);
    let (garbage, _task) = garbage_collector().await;
    let unreachable = free_addr();
    for endpoint in [
        hanging.endpoint(),
        format!("http://{garbage}/v1/traces"),
        format!("http://{unreachable}/v1/traces"),
    ] {
        let trace = format!("otlp_endpoint = \"{endpoint}\"\ntimeout = \"300ms\"");
        let gw = Gateway::start("", &traced_config(&b.addr.to_string(), &trace));
        let c = client();
        for i in 0..40 {
            let r = c.get(gw.url(&format!("/echo/{i}"))).send().await.unwrap();
            assert_eq!(r.status(), 200, "{endpoint}");
        }
        // Tried again (the failure is transient), counted, and logged once.
        gw.metrics_text_when(
            "agentgate_otlp_exports_total",
            &[("result", "retried")],
            2.0,
        )
        .await;
        let ready = get_json(&c, gw.admin_url("/readyz")).await;
        assert_eq!(
            ready["ready"], true,
            "export never makes the gateway unready"
        );
        let state = ready["span_export"]["state"].as_str().unwrap();
        assert!(state == "retrying" || state == "failing", "{ready}");
        assert!(
            ready["span_export"]["last_error"].as_str().is_some(),
            "{ready}"
        );
        let stderr = gw.stderr();
        assert_eq!(
            stderr.matches("otlp_export_failing").count(),
            1,
            "{endpoint}: {stderr}"
        );
        // Traffic keeps flowing while the exporter waits.
        let r = c.get(gw.url("/echo/after")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samplers_from_the_environment() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let trace = format!("otlp_endpoint = \"{}\"", rx.endpoint());
    let body = traced_config(&b.addr.to_string(), &trace);
    // always_off: even a sampled parent is not recorded, and the agent sees flag 00.
    let off = Gateway::start_with_env("", &body, &[("OTEL_TRACES_SAMPLER", "always_off")]);
    // always_on: even an unsampled parent is recorded, and the agent sees flag 01.
    let on = Gateway::start_with_env("", &body, &[("OTEL_TRACES_SAMPLER", "always_on")]);
    let c = client();
    let v: serde_json::Value = c
        .get(off.url("/echo/off"))
        .header("traceparent", sampled)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tp = v["headers"]["traceparent"].as_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-00"),
        "{tp}"
    );
    let v: serde_json::Value = c
        .get(on.url("/echo/on"))
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
        .ends_with("-01"));
    let spans = rx.wait_spans(2).await;
    assert!(spans
        .iter()
        .all(|s| s.trace_id() == "0af7651916cd43dd8448eb211c80319c"));
    // The `off` gateway's request finished before the `on` one started and was never
    // exported: its access log says why.
    assert_eq!(off.wait_access_log(1)[0]["trace_flags"], "00");
    assert_eq!(on.wait_access_log(1)[0]["trace_flags"], "01");
    // and OTEL_SDK_DISABLED turns export off whatever the file says
    let disabled = Gateway::start_with_env("", &body, &[("OTEL_SDK_DISABLED", "true")]);
    let ready = get_json(&c, disabled.admin_url("/readyz")).await;
    assert_eq!(ready["span_export"]["state"], "off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_http_semantic_conventions() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let dead = free_addr();
    let (dead_addr, live) = (dead.to_string(), b.addr.to_string());
    let body = agents_config(
        &[&dead_addr, &live],
        "balance = \"round_robin\"\nretries = 1",
        &format!("otlp_endpoint = \"{}\"", rx.endpoint()),
    );
    let gw = Gateway::start("", &body);
    let c = client();
    // An unknown method: `_OTHER`, the original beside it, the span named `HTTP`.
    let r = c
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            gw.url("/echo/m"),
        )
        .header("host", "gateway.example:8443")
        .header("user-agent", "semconv-test/2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Two GETs: round robin sends one of them to the dead backend first, then retries.
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/echo/r")).send().await.unwrap().status(), 200);
    }
    // The agent answers 404 (it does not know the path): a client error on the client
    // span, not on the server span.
    b.set_fail_status(404);
    assert_eq!(
        c.get(gw.url("/echo/404")).send().await.unwrap().status(),
        404
    );
    // 2 (PURGE, may be retried: +1) + 2 + 1 (retried) + 2 (+1 if retried) spans
    let spans = wait_for(Duration::from_secs(15), "every request's spans", || {
        let spans = rx.spans();
        async move {
            let servers = spans.iter().filter(|s| s.span.kind == 2).count();
            (servers == 4).then_some(spans)
        }
    })
    .await;
    let trace_of = |path: &str| -> Vec<ReceivedSpan> {
        let server = spans
            .iter()
            .filter(|s| s.span.kind == 2 && s.attr("url.path").as_deref() == Some(path))
            .collect::<Vec<_>>();
        let ids: Vec<String> = server.iter().map(|s| s.trace_id()).collect();
        spans
            .iter()
            .filter(|s| ids.contains(&s.trace_id()))
            .cloned()
            .collect()
    };
    let purge = trace_of("/echo/m");
    let server = purge.iter().find(|s| s.span.kind == 2).unwrap();
    assert_eq!(server.span.name, "HTTP /echo");
    assert_eq!(
        server.attr("http.request.method").as_deref(),
        Some("_OTHER")
    );
    assert_eq!(
        server.attr("http.request.method_original").as_deref(),
        Some("PURGE")
    );
    assert_eq!(server.attr("url.scheme").as_deref(), Some("http"));
    assert_eq!(
        server.attr("user_agent.original").as_deref(),
        Some("semconv-test/2")
    );
    assert_eq!(
        server.attr("server.address").as_deref(),
        Some("gateway.example")
    );
    assert_eq!(server.attr("server.port").as_deref(), Some("8443"));
    let purge_client = purge.iter().find(|s| s.span.kind == 3).unwrap();
    assert_eq!(purge_client.span.name, "HTTP");
    assert_eq!(
        purge_client.attr("http.request.method").as_deref(),
        Some("_OTHER")
    );
    // The metrics name the method as the spans do.
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, "agentgate_http_requests_total", &[("method", "_OTHER")]) >= 1.0,
        "{m:?}"
    );

    // One client span per try; the retry carries resend_count and its own span id.
    let retried: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.span.kind == 2 && s.attr("agentgate.retries").as_deref() == Some("1"))
        .flat_map(|server| {
            spans
                .iter()
                .filter(|s| s.trace_id() == server.trace_id())
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    let clients: Vec<&ReceivedSpan> = retried.iter().filter(|s| s.span.kind == 3).collect();
    assert!(
        clients.len() >= 2,
        "a retried request has a span per try: {retried:#?}"
    );
    let first = clients
        .iter()
        .find(|s| s.attr("http.request.resend_count").is_none())
        .expect("the first try");
    let second = clients
        .iter()
        .find(|s| s.attr("http.request.resend_count").as_deref() == Some("1"))
        .expect("the retry");
    assert_ne!(first.span_id(), second.span_id());
    assert_eq!(first.attr("server.port"), Some(dead.port().to_string()));
    assert_eq!(
        first.span.status.as_ref().map(|s| s.code),
        Some(2),
        "a failed try is an error"
    );
    assert!(first.attr("error.type").is_some());
    assert_eq!(
        second.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(second.span.status.is_none());
    assert!(second.span.start_time_unix_nano >= first.span.end_time_unix_nano);

    let not_found = trace_of("/echo/404");
    let server = not_found.iter().find(|s| s.span.kind == 2).unwrap();
    let client_span = not_found
        .iter()
        .filter(|s| s.span.kind == 3)
        .find(|s| s.attr("http.response.status_code").is_some())
        .unwrap();
    assert!(server.span.status.is_none(), "a 404 is not a server error");
    let status = client_span
        .span
        .status
        .as_ref()
        .expect("client 4xx is an error");
    assert_eq!((status.code, status.message.as_str()), (2, ""));
    assert_eq!(client_span.attr("error.type").as_deref(), Some("404"));
}

/// The gateway's own work: start-up, reloads (what changed; the located errors of a
/// bad one) and health transitions are spans at the collector and structured JSON
/// lines in the process log; `log` records come through the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_traces_and_logs_its_own_work_as_structured_events() {
    let rx = OtlpReceiver::start().await;
    let b = Backend::start("b").await;
    let trace = format!("otlp_endpoint = \"{}\"", rx.endpoint());
    let body = traced_config(&b.addr.to_string(), &trace).replace(
        "interval = \"60s\"",
        "interval = \"200ms\"\nunhealthy_after = 1",
    );
    let gw = Gateway::start("", &body);
    // a good reload that changes a route, then one with an error
    gw.rewrite_config(
        &gw.config_text()
            .replace("path_prefix = \"/echo\"", "path_prefix = \"/echo2\""),
    );
    assert_eq!(gw.reload().await["result"], "success");
    gw.rewrite_config(
        &gw.config_text()
            .replace("retries = 0", "retries = \"many\""),
    );
    assert_eq!(gw.reload().await["result"], "failure");
    // the backend fails its checks
    b.set_health_status(503);
    let process_spans = wait_for(Duration::from_secs(20), "the process's spans", || {
        let spans = rx.all_spans();
        async move {
            let names: Vec<String> = spans.iter().map(|s| s.span.name.clone()).collect();
            (names.iter().any(|n| n == "backend.health")
                && names.iter().filter(|n| *n == "config.reload").count() == 2
                && names.iter().any(|n| n == "agentgate.start"))
            .then_some(spans)
        }
    })
    .await;
    let reloads: Vec<&ReceivedSpan> = process_spans
        .iter()
        .filter(|s| s.span.name == "config.reload")
        .collect();
    let ok = reloads
        .iter()
        .find(|s| s.attr("event").as_deref() == Some("config_reloaded"))
        .unwrap();
    assert_eq!(ok.attr("changed").as_deref(), Some("routes"), "{ok:?}");
    assert_eq!(ok.span.kind, 1, "internal span");
    assert_eq!(ok.service, "agentgate");
    assert!(!ok.span.events.is_empty(), "the log event is a span event");
    let bad = reloads
        .iter()
        .find(|s| s.attr("event").as_deref() == Some("config_reload_failed"))
        .unwrap();
    let errors = bad.attr("errors").unwrap();
    assert!(
        errors.contains("agentgate.toml:16:11") && errors.contains("\"many\""),
        "{errors}"
    );
    let health = process_spans
        .iter()
        .find(|s| s.span.name == "backend.health")
        .unwrap();
    assert_eq!(health.attr("healthy").as_deref(), Some("false"));
    assert_eq!(health.attr("backend"), Some(b.addr.to_string()));
    assert_eq!(health.attr("upstream").as_deref(), Some("agents"));

    // The process log: JSON lines with ts/level/msg and the same fields.
    let lines: Vec<serde_json::Value> = gw
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |event: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event)
            .unwrap_or_else(|| panic!("no {event} line in {lines:#?}"))
    };
    let reloaded = find("config_reloaded");
    assert_eq!(reloaded["level"], "info");
    assert_eq!(reloaded["changed"], "routes");
    assert!(reloaded["ts"].as_str().unwrap().ends_with('Z'));
    assert!(reloaded["msg"]
        .as_str()
        .unwrap()
        .starts_with("config reloaded from"));
    let failed = find("config_reload_failed");
    assert_eq!(failed["level"], "error");
    assert!(failed["errors"]
        .as_str()
        .unwrap()
        .contains("agentgate.toml:16:11"));
    let unhealthy = find("health_transition");
    assert_eq!(unhealthy["healthy"], "false");
    assert_eq!(unhealthy["level"], "warn");
    assert_eq!(
        find("started")["version"]
            .as_str()
            .map(|v| v.starts_with(env!("CARGO_PKG_VERSION"))),
        Some(true)
    );
}
