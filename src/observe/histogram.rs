//! Latency histograms with fixed buckets: a sample is two relaxed atomic adds.
//!
//! The `metrics` exporter keeps every histogram sample, with a timestamp, until its
//! upkeep thread folds them into buckets. The gateway records three latencies per
//! request into bucket layouts known when the series is made, so a sample goes straight
//! into its bucket instead. Series are registered once per name and label set and live
//! as long as the process: a config reload hands the same series to the new routes, so
//! their counts never go back, as Prometheus expects of a histogram.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A histogram metric: its name, help text and bucket bounds (seconds, ascending).
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub bounds: &'static [f64],
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
}

impl Histogram {
    fn new(bounds_s: &'static [f64]) -> Histogram {
        Histogram {
            bounds_s,
            bounds_ns: bounds_s.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one sample.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The first bound at or above the sample: Prometheus buckets are `<= le`.
        let i = self.bounds_ns.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
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
    let made = Arc::new(Histogram::new(family.metric.bounds));
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

/// Appends every family in the Prometheus text format (HELP, TYPE, buckets, sum, count).
pub fn render_into(out: &mut String) {
    let families = families();
    for family in families.iter().filter(|f| !f.series.is_empty()) {
        let name = family.metric.name;
        let _ = writeln!(out, "# HELP {name} {}", family.metric.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, histogram) in &family.series {
            let (cumulative, sum) = histogram.snapshot();
            let sep = if labels.is_empty() { "" } else { "," };
            for (bound, count) in histogram.bounds_s.iter().zip(&cumulative) {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
            }
            let total = cumulative.last().copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
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
        out.push('\n');
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
        };
        let h = series(&METRIC, &[("route", "a\"b"), ("upstream", "u")]);
        h.record(Duration::from_micros(1000)); // exactly on the first bound: le="0.001"
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(2)); // above every bound: +Inf only
        let again = series(&METRIC, &[("route", "a\"b"), ("upstream", "u")]);
        assert!(Arc::ptr_eq(&h, &again), "one series per label set");
        let mut text = String::new();
        render_into(&mut text);
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
}
