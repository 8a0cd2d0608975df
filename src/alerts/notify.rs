//! Alert notifications: Alertmanager v2 API JSON (`POST /api/v2/alerts`, an array of
//! alerts), sent from a queue by a background task with retries and backoff, so the
//! evaluator and the proxy never wait on a slow or dead receiver.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

use crate::observe::json::timestamp_string;

/// One alert in Alertmanager's v2 format.
#[derive(Debug, Clone, Serialize)]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

impl AmAlert {
    #[allow(clippy::too_many_arguments)] // one argument per Alertmanager field
    pub fn new(
        name: &str,
        severity: &str,
        route: Option<&str>,
        instance: &str,
        summary: &str,
        starts_at: SystemTime,
        ends_at: Option<SystemTime>,
        generator_url: &str,
    ) -> AmAlert {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".into(), name.to_string());
        labels.insert("severity".into(), severity.to_string());
        labels.insert("route".into(), route.unwrap_or("all").to_string());
        labels.insert("instance".into(), instance.to_string());
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".into(), summary.to_string());
        AmAlert {
            labels,
            annotations,
            starts_at: timestamp_string(starts_at),
            ends_at: ends_at.map(timestamp_string),
            generator_url: generator_url.to_string(),
        }
    }
}

/// A batch for one webhook URL.
pub struct Notification {
    pub url: String,
    pub alerts: Vec<AmAlert>,
}

/// The sending side handed to the evaluator.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notification>,
}

const ATTEMPTS: u32 = 5;

impl Notifier {
    /// Starts the sender task on the current runtime.
    pub fn start() -> Notifier {
        let (tx, mut rx) = mpsc::channel::<Notification>(256);
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    log::error!("alert notifications disabled: cannot build the HTTP client: {e}");
                    return;
                }
            };
            while let Some(n) = rx.recv().await {
                send_with_retries(&client, n).await;
            }
        });
        Notifier { tx }
    }

    /// Queues a notification; when the queue is full it is dropped and logged.
    pub fn send(&self, n: Notification) {
        if self.tx.try_send(n).is_err() {
            log::warn!("alert notification queue full: a notification was dropped");
        }
    }
}

async fn send_with_retries(client: &reqwest::Client, n: Notification) {
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=ATTEMPTS {
        match client.post(&n.url).json(&n.alerts).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => log::warn!(
                "alert webhook answered {} (attempt {attempt}/{ATTEMPTS})",
                resp.status()
            ),
            Err(e) => log::warn!("alert webhook failed (attempt {attempt}/{ATTEMPTS}): {e}"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }
    log::error!("alert notification given up after {ATTEMPTS} attempts");
}
