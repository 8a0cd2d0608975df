//! `[[alerts]]`: in-process alert rules.

#[allow(unused_imports)]
use super::*;

pub(super) fn alerts(
    loc: &mut Locator,
    sections: &[Spanned<AlertSection>],
    routes: &[Arc<Route>],
) -> Vec<AlertRule> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for section in sections {
        let a = section.get_ref();
        let name = a.name.get_ref().clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            loc.push(
                span(&a.name),
                format!("alert name {name:?} must use only letters, digits and '_'"),
            );
        }
        if !names.insert(name.clone()) {
            loc.push(span(&a.name), format!("duplicate alert name {name:?}"));
        }
        let route = a.route.as_ref().map(|r| {
            if !routes.iter().any(|x| &x.name == r.get_ref()) {
                loc.push(
                    span(r),
                    format!("alert names route {:?}, which is not defined", r.get_ref()),
                );
            }
            r.get_ref().clone()
        });
        let signal = *a.signal.get_ref();
        if matches!(
            signal,
            Signal::TimeToFirstTokenP99 | Signal::TokensPerSecond
        ) {
            let ai_routes = routes.iter().filter(|r| r.ai.is_some());
            let fine = match &route {
                Some(name) => ai_routes.clone().any(|r| &r.name == name),
                None => ai_routes.clone().next().is_some(),
            };
            if !fine {
                loc.push(
                    span(&a.signal),
                    format!(
                        "signal {} reads AI routes only: {}",
                        signal.as_str(),
                        match &route {
                            Some(r) => format!(
                                "add [routes.ai] to route {r:?}, or name a route that has it"
                            ),
                            None => "no route has [routes.ai]".to_string(),
                        }
                    ),
                );
            }
        }
        let threshold = match (&a.above, &a.below) {
            (Some(v), None) => Threshold::Above(*v.get_ref()),
            (None, Some(v)) => Threshold::Below(*v.get_ref()),
            (Some(v), Some(_)) => {
                loc.push(span(v), "set either `above` or `below`, not both");
                Threshold::Above(0.0)
            }
            (None, None) => {
                loc.push(
                    span(&a.name),
                    format!("alert {name:?} needs a threshold: `above = N` or `below = N`"),
                );
                Threshold::Above(0.0)
            }
        };
        let window = positive_duration_or(loc, &a.window, Duration::from_secs(60), "window");
        if window > Duration::from_secs(3600) {
            if let Some(w) = &a.window {
                loc.push(
                    span(w),
                    "window must be at most 1h (the in-process rings keep one hour)",
                );
            }
        }
        let for_ = duration_or(loc, &a.for_, Duration::ZERO);
        // The exported Prometheus rules write durations in ms at the finest.
        for (value, d) in [(&a.window, window), (&a.for_, for_)] {
            if let Some(v) = value {
                if d.subsec_nanos() % 1_000_000 != 0 {
                    loc.push(
                        span(v),
                        "alert durations must be a whole number of milliseconds (Prometheus has no finer unit)",
                    );
                }
            }
        }
        out.push(AlertRule {
            name,
            route,
            signal,
            threshold,
            window,
            for_,
            severity: a
                .severity
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| "warning".into()),
            summary: a
                .summary
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    fn with_alert(lines: &str) -> String {
        format!("{GOOD}\n[[alerts]]\nname = \"errors\"\nsignal = \"error_ratio\"\n{lines}\n")
    }

    #[test]
    fn a_good_alert() {
        assert_clean(&with_alert(
            "above = 0.05\nwindow = \"1m30s\"\nfor = \"30s\"\nroute = \"all\"",
        ));
    }

    #[test]
    fn names_signals_and_routes() {
        let t = with_alert("above = 1").replace("name = \"errors\"", "name = \"has-dash\"");
        assert_problem_at(&t, "\"has-dash\"", "must use only letters, digits and '_'");
        let t = with_alert("above = 1").replace("\"error_ratio\"", "\"errors_per_day\"");
        assert_problem_at(&t, "\"errors_per_day\"", "expected one of `error_ratio`");
        let t = with_alert("above = 1\nroute = \"ghost\"");
        assert_problem_at(
            &t,
            "\"ghost\"",
            "alert names route \"ghost\", which is not defined",
        );
        let t = format!(
            "{}\n[[alerts]]\nname = \"errors\"\nsignal = \"error_ratio\"\nabove = 1\n",
            with_alert("above = 1")
        );
        assert_problem(&t, "18:8", "duplicate alert name");
    }

    #[test]
    fn thresholds() {
        let t = with_alert("above = 1\nbelow = 2");
        assert_problem_at(&t, "1\nbelow", "set either `above` or `below`, not both");
        let t = with_alert("");
        assert_problem_at(&t, "\"errors\"", "needs a threshold");
    }

    #[test]
    fn windows() {
        let t = with_alert("above = 1\nwindow = \"2h\"");
        assert_problem_at(&t, "\"2h\"", "window must be at most 1h");
        let t = with_alert("above = 1\nwindow = \"1500us\"");
        assert_problem_at(&t, "\"1500us\"", "whole number of milliseconds");
    }
}
