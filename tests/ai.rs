//! AI traffic (`[routes.ai]`, `[routes.token_limit]`): the official OpenAI Python client
//! and raw HTTP clients through the gateway to demo agents that speak the OpenAI chat
//! completions and Anthropic messages APIs; tokens, time to first token, spans, log
//! fields, alert signals; event streams passed on without delay; token budgets local and
//! shared by three gateway processes through a real Redis, and a Redis that dies
//! mid-stream.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::otlp::OtlpReceiver;
use common::redis::Redis;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The upstream `llm` over `agent`, a chat route (OpenAI, listing `demo-mini`) at
/// `/v1/chat` and a messages route (Anthropic, listing `claude-demo`) at `/v1/messages`;
/// `chat_extra` goes into the chat route after its `[routes.ai]`.
fn llm_config(agent: &str, chat_extra: &str) -> String {
    format!(
        r#"[upstreams.llm]
backends = ["{agent}"]
retries = 0

[upstreams.llm.health]
interval = "60s"

[[routes]]
name = "chat"
path_prefix = "/v1/chat"
upstream = "llm"

[routes.ai]
api = "openai"
models = ["demo-mini"]

{chat_extra}

[[routes]]
name = "messages"
path_prefix = "/v1/messages"
upstream = "llm"

[routes.ai]
api = "anthropic"
models = ["claude-demo"]
"#
    )
}

fn chat_body(model: &str, max_tokens: u64, stream: bool, usage: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What did we talk about yesterday?"}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The events of an SSE body, each with the time it arrived after `start`.
async fn read_events(r: reqwest::Response, start: Instant) -> Vec<(Duration, String)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.expect("body chunk"));
        while let Some(end) = raw::find(&buf, b"\n\n") {
            let event = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            out.push((start.elapsed(), event));
        }
    }
    out
}

/// The JSON `data` of an OpenAI chunk event.
fn data(event: &str) -> Option<Value> {
    let line = event.lines().find(|l| l.starts_with("data: "))?;
    serde_json::from_str(&line[6..]).ok()
}

fn has_content(event: &str) -> bool {
    data(event).is_some_and(|d| {
        d["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
            || d["type"] == "content_block_delta"
    })
}

async fn chat(c: &reqwest::Client, gw: &Gateway, query: &str, body: &Value) -> reqwest::Response {
    c.post(gw.url(&format!("/v1/chat/completions{query}")))
        .json(body)
        .send()
        .await
        .expect("POST chat completions")
}

fn metric(m: &[(String, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(m, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_streaming_and_not() {
    let agent = DemoAgent::start_llm("a1", "20ms", "300ms");
    let gw = Gateway::start("", &llm_config(&agent.addr.to_string(), ""));
    let out = tokio::task::spawn_blocking({
        let base = gw.url("/v1");
        move || {
            Command::new("python3")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/openai_client.py"
                ))
                .args([&base, "demo-mini", "conv-42"])
                .output()
                .expect("python3 (`make test` installs the openai package)")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "openai client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");
    let (whole, stream) = (&read["whole"], &read["stream"]);
    assert_eq!(whole["model"], "demo-mini");
    assert_eq!(whole["completion_tokens"], 16);
    assert_eq!(stream["completion_tokens"], 16);
    assert_eq!(stream["content_chunks"], 16);
    assert_eq!(
        stream["text"], whole["text"],
        "the stream carries the same answer"
    );
    assert!(stream["first_content_s"].as_f64().unwrap() >= 0.3);
    let prompt =
        whole["prompt_tokens"].as_u64().unwrap() + stream["prompt_tokens"].as_u64().unwrap();

    let text = gw
        .metrics_text_when(
            "agentgate_gen_ai_tokens_total",
            &[
                ("route", "chat"),
                ("model", "demo-mini"),
                ("type", "output"),
            ],
            32.0,
        )
        .await;
    let m = parse_metrics(&text);
    let labels = [("route", "chat"), ("model", "demo-mini")];
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_tokens_total",
            &[labels[0], labels[1], ("type", "output")]
        ),
        32.0
    );
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_tokens_total",
            &[labels[0], labels[1], ("type", "input")]
        ),
        prompt as f64
    );
    // Time to first token: the stream only (a whole answer has no first token to see),
    // at least the agent's first-token delay though its first byte came at once.
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_time_to_first_token_seconds_count",
            &labels
        ),
        1.0
    );
    let ttft = metric(
        &m,
        "agentgate_gen_ai_time_to_first_token_seconds_sum",
        &labels,
    );
    assert!((0.3..2.0).contains(&ttft), "ttft {ttft}");
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_time_per_output_token_seconds_count",
            &labels
        ),
        1.0
    );
    let tpot = metric(
        &m,
        "agentgate_gen_ai_time_per_output_token_seconds_sum",
        &labels,
    );
    assert!((0.015..0.2).contains(&tpot), "time per output token {tpot}");

    let log = gw.access_log_lines(2);
    let lines: Vec<&Value> = log.iter().filter(|l| l["route"] == "chat").collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["model"], "demo-mini");
        assert_eq!(l["output_tokens"], 16);
        assert_eq!(l["usage_source"], "reported");
        assert_eq!(l["conversation_id"], "conv-42");
    }
    assert!(lines[0]["ttft_ms"].is_null(), "{}", lines[0]);
    let ttft_ms = lines[1]["ttft_ms"].as_f64().unwrap();
    assert!(ttft_ms >= 300.0, "{}", lines[1]);
    // The role chunk came at once: the first byte is no measure of the first token.
    let first_byte_ms = lines[1]["upstream_first_byte_ms"].as_f64().unwrap();
    assert!(first_byte_ms < 200.0, "{}", lines[1]);
    assert_eq!(
        lines[0]["input_tokens"].as_u64().unwrap() + lines[1]["input_tokens"].as_u64().unwrap(),
        prompt
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_streaming_and_not() {
    let agent = DemoAgent::start_llm("a1", "10ms", "200ms");
    let gw = Gateway::start("", &llm_config(&agent.addr.to_string(), ""));
    let c = client();
    let body = json!({
        "model": "claude-demo",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there, agent"}]}],
    });
    let whole: Value = c
        .post(gw.url("/v1/messages?tokens=7"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["usage"]["output_tokens"], 7);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let start = Instant::now();
    let r = c
        .post(gw.url("/v1/messages?tokens=9"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_events(r, start).await;
    assert_eq!(events.iter().filter(|(_, e)| has_content(e)).count(), 9);
    assert!(events.last().unwrap().1.contains("message_stop"));

    let labels = [("route", "messages"), ("model", "claude-demo")];
    let text = gw
        .metrics_text_when(
            "agentgate_gen_ai_tokens_total",
            &[labels[0], labels[1], ("type", "output")],
            16.0,
        )
        .await;
    let m = parse_metrics(&text);
    let input = whole["usage"]["input_tokens"].as_f64().unwrap();
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_tokens_total",
            &[labels[0], labels[1], ("type", "input")]
        ),
        2.0 * input,
        "message_start's input tokens, and the whole answer's"
    );
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_time_to_first_token_seconds_count",
            &labels
        ),
        1.0
    );
    let log = gw.access_log_lines(2);
    assert_eq!(
        log[1]["output_tokens"], 9,
        "message_delta's count: {}",
        log[1]
    );
    assert_eq!(log[1]["usage_source"], "reported");
    assert!(log[1]["ttft_ms"].as_f64().unwrap() >= 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pass_at_once_and_unlisted_models_count_as_other() {
    let agent = DemoAgent::start_llm("a1", "100ms", "400ms");
    let gw = Gateway::start("", &llm_config(&agent.addr.to_string(), ""));
    let c = client();
    let start = Instant::now();
    let r = chat(
        &c,
        &gw,
        "?tokens=6",
        &chat_body("gpt-unlisted", 50, true, false),
    )
    .await;
    let events = read_events(r, start).await;
    // The role chunk goes out before the first token is ready: it must arrive then,
    // not with the content.
    let (role_at, role) = &events[0];
    assert!(!has_content(role) && role.contains("assistant"), "{role}");
    assert!(
        *role_at < Duration::from_millis(300),
        "role chunk held back: {role_at:?}"
    );
    let content: Vec<Duration> = events
        .iter()
        .filter(|(_, e)| has_content(e))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(content.len(), 6);
    assert!(content[0] >= Duration::from_millis(380), "{content:?}");
    // The agent spaces its tokens 100 ms apart; held or batched events would arrive
    // together.
    for pair in content.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(60),
            "spacing lost: {content:?}"
        );
    }
    assert_eq!(events.last().unwrap().1, "data: [DONE]");

    let labels = [("route", "chat"), ("model", "other")];
    let text = gw
        .metrics_text_when(
            "agentgate_gen_ai_tokens_total",
            &[labels[0], labels[1], ("type", "output")],
            6.0,
        )
        .await;
    let m = parse_metrics(&text);
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_time_to_first_token_seconds_count",
            &labels
        ),
        1.0
    );
    assert!(
        !text.contains("gpt-unlisted"),
        "a client's model never becomes a label"
    );
    // No usage chunk was asked for: output is the content events seen.
    let log = gw.access_log_lines(1);
    assert_eq!(
        log[0]["model"], "gpt-unlisted",
        "the log keeps the model asked for"
    );
    assert_eq!(log[0]["usage_source"], "estimated");
    assert_eq!(log[0]["output_tokens"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_never_changed_refused_or_lost() {
    let agent = DemoAgent::start_llm("a1", "1ms", "0ms");
    let gw = Gateway::start(
        "",
        &llm_config(
            &agent.addr.to_string(),
            "[routes.token_limit]\nkey = \"global\"\ntokens_per_minute = 6000000\nburst = 1000000",
        ),
    );
    let c = client();
    // Not JSON: passed on (the agent answers it), counted as unparsed.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "the agent's own answer");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Larger than pingora's 64 KiB replay buffer, chunked: read as it passes. The
    // agent's prompt count (a quarter of the text, plus 3) proves every byte arrived.
    let long = "a".repeat(200_000);
    let body = json!({"model": "demo-mini", "max_tokens": 10,
                      "messages": [{"role": "user", "content": long}]});
    let bytes = serde_json::to_vec(&body).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(7000).map(|c| Ok(c.to_vec())).collect();
    let r = c
        .post(gw.url("/v1/chat/completions?tokens=4"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 50_000 + 3);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let text = gw
        .metrics_text_when(
            "agentgate_gen_ai_requests_unparsed_total",
            &[("route", "chat")],
            1.0,
        )
        .await;
    let m = parse_metrics(&text);
    assert_eq!(
        metric(
            &m,
            "agentgate_gen_ai_requests_unparsed_total",
            &[("route", "chat")]
        ),
        1.0
    );
    let log = gw.access_log_lines(2);
    assert!(log[0]["model"].is_null());
    assert_eq!(
        log[1]["model"], "demo-mini",
        "read from a body that passed in chunks"
    );
    assert_eq!(log[1]["input_tokens"], 50_003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_ai_span_attributes_and_the_conversation_reach_agent_and_trace() {
    let rx = OtlpReceiver::start().await;
    let agent = DemoAgent::start_llm("a1", "1ms", "0ms");
    let echo = Backend::start("echo").await;
    let body = format!(
        "[trace]\notlp_endpoint = \"{}\"\n\n{}\n[[routes]]\nname = \"echo\"\npath_prefix = \"/echo\"\nupstream = \"plain\"\n\n[routes.ai]\nconversation_header = \"x-thread\"\n\n[upstreams.plain]\nbackends = [\"{}\"]\n",
        rx.endpoint(),
        llm_config(&agent.addr.to_string(), ""),
        echo.addr
    );
    let gw = Gateway::start("", &body);
    rx.wait_started().await;
    let c = client();
    let r = c
        .post(gw.url("/v1/chat/completions?tokens=5"))
        .header("x-conversation-id", "conv-7")
        .json(&chat_body("demo-mini", 64, true, true))
        .send()
        .await
        .unwrap();
    let events = read_events(r, Instant::now()).await;
    assert!(events.len() > 5);
    let echoed: Value = c
        .post(gw.url("/echo/x"))
        .header("x-thread", "thread-9")
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echoed["headers"]["x-thread"], "thread-9",
        "propagated to the agent"
    );

    let spans = rx.wait_spans(4).await;
    let server = spans
        .iter()
        .find(|s| s.span.kind == 2 && s.attr("http.route").as_deref() == Some("/v1/chat"))
        .expect("the chat request's server span");
    assert_eq!(
        server.attr("gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        server.attr("gen_ai.request.model").as_deref(),
        Some("demo-mini")
    );
    assert_eq!(
        server.attr("gen_ai.response.model").as_deref(),
        Some("demo-mini")
    );
    assert_eq!(
        server.attr("gen_ai.request.max_tokens").as_deref(),
        Some("64")
    );
    assert_eq!(
        server.attr("gen_ai.usage.output_tokens").as_deref(),
        Some("5")
    );
    assert!(server.attr("gen_ai.usage.input_tokens").is_some());
    assert_eq!(
        server.attr("gen_ai.conversation.id").as_deref(),
        Some("conv-7")
    );
    let echo_span = spans
        .iter()
        .find(|s| s.span.kind == 2 && s.attr("http.route").as_deref() == Some("/echo"))
        .expect("the echo request's server span");
    assert_eq!(
        echo_span.attr("gen_ai.conversation.id").as_deref(),
        Some("thread-9")
    );
    let text = gw
        .metrics_text_when("agentgate_http_requests_total", &[("route", "echo")], 1.0)
        .await;
    assert!(
        !text.contains("thread-9") && !text.contains("conv-7"),
        "never a label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_and_token_rate_alert_signals() {
    let agent = DemoAgent::start_llm("a1", "1ms", "300ms");
    let body = format!(
        r#"{}
[[alerts]]
name = "FirstTokenSlow"
route = "chat"
signal = "time_to_first_token_p99"
above = 0.2
window = "1m"

[[alerts]]
name = "TokensFlowing"
signal = "tokens_per_second"
above = 0.1
window = "1m"
"#,
        llm_config(&agent.addr.to_string(), "")
    );
    let gw = Gateway::start("", &body);
    let c = client();
    let r = chat(
        &c,
        &gw,
        "?tokens=3",
        &chat_body("demo-mini", 20, true, true),
    )
    .await;
    read_events(r, Instant::now()).await;
    let firing = wait_for(Duration::from_secs(10), "both alerts to fire", || {
        let c = c.clone();
        let url = gw.admin_url("/alerts");
        async move {
            let v: Value = c.get(url).send().await.ok()?.json().await.ok()?;
            let alerts = v["alerts"].as_array()?.clone();
            alerts
                .iter()
                .all(|a| a["state"] == "firing")
                .then_some(alerts)
        }
    })
    .await;
    let ttft = firing
        .iter()
        .find(|a| a["name"] == "FirstTokenSlow")
        .unwrap();
    let v = ttft["value"].as_f64().unwrap();
    assert!((0.25..=0.5).contains(&v), "p99 bucket bound {v}");
    // A signal for AI routes on a route without [routes.ai] is a located error.
    let bad = body
        .replace("route = \"chat\"\nsignal", "route = \"messages\"\nsignal")
        .replace(
            "[routes.ai]\napi = \"anthropic\"\nmodels = [\"claude-demo\"]\n",
            "",
        );
    gw.rewrite_config(&bad);
    let out = Command::new(env!("CARGO_BIN_EXE_agentgate"))
        .args(["check", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("signal time_to_first_token_p99 reads AI routes only: add [routes.ai] to route \"messages\""),
        "{err}"
    );
}

/// `RateLimit-Policy` / `RateLimit` as the IETF draft writes them, for one policy.
fn policy_item(
    headers: &reqwest::header::HeaderMap,
    field: &str,
    name: &str,
) -> Vec<(String, u64)> {
    let value = headers
        .get(field)
        .unwrap_or_else(|| panic!("{field} missing"))
        .to_str()
        .unwrap();
    let item = value
        .split(", ")
        .find(|i| i.starts_with(&format!("\"{name}\";")))
        .unwrap_or_else(|| panic!("no {name} policy in {value}"));
    item.split(';')
        .skip(1)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn param(items: &[(String, u64)], k: &str) -> u64 {
    items.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_token_budget_reserves_refuses_and_refunds() {
    let agent = DemoAgent::start_llm("a1", "10ms", "1500ms");
    let gw = Gateway::start(
        "",
        &llm_config(
            &agent.addr.to_string(),
            r#"[routes.rate_limit]
requests_per_second = 100.0
burst = 100

[routes.token_limit]
key = "client_ip"
tokens_per_minute = 60
burst = 300
"#,
        ),
    );
    let c = client();
    let body_a = chat_body("demo-mini", 200, false, false);
    let estimate = serde_json::to_vec(&body_a).unwrap().len() as u64 / 4;
    let a = chat(&c, &gw, "?tokens=2", &body_a).await;
    assert_eq!(a.status(), 200);
    let policy = policy_item(a.headers(), "ratelimit-policy", "tokens");
    assert_eq!((param(&policy, "q"), param(&policy, "w")), (300, 300));
    let requests = policy_item(a.headers(), "ratelimit-policy", "requests");
    assert_eq!(param(&requests, "q"), 100, "one policy per limit");
    let state = policy_item(a.headers(), "ratelimit", "tokens");
    let left = param(&state, "r");
    assert!(
        (300 - 200 - estimate..=300 - 200 - estimate + 3).contains(&left),
        "reserved max_tokens + body/4: {left}"
    );
    assert!(param(&state, "t") >= 200, "seconds until full at 1 token/s");
    assert_eq!(
        a.headers()["ratelimit-limit"],
        "100",
        "§3's headers follow the request limit"
    );
    let usage: Value = a.json().await.unwrap();
    let used_a = usage["usage"]["total_tokens"].as_u64().unwrap();
    assert!(used_a < 50);
    gw.metrics_text_when(
        "agentgate_token_settlements_total",
        &[("route", "chat"), ("result", "settled")],
        1.0,
    )
    .await;

    // The refund came back: 220 + estimate fits now, and is held by a slow stream.
    let b = chat(
        &c,
        &gw,
        "?tokens=3",
        &chat_body("demo-mini", 220, true, true),
    )
    .await;
    assert_eq!(b.status(), 200);
    let stream = tokio::spawn(read_events(b, Instant::now()));
    let refused = chat(&c, &gw, "", &chat_body("demo-mini", 100, false, false)).await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let state = policy_item(refused.headers(), "ratelimit", "tokens");
    assert!(param(&state, "r") < 100 + estimate);
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "token_limit_exceeded");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("token budget"));
    // The held stream settles to its small usage; the next request fits again.
    stream.await.unwrap();
    gw.metrics_text_when(
        "agentgate_token_settlements_total",
        &[("route", "chat"), ("result", "settled")],
        2.0,
    )
    .await;
    let d = chat(
        &c,
        &gw,
        "?tokens=1",
        &chat_body("demo-mini", 100, false, false),
    )
    .await;
    assert_eq!(
        d.status(),
        200,
        "{:?} {}",
        d.headers().clone(),
        d.text().await.unwrap()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "agentgate_token_limited_total", &[("route", "chat")]),
        1.0
    );
    let log = gw.access_log_lines(3);
    let refused_line = log.iter().find(|l| l["status"] == 429).unwrap();
    assert_eq!(refused_line["error"], "token_limit_exceeded");
    assert_eq!(refused_line["upstream"], "llm");
    assert_eq!(
        refused_line["backend"],
        Value::Null,
        "a refusal reaches no agent"
    );
}

fn global_budget(agent: &str, redis: &Redis) -> String {
    format!(
        r#"[rate_limit_store]
redis_url = "{}"

{}"#,
        redis.url(),
        llm_config(
            agent,
            r#"[routes.token_limit]
key = "global"
tokens_per_minute = 18000
burst = 600
scope = "global"
expected_replicas = 3
"#
        )
    )
}

/// Streams one chat completion and returns the tokens it reported (prompt + completion),
/// or `None` when it was refused.
async fn stream_usage(c: &reqwest::Client, url: &str, body: &Value) -> Option<u64> {
    let r = c.post(url).json(body).send().await.ok()?;
    if r.status() == 429 {
        return None;
    }
    assert_eq!(r.status(), 200);
    let events = read_events(r, Instant::now()).await;
    events
        .iter()
        .filter_map(|(_, e)| data(e))
        .find_map(|d| d["usage"]["total_tokens"].as_u64())
        .or(Some(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_budget_holds_across_three_replicas() {
    let redis = Redis::start();
    let agent = DemoAgent::start_llm("a1", "2ms", "0ms");
    let config = global_budget(&agent.addr.to_string(), &redis);
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start("threads = 1", &config))
        .collect();
    // Reservations (100 + body/4) are about three times what each stream uses (its
    // prompt plus 30 tokens): only settlement lets the budget be used up.
    let body = chat_body("demo-mini", 100, true, true);
    let run_for = Duration::from_secs(8);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let url = gws[i % 3].url("/v1/chat/completions?tokens=30");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let (mut used, mut admitted, mut refused) = (0u64, 0u64, 0u64);
            for _ in 0..2000 {
                if start.elapsed() >= run_for {
                    break;
                }
                match stream_usage(&c, &url, &body).await {
                    Some(u) => {
                        used += u;
                        admitted += 1;
                    }
                    None => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (used, admitted, refused)
        }));
    }
    let (mut used, mut admitted, mut refused) = (0, 0, 0);
    for t in tasks {
        let (u, a, r) = t.await.unwrap();
        used += u;
        admitted += a;
        refused += r;
    }
    // Admission stopped at run_for (a request started then may still be admitted).
    let limit = 600.0 + 300.0 * run_for.as_secs_f64();
    let used = used as f64;
    eprintln!(
        "global budget: {used} tokens used of {limit} ({admitted} streams, {refused} refused)"
    );
    assert!(refused > 0, "the clients asked for more than the budget");
    assert!(
        used <= 1.10 * limit,
        "{used} tokens used of a {limit} budget ({admitted} streams, {refused} refused)"
    );
    assert!(
        used >= 0.70 * limit,
        "settlement gives unused reservations back: {used} of {limit} ({admitted} streams)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_stream_fails_nothing_and_is_counted() {
    let mut redis = Redis::start();
    let agent = DemoAgent::start_llm("a1", "150ms", "0ms");
    let gw = Gateway::start("", &global_budget(&agent.addr.to_string(), &redis));
    let c = client();
    // The first reservation goes through Redis.
    wait_for(
        Duration::from_secs(10),
        "the limit store to be up",
        || async {
            let m = gw.metrics().await;
            (metric(&m, "agentgate_rate_limit_store_up", &[]) == 1.0).then_some(())
        },
    )
    .await;
    let r = chat(
        &c,
        &gw,
        "?tokens=8",
        &chat_body("demo-mini", 100, true, true),
    )
    .await;
    assert_eq!(r.status(), 200);
    let start = Instant::now();
    let mut body = r.bytes_stream();
    let mut seen = Vec::new();
    let mut killed = false;
    while let Some(chunk) = body.next().await {
        seen.extend_from_slice(&chunk.expect("the stream goes on"));
        if !killed
            && String::from_utf8_lossy(&seen)
                .matches("\"content\":\"")
                .count()
                >= 3
        {
            redis.kill();
            killed = true;
        }
    }
    assert!(killed && start.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the whole stream arrived: {text}"
    );
    assert!(text.contains("\"usage\""));
    gw.metrics_text_when(
        "agentgate_token_settlements_total",
        &[("route", "chat"), ("result", "store_unavailable")],
        1.0,
    )
    .await;
    let log = gw.wait_stderr("token settlement for route chat failed");
    assert!(log.contains("\"event\":\"token_settlement\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_client_abandons_counts_its_tokens() {
    let agent = DemoAgent::start_llm("a1", "50ms", "0ms");
    let gw = Gateway::start("", &llm_config(&agent.addr.to_string(), ""));
    let c = client();
    let r = chat(
        &c,
        &gw,
        "?tokens=60",
        &chat_body("demo-mini", 100, true, false),
    )
    .await;
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if seen.matches("\"content\":\"").count() > 4 {
            break;
        }
    }
    let read = seen.matches("\"content\":\"").count() as f64 - 1.0; // the role chunk's ""
    drop(body);
    let text = gw
        .metrics_text_when(
            "agentgate_streams_cancelled_tokens_total",
            &[("route", "chat")],
            read,
        )
        .await;
    let cancelled = metric(
        &parse_metrics(&text),
        "agentgate_streams_cancelled_tokens_total",
        &[("route", "chat")],
    );
    assert!(
        cancelled < 60.0,
        "only what the agent produced before the client left: {cancelled}"
    );
}
