//! Real-time alert rules evaluated inside the gateway (SPEC §2 `[[alerts]]`).
//!
//! Requests are recorded into per-second rings (`window`); a background service
//! (`services::alerts`) computes each rule's signal every `evaluation_interval` and moves it
//! through Prometheus' states: inactive -> pending -> firing -> resolved (inactive).
//! Transitions are logged, exported as `agentgate_alert_firing`, shown on GET /alerts and
//! sent to the webhook (`notify`). `export` writes the same rules as Prometheus rules.

pub mod export;
pub mod notify;
pub mod window;

use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::config::AlertRule;
use crate::observe::json::timestamp_string;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// The live state of one rule.
#[derive(Debug, Clone)]
pub struct AlertStatus {
    pub rule: AlertRule,
    pub state: AlertState,
    /// The signal's value at the last evaluation (`None`: no traffic in the window).
    pub value: Option<f64>,
    /// When the current state began.
    pub since: SystemTime,
    /// When the condition started holding (start of pending), for `startsAt`.
    pub active_at: Option<SystemTime>,
    /// Last time a firing notification went out (firing alerts are re-sent so the
    /// receiver does not resolve them on its own timeout).
    pub last_notified: Option<SystemTime>,
}

/// Every rule's status; read by /alerts, written by the evaluator.
#[derive(Default)]
pub struct AlertBoard {
    statuses: Mutex<Vec<AlertStatus>>,
}

impl AlertBoard {
    /// Lines the board up with the rules of a (re)loaded config, keeping the state of
    /// rules whose name and meaning did not change.
    pub fn sync_rules(&self, rules: &[AlertRule]) {
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::take(&mut *statuses);
        for rule in rules {
            let kept = old.iter().find(|s| {
                s.rule.name == rule.name
                    && s.rule.signal == rule.signal
                    && s.rule.route == rule.route
                    && s.rule.threshold == rule.threshold
            });
            statuses.push(match kept {
                Some(s) => AlertStatus {
                    rule: rule.clone(),
                    ..s.clone()
                },
                None => AlertStatus {
                    rule: rule.clone(),
                    state: AlertState::Inactive,
                    value: None,
                    since: SystemTime::now(),
                    active_at: None,
                    last_notified: None,
                },
            });
        }
        for gone in old
            .iter()
            .filter(|s| !rules.iter().any(|r| r.name == s.rule.name))
        {
            crate::observe::metrics::alert_firing(&gone.rule.name, &gone.rule.severity, false);
        }
    }

    pub fn with_statuses<R>(&self, f: impl FnOnce(&mut Vec<AlertStatus>) -> R) -> R {
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut statuses)
    }

    /// GET /alerts.
    pub fn to_json(&self) -> Value {
        self.with_statuses(|statuses| {
            json!({"alerts": statuses.iter().map(|s| json!({
                "name": s.rule.name,
                "state": s.state.as_str(),
                "value": s.value,
                "since": timestamp_string(s.since),
                "active_at": s.active_at.map(timestamp_string),
                "severity": s.rule.severity,
                "route": s.rule.route,
                "signal": s.rule.signal.as_str(),
                "threshold": match s.rule.threshold {
                    crate::config::Threshold::Above(v) => json!({"above": v}),
                    crate::config::Threshold::Below(v) => json!({"below": v}),
                },
                "summary": s.rule.summary,
            })).collect::<Vec<_>>()})
        })
    }
}
