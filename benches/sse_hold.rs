//! Holds many concurrent SSE streams open against a demo agent (directly or through the
//! gateway) and measures each event's delay from the agent's `sent_us` stamp to arrival.
//!
//! Usage: sse_hold ADDR STREAMS TOKENS RAMP_PER_SECOND
//! Prints: opened=N completed=N events=N delay_p50_us=N delay_p99_us=N
//! and, on standard error, `all_streaming=N` once every stream's answer has begun
//! (the moment to sample the gateway: each stream then holds its client and its agent
//! connection), or `streaming=N of M` if some never get one within a minute.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

async fn stream(
    addr: String,
    id: usize,
    tokens: usize,
    delays: Arc<Mutex<Vec<u64>>>,
    opened: Arc<AtomicU64>,
    streaming: Arc<AtomicU64>,
) -> bool {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return false;
    };
    let req = format!("POST /v1/conversations/{id}/stream?tokens={tokens} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    opened.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; 16384];
    let mut text = String::new();
    let mut local = Vec::with_capacity(tokens);
    let mut started = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let arrived = now_us();
        if !started {
            started = true;
            streaming.fetch_add(1, Ordering::Relaxed);
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(i) = text.find("\"sent_us\":") {
            let rest = &text[i + 10..];
            let end = rest.find('}').unwrap_or(rest.len());
            if let Ok(sent) = rest[..end].parse::<u64>() {
                local.push(arrived.saturating_sub(sent));
            }
            text = rest[end..].to_string();
        }
        if text.contains("[DONE]") {
            break;
        }
    }
    let done = local.len() == tokens;
    delays.lock().unwrap().extend(local);
    done
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: sse_hold ADDR STREAMS TOKENS RAMP_PER_SECOND");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let streams: usize = args[2].parse().expect("streams");
    let tokens: usize = args[3].parse().expect("tokens");
    let ramp: u64 = args[4].parse().expect("ramp");
    let delays = Arc::new(Mutex::new(Vec::new()));
    let opened = Arc::new(AtomicU64::new(0));
    let streaming = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(streams);
    // The timer wheel rounds every sleep up to a whole millisecond: a sleep per stream
    // would open them at a fraction of the asked rate. Ticks that fall behind are made
    // up at once, so the ramp holds its rate on average.
    let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / ramp.max(1)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for id in 0..streams {
        pace.tick().await;
        tasks.push(tokio::spawn(stream(
            addr.clone(),
            id,
            tokens,
            Arc::clone(&delays),
            Arc::clone(&opened),
            Arc::clone(&streaming),
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while tokio::time::Instant::now() < deadline {
        seen = streaming.load(Ordering::Relaxed);
        if seen >= streams as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if seen >= streams as u64 {
        eprintln!("all_streaming={seen}");
    } else {
        eprintln!("streaming={seen} of {streams}");
    }
    let mut completed = 0;
    for t in tasks {
        if let Ok(true) = t.await {
            completed += 1;
        }
    }
    let mut d = delays.lock().unwrap().clone();
    d.sort_unstable();
    let q = |p: f64| {
        d.get(((d.len() as f64 * p) as usize).min(d.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "opened={} completed={completed} events={} delay_p50_us={} delay_p99_us={}",
        opened.load(Ordering::Relaxed),
        d.len(),
        q(0.5),
        q(0.99)
    );
}
