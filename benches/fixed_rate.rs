//! Open-loop load at a fixed rate, for latency under a known load (wrk only runs closed
//! loop). Latency is measured from each request's scheduled start, so a stall is not
//! hidden by the requests it delayed (no coordinated omission).
//!
//! Each connection has a thread of its own that sleeps to each scheduled send time
//! (the kernel's high-resolution timers, tens of microseconds late at most). An async
//! runtime's timer wheel rounds to whole milliseconds and so sends each millisecond's
//! requests as one burst: a load shape no real client mix has, and one that measures
//! the burst's queue rather than the proxy.
//!
//! Usage: fixed_rate URL RATE_PER_SECOND SECONDS CONNECTIONS
//! Prints: sent=N errors=N p50_us=N p90_us=N p99_us=N max_us=N

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends on one connection every `interval` from `first` until `until`; returns the
/// latencies in microseconds and the error count.
fn one_connection(
    addr: &str,
    request: &[u8],
    interval: Duration,
    first: Instant,
    until: Instant,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::with_capacity(
        (until.saturating_duration_since(first).as_secs_f64() / interval.as_secs_f64()) as usize
            + 1,
    );
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (latencies, 1);
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = vec![0u8; 65536];
    let mut next = first;
    while next < until {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let scheduled = next;
        next += interval;
        if s.write_all(request).is_err() {
            return (latencies, 1);
        }
        if !read_response(&mut s, &mut buf) {
            return (latencies, 1);
        }
        latencies.push(scheduled.elapsed().as_micros() as u64);
    }
    (latencies, 0)
}

/// Reads one response: the header, then Content-Length bytes of body.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut got = 0usize;
    let mut need: Option<usize> = None;
    loop {
        let n = match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
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
        if need.is_some_and(|total| got >= total) || got == buf.len() {
            return true;
        }
    }
}

fn main() {
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
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(200);
    let until = start + Duration::from_secs_f64(seconds);
    // Connections start evenly spread over one interval: arrivals are uniform.
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let addr = addr.to_string();
            let request = request.clone();
            let first = start + per_conn.mul_f64(i as f64 / conns as f64);
            std::thread::spawn(move || one_connection(&addr, &request, per_conn, first, until))
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        if let Ok((l, e)) = t.join() {
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
