//! Overload protection and latency-aware balancing against real backends: a fixed
//! concurrency cap the agent never sees exceeded, its queue serving in arrival order
//! within `queue_timeout`, an adaptive cap that keeps admitted latency near the agent's
//! unloaded latency while the excess gets fast 503s, `peak_ewma` steering away from a
//! slow backend, and `Retry-After` ejection (as long as asked, doubled, capped, never
//! the last backend).

mod common;

use std::time::{Duration, Instant};

use common::raw::exchange;
use common::*;
use serde_json::Value;

fn config(backends: &[&str], upstream_keys: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[upstreams.u]
backends = [{list}]
retries = 0
{upstream_keys}

[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
"#
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_cap_is_never_exceeded_and_the_excess_gets_fast_503s() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &[&b.addr.to_string()],
            "max_in_flight = 3\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0",
        ),
    );
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, url) = (c.clone(), gw.url("/sleep/400"));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = c.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            (status, started.elapsed(), retry, body)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, took, retry, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
                assert!(
                    took < Duration::from_millis(300),
                    "refused fast, not after the wait: {took:?}"
                );
            }
            s => panic!("status {s}"),
        }
    }
    assert!(
        b.peak_in_flight() <= 3,
        "the agent saw {} at once",
        b.peak_in_flight()
    );
    assert!(ok >= 3 && refused >= 10, "{ok} served, {refused} refused");
    let text = gw
        .metrics_text_when(
            "agentgate_overloaded_total",
            &[("route", "r")],
            refused as f64,
        )
        .await;
    let m = parse_metrics(&text);
    assert_eq!(
        metric_value(&m, "agentgate_overloaded_total", &[("route", "r")]),
        refused as f64
    );
    assert_eq!(
        metric_value(
            &m,
            "agentgate_upstream_concurrency_limit",
            &[("upstream", "u")]
        ),
        3.0
    );
    // The admin page shows the cap beside the upstream.
    let overview = get_json(&c, gw.admin_url("/api/overview")).await;
    assert_eq!(overview["upstreams"][0]["concurrency_limit"], 3);
    assert_eq!(overview["upstreams"][0]["concurrency_in_flight"], 0);
    let log = gw.access_log_lines(20);
    assert_eq!(
        log.iter().filter(|l| l["error"] == "overloaded").count(),
        refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_serves_in_arrival_order_within_queue_timeout() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &[&b.addr.to_string()],
            "max_in_flight = 3\nqueue_timeout = \"3s\"\n[upstreams.u.health]\ninterval = \"60s\"",
        ),
    );
    let c = client();
    // Three holders free their slots one at a time (200, 400, 600 ms); three waiters
    // arrive 40 ms apart behind them; a fourth finds the queue (as long as the cap) full.
    let mut holders = Vec::new();
    for ms in [200, 400, 600] {
        let (c, url) = (c.clone(), gw.url(&format!("/sleep/{ms}")));
        holders.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (c, url) = (c.clone(), gw.url(&format!("/sleep/10?n={i}")));
        waiters.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let r = c.get(gw.url("/sleep/10?n=late")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "the queue holds at most as many waiters as the cap"
    );
    for t in holders.into_iter().chain(waiters) {
        assert_eq!(
            t.await.unwrap(),
            200,
            "every waiter was served within queue_timeout"
        );
    }
    let order: Vec<String> = b
        .targets()
        .into_iter()
        .filter(|t| t.starts_with("/sleep/10"))
        .collect();
    let want: Vec<String> = (0..3).map(|i| format!("/sleep/10?n={i}")).collect();
    assert_eq!(order, want, "served in arrival order");
    assert_eq!(b.peak_in_flight(), 3);

    // A wait longer than queue_timeout is refused when it runs out.
    let gw2 = Gateway::start(
        "",
        &config(
            &[&b.addr.to_string()],
            "max_in_flight = 1\nqueue_timeout = \"300ms\"\n[upstreams.u.health]\ninterval = \"60s\"",
        ),
    );
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), gw2.url("/sleep/1500"));
        async move { c.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let r = c.get(gw2.url("/sleep/1")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(1200),
        "refused after queue_timeout: {waited:?}"
    );
    assert_eq!(holder.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_cap_keeps_latency_near_the_agents_unloaded_latency() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &[&b.addr.to_string()],
            "[upstreams.u.adaptive_concurrency]\nmin_limit = 2\nmax_limit = 200\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0",
        ),
    );
    // The agent answers in 40 ms up to 8 requests at once, proportionally slower past
    // that (it says how long it took); 40 clients offer five times what it serves at
    // that speed, and wait 50 ms after a 503 (as a client told to retry later does).
    // Without a cap they would hold 40 requests in it at once: 200 ms each.
    let run_for = Duration::from_secs(6);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = gw.url("/load/40/8");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            for _ in 0..1000 {
                if start.elapsed() >= run_for {
                    break;
                }
                let t = Instant::now();
                let r = c.get(&url).send().await.unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                seen.push((start.elapsed(), status, t.elapsed(), body["ms"].as_u64()));
                if status == 503 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            seen
        }));
    }
    let mut served = Vec::new();
    let mut at_agent = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        for (at, status, took, agent_ms) in t.await.unwrap() {
            // Judged once the limit has found its level.
            if at < Duration::from_secs(3) {
                continue;
            }
            match status {
                200 => {
                    served.push(took);
                    at_agent.push(Duration::from_millis(agent_ms.unwrap()));
                }
                503 => refused.push(took),
                s => panic!("status {s}"),
            }
        }
    }
    assert!(
        !served.is_empty() && !refused.is_empty(),
        "{} served, {} refused",
        served.len(),
        refused.len()
    );
    // The agent's own time for the requests it was given: what the cap protects. (The
    // time a client sees adds the gateway's and its own, which two busy cores stretch.)
    let agent_median = median(at_agent);
    assert!(
        agent_median <= Duration::from_millis(80),
        "admitted requests' median at the agent {agent_median:?}, against 40 ms unloaded (seen by clients: {:?})",
        median(served)
    );
    let refused_median = median(refused);
    assert!(
        refused_median < Duration::from_millis(20),
        "503s are fast: {refused_median:?}"
    );
    let m = gw.metrics().await;
    let limit = metric_value(
        &m,
        "agentgate_upstream_concurrency_limit",
        &[("upstream", "u")],
    );
    assert!((2.0..=30.0).contains(&limit), "the limit found {limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_sends_little_to_a_ten_times_slower_backend() {
    let fast = Backend::start("fast").await;
    let slow = Backend::start("slow").await;
    slow.set_delay(Duration::from_millis(100));
    let gw = Gateway::start(
        "",
        &config(
            &[&fast.addr.to_string(), &slow.addr.to_string()],
            "balance = \"peak_ewma\"\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0",
        ),
    );
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = gw.url("/sleep/10");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..60 {
                assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (f, s) = (fast.traffic() as f64, slow.traffic() as f64);
    assert!(s / (f + s) <= 0.20, "the slow backend got {s} of {}", f + s);
    assert!(s >= 1.0, "it is still tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_ejects_as_long_as_asked_doubling_up_to_the_cap() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.set_retry_after(503, 2);
    let gw = Gateway::start(
        "",
        &config(
            &[&a.addr.to_string(), &b.addr.to_string()],
            "balance = \"round_robin\"\n[upstreams.u.health]\ninterval = \"300ms\"\neject_after = 0\nmax_eject_for = \"3s\"",
        ),
    );
    let c = client();
    let requests_to_a = || {
        a.targets()
            .iter()
            .filter(|t| t.starts_with("/echo"))
            .count()
    };
    let mut seen_at = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) && seen_at.len() < 3 {
        let before = requests_to_a();
        let r = c.get(gw.url("/echo/x")).send().await.unwrap();
        if requests_to_a() > before {
            assert_eq!(r.status(), 503, "the agent's own answer passes on");
            assert_eq!(r.headers()["retry-after"], "2");
            seen_at.push(start.elapsed());
        } else {
            assert_eq!(r.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen_at.len(), 3, "{seen_at:?}");
    let first = seen_at[1] - seen_at[0];
    let second = seen_at[2] - seen_at[1];
    assert!(
        first >= Duration::from_millis(1950) && first < Duration::from_millis(2800),
        "Retry-After: 2 ejected it for {first:?} (passing health checks did not end it)"
    );
    assert!(
        second >= Duration::from_millis(2950) && second < Duration::from_millis(3800),
        "asked again: doubled to 4 s, capped at max_eject_for 3 s: {second:?}"
    );
    let m = gw.metrics().await;
    assert!(
        metric_value(
            &m,
            "agentgate_upstream_ejections_total",
            &[("backend", &a.addr.to_string())]
        ) >= 2.0
    );

    // The last healthy backend is never ejected: its own answers keep reaching clients.
    let gw1 = Gateway::start(
        "",
        &config(
            &[&a.addr.to_string()],
            "[upstreams.u.health]\ninterval = \"60s\"",
        ),
    );
    for _ in 0..3 {
        assert_eq!(
            c.get(gw1.url("/echo/y")).send().await.unwrap().status(),
            503
        );
    }
    assert_eq!(
        a.targets()
            .iter()
            .filter(|t| t.starts_with("/echo/y"))
            .count(),
        3
    );
}

/// A refusal under load keeps the client's connection when nothing of its request is
/// left unread (a reconnect per shed request would add a handshake to each, when the
/// gateway is busiest): two pipelined requests past a full cap get two 503s on one
/// connection. A refused request whose body was never read closes it instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_keeps_the_connection_unless_a_body_is_left_unread() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "",
        &config(
            &[&b.addr.to_string()],
            "max_in_flight = 1\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 0",
        ),
    );
    // One long request holds the only slot.
    let holder = {
        let url = gw.url("/sleep/3000");
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
    };
    wait_until(Duration::from_secs(5), "the slot taken", || {
        (b.peak_in_flight() >= 1).then_some(())
    });
    let addr = gw.listen;
    let (kept, closed) = tokio::task::spawn_blocking(move || {
        let kept = exchange(
            addr,
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_millis(1500),
        );
        let closed = exchange(
            addr,
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_millis(1500),
        );
        (kept, closed)
    })
    .await
    .unwrap();
    assert_eq!(
        kept.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503],
        "both pipelined requests answered on one connection"
    );
    for r in &kept {
        assert_eq!(r.json()["error"]["code"], "overloaded");
        assert_ne!(r.header("connection"), Some("close"));
    }
    assert_eq!(
        closed.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503],
        "the connection closes after a refusal that left a body unread"
    );
    assert_eq!(closed[0].header("connection"), Some("close"));
    assert_eq!(holder.await.unwrap().unwrap().as_u16(), 200);
}
