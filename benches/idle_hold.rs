//! Opens many keep-alive connections to ADDR, makes one request on each, then holds
//! them idle: the cost of a burst of clients that stay connected, and what the process
//! gives back once they leave.
//!
//! Usage: idle_hold ADDR CONNECTIONS HOLD_SECONDS RAMP_PER_SECOND
//! Prints `opened=N answered=N` once every connection has had its answer (the moment to
//! sample the server's memory), then holds for HOLD_SECONDS, closes every connection
//! and prints `closed`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects, sends one request and reads until the response header (and the short
/// body the bench backend sends) has arrived.
async fn one(addr: String) -> Option<TcpStream> {
    let mut s = TcpStream::connect(&addr).await.ok()?;
    s.write_all(b"GET /v1/conversations HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(s);
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: idle_hold ADDR CONNECTIONS HOLD_SECONDS RAMP_PER_SECOND");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let count: usize = args[2].parse().unwrap_or(5000);
    let hold: u64 = args[3].parse().unwrap_or(5);
    let ramp: usize = args[4].parse().unwrap_or(2000).max(1);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tasks.push(tokio::spawn(one(addr.clone())));
        if (i + 1) % ramp.div_ceil(10) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut held = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            held.push(s);
        }
    }
    println!("opened={count} answered={}", held.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(held);
    println!("closed");
}
