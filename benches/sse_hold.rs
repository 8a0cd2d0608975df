//! Holds many concurrent SSE streams open against a demo agent (directly or through the
//! gateway) and measures each event's delay from the agent's `sent_us` stamp to arrival.
//!
//! Usage: sse_hold ADDR STREAMS TOKENS RAMP_PER_SECOND
//! Prints: opened=N completed=N events=N delay_p50_us=N delay_p99_us=N

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
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let arrived = now_us();
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
    let mut tasks = Vec::with_capacity(streams);
    let pause = Duration::from_micros(1_000_000 / ramp.max(1));
    for id in 0..streams {
        tasks.push(tokio::spawn(stream(
            addr.clone(),
            id,
            tokens,
            Arc::clone(&delays),
            Arc::clone(&opened),
        )));
        tokio::time::sleep(pause).await;
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
