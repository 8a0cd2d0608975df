//! The shared integration-test harness: starts the real `agentgate` binary on free
//! loopback ports with a generated config, real backends (demo agents as processes, and
//! a programmable HTTP/1.1 backend in the test process), and helpers that wait on
//! conditions with deadlines instead of sleeping.

#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod browser;
pub mod gateway;
pub mod grpc;
pub mod otlp;
pub mod prom;
pub mod raw;
pub mod redis;
pub mod tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub use backend::{Backend, BackendStats};
pub use gateway::{DemoAgent, Gateway};

/// Kills a child process at once (a crash, not a drain) and reaps it.
pub fn kill_child(child: &mut Option<std::process::Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A loopback port nobody listens on right now, below the kernel's ephemeral range: a
/// port from that range can be taken by any outgoing connection (a gateway's upstream
/// connections, a client's) between this check and the server's bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > FIRST + 1_000 {
        // Each test process starts at its own offset; its tests take ports in turn.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let span = ephemeral_low - FIRST;
        let start = std::process::id() % span;
        for _ in 0..span {
            let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Blocking flavour of `wait_for` for synchronous tests.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A reqwest client that never pools connections across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GETs `url` and parses the JSON body.
pub async fn get_json(c: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    c.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

/// Parses Prometheus text exposition into (series, value) pairs.
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of one exact series (`name{labels}` as rendered), or 0 when absent.
pub fn metric_value(metrics: &[(String, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| series_matches(series, name, labels))
        .map(|(_, v)| *v)
        .sum()
}

pub fn series_matches(series: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    let (n, rest) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    n == name
        && labels
            .iter()
            .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
}

/// One upstream (`backend`, no retries, no active checks to speak of) behind the route
/// `conversations` at `/echo`, with `trace` as the `[trace]` section's keys.
pub fn traced_config(backend: &str, trace: &str) -> String {
    agents_config(&[backend], "retries = 0", trace)
}

/// The upstream `agents` over `backends` (in order) with `upstream_keys` (e.g.
/// `balance = "round_robin"\nretries = 1`), checks every 60 s and no passive ejection,
/// behind the route `conversations` at `/echo`; `trace` is the `[trace]` section's keys.
pub fn agents_config(backends: &[&str], upstream_keys: &str, trace: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[trace]
{trace}

[upstreams.agents]
backends = [{list}]
{upstream_keys}

[upstreams.agents.health]
interval = "60s"
eject_after = 0

[[routes]]
name = "conversations"
path_prefix = "/echo"
upstream = "agents"
"#
    )
}
