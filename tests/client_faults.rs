//! What a client does is the client's: a stalled body is answered 408 and never counts
//! against an agent, a slow upload is not cut by first_byte_timeout, a client that
//! leaves ends its request (no retry), and no request is tried more than `retries + 1`
//! times.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::raw::{exchange, read_responses};
use common::*;

fn upstream(backends: &[&Backend], extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[upstreams.u]\nbackends = [{list}]\nbalance = \"round_robin\"\n{extra}\n[upstreams.u.health]\ninterval = \"60s\"\neject_after = 2\neject_for = \"60s\"\n\n[[routes]]\nname = \"agents\"\npath_prefix = \"/\"\nupstream = \"u\"\n"
    )
}

fn accepted(backends: &[&Backend]) -> u64 {
    backends
        .iter()
        .map(|b| b.stats.accepted.load(Ordering::SeqCst))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_408_and_never_eject_a_backend() {
    let (b1, b2, b3) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    let all = [&b1, &b2, &b3];
    // first_byte_timeout is shorter than body_timeout: a first-byte timer that started
    // while the client was still sending would fire first and blame the agent.
    let gw = Gateway::start(
        "body_timeout = \"800ms\"",
        &upstream(&all, "first_byte_timeout = \"300ms\"\nretries = 1"),
    );
    let listen = gw.listen;
    let stalled: Vec<_> = (0..15)
        .map(|i| {
            std::thread::spawn(move || {
                let req = format!(
                    "POST /echo/{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"partial\":"
                );
                let started = Instant::now();
                let responses = exchange(listen, req.as_bytes(), Duration::from_secs(4));
                (responses, started.elapsed())
            })
        })
        .collect();
    for t in stalled {
        let (responses, took) = t.join().unwrap();
        let r = responses.first().expect("a response to a stalled body");
        assert_eq!(r.status, 408);
        assert_eq!(r.json()["error"]["code"], "request_timeout");
        assert!(r.header("x-request-id").is_some());
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(3),
            "answered after {took:?}"
        );
    }
    let m = gw.metrics().await;
    for b in all {
        let label = b.addr.to_string();
        assert_eq!(
            metric_value(
                &m,
                "agentgate_upstream_backend_healthy",
                &[("backend", label.as_str())]
            ),
            1.0,
            "{label} is still in service"
        );
    }
    assert_eq!(
        metric_value(
            &m,
            "agentgate_upstream_requests_total",
            &[("outcome", "timeout")]
        ),
        0.0
    );
    assert_eq!(
        metric_value(&m, "agentgate_upstream_retries_total", &[]),
        0.0
    );
    assert!(!gw.stderr().contains("ejected"), "{}", gw.stderr());
    let log = gw.wait_access_log(15);
    for line in &log {
        assert_eq!(line["status"], 408);
        assert_eq!(line["error"], "request_timeout");
        assert_eq!(line["retries"], 0);
    }
    // Every backend still serves.
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert!(all.iter().all(|b| b.requests() >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_cut_by_first_byte_timeout() {
    let b = Backend::start("b").await;
    let gw = Gateway::start(
        "body_timeout = \"2s\"",
        &upstream(&[&b], "first_byte_timeout = \"300ms\""),
    );
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    // Six pieces 250 ms apart: 1.25 s of upload, four times first_byte_timeout.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(250));
        s.write_all(b"5\r\nhello\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let responses = read_responses(&mut s, Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(1250));
    assert_eq!(responses.first().map(|r| r.status), Some(200));
    assert_eq!(b.traffic(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_never_retried() {
    let (b1, b2, b3) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    let all = [&b1, &b2, &b3];
    let gw = Gateway::start("", &upstream(&all, "retries = 2"));
    // The boot-time health checks are the only other connections (interval 60 s).
    let checks = wait_until(Duration::from_secs(5), "the first health checks", || {
        let n = accepted(&all);
        (n >= 3 && all.iter().all(|b| b.requests() >= 1)).then_some(n)
    });
    // A GET the agent holds, then the client goes.
    {
        let mut s = TcpStream::connect(gw.listen).unwrap();
        s.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        wait_until(
            Duration::from_secs(5),
            "the agent to hold the request",
            || (accepted(&all) == checks + 1).then_some(()),
        );
    }
    // A GET whose declared body never comes whole.
    {
        let mut s = TcpStream::connect(gw.listen).unwrap();
        s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nonly-part")
            .unwrap();
        wait_until(
            Duration::from_secs(5),
            "the agent to get the request",
            || (accepted(&all) == checks + 2).then_some(()),
        );
    }
    let log = gw.wait_access_log(2);
    for line in &log {
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["error"], "client_disconnected");
        assert_eq!(line["retries"], 0);
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "agentgate_upstream_retries_total", &[]),
        0.0
    );
    assert_eq!(
        metric_value(&m, "agentgate_http_requests_total", &[("status", "499")]),
        2.0
    );
    assert_eq!(
        accepted(&all),
        checks + 2,
        "an abandoned request was sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_tried_more_than_retries_plus_one_times() {
    let (b1, b2, b3) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    let all = [&b1, &b2, &b3];
    let body = upstream(&all, "retries = 1").replace("eject_after = 2", "eject_after = 0");
    let gw = Gateway::start("", &body);
    let c = client();
    // Pooled connections first, so later tries may land on reused ones.
    for _ in 0..6 {
        c.get(gw.url("/x")).send().await.unwrap();
    }
    let before: usize = all.iter().map(|b| b.traffic()).sum();
    for i in 0..5 {
        let r = c.get(gw.url("/drop")).send().await.unwrap();
        assert_eq!(r.status(), 502, "try {i}");
    }
    let after: usize = all.iter().map(|b| b.traffic()).sum();
    assert_eq!(after - before, 10, "five requests, two tries each");
    let log = gw.wait_access_log(11);
    for line in log.iter().filter(|l| l["path"] == "/drop") {
        assert_eq!(line["retries"], 1);
        assert_eq!(line["error"], "upstream_unavailable");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_whose_retry_finds_no_backend_reports_the_timeout() {
    let b = Backend::start("b").await;
    let body = upstream(&[&b], "first_byte_timeout = \"1500ms\"\nretries = 1").replace(
        "interval = \"60s\"",
        "interval = \"200ms\"\nunhealthy_after = 1",
    );
    let gw = Gateway::start("", &body);
    let c = client();
    let pending = tokio::spawn({
        let url = gw.url("/hang");
        async move { c.get(url).send().await.unwrap() }
    });
    wait_for(
        Duration::from_secs(5),
        "the agent to hold the request",
        || {
            let held = b.traffic() == 1;
            async move { held.then_some(()) }
        },
    )
    .await;
    // While the agent holds it, active checks take the only backend out.
    b.set_health_status(503);
    gw.metrics_text_when("agentgate_upstream_backend_healthy", &[], 0.0)
        .await;
    let r = pending.await.unwrap();
    assert_eq!(r.status(), 504);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["retries"], 0);
    assert_eq!(log[0]["error"], "upstream_timeout");
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "agentgate_upstream_retries_total", &[]),
        0.0
    );
}

/// Sends `request` and reads nothing for `hold`; then reads what is left until the
/// gateway closes (or 10 s pass). Returns how long the connection stayed open after
/// `hold` and how many bytes arrived in all.
fn stop_reading(listen: std::net::SocketAddr, request: &[u8], hold: Duration) -> (Duration, usize) {
    use std::io::Read;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window: the gateway's writes block soon, as a slow client's do.
    s.set_recv_buffer_size(16 * 1024).unwrap();
    s.connect(&listen.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(request).unwrap();
    std::thread::sleep(hold);
    let after = Instant::now();
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while after.elapsed() < Duration::from_secs(10) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => break,
        }
    }
    (after.elapsed(), total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_idle_timeout_as_its_own_failure() {
    let b = Backend::start("b").await;
    // eject_after = 2 of the helper: two misattributed timeouts would eject the agent.
    let gw = Gateway::start("", &upstream(&[&b], "idle_timeout = \"1s\""));
    let listen = gw.listen;
    // A stream (chunks, the upstream deadline armed) and a fixed-length body (the agent
    // done early, only the writes to the client left): 64 MB each, far more than any
    // socket buffer holds.
    let requests: [&'static str; 2] = [
        "GET /chunked/67108864/512/0 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /bytes/67108864 HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let readers: Vec<_> = requests
        .iter()
        .map(|&r| {
            std::thread::spawn(move || stop_reading(listen, r.as_bytes(), Duration::from_secs(3)))
        })
        .collect();
    for (reader, request) in readers.into_iter().zip(requests) {
        let (open_after, total) = reader.join().unwrap();
        assert!(
            total < 64 << 20,
            "{request:?}: the whole response arrived ({total} bytes) though nothing was read"
        );
        assert!(
            open_after < Duration::from_secs(5),
            "{request:?}: the gateway kept the connection {open_after:?} after the client stopped"
        );
    }
    let log = gw.wait_access_log(2);
    for line in &log {
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["error"], "client_timeout", "{line}");
        assert_eq!(line["retries"], 0, "{line}");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "agentgate_upstream_requests_total",
            &[("outcome", "timeout")]
        ),
        0.0,
        "a client's stall is never the agent's timeout"
    );
    assert_eq!(
        metric_value(&m, "agentgate_http_requests_total", &[("status", "499")]),
        2.0
    );
    assert!(!gw.stderr().contains("ejected"), "{}", gw.stderr());
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_served_whole() {
    use std::io::Read;
    let b = Backend::start("b").await;
    let gw = Gateway::start("", &upstream(&[&b], "idle_timeout = \"1s\""));
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(16 * 1024).unwrap();
    s.connect(&gw.listen.into()).unwrap();
    let mut s: TcpStream = s.into();
    // 2 MB taken at about 640 KB/s, 32 KB every 50 ms: each write waits, none for 1 s.
    s.write_all(b"GET /chunked/2097152/64/0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read failed after {} bytes: {e}", got.len()),
        }
    }
    let responses = common::raw::parse_responses(&got);
    let r = responses.first().expect("a whole response");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 2_097_152);
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the reader was slow"
    );
    let log = gw.wait_access_log(1);
    assert_eq!(log[0]["status"], 200);
    assert!(log[0]["error"].is_null(), "{}", log[0]);
}
