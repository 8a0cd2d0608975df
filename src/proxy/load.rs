//! What an agent's answer says about its load, read when its header arrives: the time
//! to first byte feeds `peak_ewma` balancing and the adaptive concurrency cap (a stream
//! gives its slot back here, so long generations do not hold the cap), and a 429 or 503
//! with `Retry-After` ejects the backend for as long as it asks (doubling when it asks
//! again within five minutes, at most `max_eject_for`; never the last healthy one).

use std::time::Duration;

use pingora::http::ResponseHeader;

use super::ctx::Request;
use crate::clock::now_ms;
use crate::config::BalanceMode;
use crate::observe::metrics;

/// The agent's response header arrived after `wait`.
pub fn on_first_byte(req: &mut Request, header: &ResponseHeader, wait: Option<Duration>) {
    let status = header.status.as_u16();
    if let (Some(upstream), Some(b)) = (req.upstream(), req.backend()) {
        let cfg = &upstream.pool.config;
        if let Some(backend) = upstream.pool.backends.get(b) {
            if cfg.balance == BalanceMode::PeakEwma {
                if let Some(w) = wait {
                    backend.observe_first_byte(w.as_micros() as f64, now_ms());
                }
            }
            if matches!(status, 429 | 503) {
                if let Some(asked) = retry_after(header) {
                    eject_as_asked(req, b, asked);
                }
            }
        }
    }
    let releases_at_first_byte = req.slot.is_some()
        && req
            .upstream()
            .and_then(|u| u.limit.as_ref())
            .is_some_and(|l| l.releases_streams_at_first_byte());
    if let Some(slot) = req.slot.as_mut() {
        let stream = status == 101
            || header
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if releases_at_first_byte && stream {
            slot.release(wait);
        } else {
            slot.sample(wait);
        }
    }
}

/// `Retry-After` in seconds or as an HTTP date, in milliseconds from now.
fn retry_after(header: &ResponseHeader) -> Option<u64> {
    let v = header
        .headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = v.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let ms = at
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_millis() as u64);
    Some(ms)
}

fn eject_as_asked(req: &Request, b: usize, asked_ms: u64) {
    let Some(upstream) = req.upstream() else {
        return;
    };
    let (cfg, backends) = (&upstream.pool.config, &upstream.pool.backends);
    let Some(backend) = backends.get(b) else {
        return;
    };
    if asked_ms == 0 {
        return;
    }
    let now = now_ms();
    let others = backends
        .iter()
        .enumerate()
        .filter(|(i, o)| *i != b && o.is_available(now))
        .count();
    if others == 0 {
        // The last healthy backend stays: its clients get its own 429/503 answers,
        // not the gateway's 503 for every request.
        return;
    }
    let ms = backend.eject_for_retry_after(asked_ms, cfg.health.max_eject_for.as_millis() as u64);
    metrics::ejection(&cfg.name, &backend.label);
    let span = tracing::warn_span!(
        "backend.ejection",
        event = "ejection",
        upstream = %cfg.name,
        backend = %backend.label,
        eject_for_ms = ms,
        retry_after_ms = asked_ms,
    );
    let _in = span.enter();
    tracing::warn!(
        "backend {} of upstream {} ejected for {} ms: it answered with Retry-After ({} ms asked; repeated asks within 5 minutes double it, up to max_eject_for)",
        backend.label,
        cfg.name,
        ms,
        asked_ms
    );
}
