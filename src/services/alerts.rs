//! The alert evaluator: a background service that computes every rule's signal from the
//! windows each `evaluation_interval` and drives its state.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::alerts::notify::{AmAlert, Notification, Notifier};
use crate::alerts::window::quantile;
use crate::alerts::{AlertState, AlertStatus};
use crate::clock::now_ms;
use crate::config::{Signal, Threshold};
use crate::observe::metrics;
use crate::state::{Runtime, Shared};

/// How often a firing alert is sent again (Alertmanager resolves alerts it stops hearing
/// about after its resolve_timeout, 5 minutes by default).
const RESEND_EVERY: Duration = Duration::from_secs(60);

pub struct AlertEvaluator {
    pub shared: Arc<Shared>,
    /// `instance` label: host and listen port of this gateway.
    pub instance: String,
}

/// The value of a rule's signal now; `None` when there is nothing to judge (no traffic).
pub fn signal_value(
    runtime: &Runtime,
    route: Option<&str>,
    signal: Signal,
    window: Duration,
    now_s: u64,
) -> Option<f64> {
    if signal == Signal::HealthyBackends {
        let healthy = |u: &crate::state::UpstreamRuntime| u.pool.healthy_count() as f64;
        return match route {
            Some(name) => {
                let r = runtime.routes.iter().find(|r| r.route.name == name)?;
                Some(healthy(&runtime.upstreams[r.route.upstream]))
            }
            None => runtime.upstreams.iter().map(healthy).reduce(f64::min),
        };
    }
    let ring = match route {
        Some(name) => runtime
            .windows
            .route(runtime.routes.iter().position(|r| r.route.name == name)?)?,
        None => runtime.windows.all()?,
    };
    let sums = ring.sum(now_s, window.as_secs().max(1));
    match signal {
        Signal::ErrorRatio => (sums.total > 0).then(|| sums.errors as f64 / sums.total as f64),
        Signal::RateLimitedRatio => {
            (sums.total > 0).then(|| sums.rate_limited as f64 / sums.total as f64)
        }
        Signal::LatencyP99 => quantile(0.99, &sums.latency),
        Signal::FirstByteP99 => quantile(0.99, &sums.first_byte),
        Signal::TimeToFirstTokenP99 => quantile(0.99, &sums.ttft),
        Signal::TokensPerSecond => Some(sums.tokens as f64 / window.as_secs().max(1) as f64),
        Signal::HealthyBackends => None,
    }
}

fn holds(threshold: Threshold, value: Option<f64>) -> bool {
    value.is_some_and(|v| threshold.holds(v))
}

impl AlertEvaluator {
    fn evaluate(&self, notifier: &Notifier) {
        let runtime = self.shared.runtime.load_full();
        let now_s = now_ms() / 1000;
        let now = SystemTime::now();
        let webhook = runtime.config.alerting.webhook_url.clone();
        let generator = format!("http://{}/alerts", runtime.config.server.admin_listen);
        let mut outgoing = Vec::new();
        self.shared.alerts.with_statuses(|statuses| {
            for s in statuses.iter_mut() {
                let rule = &s.rule;
                s.value = signal_value(
                    &runtime,
                    rule.route.as_deref(),
                    rule.signal,
                    rule.window,
                    now_s,
                );
                let condition = holds(rule.threshold, s.value);
                let before = s.state;
                match (s.state, condition) {
                    (AlertState::Inactive, true) => {
                        s.active_at = Some(now);
                        s.since = now;
                        s.state = if rule.for_.is_zero() {
                            AlertState::Firing
                        } else {
                            AlertState::Pending
                        };
                    }
                    (AlertState::Pending, true) => {
                        let pending_for = now.duration_since(s.since).unwrap_or_default();
                        if pending_for >= rule.for_ {
                            s.state = AlertState::Firing;
                            s.since = now;
                        }
                    }
                    (AlertState::Pending | AlertState::Firing, false) => {
                        s.state = AlertState::Inactive;
                        s.since = now;
                    }
                    _ => {}
                }
                metrics::alert_firing(&rule.name, &rule.severity, s.state == AlertState::Firing);
                if before != s.state {
                    self.log_transition(s, before);
                    if s.state == AlertState::Firing || before == AlertState::Firing {
                        outgoing.push(self.am_alert(
                            s,
                            before == AlertState::Firing,
                            &generator,
                            now,
                        ));
                        s.last_notified = Some(now);
                    }
                } else if s.state == AlertState::Firing
                    && s.last_notified
                        .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= RESEND_EVERY)
                {
                    outgoing.push(self.am_alert(s, false, &generator, now));
                    s.last_notified = Some(now);
                }
            }
        });
        if let (Some(url), false) = (webhook, outgoing.is_empty()) {
            notifier.send(Notification {
                url,
                alerts: outgoing,
            });
        }
    }

    fn log_transition(&self, s: &AlertStatus, before: AlertState) {
        let value = s
            .value
            .map(|v| format!("{v}"))
            .unwrap_or_else(|| "none".into());
        let after = if before == AlertState::Firing && s.state == AlertState::Inactive {
            "resolved"
        } else {
            s.state.as_str()
        };
        let span = tracing::info_span!(
            "alert.transition",
            event = "alert_transition",
            alert = %s.rule.name,
            state = after,
            previous = before.as_str(),
            severity = %s.rule.severity,
            route = s.rule.route.as_deref().unwrap_or("all"),
            signal = s.rule.signal.as_str(),
            value = %value,
            summary = %s.rule.summary,
        );
        let _in = span.enter();
        if s.state == AlertState::Firing {
            tracing::warn!("alert");
        } else {
            tracing::info!("alert");
        }
    }

    fn am_alert(
        &self,
        s: &AlertStatus,
        resolved: bool,
        generator: &str,
        now: SystemTime,
    ) -> AmAlert {
        AmAlert::new(
            &s.rule.name,
            &s.rule.severity,
            s.rule.route.as_deref(),
            &self.instance,
            &s.rule.summary,
            s.active_at.unwrap_or(now),
            resolved.then_some(now),
            generator,
        )
    }
}

#[async_trait]
impl BackgroundService for AlertEvaluator {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let notifier = Notifier::start();
        loop {
            let interval = self
                .shared
                .runtime
                .load()
                .config
                .alerting
                .evaluation_interval;
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(interval) => self.evaluate(&notifier),
            }
        }
    }
}

/// `host:port` naming this gateway in alert labels.
pub fn instance_name(listen_port: u16) -> String {
    let host = crate::observe::process::host_name().unwrap_or_else(|| "localhost".into());
    format!("{host}:{listen_port}")
}
