//! Open-loop load at a fixed rate, for latency under a known load (wrk only runs closed
//! loop). Latency is measured from each request's scheduled start, so a stall is not
//! hidden by the requests it delayed (no coordinated omission).
//!
//! Usage: fixed_rate URL RATE_PER_SECOND SECONDS CONNECTIONS
//! Prints: sent=N errors=N p50_us=N p90_us=N p99_us=N max_us=N

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn one_connection(
    addr: String,
    path: String,
    host: String,
    interval: Duration,
    offset: Duration,
    until: Instant,
    start: Instant,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return (latencies, 1);
    };
    let _ = s.set_nodelay(true);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut buf = vec![0u8; 65536];
    let mut next = start + offset;
    while next < until {
        tokio::time::sleep_until(next.into()).await;
        let scheduled = next;
        next += interval;
        if s.write_all(req.as_bytes()).await.is_err() {
            errors += 1;
            break;
        }
        // read one response: header, then Content-Length bytes
        let mut got = 0usize;
        let mut need: Option<usize> = None;
        loop {
            let Ok(n) = s.read(&mut buf[got..]).await else {
                errors += 1;
                break;
            };
            if n == 0 {
                errors += 1;
                break;
            }
            got += n;
            if need.is_none() {
                if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    need = Some(end + 4 + len);
                }
            }
            if let Some(total) = need {
                if got >= total {
                    break;
                }
            }
        }
        latencies.push(scheduled.elapsed().as_micros() as u64);
    }
    (latencies, errors)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: fixed_rate URL RATE SECONDS CONNECTIONS");
        std::process::exit(2);
    }
    let url = args[1].strip_prefix("http://").expect("http:// URL");
    let (addr, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    let path = if path.is_empty() { "/" } else { path };
    let rate: f64 = args[2].parse().expect("rate");
    let seconds: f64 = args[3].parse().expect("seconds");
    let conns: usize = args[4].parse().expect("connections");
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let until = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let offset = per_conn.mul_f64(i as f64 / conns as f64);
        tasks.push(tokio::spawn(one_connection(
            addr.to_string(),
            path.to_string(),
            addr.to_string(),
            per_conn,
            offset,
            until,
            start,
        )));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_unstable();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "sent={} errors={errors} p50_us={} p90_us={} p99_us={} max_us={}",
        all.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        all.last().copied().unwrap_or(0)
    );
}
