//! Mixed traffic for the soak bench (`benches/run.sh soak`): four kinds of request at
//! fixed rates (open loop, each request its own task) through the gateway, for a set time.
//!
//! - plain: `POST /v1/conversations/{id}/messages` with a small body; 200 expected
//! - paginated: `GET /v1/conversations?limit=500`; 200 with `x-pagination-clamped`
//! - sse: `POST /v1/conversations/{id}/stream?tokens=N`; 200 and every event, to `[DONE]`
//! - limited: `POST /v1/chat/completions` on a route whose request limit (and token
//!   budget) it exceeds; 200 or 429, both expected
//!
//! Anything else (another status, a connection error, a stream cut short) is a failure,
//! printed at once as `failure at_ms=<unix ms> kind=<kind> what=<why>` so the bench can
//! set it against the times it killed an agent. A line per minute gives the counts; the
//! last line, `total ...`, the whole run's.
//!
//! Usage: soak BASE_URL SECONDS PLAIN_RPS PAGINATED_RPS SSE_PER_SECOND LIMITED_RPS TOKENS

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Paginated,
    Sse,
    Limited,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Plain, Kind::Paginated, Kind::Sse, Kind::Limited];

    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Paginated => "paginated",
            Kind::Sse => "sse",
            Kind::Limited => "limited",
        }
    }
}

/// Per kind: answered as expected, refused as expected (429 on the limited kind), failed.
#[derive(Default)]
struct Counts {
    ok: [AtomicU64; 4],
    refused: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    /// Requests not sent because too many were still open (the gateway stalled).
    skipped: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        let mut s = String::new();
        for k in Kind::ALL {
            let i = k as usize;
            s.push_str(&format!(
                " {}={}/{}/{}",
                k.name(),
                self.ok[i].load(Ordering::Relaxed),
                self.refused[i].load(Ordering::Relaxed),
                self.failed[i].load(Ordering::Relaxed)
            ));
        }
        s.push_str(&format!(
            " skipped={}",
            self.skipped.load(Ordering::Relaxed)
        ));
        s
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

struct Soak {
    client: reqwest::Client,
    base: String,
    tokens: u32,
    counts: Counts,
    open: Arc<tokio::sync::Semaphore>,
}

/// How one request went.
enum Outcome {
    Ok,
    Refused,
    Failed(String),
}

impl Soak {
    async fn one(&self, kind: Kind, n: u64) -> Outcome {
        let base = &self.base;
        let sent = match kind {
            Kind::Plain => {
                self.client
                    .post(format!("{base}/v1/conversations/c{n}/messages"))
                    .body("hello from the soak")
                    .send()
                    .await
            }
            Kind::Paginated => {
                self.client
                    .get(format!("{base}/v1/conversations?limit=500"))
                    .send()
                    .await
            }
            Kind::Sse => {
                self.client
                    .post(format!(
                        "{base}/v1/conversations/s{n}/stream?tokens={}",
                        self.tokens
                    ))
                    .send()
                    .await
            }
            Kind::Limited => {
                self.client
                    .post(format!("{base}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(r#"{"model":"demo-mini","max_tokens":200,"messages":[{"role":"user","content":"hi"}]}"#)
                    .send()
                    .await
            }
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("send: {e}")),
        };
        let status = resp.status().as_u16();
        let clamped = resp.headers().contains_key("x-pagination-clamped");
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => body.extend_from_slice(&c),
                Err(e) => return Outcome::Failed(format!("status {status}, body cut: {e}")),
            }
        }
        match (kind, status) {
            (Kind::Limited, 429) => Outcome::Refused,
            (Kind::Paginated, 200) if !clamped => {
                Outcome::Failed("200 without x-pagination-clamped".into())
            }
            (Kind::Sse, 200) => {
                let events = body.windows(8).filter(|w| w == b"\"token\":").count();
                let done = body.windows(6).any(|w| w == b"[DONE]");
                if done && events == self.tokens as usize {
                    Outcome::Ok
                } else {
                    Outcome::Failed(format!(
                        "stream of {events} events of {}, [DONE] {done}",
                        self.tokens
                    ))
                }
            }
            (_, 200) => Outcome::Ok,
            (_, s) => Outcome::Failed(format!(
                "status {s}: {}",
                String::from_utf8_lossy(&body[..body.len().min(160)])
            )),
        }
    }

    async fn record(self: Arc<Self>, kind: Kind, n: u64) {
        let i = kind as usize;
        match self.one(kind, n).await {
            Outcome::Ok => self.counts.ok[i].fetch_add(1, Ordering::Relaxed),
            Outcome::Refused => self.counts.refused[i].fetch_add(1, Ordering::Relaxed),
            Outcome::Failed(what) => {
                println!(
                    "failure at_ms={} kind={} what={what}",
                    now_ms(),
                    kind.name()
                );
                self.counts.failed[i].fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Starts `rate` requests of `kind` a second until `until`.
async fn drive(soak: Arc<Soak>, kind: Kind, rate: f64, until: Instant) {
    if rate <= 0.0 {
        return;
    }
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    while Instant::now() < until {
        pace.tick().await;
        n += 1;
        let Ok(permit) = Arc::clone(&soak.open).try_acquire_owned() else {
            soak.counts.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let soak = Arc::clone(&soak);
        tokio::spawn(async move {
            soak.record(kind, n).await;
            drop(permit);
        });
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        eprintln!(
            "usage: soak BASE_URL SECONDS PLAIN_RPS PAGINATED_RPS SSE_PER_SECOND LIMITED_RPS TOKENS"
        );
        std::process::exit(2);
    }
    let num = |i: usize| -> f64 { args[i].parse().expect("a number") };
    let seconds = num(2);
    let soak = Arc::new(Soak {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()
            .expect("client"),
        base: args[1].trim_end_matches('/').to_string(),
        tokens: num(7) as u32,
        counts: Counts::default(),
        open: Arc::new(tokio::sync::Semaphore::new(2000)),
    });
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let drivers: Vec<_> = [
        (Kind::Plain, num(3)),
        (Kind::Paginated, num(4)),
        (Kind::Sse, num(5)),
        (Kind::Limited, num(6)),
    ]
    .into_iter()
    .map(|(kind, rate)| tokio::spawn(drive(Arc::clone(&soak), kind, rate, until)))
    .collect();
    let started = Instant::now();
    let mut minute = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    while Instant::now() < until {
        tokio::select! {
            _ = minute.tick() => println!(
                "minute={} {}",
                (started.elapsed().as_secs_f64() / 60.0).round(),
                soak.counts.line()
            ),
            _ = tokio::time::sleep_until(until.into()) => {}
        }
    }
    for d in drivers {
        let _ = d.await;
    }
    // Requests still open finish (each has a 30 s deadline).
    let _ = soak.open.acquire_many(2000).await;
    println!("total{}", soak.counts.line());
}
