//! WebSocket through the gateway (SPEC §7.1), with a real client (tokio-tungstenite)
//! and a real WebSocket agent: the handshake's upgrade headers cross, messages flow
//! both ways after the agent's 101, the stream counts in `agentgate_streams_active`,
//! `idle_timeout` ends a silent one, a reload never cuts it, and its access log line is
//! written when it closes.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn config(b: &Backend, idle: &str) -> String {
    format!(
        "[upstreams.u]\nbackends = [\"{}\"]\nidle_timeout = \"{idle}\"\n\n[upstreams.u.health]\ninterval = \"60s\"\n\n[[routes]]\nname = \"live\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        b.addr
    )
}

async fn streams_active(gw: &Gateway) -> f64 {
    metric_value(
        &gw.metrics().await,
        "agentgate_streams_active",
        &[("route", "live")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_and_the_close_is_logged() {
    let b = Backend::start("ws").await;
    let gw = Gateway::start("", &config(&b, "30s"));
    let url = format!("ws://{}/ws", gw.listen);
    let (mut ws, response) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("handshake through the gateway");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    let agent_saw = b.stats.last_headers.lock().unwrap().clone();
    assert_eq!(
        agent_saw.get("upgrade").map(String::as_str),
        Some("websocket")
    );
    assert!(agent_saw.contains_key("sec-websocket-key"));
    assert!(agent_saw.contains_key("traceparent"));

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![7u8; 3000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 3000])
    );
    // The agent speaks several times for one message of the client's.
    ws.send(Message::text("count 5")).await.unwrap();
    for i in 0..5 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("{i}"))
        );
    }
    assert_eq!(
        streams_active(&gw).await,
        1.0,
        "an open WebSocket is a stream"
    );
    assert!(gw.access_log().is_empty(), "no line before it closes");

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let line = gw.wait_access_log(1).remove(0);
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["route"], "live");
    assert!(line["error"].is_null(), "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() > 3000, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 3000, "{line}");
    wait_for(
        Duration::from_secs(5),
        "the stream to be counted out",
        || {
            let gw = &gw;
            async move { (streams_active(gw).await == 0.0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_ends_at_idle_timeout_and_one_that_talks_does_not() {
    let b = Backend::start("ws").await;
    let gw = Gateway::start("", &config(&b, "1s"));
    let url = format!("ws://{}/ws", gw.listen);

    // Talking every 400 ms for 2.4 s: never idle for 1 s, so never cut.
    let (mut talking, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        talking.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            talking.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }

    // Silent: the gateway ends it within idle_timeout and two sweeps.
    let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = silent.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "a silent WebSocket is ended");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "ended after {took:?}"
    );
    let lines = gw.wait_access_log(1);
    assert_eq!(lines[0]["error"], "upstream_timeout", "{}", lines[0]);
    talking.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_cut_an_open_websocket() {
    let b = Backend::start("ws").await;
    let gw = Gateway::start("", &config(&b, "30s"));
    let url = format!("ws://{}/ws", gw.listen);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    gw.rewrite_config(&gw.config_text().replace("30s", "20s"));
    assert_eq!(gw.reload_as(None).await.0, 200);

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_stay_stripped() {
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &config(&b, "30s"));
    let v = client()
        .get(gw.url("/echo"))
        .header("connection", "upgrade")
        .header("upgrade", "h2c")
        .send()
        .await
        .unwrap();
    assert_eq!(v.status(), 200);
    let body: serde_json::Value = v.json().await.unwrap();
    assert!(body["headers"].get("upgrade").is_none(), "{body}");
    assert!(body["headers"].get("connection").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_an_open_websocket_through_the_grace_period_then_closes_it() {
    let b = Backend::start("ws").await;
    let mut gw = Gateway::start("grace_period = \"2s\"", &config(&b, "30s"));
    let url = format!("ws://{}/ws", gw.listen);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let signalled = std::time::Instant::now();
    gw.send_signal(libc::SIGTERM);
    wait_for(Duration::from_secs(2), "the drain to start", || {
        let (c, url) = (client(), gw.admin_url("/readyz"));
        async move { (c.get(url).send().await.ok()?.status() == 503).then_some(()) }
    })
    .await;
    // Still carried while the drain runs.
    ws.send(Message::text("draining")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("draining"));

    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the WebSocket is closed once the drain is over"
    );
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(1900), "closed after {took:?}");
    assert_eq!(gw.wait_exit(Duration::from_secs(8)), Some(0));
}
