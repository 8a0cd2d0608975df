//! An agent with a fixed capacity, for the overload bench: `WORKERS` requests are served
//! at a time, each for `SERVICE_MS`; the rest wait their turn inside the agent, as they
//! would for a model server's batch slots. Its latency therefore grows with its own
//! concurrency, and it can serve WORKERS * 1000 / SERVICE_MS requests a second at most.
//!
//! Usage: capacity_agent ADDR WORKERS SERVICE_MS
//! `GET /healthz` answers at once (a health check does not queue); `GET /stats` answers
//! `{"served":N,"peak_in_flight":N}` (served and the most requests it held at once,
//! waiting ones included) and starts the peak afresh; every other request is served
//! in turn with a small JSON body. HTTP/1.1 keep-alive, requests without bodies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

struct Agent {
    workers: Semaphore,
    service: Duration,
    in_flight: AtomicU64,
    peak: AtomicU64,
    served: AtomicU64,
}

fn reply(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Agent {
    async fn serve(&self, path: &str) -> Vec<u8> {
        match path {
            "/healthz" => reply("{\"status\":\"ok\"}"),
            "/stats" => {
                let peak = self.peak.swap(0, Ordering::Relaxed);
                reply(&format!(
                    "{{\"served\":{},\"peak_in_flight\":{peak}}}",
                    self.served.load(Ordering::Relaxed)
                ))
            }
            _ => {
                let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                self.peak.fetch_max(now, Ordering::Relaxed);
                if let Ok(_slot) = self.workers.acquire().await {
                    tokio::time::sleep(self.service).await;
                }
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.served.fetch_add(1, Ordering::Relaxed);
                reply("{\"data\":[{\"id\":\"c1\"}],\"next_cursor\":null}")
            }
        }
    }
}

async fn connection(agent: Arc<Agent>, mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .split('?')
            .next()
            .unwrap_or("/")
            .to_string();
        let answer = agent.serve(&path).await;
        if s.write_all(&answer).await.is_err() {
            return;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: capacity_agent ADDR WORKERS SERVICE_MS");
        std::process::exit(2);
    }
    let workers: usize = args[2].parse().expect("workers");
    let service_ms: u64 = args[3].parse().expect("service ms");
    let agent = Arc::new(Agent {
        workers: Semaphore::new(workers),
        service: Duration::from_millis(service_ms),
        in_flight: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        served: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(&args[1]).await.expect("listen");
    loop {
        if let Ok((s, _)) = listener.accept().await {
            tokio::spawn(connection(Arc::clone(&agent), s));
        }
    }
}
