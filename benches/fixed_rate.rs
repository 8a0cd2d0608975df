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
//! Prints: sent=N errors=N p50_us=N p90_us=N p99_us=N max_us=N refused=N refused_p99_us=N
//! The percentiles are of the 2xx answers; `refused` counts the other answers (a 503
//! from a cap, a 429 from a limit) and `refused_p99_us` is how fast they came; `errors`
//! counts exchanges that failed (the thread connects again for its next request, as it
//! does after a `connection: close`); `connects` counts the TCP connections opened;
//! `elapsed_ms` is from the first scheduled request to the last answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What one connection's thread saw: latencies in microseconds of 2xx answers and of
/// the others, failed exchanges, and the TCP connections it opened.
#[derive(Default)]
struct Seen {
    ok: Vec<u64>,
    refused: Vec<u64>,
    errors: u64,
    connects: u64,
}

fn connect(addr: &str) -> Option<TcpStream> {
    let s = TcpStream::connect(addr).ok()?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    Some(s)
}

/// Sends on one connection every `interval` from `first` until `until`, connecting
/// again (as a client would) after the server closed it or an exchange failed.
fn one_connection(
    addr: &str,
    request: &[u8],
    interval: Duration,
    first: Instant,
    until: Instant,
) -> Seen {
    let mut seen = Seen {
        ok: Vec::with_capacity(
            (until.saturating_duration_since(first).as_secs_f64() / interval.as_secs_f64())
                as usize
                + 1,
        ),
        ..Seen::default()
    };
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 65536];
    let mut next = first;
    while next < until {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let scheduled = next;
        next += interval;
        if conn.is_none() {
            conn = connect(addr);
            seen.connects += 1;
        }
        let Some(s) = conn.as_mut() else {
            seen.errors += 1;
            continue;
        };
        if s.write_all(request).is_err() {
            seen.errors += 1;
            conn = None;
            continue;
        }
        let Some((status, close)) = read_response(s, &mut buf) else {
            seen.errors += 1;
            conn = None;
            continue;
        };
        let took = scheduled.elapsed().as_micros() as u64;
        if (200..300).contains(&status) {
            seen.ok.push(took);
        } else {
            seen.refused.push(took);
        }
        if close {
            conn = None;
        }
    }
    seen
}

/// Reads one response, the header then Content-Length bytes of body: its status, and
/// whether the server said it closes the connection.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> Option<(u16, bool)> {
    let mut got = 0usize;
    let mut head: Option<(usize, bool)> = None;
    loop {
        let n = match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        got += n;
        if head.is_none() {
            if let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let close = text
                    .lines()
                    .any(|l| l.starts_with("connection:") && l.contains("close"));
                head = Some((end + 4 + len, close));
            }
        }
        if let Some((total, close)) = head {
            if got >= total || got == buf.len() {
                let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
                return Some((status, close));
            }
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
    let mut all = Seen::default();
    for t in threads {
        if let Ok(seen) = t.join() {
            all.ok.extend(seen.ok);
            all.refused.extend(seen.refused);
            all.errors += seen.errors;
            all.connects += seen.connects;
        }
    }
    all.ok.sort_unstable();
    all.refused.sort_unstable();
    let q = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "sent={} errors={} p50_us={} p90_us={} p99_us={} max_us={} refused={} refused_p99_us={} connects={} elapsed_ms={}",
        all.ok.len() + all.refused.len(),
        all.errors,
        q(&all.ok, 0.5),
        q(&all.ok, 0.9),
        q(&all.ok, 0.99),
        all.ok.last().copied().unwrap_or(0),
        all.refused.len(),
        q(&all.refused, 0.99),
        all.connects,
        start.elapsed().as_millis()
    );
}
