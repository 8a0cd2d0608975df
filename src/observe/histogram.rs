//! Latency histograms with fixed buckets: a sample is two relaxed atomic adds.
//!
//! The `metrics` exporter keeps every histogram sample, with a timestamp, until its
//! upkeep thread folds them into buckets. The gateway records three latencies per
//! request into bucket layouts known when the series is made, so a sample goes straight
//! into its bucket instead. Series are registered once per name and label set and live
//! as long as the process: a config reload hands the same series to the new routes, so
//! their counts never go back, as Prometheus expects of a histogram.
//!
//! A metric may keep exemplars: each bucket remembers the latest sampled request that
//! fell into it (its trace id, value and time), shown in the OpenMetrics exposition so
//! a latency bucket in Grafana links to a trace. Only sampled requests touch them, with
//! a `try_lock` that skips the update rather than wait.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A histogram metric: its name, help text and bucket bounds (seconds, ascending).
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub bounds: &'static [f64],
    /// Buckets keep exemplars (see `record_sampled`).
    pub exemplars: bool,
}

/// The latest sampled request of a bucket.
#[derive(Clone, Copy)]
struct Exemplar {
    trace_id: [u8; 16],
    value_ns: u64,
    unix_ms: u64,
}

/// One histogram series.
pub struct Histogram {
    /// Upper bounds in seconds, ascending, as configured (for the `le` label).
    bounds_s: &'static [f64],
    /// The same bounds in nanoseconds (what a sample is compared with).
    bounds_ns: Box<[u64]>,
    /// Samples per bucket, not cumulative; the last one is above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    /// One slot per bucket when the metric keeps exemplars, else empty.
    exemplars: Box<[Mutex<Option<Exemplar>>]>,
}

impl Histogram {
    fn new(bounds_s: &'static [f64], exemplars: bool) -> Histogram {
        let slots = if exemplars { bounds_s.len() + 1 } else { 0 };
        Histogram {
            bounds_s,
            bounds_ns: bounds_s.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            exemplars: (0..slots).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Counts one sample.
    pub fn record(&self, d: Duration) {
        self.add(d);
    }

    /// Counts one sample of a sampled request, which becomes its bucket's exemplar
    /// (`unix_ms`: when it finished).
    pub fn record_sampled(&self, d: Duration, trace_id: &[u8; 16], unix_ms: u64) {
        let (i, ns) = self.add(d);
        if let Some(slot) = self.exemplars.get(i) {
            if let Ok(mut e) = slot.try_lock() {
                *e = Some(Exemplar {
                    trace_id: *trace_id,
                    value_ns: ns,
                    unix_ms,
                });
            }
        }
    }

    fn add(&self, d: Duration) -> (usize, u64) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bound at or above the sample: Prometheus buckets are `<= le`.
        let i = self.bounds_ns.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        (i, ns)
    }

    /// The exemplar of bucket `i`, rendered as OpenMetrics writes it after a sample
    /// (` # {trace_id="..."} 0.067 1700000000.123`); empty when there is none.
    fn exemplar_suffix(&self, i: usize, out: &mut String) {
        let Some(e) = self
            .exemplars
            .get(i)
            .and_then(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()))
        else {
            return;
        };
        let _ = write!(
            out,
            " # {{trace_id=\"{}\"}} {} {}.{:03}",
            hex::encode(e.trace_id),
            e.value_ns as f64 / 1e9,
            e.unix_ms / 1000,
            e.unix_ms % 1000
        );
    }

    /// Cumulative bucket counts (one per bound, then `+Inf`) and the sum in seconds.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, sum)
    }
}

/// All series of one metric.
struct Family {
    metric: &'static Metric,
    /// Rendered label pairs (`route="a",upstream="b"`) and the series.
    series: Vec<(String, Arc<Histogram>)>,
}

static FAMILIES: Mutex<Vec<Family>> = Mutex::new(Vec::new());

fn families() -> std::sync::MutexGuard<'static, Vec<Family>> {
    FAMILIES.lock().unwrap_or_else(|p| p.into_inner())
}

/// The series `metric{labels}`, made on first use. Label values come from the config
/// only; they are escaped for the exposition format.
pub fn series(metric: &'static Metric, labels: &[(&str, &str)]) -> Arc<Histogram> {
    let mut rendered = String::new();
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            rendered.push(',');
        }
        rendered.push_str(key);
        rendered.push_str("=\"");
        escape_label_value(&mut rendered, value);
        rendered.push('"');
    }
    let mut families = families();
    let family = match families.iter().position(|f| f.metric.name == metric.name) {
        Some(i) => &mut families[i],
        None => {
            families.push(Family {
                metric,
                series: Vec::new(),
            });
            let last = families.len() - 1;
            &mut families[last]
        }
    };
    if let Some((_, existing)) = family.series.iter().find(|(l, _)| *l == rendered) {
        return Arc::clone(existing);
    }
    let made = Arc::new(Histogram::new(
        family.metric.bounds,
        family.metric.exemplars,
    ));
    family.series.push((rendered, Arc::clone(&made)));
    made
}

/// `\`, `"` and line feeds escaped, as the text exposition format wants label values.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends every family in the Prometheus text format (HELP, TYPE, buckets, sum,
/// count); with `openmetrics`, in OpenMetrics with each bucket's exemplar.
pub fn render_into(out: &mut String, openmetrics: bool) {
    let families = families();
    for family in families.iter().filter(|f| !f.series.is_empty()) {
        let name = family.metric.name;
        let _ = writeln!(out, "# HELP {name} {}", family.metric.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, histogram) in &family.series {
            let (cumulative, sum) = histogram.snapshot();
            let sep = if labels.is_empty() { "" } else { "," };
            for (i, (bound, count)) in histogram.bounds_s.iter().zip(&cumulative).enumerate() {
                let _ = write!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
                if openmetrics {
                    histogram.exemplar_suffix(i, out);
                }
                out.push('\n');
            }
            let total = cumulative.last().copied().unwrap_or(0);
            let _ = write!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
            if openmetrics {
                histogram.exemplar_suffix(histogram.bounds_s.len(), out);
            }
            out.push('\n');
            let braces = |out: &mut String, suffix: &str, value: &dyn std::fmt::Display| {
                let _ = if labels.is_empty() {
                    writeln!(out, "{name}_{suffix} {value}")
                } else {
                    writeln!(out, "{name}_{suffix}{{{labels}}} {value}")
                };
            };
            braces(out, "sum", &sum);
            braces(out, "count", &total);
        }
        if !openmetrics {
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_le_buckets_and_render_cumulatively() {
        static METRIC: Metric = Metric {
            name: "test_histogram_seconds",
            help: "A test histogram",
            bounds: &[0.001, 0.01, 1.0],
            exemplars: true,
        };
        let h = series(&METRIC, &[("route", "a\"b"), ("upstream", "u")]);
        h.record(Duration::from_micros(1000)); // exactly on the first bound: le="0.001"
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(2)); // above every bound: +Inf only
        let again = series(&METRIC, &[("route", "a\"b"), ("upstream", "u")]);
        assert!(Arc::ptr_eq(&h, &again), "one series per label set");
        let mut text = String::new();
        render_into(&mut text, false);
        let labels = "route=\"a\\\"b\",upstream=\"u\"";
        for line in [
            "# TYPE test_histogram_seconds histogram".to_string(),
            format!("test_histogram_seconds_bucket{{{labels},le=\"0.001\"}} 1"),
            format!("test_histogram_seconds_bucket{{{labels},le=\"0.01\"}} 2"),
            format!("test_histogram_seconds_bucket{{{labels},le=\"1\"}} 2"),
            format!("test_histogram_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("test_histogram_seconds_sum{{{labels}}} 2.006"),
            format!("test_histogram_seconds_count{{{labels}}} 3"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn openmetrics_shows_the_latest_sampled_request_of_each_bucket() {
        static METRIC: Metric = Metric {
            name: "test_exemplar_seconds",
            help: "A test histogram with exemplars",
            bounds: &[0.1, 1.0],
            exemplars: true,
        };
        let h = series(&METRIC, &[("route", "r")]);
        h.record_sampled(Duration::from_millis(50), &[1; 16], 1_700_000_000_123);
        h.record_sampled(Duration::from_millis(70), &[2; 16], 1_700_000_000_456);
        h.record(Duration::from_millis(80)); // not sampled: the exemplar stays
        h.record_sampled(Duration::from_secs(3), &[3; 16], 1_700_000_001_000);
        let mut text = String::new();
        render_into(&mut text, true);
        let two = "02".repeat(16);
        let three = "03".repeat(16);
        for line in [
            format!("test_exemplar_seconds_bucket{{route=\"r\",le=\"0.1\"}} 3 # {{trace_id=\"{two}\"}} 0.07 1700000000.456"),
            "test_exemplar_seconds_bucket{route=\"r\",le=\"1\"} 3".to_string(),
            format!("test_exemplar_seconds_bucket{{route=\"r\",le=\"+Inf\"}} 4 # {{trace_id=\"{three}\"}} 3 1700000001.000"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let mut plain = String::new();
        render_into(&mut plain, false);
        assert!(
            !plain.contains("trace_id"),
            "no exemplars in the text format"
        );
    }
}
