//! The shared rate-limit store: Redis, reached through one multiplexed, auto-reconnecting
//! connection (redis' `ConnectionManager` pipelines every caller's commands on it), with
//! a tight per-call timeout. Its reachability is tracked here: while Redis is down no
//! request waits on it; a background probe notices when it is back.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::config::validate::redact_url;
use crate::observe::metrics;

/// What every bucket script starts from, on Redis' clock so every replica agrees: KEYS[1]
/// the bucket, ARGV rate (tokens a second), burst, and ARGV[3] tokens to add first
/// (unspent lease tokens given back, a settlement's difference, or 0); `tokens` is the
/// bucket refilled to now.
macro_rules! token_bucket_refilled {
    () => {
        r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000 + tonumber(ARGV[3]))
"#
    };
}

/// Token bucket with continuous refill for request limits: ARGV[3] is 0, ARGV[4] the
/// tokens wanted. Returns {granted, tokens left (floor), ms until the next token when
/// none granted}.
const ACQUIRE: &str = concat!(
    token_bucket_refilled!(),
    r#"
local want = tonumber(ARGV[4])
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
local wait = 0
if granted == 0 then
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
return {granted, math.floor(tokens), wait}
"#
);

/// Stores the bucket, kept until a full refill and a minute more.
macro_rules! token_bucket_stored {
    () => {
        r#"
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 60000)
"#
    };
}

/// A token budget's reservation: ARGV[3] unspent lease tokens given back, ARGV[4] the
/// tokens wanted, ARGV[5] extra to lease. All or nothing: grants want + up to extra, or
/// nothing with the ms until want fits. Returns {granted, tokens left (floor, 0 when in
/// debt), ms to wait}.
const RESERVE_TOKENS: &str = concat!(
    token_bucket_refilled!(),
    r#"
local want = tonumber(ARGV[4])
local extra = tonumber(ARGV[5])
local granted = 0
local wait = 0
if tokens >= want then
  granted = want + math.max(0, math.min(extra, math.floor(tokens - want)))
  tokens = tokens - granted
else
  wait = math.ceil((want - tokens) * 1000 / rate)
end
"#,
    token_bucket_stored!(),
    "return {granted, math.max(0, math.floor(tokens)), wait}\n"
);

/// A token budget's settlement: ARGV[3] > 0 gives tokens back, < 0 charges (the bucket
/// may go into debt). Returns the tokens left.
const SETTLE_TOKENS: &str = concat!(
    token_bucket_refilled!(),
    token_bucket_stored!(),
    "return math.floor(tokens)\n"
);

/// No probe or call has answered yet.
const UNJUDGED: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

pub struct RedisStore {
    url: String,
    /// CAs for a `rediss://` URL (PEM); `None`: the system roots.
    ca: Option<Arc<Vec<u8>>>,
    timeout: Duration,
    connection: ArcSwapOption<ConnectionManager>,
    /// `UNJUDGED`, `UP` or `DOWN`.
    state: AtomicU8,
    script: Script,
    reserve_tokens: Script,
    settle_tokens: Script,
}

/// One answer of the token reservation script.
#[derive(Debug, Clone, Copy)]
pub struct TokenGrant {
    pub granted: u64,
    pub tokens_left: u64,
    pub wait_ms: u64,
}

/// One answer of the acquire script.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub granted: u32,
    pub tokens_left: u32,
    pub wait_ms: u64,
}

impl RedisStore {
    pub fn new(url: &str, ca: Option<Arc<Vec<u8>>>, timeout: Duration) -> Arc<RedisStore> {
        metrics::rate_limit_store_up(false);
        Arc::new(RedisStore {
            url: url.to_string(),
            ca,
            timeout,
            connection: ArcSwapOption::empty(),
            state: AtomicU8::new(UNJUDGED),
            script: Script::new(ACQUIRE),
            reserve_tokens: Script::new(RESERVE_TOKENS),
            settle_tokens: Script::new(SETTLE_TOKENS),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this store is the one `url` and `ca` describe.
    pub fn is_for(&self, url: &str, ca: &Option<Arc<Vec<u8>>>) -> bool {
        self.url == url && self.ca.as_deref() == ca.as_deref()
    }

    /// The client for the URL: TLS (`rediss://`) is rustls, verifying the server
    /// against `ca_file` or the system roots; redis-rs takes a CA of its own only
    /// through its rustls backend.
    fn client(&self) -> redis::RedisResult<redis::Client> {
        if self.url.starts_with("rediss://") {
            // The process-wide rustls provider; a second install is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match &self.ca {
            None => redis::Client::open(self.url.as_str()),
            Some(pem) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UP
    }

    fn set_up(&self, up: bool, why: &str) {
        // Starting from UNJUDGED, the first verdict is a change too: a store that is down
        // from the start (refused authentication, wrong host) says so once.
        let state = if up { UP } else { DOWN };
        if self.state.swap(state, Ordering::Relaxed) != state {
            metrics::rate_limit_store_up(up);
            let span = tracing::info_span!(
                "rate_limit_store.transition",
                event = "rate_limit_store",
                store = %redact_url(&self.url),
                up,
            );
            let _in = span.enter();
            if up {
                tracing::info!(
                    "rate limit store {} is reachable: global limits are shared again",
                    redact_url(&self.url)
                );
            } else {
                tracing::warn!(
                    "rate limit store {} is unreachable ({why}): applying on_unavailable until it returns",
                    redact_url(&self.url)
                );
            }
        }
    }

    /// Asks for up to `want` tokens from bucket `key`. `None` when Redis did not answer
    /// in time (the store is then marked down).
    pub async fn acquire(&self, key: &str, rate: f64, burst: u32, want: u32) -> Option<Grant> {
        let mut conn = (*self.connection.load_full()?).clone();
        let mut invocation = self.script.key(key);
        invocation.arg(rate).arg(burst).arg(0).arg(want);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((granted, left, wait))) => Some(Grant {
                granted: granted.max(0) as u32,
                tokens_left: left.max(0) as u32,
                wait_ms: wait.max(0) as u64,
            }),
            Ok(Err(e)) => {
                self.set_up(false, &e.to_string());
                None
            }
            Err(_) => {
                self.set_up(false, &format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    /// Reserves `want` tokens (and up to `extra` to lease) from token bucket `key`,
    /// giving back `back` unspent lease tokens. `None` when Redis did not answer.
    pub async fn reserve_tokens(
        &self,
        key: &str,
        rate: f64,
        burst: u64,
        want: u64,
        extra: u64,
        back: u64,
    ) -> Option<TokenGrant> {
        let mut invocation = self.reserve_tokens.key(key);
        invocation
            .arg(rate)
            .arg(burst)
            .arg(back)
            .arg(want)
            .arg(extra);
        let (granted, left, wait) = self.run::<(i64, i64, i64)>(invocation).await?;
        Some(TokenGrant {
            granted: granted.max(0) as u64,
            tokens_left: left.max(0) as u64,
            wait_ms: wait.max(0) as u64,
        })
    }

    /// Gives back (`delta` > 0) or charges (`delta` < 0) tokens of bucket `key`.
    /// False when Redis did not answer.
    pub async fn settle_tokens(&self, key: &str, rate: f64, burst: u64, delta: i64) -> bool {
        let mut invocation = self.settle_tokens.key(key);
        invocation.arg(rate).arg(burst).arg(delta);
        self.run::<i64>(invocation).await.is_some()
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut conn = (*self.connection.load_full()?).clone();
        let call = invocation.invoke_async::<T>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.set_up(false, &e.to_string());
                None
            }
            Err(_) => {
                self.set_up(false, &format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    /// Connects (first time) or pings; marks the store up or down.
    pub async fn probe(&self) {
        if self.connection.load().is_none() {
            let client = match self.client() {
                Ok(c) => c,
                Err(e) => {
                    self.set_up(false, &e.to_string());
                    return;
                }
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(1))
                .set_response_timeout(self.timeout.max(Duration::from_millis(100)))
                .set_number_of_retries(1)
                .set_max_delay(1000);
            match tokio::time::timeout(
                Duration::from_secs(2),
                ConnectionManager::new_with_config(client, config),
            )
            .await
            {
                Ok(Ok(cm)) => self.connection.store(Some(Arc::new(cm))),
                Ok(Err(e)) => {
                    self.set_up(false, &e.to_string());
                    return;
                }
                Err(_) => {
                    self.set_up(false, "connect timed out");
                    return;
                }
            }
        }
        let Some(conn) = self.connection.load_full() else {
            return;
        };
        let mut conn = (*conn).clone();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(Duration::from_millis(500).max(self.timeout), ping).await {
            Ok(Ok(_)) => self.set_up(true, ""),
            Ok(Err(e)) => self.set_up(false, &e.to_string()),
            Err(_) => self.set_up(false, "ping timed out"),
        }
    }
}
